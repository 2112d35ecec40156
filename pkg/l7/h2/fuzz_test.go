package h2

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/palisade-net/palisade/pkg/l7"
	"github.com/palisade-net/palisade/pkg/l7/internal/l7test"
)

// newStubBackend returns a backend connection that sends a server
// preface, then stays idle, and keeps what it is sent.
func newStubBackend() *l7test.MemConn {
	var pre bytes.Buffer
	fr := http2.NewFramer(&pre, nil)
	_ = fr.WriteSettings(http2.Setting{ID: http2.SettingHeaderTableSize, Val: 256}, http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: 100})
	_ = fr.WriteSettingsAck()
	_ = fr.WriteWindowUpdate(0, 1<<20)
	return l7test.NewIdleMemConn(pre.Bytes())
}

// checkForwarded decodes what the proxy sent the backend as the backend
// would, and returns the requests in it. Any framing or HPACK error is an
// error of the proxy's: it writes every frame and re-encodes every block.
func checkForwarded(b []byte) ([]string, error) {
	if !bytes.HasPrefix(b, []byte(http2.ClientPreface)) {
		if len(b) == 0 {
			return nil, nil
		}
		return nil, errors.New("forwarded stream does not start with the preface")
	}
	fr := http2.NewFramer(nil, bytes.NewReader(b[len(http2.ClientPreface):]))
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	fr.MaxHeaderListSize = 16 << 20
	fr.SetMaxReadFrameSize(16<<20 - 1)
	var reqs []string
	for {
		f, err := fr.ReadFrame()
		if err == io.EOF {
			return reqs, nil
		}
		if err != nil {
			return reqs, err
		}
		if mh, ok := f.(*http2.MetaHeadersFrame); ok && mh.PseudoValue("method") != "" {
			reqs = append(reqs, mh.PseudoValue("method")+" "+mh.PseudoValue("path")+" "+mh.PseudoValue("authority"))
		}
	}
}

// fuzzSeeds are frame sequences (after the preface) for FuzzH2.
func fuzzSeeds() [][]byte {
	var seeds [][]byte
	var buf bytes.Buffer
	fr := http2.NewFramer(&buf, nil)
	fr.AllowIllegalWrites = true
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	block := func(kv ...string) []byte {
		hb.Reset()
		for i := 0; i < len(kv); i += 2 {
			_ = enc.WriteField(hpack.HeaderField{Name: kv[i], Value: kv[i+1]})
		}
		return append([]byte(nil), hb.Bytes()...)
	}
	get := func(path string) []byte {
		return block(":method", "GET", ":scheme", "http", ":path", path, ":authority", "a")
	}
	next := func() {
		seeds = append(seeds, append([]byte(nil), buf.Bytes()...))
		buf.Reset()
		enc = hpack.NewEncoder(&hb) // each seed is its own connection
	}

	_ = fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 20})
	_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: get("/ok"), EndStream: true, EndHeaders: true})
	next()

	_ = fr.WriteSettings()
	_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block(":method", "POST", ":scheme", "http", ":path", "/deny", ":authority", "a"), EndHeaders: true})
	_ = fr.WriteData(1, false, []byte("body"))
	_ = fr.WriteDataPadded(1, true, []byte("more"), make([]byte, 10))
	_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: get("/ok"), EndStream: true, EndHeaders: true})
	_ = fr.WriteWindowUpdate(0, 1000)
	_ = fr.WriteWindowUpdate(1, 1000)
	next()

	_ = fr.WriteSettings(http2.Setting{ID: http2.SettingHeaderTableSize, Val: 0})
	b := block(":method", "POST", ":scheme", "http", ":path", "/grpc.Svc/Deny", ":authority", "a", "content-type", "application/grpc", "te", "trailers")
	_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: b[:3], EndHeaders: false})
	_ = fr.WriteContinuation(1, true, b[3:])
	_ = fr.WriteData(1, true, []byte{0, 0, 0, 0, 0})
	_ = fr.WritePing(false, [8]byte{1})
	_ = fr.WriteRSTStream(1, http2.ErrCodeCancel)
	next()

	_ = fr.WriteSettings()
	_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block(":method", "POST", ":scheme", "http", ":path", "/up", ":authority", "a"), EndHeaders: true})
	_ = fr.WriteData(1, false, bytes.Repeat([]byte("x"), 100))
	_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block("x-trailer", "v"), EndStream: true, EndHeaders: true})
	_ = fr.WritePriority(3, http2.PriorityParam{StreamDep: 1, Weight: 10})
	_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 5, BlockFragment: get("/deny/again"), EndStream: true, EndHeaders: true})
	_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 7, BlockFragment: get("/ok?x"), EndStream: true, EndHeaders: true})
	_ = fr.WriteGoAway(0, http2.ErrCodeNo, nil)
	next()

	_ = fr.WriteSettings()
	_ = fr.WriteRawFrame(0xfa, 0, 0, []byte("unknown"))
	_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block(":method", "CONNECT", ":authority", "deny:443"), EndHeaders: true})
	_ = fr.WriteData(1, false, []byte("tunnel"))
	next()
	return seeds
}

