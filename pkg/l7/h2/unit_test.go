package h2

import (
	"net"
	"strings"
	"testing"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/palisade-net/palisade/pkg/l7"
	"github.com/palisade-net/palisade/pkg/l7/internal/l7test"
)

func fields(kv ...string) []hpack.HeaderField {
	var fs []hpack.HeaderField
	for i := 0; i < len(kv); i += 2 {
		fs = append(fs, hpack.HeaderField{Name: kv[i], Value: kv[i+1]})
	}
	return fs
}

// TestParseRequest checks what the rules see of a request and which
// requests are malformed.
func TestParseRequest(t *testing.T) {
	tests := []struct {
		name           string
		fields         []hpack.HeaderField
		method, path   string
		host, why      string
		header, hvalue string
	}{
		{"plain", fields(":method", "GET", ":scheme", "http", ":path", "/a?b", ":authority", "shop", "x-custom", "v"), "GET", "/a?b", "shop", "", "X-Custom", "v"},
		{"host header only", fields(":method", "GET", ":scheme", "http", ":path", "/", "host", "shop"), "GET", "/", "shop", "", "", ""},
		{"grpc", fields(":method", "POST", ":scheme", "http", ":path", "/pkg.Svc/M", ":authority", "a", "content-type", "application/grpc"), "POST", "/pkg.Svc/M", "a", "", "Content-Type", "application/grpc"},
		{"connect", fields(":method", "CONNECT", ":authority", "db:5432"), "CONNECT", "", "db:5432", "", "", ""},
		{"extended connect", fields(":method", "CONNECT", ":protocol", "websocket", ":scheme", "http", ":path", "/ws", ":authority", "a"), "CONNECT", "/ws", "a", "", "", ""},
		{"options *", fields(":method", "OPTIONS", ":scheme", "http", ":path", "*", ":authority", "a"), "OPTIONS", "*", "a", "", "", ""},
		{"no method", fields(":scheme", "http", ":path", "/"), "", "", "", "missing :method", "", ""},
		{"no path", fields(":method", "GET", ":scheme", "http"), "", "", "", "missing :scheme or :path", "", ""},
		{"connect with path", fields(":method", "CONNECT", ":path", "/", ":authority", "a"), "", "", "", "CONNECT needs", "", ""},
		{"relative path", fields(":method", "GET", ":scheme", "http", ":path", "a"), "", "", "", "bad :path", "", ""},
		{"transfer-encoding", fields(":method", "GET", ":scheme", "http", ":path", "/", "transfer-encoding", "chunked"), "", "", "", "connection-specific", "", ""},
		{"te gzip", fields(":method", "GET", ":scheme", "http", ":path", "/", "te", "gzip"), "", "", "", "te other than trailers", "", ""},
		{"host mismatch", fields(":method", "GET", ":scheme", "http", ":path", "/", ":authority", "a", "host", "b"), "", "", "", "disagrees", "", ""},
		{"protocol without connect", fields(":method", "GET", ":protocol", "x", ":scheme", "http", ":path", "/"), "", "", "", ":protocol outside", "", ""},
	}
	for _, tt := range tests {
		r, why := parseRequest(tt.fields)
		if tt.why != "" {
			if !strings.Contains(why, tt.why) {
				t.Errorf("%s: reason %q, want %q", tt.name, why, tt.why)
			}
			continue
		}
		if why != "" || r.Method != tt.method || r.Path != tt.path || r.Host != tt.host {
			t.Errorf("%s: %q %+v", tt.name, why, r)
			continue
		}
		if tt.header != "" && r.Header.Get(tt.header) != tt.hvalue {
			t.Errorf("%s: %s = %q", tt.name, tt.header, r.Header.Get(tt.header))
		}
	}
}

