// Package h2 inspects prior-knowledge HTTP/2 (h2c) connections, gRPC
// included, frame by frame: each request header block is decoded and
// judged on its own, allowed streams are forwarded, denied ones are
// answered by the proxy (403, or a trailers-only gRPC PERMISSION_DENIED)
// and none of their frames reaches the backend.
//
// Two goroutines serve a connection. The client side reads the client's
// frames (golang.org/x/net/http2's Framer, HPACK-decoded), judges new
// streams and writes what is allowed to the backend, re-encoding every
// forwarded header block with its own HPACK encoder: dropping a denied
// block would otherwise leave the backend's decoder out of step with the
// client's encoder. The backend side relays the backend's frames to the
// client as they are, decoding response header blocks with a mirror of
// the client's decoder only to read status codes for the records. Frames
// the proxy adds toward the client (denials, flow-control credit,
// RST_STREAM, GOAWAY) use no HPACK state and are never written inside a
// header block sequence: every client write holds one lock and header
// blocks are written whole.
package h2

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/palisade-net/palisade/pkg/l7"
)

// ErrMalformed is wrapped by every error Serve returns because the client
// (or the backend) broke HTTP/2 framing or HPACK.
var ErrMalformed = errors.New("malformed HTTP/2")

const (
	// maxHeaderList bounds a decoded request header block (name, value
	// and 32 bytes per field, as SETTINGS_MAX_HEADER_LIST_SIZE counts).
	maxHeaderList = 1 << 20
	// maxStreams bounds the streams tracked at once; a client past it
	// ignores the backend's SETTINGS_MAX_CONCURRENT_STREAMS.
	maxStreams = 10000
	// maxWriteFrame is the frame size the proxy splits header blocks
	// it writes itself into: the minimum every peer accepts.
	maxWriteFrame = 16384
	bufSize       = 32 << 10
	// lingerTimeout is how long the client may still send after the
	// proxy decided to close, so a GOAWAY is not lost to a reset.
	lingerTimeout = time.Second
	// drainTimeout is how long the backend may take to close after the
	// client ended the connection.
	drainTimeout = 10 * time.Second
)

type closeWriter interface{ CloseWrite() error }

// Serve inspects one h2c connection whose first bytes are the client
// connection preface; it is an l7.ServeFunc.
func Serve(ctx context.Context, client, backend net.Conn, s *l7.Session) error {
	c := newConn(client, backend, s)
	stop := context.AfterFunc(ctx, c.abort)
	defer stop()
	err := c.serve()
	if c.aborted.Load() {
		return fmt.Errorf("h2: %w", context.Cause(ctx))
	}
	return err
}

// conn is the state of one inspected connection.
type conn struct {
	client, backend net.Conn
	s               *l7.Session
	log             *slog.Logger

	// Client side (client → backend), owned by clientLoop.
	cr              *bufio.Reader
	cfr             *http2.Framer // reads the client, HPACK-decoding
	cdec            *hpack.Decoder
	bw              *bufio.Writer
	bwf             *http2.Framer // writes the backend
	enc             *hpack.Encoder
	encBuf          bytes.Buffer
	pending         []uint32 // denied streams whose body waits for window
	clientWrote     atomic.Bool
	maxClientStream atomic.Uint32

	// Backend side (backend → client), owned by backendLoop.
	br       *bufio.Reader
	bfr      *http2.Framer // reads the backend
	rdec     *hpack.Decoder
	block    []byte // header block being collected
	respStat string
	grpcStat string

	// Client writes, from both sides.
	cmu         sync.Mutex
	cw          *bufio.Writer
	cwf         *http2.Framer
	prefaceSent bool // the backend's SETTINGS reached the client
	goingAway   bool // a GOAWAY of the proxy's was sent: nothing follows
	prefaceCh   chan struct{}

	// Settings one side learns and the other applies.
	clientTableSize atomic.Uint32 // largest HEADER_TABLE_SIZE the client offered
	clientMaxFrame  atomic.Uint32 // largest MAX_FRAME_SIZE the client offered
	backendMaxFrame atomic.Uint32
	backendTableMax atomic.Uint32 // largest HEADER_TABLE_SIZE the backend offered
	smu             sync.Mutex
	encLimits       []uint32 // the backend's HEADER_TABLE_SIZE values, in order

	// Streams, shared.
	mu            sync.Mutex
	streams       map[uint32]*stream
	initialWindow int64 // the client's SETTINGS_INITIAL_WINDOW_SIZE

	flow     *flow
	closing  atomic.Bool
	aborted  atomic.Bool
	quit     chan struct{} // closing began
	quitOnce sync.Once
}

