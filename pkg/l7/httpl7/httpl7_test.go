package httpl7

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/palisade-net/palisade/pkg/l7"
	"github.com/palisade-net/palisade/pkg/l7/internal/l7test"
)

// judge denies paths under /deny.
var judge = &l7test.Judge{Deny: []string{"/deny"}}

// setup starts a backend speaking HTTP/1.1 and h2c, answering with the
// protocol and path of each request, and a proxy running Serve in front
// of it.
func setup(t *testing.T) *l7test.Proxy {
	t.Helper()
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	backend := l7test.StartServer(t, &http.Server{Protocols: &protos, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s %s", r.Proto, r.URL.Path)
	})})
	return l7test.StartProxy(t, Serve, judge, backend)
}

// TestDispatch checks that HTTP/1.1 and h2c clients both reach the
// backend through the right inspector, denials included.
func TestDispatch(t *testing.T) {
	p := setup(t)
	var h2c http.Protocols
	h2c.SetUnencryptedHTTP2(true)
	clients := map[string]*http.Client{
		"HTTP/1.1": {Transport: &http.Transport{}},
		"HTTP/2.0": {Transport: &http.Transport{Protocols: &h2c}},
	}
	for proto, client := range clients {
		for _, path := range []string{"/ok", "/deny/x"} {
			resp, err := client.Get("http://" + p.Addr + path)
			if err != nil {
				t.Fatalf("%s %s: %v", proto, path, err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.Proto != proto {
				t.Fatalf("%s: response over %s", proto, resp.Proto)
			}
			want, status := proto+" "+path, 200
			if strings.HasPrefix(path, "/deny") {
				want, status = l7.DeniedBody, 403
			}
			if resp.StatusCode != status || string(body) != want {
				t.Fatalf("%s %s: %d %q", proto, path, resp.StatusCode, body)
			}
		}
	}
	protocols := map[string]int{}
	for _, r := range p.Recorded() {
		protocols[r.Protocol]++
	}
	if protocols["http/1.1"] != 2 || protocols["h2"] != 2 {
		t.Fatalf("records by protocol: %v", protocols)
	}
}

// TestSniffKeepsBytes sends the first bytes one at a time, including
// ones that start like the HTTP/2 preface, and checks nothing is lost.
func TestSniffKeepsBytes(t *testing.T) {
	p := setup(t)
	for _, req := range []string{
		"PUT /put HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
		"PRIX /weird HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
		"GET /get HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
	} {
		c, err := net.Dial("tcp", p.Addr)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 6; i++ {
			_, _ = c.Write([]byte{req[i]})
			time.Sleep(5 * time.Millisecond)
		}
		_, _ = io.WriteString(c, req[6:])
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("%q: %v", req, err)
		}
		body, _ := io.ReadAll(resp.Body)
		path := strings.Fields(req)[1]
		if resp.StatusCode != 200 || string(body) != "HTTP/1.1 "+path {
			t.Fatalf("%q: %d %q", req, resp.StatusCode, body)
		}
		c.Close()
		if err := p.NextErr(t); err != nil {
			t.Fatalf("Serve: %v", err)
		}
	}
}

// TestTLSRefused checks that a TLS handshake is refused with the reason.
func TestTLSRefused(t *testing.T) {
	p := setup(t)
	conn, err := tls.Dial("tcp", p.Addr, &tls.Config{InsecureSkipVerify: true, ServerName: "x"})
	if err == nil {
		conn.Close()
		t.Fatal("TLS handshake succeeded")
	}
	if err := p.NextErr(t); !errors.Is(err, ErrTLS) {
		t.Fatalf("Serve: %v", err)
	}
	if !strings.Contains(p.Logs.String(), "TLS inside the tunnel cannot be inspected") {
		t.Fatalf("reason not logged: %s", p.Logs.String())
	}
}

// TestQuietEnds checks connections that end before sending anything:
// the client closing, the backend closing, ctx ending.
func TestQuietEnds(t *testing.T) {
	t.Run("client closes", func(t *testing.T) {
		p := setup(t)
		c, err := net.Dial("tcp", p.Addr)
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
		if err := p.NextErr(t); err != nil {
			t.Fatalf("Serve: %v", err)
		}
	})
	t.Run("backend closes", func(t *testing.T) {
		cl, cs := net.Pipe()
		ln := l7test.Listen(t)
		defer ln.Close()
		bs, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- Serve(context.Background(), cs, bs, &l7.Session{Judge: judge}) }()
		bl, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		bl.Close() // the backend closes an idle connection
		_ = cl.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := cl.Read(make([]byte, 1)); !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrClosedPipe) {
			t.Fatalf("client read: %v", err)
		}
		if err := <-done; err != nil {
			t.Fatalf("Serve: %v", err)
		}
	})
	t.Run("context ends", func(t *testing.T) {
		_, cs := net.Pipe()
		_, bs := net.Pipe()
		l7test.ExpectCanceled(t, Serve, cs, bs, &l7.Session{Judge: judge}, nil)
	})
}

// TestSniff checks the decision table directly.
func TestSniff(t *testing.T) {
	tests := []struct {
		in   string
		want kind
		n    int
	}{
		{"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00", kindH2, 24},
		{"GET / HTTP/1.1\r\n", kindHTTP1, 1},
		{"PRI * HTTP/1.1\r\n", kindHTTP1, 12},
		{"\x16\x03\x01\x02\x00", kindTLS, 2},
		{"\x16x", kindHTTP1, 2},
	}
	for _, tt := range tests {
		k, head, _ := sniff(iotestOneByte(strings.NewReader(tt.in)))
		if k != tt.want || len(head) != tt.n || !strings.HasPrefix(tt.in, string(head)) {
			t.Errorf("%q: kind %v after %d bytes, want %v after %d", tt.in, k, len(head), tt.want, tt.n)
		}
	}
}

// iotestOneByte reads one byte at a time.
func iotestOneByte(r io.Reader) io.Reader {
	return readerFunc(func(p []byte) (int, error) { return r.Read(p[:min(1, len(p))]) })
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }
