package h2

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/palisade-net/palisade/pkg/l7"
	"github.com/palisade-net/palisade/pkg/l7/internal/l7test"
)

// testPolicy is the policy the stub judge's verdicts name.
const testPolicy = "L7Policy test/api"

// newJudge returns a stub judge denying paths with one of the prefixes
// in deny.
func newJudge(deny ...string) *l7test.Judge {
	return &l7test.Judge{Policy: testPolicy, Deny: deny}
}

// startProxy runs Serve for every connection accepted on a loopback
// listener, towards backendAddr.
func startProxy(t testing.TB, judge l7.Judge, backendAddr string) *l7test.Proxy {
	t.Helper()
	return l7test.StartProxy(t, Serve, judge, backendAddr)
}

func h2cProtocols() *http.Protocols {
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	return &p
}

// backend is an h2c net/http server that records what it receives.
type backend struct {
	l7test.Backend
	addr string
}

func startBackend(t testing.TB, cfg *http.HTTP2Config) *backend {
	t.Helper()
	b := &backend{}
	b.Respond = respond
	b.addr = l7test.StartServer(t, &http.Server{Handler: &b.Backend, Protocols: h2cProtocols(), HTTP2: cfg})
	return b
}

// respond answers the backend's requests by path.
func respond(w http.ResponseWriter, r *http.Request, body []byte) {
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
		fmt.Fprintf(w, "ok %s %s %d", r.Method, r.URL.RequestURI(), len(body))
	}
}

// h2cClient returns a net/http client speaking prior-knowledge h2c.
func h2cClient(cfg *http.HTTP2Config) *http.Client {
	return &http.Client{
		Transport: &http.Transport{Protocols: h2cProtocols(), HTTP2: cfg},
		Timeout:   60 * time.Second,
	}
}

// checkDenied asserts resp is the proxy's well-formed 403, over HTTP/2.
func checkDenied(t testing.TB, resp *http.Response, body string, head bool) {
	t.Helper()
	if resp.StatusCode != l7.DeniedStatus || resp.ProtoMajor != 2 {
		t.Fatalf("status %d %s, want 403 over HTTP/2", resp.StatusCode, resp.Proto)
	}
	l7test.CheckDenied(t, resp, body, head)
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