func newConn(client, backend net.Conn, s *l7.Session) *conn {
	c := &conn{
		client:        client,
		backend:       backend,
		s:             s,
		log:           s.Logger(),
		prefaceCh:     make(chan struct{}),
		streams:       make(map[uint32]*stream),
		initialWindow: initialWindow,
		flow:          newFlow(),
		quit:          make(chan struct{}),
	}
	c.bw = bufio.NewWriterSize(backend, bufSize)
	c.cw = bufio.NewWriterSize(client, bufSize)
	// Each side flushes what it buffered when it is about to wait for
	// input, which batches frames without delaying any.
	c.cr = bufio.NewReaderSize(readerFunc(func(p []byte) (int, error) {
		if err := c.flushClientSide(); err != nil {
			return 0, err
		}
		return client.Read(p)
	}), bufSize)
	c.br = bufio.NewReaderSize(readerFunc(func(p []byte) (int, error) {
		if err := c.flushClient(); err != nil {
			return 0, err
		}
		return backend.Read(p)
	}), bufSize)

	c.cdec = hpack.NewDecoder(4096, nil)
	c.cfr = http2.NewFramer(nil, c.cr)
	c.cfr.ReadMetaHeaders = c.cdec
	c.cfr.MaxHeaderListSize = maxHeaderList
	c.cfr.SetReuseFrames()
	c.bwf = http2.NewFramer(c.bw, nil)
	c.enc = hpack.NewEncoder(&c.encBuf)

	c.rdec = hpack.NewDecoder(4096, c.onResponseField)
	c.bfr = http2.NewFramer(nil, c.br)
	c.bfr.SetReuseFrames()
	c.cwf = http2.NewFramer(c.cw, nil)

	c.clientTableSize.Store(4096)
	c.backendTableMax.Store(4096)
	c.clientMaxFrame.Store(maxWriteFrame)
	c.backendMaxFrame.Store(maxWriteFrame)
	return c
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

// abort ends the connection because ctx ended.
func (c *conn) abort() {
	c.aborted.Store(true)
	c.shutdown()
}

// beginClose marks the connection closing and releases every waiter.
func (c *conn) beginClose() {
	c.closing.Store(true)
	c.quitOnce.Do(func() { close(c.quit) })
	c.flow.close()
}

// shutdown closes both connections and releases every waiter.
func (c *conn) shutdown() {
	c.beginClose()
	c.client.Close()
	c.backend.Close()
}

// serve runs both sides and tears the connection down.
func (c *conn) serve() error {
	backendDone := make(chan error, 1)
	go func() { backendDone <- c.backendLoop() }()

	clientErr := c.clientLoop()
	var backendErr error
	switch {
	case clientErr == nil && !c.closing.Load():
		// The client finished: let the backend see the end and close.
		halfClose(c.backend)
		select {
		case backendErr = <-backendDone:
		case <-time.After(drainTimeout):
			c.shutdown()
			backendErr = <-backendDone
		}
	case errors.Is(clientErr, ErrMalformed):
		// A GOAWAY went out: give the client a moment to read it.
		c.beginClose()
		c.backend.Close()
		c.linger()
		backendErr = <-backendDone
	default:
		c.shutdown()
		backendErr = <-backendDone
	}
	c.shutdown()
	c.recordRest()
	if c.aborted.Load() {
		return nil
	}
	return errors.Join(clientErr, backendErr)
}

// linger half-closes the client and drains it briefly before closing.
func (c *conn) linger() {
	cw, ok := c.client.(closeWriter)
	if !ok || cw.CloseWrite() != nil {
		c.client.Close()
		return
	}
	drained := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, c.client)
		close(drained)
	}()
	select {
	case <-drained:
	case <-time.After(lingerTimeout):
	}
	c.client.Close()
	<-drained
}

// halfClose ends the writes to conn, or closes it when it cannot
// half-close.
func halfClose(conn net.Conn) {
	if cw, ok := conn.(closeWriter); ok && cw.CloseWrite() == nil {
		return
	}
	conn.Close()
}

