// Package hbone carries TCP connections between node proxies in HBONE
// tunnels: HTTP/2 CONNECT streams over mutual TLS 1.3 with SPIFFE X.509 SVIDs,
// as Istio ambient's ztunnel speaks it.
//
// The client side is a Pool that keeps HTTP/2 connections per (source
// identity, destination identity, destination address, source IP) and opens
// one CONNECT stream per application connection (Pool.Dial). The server side
// (Server) accepts tunnels for one local workload identity and hands every
// authorised stream to a Connect callback that returns the backend
// connection.
//
// # HTTP/2 implementation
//
// Framing and HPACK come from golang.org/x/net/http2; both connection state
// machines are our own, on x/net's Framer. The server's, because
// http2.Server ends a stream in both directions when the handler returns:
// it cannot send END_STREAM while it keeps reading the request body, so a
// backend that half-closes could not be propagated to the client (see the
// "TODO (maybe)" at the top of x/net/http2/server.go). HBONE needs both
// half-closes. The client's, because x/net's ClientConn sends a request
// body from a goroutine of its own, reading an io.Pipe for a tunnel, and
// hands every received chunk through another pipe: each chunk crossed two
// goroutines, typically a thread wake-up each, which made that hop cost
// more CPU than the encryption (docs/benchmarks.md).
//
// The data path (wire.go, sink.go):
//
//   - Conn.Write and the server's backend copier frame and encrypt their
//     bytes on their own goroutine, under the connection's write lock;
//   - the frames of one write leave in one tls.Conn.Write, and the TLS
//     records of that write in one write(2) (bufConn); reads from the
//     socket are buffered the same way;
//   - the read loop writes received bytes straight into the destination
//     socket (Conn.WriteTo's writer, the server's backend) when the socket
//     takes them without blocking, and queues them for the stream's own
//     goroutine otherwise; destinations that are not sockets can join in
//     by implementing TryWriter;
//   - the read loop never waits for the write lock: the control frames it
//     produces are queued and written by the next writer.
//
// # Settings
//
// Both sides use the settings ztunnel uses (the Default* constants): stream
// window 4 MiB, connection window 16 MiB (the initial 65,535 bytes plus a
// WINDOW_UPDATE), max frame size 1 MiB, a PING after 10 s without any frame
// from the peer and the connection closed if nothing arrives within 20 s
// more; the server allows 200 concurrent streams and 16 KiB of request
// headers. Keepalive PINGs are sent only after the read-idle interval, not
// unconditionally every 10 s: a busy connection proves liveness with its
// own frames. DATA frames we send carry at most 64 KiB (or the peer's
// SETTINGS_MAX_FRAME_SIZE when smaller) so that the receiver can forward
// bytes before a whole megabyte arrived.
package hbone

import (
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Port is the HBONE port inside every enrolled pod.
const Port = 15008

// ALPN protocol HBONE negotiates.
const alpnH2 = "h2"

// Defaults shared by client and server.
const (
	// DefaultStreamWindow is the HTTP/2 per-stream receive window.
	DefaultStreamWindow = 4 << 20
	// DefaultConnWindow is the HTTP/2 per-connection receive window.
	DefaultConnWindow = 16 << 20
	// DefaultMaxFrameSize is the largest HTTP/2 frame payload accepted.
	DefaultMaxFrameSize = 1 << 20
	// DefaultPingInterval is how long a connection may stay silent before a
	// PING is sent.
	DefaultPingInterval = 10 * time.Second
	// DefaultPingTimeout is how long after that PING the connection is
	// closed if nothing arrives.
	DefaultPingTimeout = 20 * time.Second
	// DefaultHandshakeTimeout bounds TCP connect, TLS handshake and the
	// HTTP/2 preface.
	DefaultHandshakeTimeout = 10 * time.Second
	// DefaultMaxHeaderBytes is the largest request header list (HPACK
	// accounting: name + value + 32 per field) the server accepts.
	DefaultMaxHeaderBytes = 16 << 10

	// copyBufferSize is the size of the pooled buffers used to copy tunnel
	// bytes.
	copyBufferSize = 32 << 10
)

// Tuning holds the HTTP/2 parameters shared by Pool and Server. Zero fields
// take the defaults above.
type Tuning struct {
	// StreamWindow is the per-stream receive window in bytes.
	StreamWindow uint32
	// ConnWindow is the per-connection receive window in bytes.
	ConnWindow uint32
	// MaxFrameSize is the largest frame payload this side accepts
	// (16 KiB to 16 MiB).
	MaxFrameSize uint32
	// PingInterval is the read-idle time after which a PING is sent.
	PingInterval time.Duration
	// PingTimeout is how long to wait for any frame after that PING before
	// the connection is closed.
	PingTimeout time.Duration
}

func (t Tuning) withDefaults() Tuning {
	if t.StreamWindow == 0 {
		t.StreamWindow = DefaultStreamWindow
	}
	t.StreamWindow = min(t.StreamWindow, 1<<31-1)
	if t.ConnWindow == 0 {
		t.ConnWindow = DefaultConnWindow
	}
	t.ConnWindow = min(max(t.ConnWindow, 65535), 1<<31-1)
	if t.MaxFrameSize == 0 {
		t.MaxFrameSize = DefaultMaxFrameSize
	}
	t.MaxFrameSize = min(max(t.MaxFrameSize, 16<<10), 1<<24-1)
	if t.PingInterval == 0 {
		t.PingInterval = DefaultPingInterval
	}
	if t.PingTimeout == 0 {
		t.PingTimeout = DefaultPingTimeout
	}
	return t
}

// StatusError is returned by Pool.Dial when the server answers the CONNECT
// request with a status other than 200: 400 (bad request or authority not
// served there), 401 (authorization denied), 431 (request headers too
// large), 503 (backend unreachable), …
type StatusError struct {
	// Code is the HTTP status code of the reply.
	Code int
	// Reason is the server's explanation (the palisade-reason response
	// header), if it gave one.
	Reason string
}

// Error describes the refusal.
func (e *StatusError) Error() string {
	msg := fmt.Sprintf("hbone: CONNECT refused: %d %s", e.Code, http.StatusText(e.Code))
	if e.Reason != "" {
		msg += ": " + e.Reason
	}
	return msg
}

// PeerIdentityError is returned (wrapped) by Pool.Dial when the server
// presents a valid SVID for another identity than the one expected.
type PeerIdentityError struct {
	// Want is the destination identity of the pool key.
	Want spiffeid.ID
	// Got is the identity in the server's certificate.
	Got spiffeid.ID
}

// Error names both identities.
func (e *PeerIdentityError) Error() string {
	return fmt.Sprintf("hbone: server identity %s, want %s", e.Got, e.Want)
}

// ErrPoolClosed is returned by Pool.Dial after Pool.Close. It matches
// net.ErrClosed with errors.Is.
var ErrPoolClosed = fmt.Errorf("hbone: pool closed: %w", net.ErrClosed)

// ErrServerClosed is returned by Server.Serve after Shutdown or Close. It
// matches net.ErrClosed with errors.Is.
var ErrServerClosed = fmt.Errorf("hbone: server closed: %w", net.ErrClosed)
