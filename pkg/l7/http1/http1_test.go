package http1

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"strings"
	"testing"
	"time"

	"github.com/palisade-net/palisade/pkg/l7"
	"github.com/palisade-net/palisade/pkg/l7/internal/l7test"
)

func newClient() *http.Client {
	return &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1, ExpectContinueTimeout: 5 * time.Second}}
}

// get runs one request through client and returns status, body and
// whether the connection was reused.
func do(t *testing.T, client *http.Client, req *http.Request) (*http.Response, string, bool) {
	t.Helper()
	reused := false
	req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
		GotConn: func(i httptrace.GotConnInfo) { reused = i.Reused },
	}))
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(body), reused
}

func newRequest(t *testing.T, method, url string, body io.Reader) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

// TestKeepAlive runs allowed and denied requests, with and without
// bodies, over one kept-alive connection of a net/http client.
func TestKeepAlive(t *testing.T) {
	b := startBackend(t)
	p := startProxy(t, newJudge("/deny"), b.Listener.Addr().String())
	client := newClient()
	base := "http://" + p.Addr
	tests := []struct {
		method, path, body string
		status             int
	}{
		{"GET", "/ok", "", 200},
		{"GET", "/deny/a", "", 403},
		{"POST", "/deny/upload", strings.Repeat("x", 100000), 403},
		{"POST", "/upload", strings.Repeat("y", 100000), 200},
		{"HEAD", "/deny/head", "", 403},
		{"HEAD", "/ok", "", 200},
		{"PUT", "/deny/put", "small", 403},
		{"GET", "/ok?q=1", "", 200},
	}
	for i, tt := range tests {
		var body io.Reader
		if tt.body != "" {
			body = strings.NewReader(tt.body)
		}
		resp, got, reused := do(t, client, newRequest(t, tt.method, base+tt.path, body))
		if resp.StatusCode != tt.status {
			t.Fatalf("%s %s: status %d, want %d", tt.method, tt.path, resp.StatusCode, tt.status)
		}
		if tt.status == 403 {
			l7test.CheckDenied(t, resp, got, tt.method == "HEAD")
		}
		if i > 0 && !reused {
			t.Fatalf("%s %s: connection not reused", tt.method, tt.path)
		}
	}
	if p.AcceptedConns() != 1 {
		t.Fatalf("%d connections, want 1", p.AcceptedConns())
	}
	if b.SawPrefix("/deny") {
		t.Fatal("a denied request reached the backend")
	}
	seen := b.Requests()
	if len(seen) != 4 || seen[1].Body != tests[3].body {
		t.Fatalf("backend saw %d requests (upload body %d bytes)", len(seen), len(seen[1].Body))
	}
	recs := p.Recorded()
	if len(recs) != len(tests) {
		t.Fatalf("%d records, want %d", len(recs), len(tests))
	}
	for i, r := range recs {
		if r.Protocol != "http/1.1" || r.HTTP == nil || r.HTTP.Status != tests[i].status ||
			r.HTTP.Method != tests[i].method || r.Verdict.Allow != (tests[i].status != 403) {
			t.Fatalf("record %d = %+v %+v", i, r, r.HTTP)
		}
		if r.HTTP.Host != p.Addr || r.Duration <= 0 {
			t.Fatalf("record %d host %q duration %v", i, r.HTTP.Host, r.Duration)
		}
		if !r.Verdict.Allow && r.Verdict.Reason == "" {
			t.Fatalf("record %d has no reason", i)
		}
	}
}