// flushClientSide flushes what the client side wrote, before it waits for
// the client.
func (c *conn) flushClientSide() error {
	if c.bw.Buffered() > 0 {
		if err := c.bw.Flush(); err != nil {
			return err
		}
	}
	if c.clientWrote.Swap(false) {
		return c.flushClient()
	}
	return nil
}

// flushClient flushes the client writer.
func (c *conn) flushClient() error {
	c.cmu.Lock()
	defer c.cmu.Unlock()
	if c.cw.Buffered() == 0 {
		return nil
	}
	return c.cw.Flush()
}

// errClosing is returned by writes once the connection is going away.
var errClosing = errors.New("connection closing")

// inject writes frames of the proxy's own to the client: after the
// backend's SETTINGS (a server's first frame must be SETTINGS) and never
// inside a header block, since every client write holds cmu.
func (c *conn) inject(write func(fr *http2.Framer) error) error {
	select {
	case <-c.prefaceCh:
	default:
		// The backend may be waiting for what the client side buffered
		// (the preface, to begin with) before it sends its SETTINGS.
		if err := c.bw.Flush(); err != nil {
			return err
		}
		select {
		case <-c.prefaceCh:
		case <-c.quit:
			return errClosing
		}
	}
	c.cmu.Lock()
	defer c.cmu.Unlock()
	if c.goingAway {
		return errClosing
	}
	c.clientWrote.Store(true)
	return write(c.cwf)
}

// goAway sends GOAWAY to the client; nothing else is written after it.
func (c *conn) goAway(code http2.ErrCode, reason string) {
	c.cmu.Lock()
	defer c.cmu.Unlock()
	if c.goingAway {
		return
	}
	c.goingAway = true
	if !c.prefaceSent {
		_ = c.cwf.WriteSettings() // the server preface comes first
	}
	_ = c.cwf.WriteGoAway(c.maxClientStream.Load(), code, []byte(reason))
	_ = c.cw.Flush()
}

// malformed ends the connection over bad input from the client: GOAWAY
// with code, the reason logged and returned.
func (c *conn) malformed(code http2.ErrCode, reason string) error {
	c.log.Warn("h2: malformed input, closing the connection", "from", "client", "code", code.String(), "reason", reason)
	c.goAway(code, reason)
	return fmt.Errorf("h2: client: %w: %s", ErrMalformed, reason)
}

// ioError classifies an I/O error: nil once teardown began or for a plain
// close, wrapped otherwise.
func (c *conn) ioError(what string, err error) error {
	if err == nil || c.closing.Load() || errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || err == errClosing {
		return nil
	}
	return fmt.Errorf("h2: %s: %w", what, err)
}

// writeBlock writes a header block as HEADERS (or PUSH_PROMISE when
// promised is non-zero) and CONTINUATION frames of at most maxWriteFrame
// bytes.
func writeBlock(fr *http2.Framer, id uint32, block []byte, endStream bool, prio http2.PriorityParam, promised uint32) error {
	first := block
	if len(first) > maxWriteFrame {
		first = first[:maxWriteFrame]
	}
	rest := block[len(first):]
	var err error
	if promised != 0 {
		err = fr.WritePushPromise(http2.PushPromiseParam{StreamID: id, PromiseID: promised, BlockFragment: first, EndHeaders: len(rest) == 0})
	} else {
		err = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: first, EndStream: endStream, EndHeaders: len(rest) == 0, Priority: prio})
	}
	for err == nil && len(rest) > 0 {
		n := min(len(rest), maxWriteFrame)
		err = fr.WriteContinuation(id, n == len(rest), rest[:n])
		rest = rest[n:]
	}
	return err
}

// zeroPad is the padding of forwarded DATA frames: forwarding keeps each
// frame's flow-controlled length, padding included (RFC 9113 §6.1).
var zeroPad [255]byte

// writeData writes a DATA frame like f.
func writeData(fr *http2.Framer, f *http2.DataFrame) error {
	if !f.Flags.Has(http2.FlagDataPadded) {
		return fr.WriteData(f.StreamID, f.StreamEnded(), f.Data())
	}
	pad := int(f.Length) - len(f.Data()) - 1
	return fr.WriteDataPadded(f.StreamID, f.StreamEnded(), f.Data(), zeroPad[:pad])
}
