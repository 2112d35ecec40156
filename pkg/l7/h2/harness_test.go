package h2

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
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
			return l7.Verdict{Policy: "L7Policy test/api", Rule: "spec.ingress[0].toPorts[0].rules.http[0]",
				Reason: "path " + r.Path + " is not allowed"}
		}
	}
	v := l7.Verdict{Allow: true, Policy: "L7Policy test/api", Rule: "spec.ingress[0].toPorts[0].rules.http[1]"}
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

// proxy runs Serve for every connection accepted on a loopback listener,
// towards backendAddr.
type proxy struct {
	addr     string
	logs     logBuffer
	mu       sync.Mutex
	records  []l7.Record
	errs     chan error
	accepted int
}

func startProxy(t testing.TB, judge l7.Judge, backendAddr string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{addr: ln.Addr().String(), errs: make(chan error, 1000)}
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
				Judge: judge,
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
func (p *proxy) nextErr(t testing.TB) error {
	t.Helper()
	select {
	case err := <-p.errs:
		return err
	case <-time.After(10 * time.Second):
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

func h2cProtocols() *http.Protocols {
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	return &p
}

// backend is an h2c net/http server that records what it receives.
type backend struct {
	addr string
	mu   sync.Mutex
	seen []seenRequest
}

type seenRequest struct {
	Method, Path string
	Header       http.Header
	BodyLen      int
}

func startBackend(t testing.TB, cfg *http.HTTP2Config) *backend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &backend{addr: ln.Addr().String()}
	srv := &http.Server{Handler: http.HandlerFunc(b.serveHTTP), Protocols: h2cProtocols(), HTTP2: cfg}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	return b
}

func (b *backend) serveHTTP(w http.ResponseWriter, r *http.Request) {
	n, err := io.Copy(io.Discard, r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	b.mu.Lock()
	b.seen = append(b.seen, seenRequest{Method: r.Method, Path: r.URL.RequestURI(), Header: r.Header.Clone(), BodyLen: int(n)})
	b.mu.Unlock()
	w.Header().Set("X-Path", r.URL.RequestURI())
	w.Header().Set("X-Custom-Response", "same value every time")
	switch {
	case strings.HasPrefix(r.URL.Path, "/download/"):
		var size int
		fmt.Sscanf(strings.TrimPrefix(r.URL.Path, "/download/"), "%d", &size)
		chunk := bytes.Repeat([]byte("d"), 32<<10)
		for size > 0 {
			k := min(size, len(chunk))
			if _, err := w.Write(chunk[:k]); err != nil {
				return
			}
			size -= k
		}
	case r.URL.Path == "/bighead":
		// Larger than a frame: sent as HEADERS + CONTINUATION.
		w.Header().Set("X-Big", strings.Repeat("h", 50000))
		fmt.Fprint(w, "big")
	case r.URL.Path == "/status/204":
		w.WriteHeader(http.StatusNoContent)
	default:
		fmt.Fprintf(w, "ok %s %s %d", r.Method, r.URL.RequestURI(), n)
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

// h2cClient returns a net/http client speaking prior-knowledge h2c.
func h2cClient(cfg *http.HTTP2Config) *http.Client {
	return &http.Client{
		Transport: &http.Transport{Protocols: h2cProtocols(), HTTP2: cfg},
		Timeout:   60 * time.Second,
	}
}

// checkDenied asserts resp is the proxy's well-formed 403.
func checkDenied(t testing.TB, resp *http.Response, body string, head bool) {
	t.Helper()
	if resp.StatusCode != l7.DeniedStatus || resp.ProtoMajor != 2 {
		t.Fatalf("status %d %s, want 403 over HTTP/2", resp.StatusCode, resp.Proto)
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

// do runs one request and returns the response and its body.
func do(t testing.TB, client *http.Client, method, url string, body io.Reader) (*http.Response, string, error) {
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		return nil, "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp, string(b), err
}
