package h2

import (
	"bytes"
	"io"
	"net"
	"strings"
	"testing"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/palisade-net/palisade/pkg/l7/internal/l7test"
)

// rawClient is a frame-level client of the proxy.
type rawClient struct {
	conn net.Conn
	fr   *http2.Framer
	enc  *hpack.Encoder
	buf  bytes.Buffer
}

func dialRaw(t *testing.T, addr string) *rawClient {
	t.Helper()
	c := l7test.Dial(t, addr)
	rc := &rawClient{conn: c, fr: http2.NewFramer(c, c)}
	rc.fr.AllowIllegalWrites = true
	rc.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	rc.enc = hpack.NewEncoder(&rc.buf)
	return rc
}

func (c *rawClient) write(t *testing.T, b []byte) {
	t.Helper()
	if _, err := c.conn.Write(b); err != nil {
		t.Fatal(err)
	}
}

// block HPACK-encodes alternating names and values.
func (c *rawClient) block(kv ...string) []byte {
	c.buf.Reset()
	for i := 0; i < len(kv); i += 2 {
		_ = c.enc.WriteField(hpack.HeaderField{Name: kv[i], Value: kv[i+1]})
	}
	return append([]byte(nil), c.buf.Bytes()...)
}

func (c *rawClient) start(t *testing.T) {
	t.Helper()
	c.write(t, []byte(http2.ClientPreface))
	if err := c.fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
}

// until reads frames until match returns true; it fails at EOF.
func (c *rawClient) until(t *testing.T, what string, match func(http2.Frame) bool) http2.Frame {
	t.Helper()
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			t.Fatalf("waiting for %s: %v", what, err)
		}
		if match(f) {
			return f
		}
	}
}

// expectClosed reads until the proxy closes the connection.
func (c *rawClient) expectClosed(t *testing.T) {
	t.Helper()
	_, err := io.Copy(io.Discard, c.conn)
	if err != nil && !strings.Contains(err.Error(), "reset") {
		t.Fatalf("connection not closed: %v", err)
	}
	c.conn.Close()
}

func frameBytes(typ http2.FrameType, flags http2.Flags, id uint32, payload []byte) []byte {
	var b bytes.Buffer
	fr := http2.NewFramer(&b, nil)
	fr.AllowIllegalWrites = true
	_ = fr.WriteRawFrame(typ, flags, id, payload)
	return b.Bytes()
}

// TestMalformed sends frame sequences that break HTTP/2: each gets a
// GOAWAY with the right code and its connection closed, the reason logged
// and returned; the next connection works.
func TestMalformed(t *testing.T) {
	b := startBackend(t, nil)
	p := startProxy(t, newJudge("/deny"), b.addr)
	preface := []byte(http2.ClientPreface)
	settings := frameBytes(http2.FrameSettings, 0, 0, nil)
	garbage := []byte{0xff, 0xff, 0xff, 0xff, 0x0f}
	var enc bytes.Buffer
	e := hpack.NewEncoder(&enc)
	for _, kv := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":path", "/"}, {":authority", "a"}} {
		_ = e.WriteField(hpack.HeaderField{Name: kv[0], Value: kv[1]})
	}
	validBlock := append([]byte(nil), enc.Bytes()...)
	join := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	huge := []byte{0x20, 0x00, 0x00, byte(http2.FrameData), 0, 0, 0, 0, 1} // length 2 MiB
	tests := []struct {
		name   string
		input  []byte
		code   http2.ErrCode
		reason string
	}{
		{"bad preface", []byte("PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n"), http2.ErrCodeProtocol, "bad client connection preface"},
		{"HTTP/1.1 instead", []byte("GET / HTTP/1.1\r\nHost: a\r\n\r\n"), http2.ErrCodeProtocol, "bad client connection preface"},
		{"first frame not SETTINGS", join(preface, frameBytes(http2.FramePing, 0, 0, make([]byte, 8))), http2.ErrCodeProtocol, "first frame is not SETTINGS"},
		{"invalid HPACK", join(preface, settings, frameBytes(http2.FrameHeaders, http2.FlagHeadersEndHeaders, 1, garbage)), http2.ErrCodeCompression, "COMPRESSION_ERROR"},
		{"DATA on stream 0", join(preface, settings, frameBytes(http2.FrameData, 0, 0, []byte("x"))), http2.ErrCodeProtocol, "DATA frame with stream ID 0"},
		{"CONTINUATION without HEADERS", join(preface, settings, frameBytes(http2.FrameContinuation, http2.FlagContinuationEndHeaders, 1, validBlock)), http2.ErrCodeProtocol, "unexpected CONTINUATION"},
		{"HEADERS then DATA", join(preface, settings, frameBytes(http2.FrameHeaders, 0, 1, validBlock), frameBytes(http2.FrameData, 0, 1, []byte("x"))), http2.ErrCodeProtocol, "expected CONTINUATION"},
		{"HEADERS on even stream", join(preface, settings, frameBytes(http2.FrameHeaders, http2.FlagHeadersEndHeaders|http2.FlagHeadersEndStream, 2, validBlock)), http2.ErrCodeProtocol, "HEADERS on server stream 2"},
		{"frame too large", join(preface, settings, huge), http2.ErrCodeFrameSize, "frame larger than SETTINGS_MAX_FRAME_SIZE"},
		{"DATA on idle stream", join(preface, settings, frameBytes(http2.FrameData, 0, 5, []byte("x"))), http2.ErrCodeProtocol, "DATA on idle stream 5"},
		{"zero WINDOW_UPDATE", join(preface, settings, frameBytes(http2.FrameWindowUpdate, 0, 0, []byte{0, 0, 0, 0})), http2.ErrCodeProtocol, "PROTOCOL_ERROR"},
		{"invalid SETTINGS", join(preface, settings, frameBytes(http2.FrameSettings, 0, 0, []byte{0, 2, 0, 0, 0, 2})), http2.ErrCodeProtocol, "invalid SETTINGS value"},
		{"truncated frame", join(preface, settings, frameBytes(http2.FrameHeaders, http2.FlagHeadersEndHeaders, 1, validBlock)[:12]), http2.ErrCodeProtocol, "connection closed inside a frame"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := dialRaw(t, p.Addr)
			c.write(t, tt.input)
			if tt.name == "truncated frame" {
				_ = c.conn.(*net.TCPConn).CloseWrite()
			}
			f := c.until(t, "GOAWAY", func(f http2.Frame) bool { _, ok := f.(*http2.GoAwayFrame); return ok })
			if ga := f.(*http2.GoAwayFrame); ga.ErrCode != tt.code || !strings.Contains(string(ga.DebugData()), tt.reason) {
				t.Fatalf("GOAWAY %v %q, want %v %q", ga.ErrCode, ga.DebugData(), tt.code, tt.reason)
			}
			c.expectClosed(t)
			p.ExpectMalformed(t, ErrMalformed, tt.reason)
			resp, body, err := do(t, h2cClient(nil), "GET", "http://"+p.Addr+"/next", nil)
			if err != nil || resp.StatusCode != 200 {
				t.Fatalf("next connection: %v %q", err, body)
			}
		})
	}
}

