package http1

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/palisade-net/palisade/pkg/l7"
	"github.com/palisade-net/palisade/pkg/l7/internal/l7test"
)

// halfClosable is a client connection that can be half-closed, as
// TCP connections are.
type halfClosable struct{ *l7test.MemConn }

func (halfClosable) CloseWrite() error { return nil }

// fuzzBackend reads requests with net/http's parser and answers each; it
// reports every request whose path the stub judge denies.
func fuzzBackend(conn net.Conn, leaked func(string)) {
	defer conn.Close()
	br := bufio.NewReader(conn)
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		if strings.HasPrefix(req.URL.EscapedPath(), "/deny") || req.Method == http.MethodConnect && strings.HasPrefix(req.Host, "deny") {
			leaked(req.Method + " " + req.RequestURI)
		}
		if strings.HasPrefix(req.URL.EscapedPath(), "/edit") && req.Header.Get("X-Edited") != "yes" {
			leaked("edit not applied to " + req.RequestURI)
		}
		if _, err := io.Copy(io.Discard, req.Body); err != nil {
			return
		}
		resp := "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
		if req.Method == http.MethodHead {
			resp = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"
		}
		if _, err := io.WriteString(conn, resp); err != nil {
			return
		}
	}
}

// fuzzSeeds are client byte streams for FuzzHTTP1 (also checked in under
// testdata/fuzz/FuzzHTTP1).
func fuzzSeeds() []string {
	return []string{
		"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET /deny HTTP/1.1\r\nHost: a\r\n\r\nGET /ok HTTP/1.1\r\nHost: a\r\n\r\n",
		"POST /deny HTTP/1.1\r\nHost: a\r\nContent-Length: 36\r\n\r\nGET /deny HTTP/1.1\r\nHost: a\r\n\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nT: v\r\n\r\nGET /edit HTTP/1.1\r\nHost: a\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /deny HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET /deny HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
		"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
		"CONNECT deny:443 HTTP/1.1\r\nHost: deny:443\r\n\r\n",
		"GET http://a/deny HTTP/1.1\r\nHost: a\r\n\r\n",
		"HEAD / HTTP/1.1\r\nHost: a\r\n\r\nGET /deny HTTP/1.0\r\n\r\n",
		"GET / HTTP/1.1\nHost: a\n\n",
	}
}

// FuzzHTTP1 feeds arbitrary client bytes through Serve with a stub judge
// and a net/http backend: Serve must neither panic nor hang, and no
// request the judge denied may reach the backend (which parses the
// forwarded stream with net/http's own parser, so a framing disagreement
// that smuggles a request past the judge fails the target).
func FuzzHTTP1(f *testing.F) {
	for _, s := range fuzzSeeds() {
		f.Add([]byte(s))
	}
	judge := &l7test.Judge{Policy: testPolicy, Deny: []string{"/deny", "deny"}, Edits: map[string][]l7.HeaderEdit{
		"/edit": {{Action: l7.HeaderReplace, Name: "X-Edited", Value: "yes"}},
	}}
	f.Fuzz(func(t *testing.T, in []byte) {
		client := halfClosable{l7test.NewMemConn(in)}
		bc, bs := net.Pipe()
		var mu sync.Mutex
		var leaks []string
		done := make(chan struct{})
		go func() {
			fuzzBackend(bs, func(s string) { mu.Lock(); leaks = append(leaks, s); mu.Unlock() })
			close(done)
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		err := Serve(ctx, client, bc, &l7.Session{Judge: judge})
		if ctx.Err() != nil {
			t.Fatalf("Serve hung on %q: %v", in, err)
		}
		<-done
		if len(leaks) > 0 {
			t.Fatalf("denied request reached the backend: %q (input %q)", leaks, in)
		}
	})
}
