package http1

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/palisade-net/palisade/pkg/l7"
	"github.com/palisade-net/palisade/pkg/l7/internal/l7test"
)

// testPolicy is the policy the stub judge's verdicts name.
const testPolicy = "L7Policy test/web"

// newJudge returns a stub judge denying paths (and CONNECT authorities)
// with one of the prefixes in deny.
func newJudge(deny ...string) *l7test.Judge {
	return &l7test.Judge{Policy: testPolicy, Deny: deny}
}

// startProxy runs Serve for every connection accepted on a loopback
// listener, towards backendAddr.
func startProxy(t *testing.T, judge l7.Judge, backendAddr string) *l7test.Proxy {
	t.Helper()
	p := l7test.StartProxy(t, Serve, judge, backendAddr)
	p.Wait = 5 * time.Second
	return p
}

// backend is an httptest server that records what it receives and
// answers by path.
type backend struct {
	*httptest.Server
	l7test.Backend
}

func startBackend(t *testing.T) *backend {
	t.Helper()
	return startBackendWith(t, func(*http.Server) {})
}

// startBackendWith starts a backend after configure adjusted its server.
func startBackendWith(t *testing.T, configure func(*http.Server)) *backend {
	t.Helper()
	b := &backend{}
	b.Respond = respond
	b.Server = httptest.NewUnstartedServer(&b.Backend)
	configure(b.Config)
	b.Start()
	t.Cleanup(b.Close)
	return b
}

// respond answers the backend's requests by path.
func respond(w http.ResponseWriter, r *http.Request, body []byte) {
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

// rawConn is a raw client connection to the proxy.
type rawConn struct {
	net.Conn
	br *bufio.Reader
}

func dialRaw(t *testing.T, addr string) *rawConn {
	t.Helper()
	c := l7test.Dial(t, addr)
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