// FuzzH2 feeds arbitrary frame sequences (after the client preface)
// through Serve with a stub judge and a stub backend. Serve must neither
// panic nor hang; what reaches the backend must decode as HTTP/2 (every
// block the proxy re-encoded included) and hold no request the judge
// denied; what reaches the client must decode too (so injected frames
// never split a header block or disturb HPACK).
func FuzzH2(f *testing.F) {
	for _, s := range fuzzSeeds() {
		f.Add(s)
	}
	judge := newJudge("/deny", "deny", "/grpc.Svc/Deny")
	f.Fuzz(func(t *testing.T, in []byte) {
		backend := newStubBackend()
		client := l7test.NewMemConn(append([]byte(http2.ClientPreface), in...))
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		err := Serve(ctx, client, backend, &l7.Session{Judge: judge})
		if ctx.Err() != nil {
			t.Fatalf("Serve hung on %x: %v", in, err)
		}
		reqs, err := checkForwarded(backend.Output())
		if err != nil {
			t.Fatalf("forwarded stream does not decode: %v (input %x)", err, in)
		}
		for _, r := range reqs {
			if _, rest, _ := strings.Cut(r, " "); strings.HasPrefix(rest, "/deny") || strings.HasPrefix(rest, "/grpc.Svc/Deny") || strings.HasPrefix(r, "CONNECT  deny") {
				t.Fatalf("denied request reached the backend: %q (input %x)", r, in)
			}
		}
		if err := checkClientOutput(client.Output()); err != nil {
			t.Fatalf("client stream does not decode: %v (input %x)", err, in)
		}
	})
}

// checkClientOutput decodes what the proxy sent the client.
func checkClientOutput(b []byte) error {
	fr := http2.NewFramer(nil, bytes.NewReader(b))
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	fr.MaxHeaderListSize = 16 << 20
	for {
		_, err := fr.ReadFrame()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// TestFuzzHarness checks that FuzzH2's harness sees what it must: the
// allowed request of a seed forwarded, the denied one answered.
func TestFuzzHarness(t *testing.T) {
	backend := newStubBackend()
	client := l7test.NewMemConn(append([]byte(http2.ClientPreface), fuzzSeeds()[1]...))
	if err := Serve(context.Background(), client, backend, &l7.Session{Judge: newJudge("/deny")}); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	reqs, err := checkForwarded(backend.Output())
	if err != nil || len(reqs) != 1 || reqs[0] != "GET /ok a" {
		t.Fatalf("forwarded %q, %v", reqs, err)
	}
	fr := http2.NewFramer(nil, bytes.NewReader(client.Output()))
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	var status string
	var body []byte
	var credit uint32
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			break
		}
		switch f := f.(type) {
		case *http2.MetaHeadersFrame:
			if f.StreamID == 1 {
				status = f.PseudoValue("status")
			}
		case *http2.DataFrame:
			if f.StreamID == 1 {
				body = append(body, f.Data()...)
			}
		case *http2.WindowUpdateFrame:
			if f.StreamID == 0 {
				credit += f.Increment
			}
		}
	}
	if status != "403" || string(body) != l7.DeniedBody {
		t.Fatalf("denied stream got %q %q", status, body)
	}
	// The backend's own credit, then "body" (4) and "more" with 10
	// bytes of padding (15) that the backend never saw.
	if credit != 1<<20+4+15 {
		t.Fatalf("connection credit %d, want %d", credit, 1<<20+19)
	}
}