// TestApplyEdits checks the header edit semantics.
func TestApplyEdits(t *testing.T) {
	in := fields(":method", "GET", "x-a", "1", "x-b", "1", "x-b", "2", "x-c", "1")
	out := applyEdits(in, []l7.HeaderEdit{
		{Action: l7.HeaderAdd, Name: "X-New", Value: "n"},
		{Action: l7.HeaderDelete, Name: "X-A"},
		{Action: l7.HeaderReplace, Name: "x-b", Value: "r"},
		{Action: l7.HeaderReplace, Name: "x-missing", Value: "m"},
	})
	var got []string
	for _, f := range out {
		got = append(got, f.Name+"="+f.Value)
	}
	want := ":method=GET x-b=r x-c=1 x-new=n x-missing=m"
	if strings.Join(got, " ") != want {
		t.Fatalf("got %q, want %q", strings.Join(got, " "), want)
	}
	for _, e := range []l7.HeaderEdit{
		{Action: l7.HeaderAdd, Name: ":path", Value: "/x"},
		{Action: l7.HeaderAdd, Name: "x", Value: "a\r\nb"},
		{Action: l7.HeaderReplace, Name: "Content-Length", Value: "1"},
		{Action: l7.HeaderAdd, Name: "Connection", Value: "close"},
		{Action: "LOG", Name: "x"},
	} {
		if checkEdit(e) == "" {
			t.Errorf("edit %+v accepted", e)
		}
	}
}

// TestDenyResponses decodes the denial blocks and checks that they use
// no HPACK indexing.
func TestDenyResponses(t *testing.T) {
	v := l7.Verdict{Policy: "L7Policy shop/api", Rule: "spec.ingress[0]", Reason: "method \"Delete\" 100% denied\n"}
	grpcReq := &l7.HTTPRequest{Method: "POST", Path: "/pkg.Svc/Delete", Header: map[string][]string{"Content-Type": {"application/grpc"}}}
	d := denyResponse(grpcReq, v)
	if d.body != nil {
		t.Fatal("gRPC denial has a body")
	}
	got := decodeBlock(t, d.block)
	want := map[string]string{":status": "200", "content-type": "application/grpc", "grpc-status": "7",
		"grpc-message": "access denied: method \"Delete\" 100%25 denied%0A (policy L7Policy shop/api, rule spec.ingress[0])"}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("%s = %q, want %q", k, got[k], w)
		}
	}
	d = denyResponse(&l7.HTTPRequest{Method: "GET", Path: "/"}, l7.Verdict{})
	got = decodeBlock(t, d.block)
	if got[":status"] != "403" || got["content-type"] != "text/plain" || got["content-length"] != "15" || string(d.body) != l7.DeniedBody {
		t.Fatalf("403 denial %v %q", got, d.body)
	}
	if d := denyResponse(&l7.HTTPRequest{Method: "HEAD", Path: "/"}, l7.Verdict{}); d.body != nil {
		t.Fatal("HEAD denial has a body")
	}
}

// decodeBlock decodes an injected block and fails if any field was not
// sent as a never-indexed literal.
func decodeBlock(t *testing.T, block []byte) map[string]string {
	t.Helper()
	got := map[string]string{}
	dec := hpack.NewDecoder(4096, func(f hpack.HeaderField) {
		if !f.Sensitive {
			t.Errorf("field %s is not a never-indexed literal", f.Name)
		}
		got[f.Name] = f.Value
	})
	if _, err := dec.Write(block); err != nil {
		t.Fatal(err)
	}
	if err := dec.Close(); err != nil {
		t.Fatal(err)
	}
	// A second decode of the same block with the same decoder must give
	// the same result: nothing was added to the dynamic table.
	if _, err := dec.Write(block); err != nil {
		t.Fatal(err)
	}
	return got
}

// TestContextCancel checks that ending ctx ends Serve with ctx's error.
func TestContextCancel(t *testing.T) {
	b := startBackend(t, nil)
	cl, srv := net.Pipe()
	be, err := net.Dial("tcp", b.addr)
	if err != nil {
		t.Fatal(err)
	}
	l7test.ExpectCanceled(t, Serve, srv, be, &l7.Session{Judge: newJudge()}, func() {
		go func() {
			buf := make([]byte, 4096)
			for {
				if _, err := cl.Read(buf); err != nil {
					return
				}
			}
		}()
		fr := http2.NewFramer(cl, nil)
		_, _ = cl.Write([]byte(http2.ClientPreface))
		_ = fr.WriteSettings()
	})
}
