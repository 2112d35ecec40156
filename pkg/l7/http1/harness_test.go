package http1

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/palisade-net/palisade/pkg/l7"
)

// stubJudge denies paths with one of its prefixes and attaches edits to
// paths with one of its edit prefixes.
type stubJudge struct {
	deny  []string
	edits map[string][]l7.HeaderEdit
}

func (j *stubJudge) HTTP(r *l7.HTTPRequest) l7.Verdict {
	for _, p := range j.deny {
		if strings.HasPrefix(r.Path, p) || r.Path == "" && strings.HasPrefix(r.Host, p) {
			return l7.Verdict{Policy: "L7Policy test/web", Rule: "spec.ingress[0].toPorts[0].rules.http[0]",
				Reason: "path " + r.Path + " is not allowed"}
		}
	}
	v := l7.Verdict{Allow: true, Policy: "L7Policy test/web", Rule: "spec.ingress[0].toPorts[0].rules.http[1]"}
	for p, e := range j.edits {
		if strings.HasPrefix(r.Path, p) {
			v.Edits = append(v.Edits, e...)
		}
	}
	return v
}

func (j *stubJudge) Kafka(*l7.KafkaRequest) l7.Verdict { return l7.Verdict{} }

// logBuffer collects log output for assertions.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// seenRequest is a request as the backend received it.
type seenRequest struct {
	Method, Path string
	Header       http.Header
	Body         string
	Trailer      http.Header
}

// proxy runs Serve for every connection accepted on a loopback listener,
// towards backendAddr.
type proxy struct {
	t        *testing.T
	addr     string
	judge    l7.Judge
	logs     logBuffer
	mu       sync.Mutex
	records  []l7.Record
	errs     chan error
	accepted int
}

func startProxy(t *testing.T, judge l7.Judge, backendAddr string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{t: t, addr: ln.Addr().String(), judge: judge, errs: make(chan error, 100)}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			p.accepted++
			p.mu.Unlock()
			b, err := net.Dial("tcp", backendAddr)
			if err != nil {
				c.Close()
				p.errs <- err
				continue
			}
			s := &l7.Session{
				Judge: p.judge,
				Observe: func(r l7.Record) {
					p.mu.Lock()
					p.records = append(p.records, r)
					p.mu.Unlock()
				},
				Log: slog.New(slog.NewTextHandler(&p.logs, nil)),
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				err := Serve(ctx, c, b, s)
				select {
				case p.errs <- err:
				default:
				}
			}()
		}
	}()
	t.Cleanup(func() {
		cancel()
		ln.Close()
		wg.Wait()
	})
	return p
}

// nextErr returns the error of the next connection to end.
func (p *proxy) nextErr(t *testing.T) error {
	t.Helper()
	select {
	case err := <-p.errs:
		return err
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return")
		return nil
	}
}

func (p *proxy) recorded() []l7.Record {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]l7.Record(nil), p.records...)
}

func (p *proxy) acceptedConns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.accepted
}

// backend is an httptest server that records what it receives and
// answers by path.
type backend struct {
	*httptest.Server
	mu   sync.Mutex
	seen []seenRequest
}

func startBackend(t *testing.T) *backend {
	t.Helper()
	return startBackendWith(t, func(*http.Server) {})
}

// startBackendWith starts a backend after configure adjusted its server.
func startBackendWith(t *testing.T, configure func(*http.Server)) *backend {
	t.Helper()
	b := &backend{}
	b.Server = httptest.NewUnstartedServer(http.HandlerFunc(b.serveHTTP))
	configure(b.Config)
	b.Start()
	t.Cleanup(b.Close)
	return b
}