// TestMalformedStream checks that a malformed request only resets its
// stream: the connection goes on.
func TestMalformedStream(t *testing.T) {
	b := startBackend(t, nil)
	p := startProxy(t, newJudge("/deny"), b.addr)
	tests := []struct {
		name  string
		block []string
	}{
		{"missing :path", []string{":method", "GET", ":scheme", "http", ":authority", "a"}},
		{"connection header", []string{":method", "GET", ":scheme", "http", ":path", "/", ":authority", "a", "connection", "close"}},
		{"te not trailers", []string{":method", "GET", ":scheme", "http", ":path", "/", ":authority", "a", "te", "gzip"}},
		{"host disagrees", []string{":method", "GET", ":scheme", "http", ":path", "/deny", ":authority", "good", "host", "evil"}},
		{"uppercase name", []string{":method", "GET", ":scheme", "http", ":path", "/", ":authority", "a", "X-Upper", "1"}},
		{"status in request", []string{":method", "GET", ":scheme", "http", ":path", "/", ":status", "200"}},
	}
	c := dialRaw(t, p.Addr)
	c.start(t)
	id := uint32(1)
	for _, tt := range tests {
		if err := c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: c.block(tt.block...), EndStream: true, EndHeaders: true}); err != nil {
			t.Fatal(err)
		}
		f := c.until(t, "RST_STREAM", func(f http2.Frame) bool { return f.Header().StreamID == id })
		if rst, ok := f.(*http2.RSTStreamFrame); !ok || rst.ErrCode != http2.ErrCodeProtocol {
			t.Fatalf("%s: got %v, want RST_STREAM PROTOCOL_ERROR", tt.name, f)
		}
		id += 2
		// A valid request on the same connection still works.
		if err := c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: c.block(":method", "GET", ":scheme", "http", ":path", "/fine", ":authority", "a"), EndStream: true, EndHeaders: true}); err != nil {
			t.Fatal(err)
		}
		f = c.until(t, "response", func(f http2.Frame) bool { return f.Header().StreamID == id })
		if mh, ok := f.(*http2.MetaHeadersFrame); !ok || mh.PseudoValue("status") != "200" {
			t.Fatalf("%s: next stream got %v", tt.name, f)
		}
		id += 2
	}
	if b.SawPrefix("/deny") {
		t.Fatal("malformed request reached the backend")
	}
	if !strings.Contains(p.Logs.String(), "host header disagrees") {
		t.Fatal("reason not logged")
	}
}