// TestPipelining writes requests back to back and checks that responses
// come in request order, denials included, even when an earlier response
// is slow.
func TestPipelining(t *testing.T) {
	b := startBackend(t)
	p := startProxy(t, newJudge("/deny"), b.Listener.Addr().String())
	c := dialRaw(t, p.Addr)
	c.send(t, "GET /slow HTTP/1.1\r\nHost: a\r\n\r\n"+
		"POST /deny/1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"+
		"POST /chunk HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n"+
		"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-T: v\r\n\r\n"+
		"HEAD /head HTTP/1.1\r\nHost: a\r\n\r\n"+
		"GET /deny/2 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nz\r\n0\r\n\r\n"+
		"GET /status/204 HTTP/1.1\r\nHost: a\r\n\r\n"+
		"GET /chunked HTTP/1.1\r\nHost: a\r\n\r\n"+
		"GET /last HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
	want := []struct {
		method, path string
		status       int
		body         string
	}{
		{"GET", "/slow", 200, "slow"},
		{"POST", "/deny/1", 403, l7.DeniedBody},
		{"POST", "/chunk", 200, "ok POST /chunk 5"},
		{"HEAD", "/head", 200, ""},
		{"GET", "/deny/2", 403, l7.DeniedBody},
		{"GET", "/status/204", 204, ""},
		{"GET", "/chunked", 200, "part0;part1;part2;"},
		{"GET", "/last", 200, "ok GET /last 0"},
	}
	for _, w := range want {
		resp, body := c.response(t, w.method)
		if resp.StatusCode != w.status || body != w.body {
			t.Fatalf("%s: got %d %q, want %d %q", w.path, resp.StatusCode, body, w.status, w.body)
		}
		if w.status != 403 && resp.Header.Get("X-Path") != w.path {
			t.Fatalf("response for %s came for %s", w.path, resp.Header.Get("X-Path"))
		}
		if w.path == "/chunked" && resp.Trailer.Get("X-Sum") != "3" {
			t.Fatalf("trailer lost: %v", resp.Trailer)
		}
	}
	c.expectClosed(t)
	if err := p.NextErr(t); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	for _, r := range b.Requests() {
		if r.Path == "/chunk" && (r.Body != "abcde" || r.Trailer.Get("X-T") != "v") {
			t.Fatalf("chunked request arrived as %q trailer %v", r.Body, r.Trailer)
		}
	}
	if b.SawPrefix("/deny") {
		t.Fatal("a denied request reached the backend")
	}
}

// TestChunkedNetHTTP streams a request body of unknown length (chunked by
// net/http) and reads a chunked response with trailers.
func TestChunkedNetHTTP(t *testing.T) {
	b := startBackend(t)
	p := startProxy(t, newJudge(), b.Listener.Addr().String())
	pr, pw := io.Pipe()
	go func() {
		for i := range 50 {
			_, _ = pw.Write(bytes.Repeat([]byte{byte('a' + i%26)}, 1000))
		}
		pw.Close()
	}()
	resp, body, _ := do(t, newClient(), newRequest(t, "POST", "http://"+p.Addr+"/stream", pr))
	if resp.StatusCode != 200 || body != "ok POST /stream 50000" {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
	resp, body, _ = do(t, newClient(), newRequest(t, "GET", "http://"+p.Addr+"/chunked", nil))
	if body != "part0;part1;part2;" || resp.Trailer.Get("X-Sum") != "3" {
		t.Fatalf("got %q trailer %v", body, resp.Trailer)
	}
}

// TestExpectContinue checks that allowed requests with Expect:
// 100-continue get their body through after the backend's 100, and
// denied ones get 403 at once, their body never reaching the backend, on
// a connection that stays usable.
func TestExpectContinue(t *testing.T) {
	b := startBackend(t)
	p := startProxy(t, newJudge("/deny"), b.Listener.Addr().String())
	client := newClient() // ExpectContinueTimeout 5s
	body := strings.Repeat("z", 50000)
	tests := []struct {
		path   string
		status int
	}{
		{"/upload", 200},
		{"/deny/upload", 403},
		{"/unauthorized", 401}, // backend answers without 100
		{"/upload2", 200},
	}
	for i, tt := range tests {
		req := newRequest(t, "POST", "http://"+p.Addr+tt.path, strings.NewReader(body))
		req.Header.Set("Expect", "100-continue")
		start := time.Now()
		resp, got, reused := do(t, client, req)
		if resp.StatusCode != tt.status {
			t.Fatalf("%s: status %d", tt.path, resp.StatusCode)
		}
		if time.Since(start) > 3*time.Second {
			t.Fatalf("%s: took %v: the client waited for ExpectContinueTimeout", tt.path, time.Since(start))
		}
		if tt.status == 403 {
			l7test.CheckDenied(t, resp, got, false)
		}
		if i > 0 && !reused {
			t.Fatalf("%s: connection not reused", tt.path)
		}
	}
	var sawExpect bool
	for _, r := range b.Requests() {
		if r.Path == "/upload" {
			sawExpect = r.Body == body
		}
	}
	if !sawExpect {
		t.Fatal("allowed Expect request lost its body")
	}
	if b.SawPrefix("/deny") {
		t.Fatal("denied request reached the backend")
	}
}

// TestNoBodyResponses checks framing of responses without a body: HEAD
// (with a Content-Length), 204, 304, followed by more requests.
func TestNoBodyResponses(t *testing.T) {
	b := startBackend(t)
	p := startProxy(t, newJudge(), b.Listener.Addr().String())
	c := dialRaw(t, p.Addr)
	c.send(t, "HEAD /x HTTP/1.1\r\nHost: a\r\n\r\n"+
		"GET /status/204 HTTP/1.1\r\nHost: a\r\n\r\n"+
		"GET /status/304 HTTP/1.1\r\nHost: a\r\n\r\n"+
		"GET /y HTTP/1.1\r\nHost: a\r\n\r\n")
	for _, w := range []struct {
		method string
		status int
		body   string
	}{{"HEAD", 200, ""}, {"GET", 204, ""}, {"GET", 304, ""}, {"GET", 200, "ok GET /y 0"}} {
		resp, body := c.response(t, w.method)
		if resp.StatusCode != w.status || body != w.body {
			t.Fatalf("got %d %q, want %d %q", resp.StatusCode, body, w.status, w.body)
		}
		if w.method == "HEAD" && resp.ContentLength != int64(len("ok HEAD /x 0")) {
			t.Fatalf("HEAD Content-Length %d", resp.ContentLength)
		}
	}
}

// TestHeaderEdits checks that a verdict's edits are what the backend
// sees, that protected headers cannot be edited, and that everything
// else arrives as the client wrote it.
func TestHeaderEdits(t *testing.T) {
	b := startBackend(t)
	judge := &l7test.Judge{Policy: testPolicy, Edits: map[string][]l7.HeaderEdit{"/edit": {
		{Action: l7.HeaderAdd, Name: "X-Added", Value: "yes"},
		{Action: l7.HeaderDelete, Name: "x-secret"},
		{Action: l7.HeaderReplace, Name: "X-Replace", Value: "new"},
		{Action: l7.HeaderReplace, Name: "X-Missing", Value: "set"},
		{Action: l7.HeaderReplace, Name: "Content-Length", Value: "0"},
		{Action: l7.HeaderAdd, Name: "X-Inject", Value: "a\r\nX-Evil: 1"},
	}}}
	p := startProxy(t, judge, b.Listener.Addr().String())
	c := dialRaw(t, p.Addr)
	c.send(t, "POST /edit HTTP/1.1\r\nHost: a\r\nX-Secret: 1\r\nx-secret: 2\r\nX-Replace: old\r\nX-Replace: old2\r\nX-Keep: k\r\nContent-Length: 3\r\n\r\nabc")
	resp, body := c.response(t, "POST")
	if resp.StatusCode != 200 || body != "ok POST /edit 3" {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
	h := b.Requests()[0].Header
	checks := map[string][]string{
		"X-Added": {"yes"}, "X-Secret": nil, "X-Replace": {"new"}, "X-Missing": {"set"},
		"X-Keep": {"k"}, "X-Inject": nil, "X-Evil": nil,
	}
	for k, want := range checks {
		if got := h.Values(k); strings.Join(got, ",") != strings.Join(want, ",") {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	if !strings.Contains(p.Logs.String(), "header edit skipped") {
		t.Error("skipped edits not logged")
	}
}

// TestUpgrade checks that upgrades and CONNECT are refused unless
// allowed, that an allowed one becomes a tunnel after 101 / 200, and that
// an h2c upgrade offer is removed so the request stays on HTTP/1.1.
func TestUpgrade(t *testing.T) {
	// A raw backend: 101 to /ws then echo; 200 to CONNECT then echo;
	// anything else gets a response listing its Upgrade header.
	ln := l7test.Listen(t)
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go rawBackend(c)
		}
	}()
	p := startProxy(t, newJudge("/deny", "evil:"), ln.Addr().String())

	t.Run("denied upgrade keeps connection", func(t *testing.T) {
		c := dialRaw(t, p.Addr)
		c.send(t, "GET /deny/ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
		resp, body := c.response(t, "GET")
		l7test.CheckDenied(t, resp, body, false)
		c.send(t, "GET /plain HTTP/1.1\r\nHost: a\r\n\r\n")
		if resp, body := c.response(t, "GET"); resp.StatusCode != 200 || body != "upgrade=" {
			t.Fatalf("after refusal: %d %q", resp.StatusCode, body)
		}
		if !strings.Contains(p.Logs.String(), "upgrade refused") {
			t.Fatal("refusal not logged")
		}
	})
	t.Run("allowed websocket becomes a tunnel", func(t *testing.T) {
		c := dialRaw(t, p.Addr)
		c.send(t, "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
		resp := c.responseHead(t, "GET")
		if resp.StatusCode != 101 {
			t.Fatalf("status %d", resp.StatusCode)
		}
		c.send(t, "GET /deny/not-http-anymore HTTP/1.1\r\n\r\n")
		buf := make([]byte, len("GET /deny/not-http-anymore HTTP/1.1\r\n\r\n"))
		if _, err := io.ReadFull(c.br, buf); err != nil || !strings.HasPrefix(string(buf), "GET /deny") {
			t.Fatalf("echo %q %v", buf, err)
		}
	})
	t.Run("denied CONNECT keeps connection", func(t *testing.T) {
		c := dialRaw(t, p.Addr)
		c.send(t, "CONNECT evil:443 HTTP/1.1\r\nHost: evil:443\r\n\r\n")
		resp, body := c.response(t, "CONNECT")
		l7test.CheckDenied(t, resp, body, false)
		c.send(t, "GET /plain HTTP/1.1\r\nHost: a\r\n\r\n")
		if resp, _ := c.response(t, "GET"); resp.StatusCode != 200 {
			t.Fatalf("after refusal: %d", resp.StatusCode)
		}
	})
	t.Run("allowed CONNECT becomes a tunnel", func(t *testing.T) {
		c := dialRaw(t, p.Addr)
		c.send(t, "CONNECT good:443 HTTP/1.1\r\nHost: good:443\r\n\r\n")
		if resp := c.responseHead(t, "CONNECT"); resp.StatusCode != 200 {
			t.Fatalf("status %d", resp.StatusCode)
		}
		c.send(t, "\x16\x03\x01hello")
		buf := make([]byte, 8)
		if _, err := io.ReadFull(c.br, buf); err != nil || string(buf) != "\x16\x03\x01hello" {
			t.Fatalf("echo %q %v", buf, err)
		}
	})
	t.Run("h2c upgrade offer is removed", func(t *testing.T) {
		c := dialRaw(t, p.Addr)
		c.send(t, "GET /h2c HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n")
		resp, body := c.response(t, "GET")
		if resp.StatusCode != 200 || body != "upgrade=" {
			t.Fatalf("got %d %q", resp.StatusCode, body)
		}
		if resp.Header.Get("X-Connection") != "" || resp.Header.Get("X-Settings") != "" {
			t.Fatalf("backend still saw Connection %q HTTP2-Settings %q", resp.Header.Get("X-Connection"), resp.Header.Get("X-Settings"))
		}
	})
}

// rawBackend serves one connection for TestUpgrade.
func rawBackend(c net.Conn) {
	defer c.Close()
	br := bufioReader(c)
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		_, _ = io.Copy(io.Discard, req.Body)
		switch {
		case req.Header.Get("Upgrade") == "websocket":
			_, _ = io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
			_, _ = io.Copy(c, br)
			return
		case req.Method == http.MethodConnect:
			_, _ = io.WriteString(c, "HTTP/1.1 200 Connection Established\r\n\r\n")
			_, _ = io.Copy(c, br)
			return
		}
		body := "upgrade=" + req.Header.Get("Upgrade")
		resp := "HTTP/1.1 200 OK\r\nContent-Length: " + itoa(len(body)) +
			"\r\nX-Connection: " + req.Header.Get("Connection") +
			"\r\nX-Settings: " + req.Header.Get("Http2-Settings") + "\r\n\r\n" + body
		if _, err := io.WriteString(c, resp); err != nil {
			return
		}
	}
}

// TestMalformed sends bad input: each case gets a 400 (when it can) and
// its connection closed with the reason logged and returned, and the
// next connection works.
func TestMalformed(t *testing.T) {
	b := startBackend(t)
	p := startProxy(t, newJudge("/deny"), b.Listener.Addr().String())
	big := "GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + strings.Repeat("b", 70<<10) + "\r\n\r\n"
	tests := []struct {
		name, input string
		status      int // 0: closed without a response
		reason      string
	}{
		{"bad request line", "GARBAGE\r\n\r\n", 400, "bad request line"},
		{"bad version", "GET / HTTP/2.0\r\nHost: a\r\n\r\n", 400, "unsupported HTTP version"},
		{"space in target", "GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", 400, "unsupported HTTP version"},
		{"bad header", "GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n", 400, "without a field name"},
		{"space before colon", "GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n", 400, "invalid character in a field name"},
		{"obs-fold", "GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", 400, "obsolete line folding"},
		{"bare CR", "GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n", 400, "bare CR"},
		{"NUL in value", "GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n", 400, "invalid character in a field value"},
		{"conflicting Content-Length", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello", 400, "conflicting Content-Length"},
		{"Content-Length list", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\nhello", 400, "conflicting Content-Length"},
		{"negative Content-Length", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400, "Content-Length"},
		{"CL and TE", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "both Content-Length and Transfer-Encoding"},
		{"TE not chunked", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 400, "does not end in a single chunked"},
		{"TE chunked twice", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", 400, "does not end in a single chunked"},
		{"TE chunked not last", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n", 400, "does not end in a single chunked"},
		{"TE obfuscated", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", 400, "does not end in a single chunked"},
		{"underscore Content-Length", "POST / HTTP/1.1\r\nHost: a\r\nContent_Length: 5\r\n\r\nhello", 400, "underscore variant"},
		{"TE in HTTP/1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "HTTP/1.0"},
		{"missing Host", "GET / HTTP/1.1\r\n\r\n", 400, "missing Host"},
		{"two Hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "more than one Host"},
		{"absolute-form host mismatch", "GET http://evil/deny HTTP/1.1\r\nHost: good\r\n\r\n", 400, "disagrees"},
		{"CONNECT with body", "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\nContent-Length: 3\r\n\r\nabc", 400, "CONNECT with a body"},
		{"oversized head", big, 400, "head larger than the limit"},
		{"bad chunk size", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 0, "bad chunk size"},
		{"chunk size with sign", "POST /deny HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n+5\r\nhello\r\n0\r\n\r\n", 403, "bad chunk size"},
		{"chunk data too long", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n", 0, "not followed by CRLF"},
		{"huge chunk size", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n", 0, "bad chunk size"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := dialRaw(t, p.Addr)
			c.send(t, tt.input)
			if tt.status != 0 {
				resp, body := c.response(t, "GET")
				if resp.StatusCode != tt.status {
					t.Fatalf("status %d %q, want %d", resp.StatusCode, body, tt.status)
				}
				if tt.status == 400 && !strings.Contains(body, tt.reason) {
					t.Fatalf("400 body %q does not say %q", body, tt.reason)
				}
			}
			c.expectClosed(t)
			p.ExpectMalformed(t, ErrMalformed, tt.reason)
			// The next connection is unaffected.
			c2 := dialRaw(t, p.Addr)
			c2.send(t, "GET /fine HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
			if resp, _ := c2.response(t, "GET"); resp.StatusCode != 200 {
				t.Fatalf("next connection: %d", resp.StatusCode)
			}
			c2.expectClosed(t)
			if err := p.NextErr(t); err != nil {
				t.Fatalf("next connection Serve: %v", err)
			}
		})
	}
	if b.SawPrefix("/deny") {
		t.Fatal("a denied request reached the backend")
	}
}

// TestBackendIdleClose checks that a backend closing a kept-alive
// connection closes the client's, and Serve reports a clean end.
func TestBackendIdleClose(t *testing.T) {
	b := startBackendWith(t, func(s *http.Server) { s.IdleTimeout = 100 * time.Millisecond })
	p := startProxy(t, newJudge(), b.Listener.Addr().String())
	c := dialRaw(t, p.Addr)
	c.send(t, "GET /a HTTP/1.1\r\nHost: a\r\n\r\n")
	if resp, _ := c.response(t, "GET"); resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	c.expectClosed(t)
	if err := p.NextErr(t); err != nil {
		t.Fatalf("Serve: %v", err)
	}
}

// TestBadResponse checks that a malformed backend response gives the
// client a 502 and closes the connection.
func TestBadResponse(t *testing.T) {
	ln := l7test.Listen(t)
	t.Cleanup(func() { ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = http.ReadRequest(bufioReader(c))
		_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab")
		time.Sleep(time.Second)
	}()
	p := startProxy(t, newJudge(), ln.Addr().String())
	c := dialRaw(t, p.Addr)
	c.send(t, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	if resp, _ := c.response(t, "GET"); resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("status %d", resp.StatusCode)
	}
	c.expectClosed(t)
	if err := p.NextErr(t); !errors.Is(err, ErrMalformed) {
		t.Fatalf("Serve: %v", err)
	}
}

// TestContextCancel checks that ending ctx ends Serve with ctx's error.
func TestContextCancel(t *testing.T) {
	b := startBackend(t)
	cl, srv := net.Pipe()
	be, err := net.Dial("tcp", b.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	l7test.ExpectCanceled(t, Serve, srv, be, &l7.Session{Judge: newJudge()}, func() {
		go func() { _, _ = io.Copy(io.Discard, cl) }()
		_, _ = io.WriteString(cl, "GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
	})
}

// TestDeniedLargeBody checks that a denied request declaring a large body
// gets its 403 at once, without the proxy reading the body, and that the
// connection then closes.
func TestDeniedLargeBody(t *testing.T) {
	b := startBackend(t)
	p := startProxy(t, newJudge("/deny"), b.Listener.Addr().String())
	c := dialRaw(t, p.Addr)
	c.send(t, "POST /deny/big HTTP/1.1\r\nHost: a\r\nContent-Length: 5000000\r\n\r\nonly a little")
	resp, body := c.response(t, "POST")
	l7test.CheckDenied(t, resp, body, false)
	if !resp.Close {
		t.Fatal("403 to a large body does not close the connection")
	}
	c.expectClosed(t)
	if err := p.NextErr(t); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if len(b.Requests()) != 0 {
		t.Fatal("the backend saw a request")
	}
}

// TestRequestView checks what the rules see of a request.
func TestRequestView(t *testing.T) {
	tests := []struct {
		head             string
		method, path     string
		host             string
		header, notInHdr string
	}{
		{"GET /a?b=c HTTP/1.1\r\nHost: shop\r\nx-custom:  v \r\n\r\n", "GET", "/a?b=c", "shop", "X-Custom", "Host"},
		{"GET http://shop:8080/p%20q?x HTTP/1.1\r\nHost: shop:8080\r\n\r\n", "GET", "/p%20q?x", "shop:8080", "", "Host"},
		{"GET http://shop HTTP/1.1\r\nHost: shop\r\n\r\n", "GET", "/", "shop", "", ""},
		{"CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n\r\n", "CONNECT", "", "db:5432", "", ""},
		{"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", "OPTIONS", "*", "a", "", ""},
		{"GET / HTTP/1.0\r\n\r\n", "GET", "/", "", "", ""},
	}
	for _, tt := range tests {
		var r request
		if err := r.read(bufioReader(stringConn(tt.head)), maxRequestHead, true); err != nil {
			t.Fatalf("%q: %v", tt.head, err)
		}
		if err := r.parse(); err != nil {
			t.Fatalf("%q: %v", tt.head, err)
		}
		v := r.l7Request()
		if v.Method != tt.method || v.Path != tt.path || v.Host != tt.host {
			t.Errorf("%q: %s %q %q", tt.head, v.Method, v.Path, v.Host)
		}
		if tt.header != "" && v.Header.Get(tt.header) != "v" {
			t.Errorf("%q: header %s = %q", tt.head, tt.header, v.Header.Get(tt.header))
		}
		if tt.notInHdr != "" && len(v.Header.Values(tt.notInHdr)) > 0 {
			t.Errorf("%q: %s among the headers", tt.head, tt.notInHdr)
		}
	}
}

// TestChunkSize checks the chunk-size grammar.
func TestChunkSize(t *testing.T) {
	tests := []struct {
		in string
		n  int64
		ok bool
	}{
		{"0", 0, true}, {"1a", 26, true}, {"FF;name=value", 255, true}, {"5 ;ext", 5, true},
		{"", 0, false}, {"x", 0, false}, {"+5", 0, false}, {"0x5", 0, false}, {"5 ", 0, false},
		{"5 x", 0, false}, {"5;\x00", 0, false}, {"1000000000000000", 0, false}, {"fffffffffffffff", 1<<60 - 1, true},
	}
	for _, tt := range tests {
		n, ok := parseChunkSize([]byte(tt.in))
		if n != tt.n || ok != tt.ok {
			t.Errorf("%q: %d %v, want %d %v", tt.in, n, ok, tt.n, tt.ok)
		}
	}
}

// TestInterimResponses checks that 1xx responses are relayed before the
// final one, and framing continues after them.
func TestInterimResponses(t *testing.T) {
	b := startBackend(t)
	p := startProxy(t, newJudge(), b.Listener.Addr().String())
	c := dialRaw(t, p.Addr)
	c.send(t, "GET /early HTTP/1.1\r\nHost: a\r\n\r\nGET /next HTTP/1.1\r\nHost: a\r\n\r\n")
	hints := c.responseHead(t, "GET")
	if hints.StatusCode != http.StatusEarlyHints || hints.Header.Get("Link") == "" {
		t.Fatalf("interim %d %v", hints.StatusCode, hints.Header)
	}
	if resp, body := c.response(t, "GET"); resp.StatusCode != 200 || body != "after hints" {
		t.Fatalf("final %d %q", resp.StatusCode, body)
	}
	if resp, body := c.response(t, "GET"); resp.StatusCode != 200 || body != "ok GET /next 0" {
		t.Fatalf("next %d %q", resp.StatusCode, body)
	}
	recs := p.Recorded()
	if len(recs) != 2 || recs[0].HTTP.Status != 200 {
		t.Fatalf("records %+v", recs)
	}
}