func (b *backend) serveHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	b.mu.Lock()
	b.seen = append(b.seen, seenRequest{Method: r.Method, Path: r.URL.RequestURI(), Header: r.Header.Clone(), Body: string(body), Trailer: r.Trailer.Clone()})
	b.mu.Unlock()
	w.Header().Set("X-Path", r.URL.RequestURI())
	switch {
	case r.URL.Path == "/status/204":
		w.WriteHeader(http.StatusNoContent)
	case r.URL.Path == "/status/304":
		w.WriteHeader(http.StatusNotModified)
	case r.URL.Path == "/slow":
		time.Sleep(150 * time.Millisecond)
		fmt.Fprintf(w, "slow")
	case r.URL.Path == "/chunked":
		w.Header().Set("Trailer", "X-Sum")
		for i := range 3 {
			fmt.Fprintf(w, "part%d;", i)
			w.(http.Flusher).Flush()
		}
		w.Header().Set("X-Sum", "3")
	case r.URL.Path == "/early":
		w.Header().Set("Link", "</style.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		fmt.Fprintf(w, "after hints")
	case r.URL.Path == "/unauthorized":
		w.WriteHeader(http.StatusUnauthorized)
	default:
		fmt.Fprintf(w, "ok %s %s %d", r.Method, r.URL.RequestURI(), len(body))
	}
}

func (b *backend) requests() []seenRequest {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]seenRequest(nil), b.seen...)
}

func (b *backend) sawPrefix(prefix string) bool {
	for _, r := range b.requests() {
		if strings.HasPrefix(r.Path, prefix) {
			return true
		}
	}
	return false
}

// rawConn is a raw client connection to the proxy.
type rawConn struct {
	net.Conn
	br *bufio.Reader
}

func dialRaw(t *testing.T, addr string) *rawConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return &rawConn{Conn: c, br: bufio.NewReader(c)}
}

func (c *rawConn) send(t *testing.T, s string) {
	t.Helper()
	if _, err := io.WriteString(c, s); err != nil {
		t.Fatal(err)
	}
}

// response reads one response to a request with the given method and its
// whole body.
func (c *rawConn) response(t *testing.T, method string) (*http.Response, string) {
	t.Helper()
	resp, err := http.ReadResponse(c.br, &http.Request{Method: method})
	if err != nil {
		t.Fatalf("reading response: %v", err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading response body: %v", err)
	}
	return resp, string(body)
}

// responseHead reads one response head, leaving its body unread.
func (c *rawConn) responseHead(t *testing.T, method string) *http.Response {
	t.Helper()
	resp, err := http.ReadResponse(c.br, &http.Request{Method: method})
	if err != nil {
		t.Fatalf("reading response: %v", err)
	}
	return resp
}

// expectClosed asserts that the proxy closed the connection (after any
// bytes still buffered).
func (c *rawConn) expectClosed(t *testing.T) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	rest, err := io.ReadAll(c.br)
	if err != nil && !errors.Is(err, net.ErrClosed) && !strings.Contains(err.Error(), "reset") {
		t.Fatalf("connection not closed: %v (read %q)", err, rest)
	}
	c.Close()
}

// checkDenied asserts resp is the proxy's well-formed 403.
func checkDenied(t *testing.T, resp *http.Response, body string, head bool) {
	t.Helper()
	if resp.StatusCode != l7.DeniedStatus {
		t.Fatalf("status %d, want %d", resp.StatusCode, l7.DeniedStatus)
	}
	if ct := resp.Header.Get("Content-Type"); ct != l7.DeniedContentType {
		t.Fatalf("Content-Type %q", ct)
	}
	if resp.ContentLength != int64(len(l7.DeniedBody)) {
		t.Fatalf("Content-Length %d", resp.ContentLength)
	}
	want := l7.DeniedBody
	if head {
		want = ""
	}
	if body != want {
		t.Fatalf("body %q, want %q", body, want)
	}
}

func bufioReader(c net.Conn) *bufio.Reader { return bufio.NewReader(c) }

func itoa(n int) string { return strconv.Itoa(n) }

// stringConn is a net.Conn reading s.
func stringConn(s string) net.Conn {
	a, b := net.Pipe()
	go func() {
		_, _ = io.WriteString(b, s)
		b.Close()
	}()
	return a
}
