package hbone

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// rawConn speaks HTTP/2 to the server frame by frame, as a client other
// than x/net might.
type rawConn struct {
	t  *testing.T
	tc *tls.Conn
	fr *http2.Framer
}

func (e *env) raw(t *testing.T, preface bool) *rawConn {
	t.Helper()
	bundle, _ := e.provider.GetX509BundleForTrustDomain(testTD)
	tc := e.rawTLS(t, e.svid(t, clientID), bundle)
	tc.SetDeadline(time.Now().Add(10 * time.Second))
	fr := http2.NewFramer(tc, tc)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	if preface {
		io.WriteString(tc, http2.ClientPreface)
		fr.WriteSettings()
	}
	return &rawConn{t: t, tc: tc, fr: fr}
}

func (r *rawConn) headers(id uint32, end bool, fields ...string) {
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for i := 0; i+1 < len(fields); i += 2 {
		enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
	}
	if err := r.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hb.Bytes(), EndStream: end, EndHeaders: true}); err != nil {
		r.t.Fatal(err)
	}
}

// next returns the next frame that is not SETTINGS, WINDOW_UPDATE or PING,
// or nil when the connection ends.
func (r *rawConn) next() http2.Frame {
	for {
		f, err := r.fr.ReadFrame()
		if err != nil {
			return nil
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				r.fr.WriteSettingsAck()
			}
		case *http2.WindowUpdateFrame, *http2.PingFrame:
		case *http2.DataFrame:
			// Copy: the framer reuses its buffer.
			d := &dataFrame{id: f.StreamID, data: append([]byte(nil), f.Data()...), end: f.StreamEnded()}
			return d
		default:
			return f
		}
	}
}

type dataFrame struct {
	http2.Frame
	id   uint32
	data []byte
	end  bool
}

// TestRawMinimalConnect: a CONNECT with only :method and :authority (no
// user-agent or other headers) works, and data flows.
func TestRawMinimalConnect(t *testing.T) {
	e := newEnv(t, envOpts{})
	be := newBackend(t, echoHandler)
	r := e.raw(t, true)
	r.headers(1, false, ":method", "CONNECT", ":authority", be.addr)
	h, ok := r.next().(*http2.MetaHeadersFrame)
	if !ok || h.PseudoValue("status") != "200" {
		t.Fatalf("reply = %v", h)
	}
	r.fr.WriteData(1, true, []byte("hello"))
	var got []byte
	for {
		d, ok := r.next().(*dataFrame)
		if !ok {
			t.Fatal("stream ended without END_STREAM")
		}
		got = append(got, d.data...)
		if d.end {
			break
		}
	}
	if string(got) != "hello" {
		t.Fatalf("echo = %q", got)
	}
}

func TestRawProtocolErrors(t *testing.T) {
	for _, tc := range []struct {
		name    string
		preface bool
		send    func(r *rawConn)
		want    http2.ErrCode // GOAWAY code; ErrCodeNo: just closed
	}{
		{"bad preface", false, func(r *rawConn) { io.WriteString(r.tc, "GET / HTTP/1.1\r\nHost: x\r\n\r\n") }, http2.ErrCodeProtocol},
		{"DATA on idle stream", true, func(r *rawConn) { r.fr.WriteData(5, false, []byte("x")) }, http2.ErrCodeProtocol},
		{"even stream ID", true, func(r *rawConn) { r.headers(2, true, ":method", "CONNECT", ":authority", "127.0.0.1:1") }, http2.ErrCodeProtocol},
		{"reused stream ID", true, func(r *rawConn) {
			r.headers(3, true, ":method", "GET", ":authority", "127.0.0.1:1", ":scheme", "https", ":path", "/")
			r.headers(1, true, ":method", "GET", ":authority", "127.0.0.1:1", ":scheme", "https", ":path", "/")
		}, http2.ErrCodeStreamClosed},
		{"PUSH_PROMISE", true, func(r *rawConn) {
			r.fr.WritePushPromise(http2.PushPromiseParam{StreamID: 1, PromiseID: 2, EndHeaders: true})
		}, http2.ErrCodeProtocol},
		{"connection window overflow", true, func(r *rawConn) {
			r.fr.WriteWindowUpdate(0, 1<<31-1)
		}, http2.ErrCodeFlowControl},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, envOpts{})
			r := e.raw(t, tc.preface)
			tc.send(r)
			var gotAway *http2.GoAwayFrame
			for f := r.next(); f != nil; f = r.next() {
				if g, ok := f.(*http2.GoAwayFrame); ok {
					gotAway = g
				}
			}
			if tc.want != http2.ErrCodeNo && (gotAway == nil || gotAway.ErrCode != tc.want) {
				t.Fatalf("GOAWAY = %v, want %v", gotAway, tc.want)
			}
			e.logs.waitFor(t, "protocol error")
			// The server keeps serving others.
			be := newBackend(t, echoHandler)
			e.mustDial(be.addr).Close()
		})
	}
}

// TestRawResetBeforeReply: a client that resets a stream while Connect is
// still deciding does not leak the backend connection.
func TestRawResetBeforeReply(t *testing.T) {
	release := make(chan struct{})
	closed := make(chan struct{})
	e := newEnv(t, envOpts{connect: func(ctx context.Context, req *Request) (net.Conn, int, error) {
		<-ctx.Done() // the reset cancels Connect's context
		close(closed)
		<-release
		return nil, 503, ctx.Err()
	}})
	defer close(release)
	r := e.raw(t, true)
	r.headers(1, false, ":method", "CONNECT", ":authority", "127.0.0.1:9")
	time.Sleep(20 * time.Millisecond)
	r.fr.WriteRSTStream(1, http2.ErrCodeCancel)
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("Connect's context not cancelled by RST_STREAM")
	}
}
