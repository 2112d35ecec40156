// Package http1 inspects HTTP/1.1 connections: each request head is
// parsed and judged; allowed requests are forwarded as the client wrote
// them (apart from the verdict's header edits), denied ones are answered
// with 403 and never reach the backend.
//
// Two goroutines serve a connection. The request side reads heads and
// bodies from the client, judges them and forwards allowed ones; for every
// request it queues an exchange. The response side takes the exchanges in
// order and either relays the backend's response (parsing its head and
// framing to find where it ends) or writes the proxy's own answer, so
// responses reach the client in request order even with pipelining.
package http1

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/palisade-net/palisade/pkg/l7"
)

const (
	// maxRequestHead bounds a request's start line and header section.
	maxRequestHead = 64 << 10
	// maxResponseHead bounds a response head from the backend.
	maxResponseHead = 1 << 20
	// maxPipeline is how many requests may wait for their responses
	// before the request side stops reading the client.
	maxPipeline = 32
	// maxDiscard is the largest declared body of a denied request that
	// is read and dropped to keep the connection; beyond it the
	// connection closes after the 403.
	maxDiscard = 1 << 20
	// bufSize is the size of each direction's read and write buffers.
	bufSize = 16 << 10
	// lingerTimeout is how long the client may keep sending after the
	// proxy decided to close, so the last response is not lost to a
	// reset (the "lingering close" of RFC 9112 §9.6).
	lingerTimeout = time.Second
)

// protocol is the Record.Protocol of this inspector.
const protocol = "http/1.1"

type closeWriter interface{ CloseWrite() error }

// Serve inspects one HTTP/1.1 connection; it is an l7.ServeFunc.
//
// The backend must support read deadlines (the response side's wait for
// the next request is interrupted with one); without them Serve closes
// both connections and returns an error.
func Serve(ctx context.Context, client, backend net.Conn, s *l7.Session) error {
	if err := backend.SetReadDeadline(time.Time{}); err != nil {
		client.Close()
		backend.Close()
		return fmt.Errorf("http1: the backend connection has no read deadlines: %w", err)
	}
	c := newConn(client, backend, s)
	stop := context.AfterFunc(ctx, c.abort)
	defer stop()
	err := c.serve()
	if c.aborted.Load() {
		return fmt.Errorf("http1: %w", context.Cause(ctx))
	}
	return err
}

// exchangeKind says who answers a request.
type exchangeKind int

const (
	exForward exchangeKind = iota // the backend
	exDeny                        // the proxy, with 403
	exBad                         // the proxy, with 400, then close
)

// exchange is one request waiting for its response.
type exchange struct {
	kind    exchangeKind
	head    bool // a HEAD request: the response has no body
	connect bool
	// upgrade is set for a forwarded Upgrade or CONNECT request: the
	// request side waits on switched for whether a 101 (or 2xx to
	// CONNECT) turned the connection into a tunnel.
	upgrade  bool
	switched chan bool
	close    bool // the request asked to close the connection
	reply    string
	start    time.Time
	rec      l7.Record
	recorded bool
}

// conn is the state of one inspected connection.
type conn struct {
	client, backend net.Conn
	s               *l7.Session
	log             *slog.Logger

	cr *bufio.Reader // client, read by the request side
	bw *bufio.Writer // backend, written by the request side
	br *bufio.Reader // backend, read by the response side
	cw *bufio.Writer // client, written by the response side

	queue   chan *exchange
	done    chan struct{} // closed when the response side ended
	closing atomic.Bool   // teardown began: I/O errors are expected
	aborted atomic.Bool   // ctx ended

	// idle coordinates the response side's read of the backend while no
	// exchange is queued with the request side's wake.
	idle struct {
		mu      sync.Mutex
		waiting bool // the response side reads the backend in next
		woken   bool // wake set a read deadline that next must clear
	}

	req     request
	resp    response
	scratch []byte
}

func newConn(client, backend net.Conn, s *l7.Session) *conn {
	c := &conn{
		client:  client,
		backend: backend,
		s:       s,
		log:     s.Logger(),
		queue:   make(chan *exchange, maxPipeline),
		done:    make(chan struct{}),
	}
	c.bw = bufio.NewWriterSize(backend, bufSize)
	c.cw = bufio.NewWriterSize(client, bufSize)
	// Buffered writes are flushed whenever the reader of the same side
	// is about to wait for input, which batches pipelined messages
	// without delaying anything.
	c.cr = bufio.NewReaderSize(newFlushReader(client, c.bw), bufSize)
	c.br = bufio.NewReaderSize(newFlushReader(backend, c.cw), bufSize)
	return c
}

// abort ends the connection because ctx ended.
func (c *conn) abort() {
	c.aborted.Store(true)
	c.closing.Store(true)
	c.client.Close()
	c.backend.Close()
}

// serve runs both sides and tears the connection down.
func (c *conn) serve() error {
	reqDone := make(chan error, 1)
	go func() {
		err := c.requestLoop()
		// What was forwarded last may still be buffered.
		_ = c.bw.Flush()
		close(c.queue)
		c.wake()
		reqDone <- err
	}()
	tunnel, respErr := c.responseLoop()
	close(c.done)
	c.closing.Store(true)

	var reqErr error
	switch {
	case tunnel && respErr == nil:
		// The client→backend half of the tunnel may go on after the
		// backend finished; it ends on the client's EOF.
		reqErr = <-reqDone
	case respErr == nil:
		c.backend.Close()
		reqErr = c.linger(reqDone)
	default:
		c.client.Close()
		c.backend.Close()
		reqErr = <-reqDone
	}
	c.client.Close()
	c.backend.Close()
	// Requests judged but never answered still get their record.
	for e := range c.queue {
		if e.kind != exBad {
			status := 0
			if e.kind == exDeny {
				status = l7.DeniedStatus
			}
			c.record(e, status)
		}
	}
	if c.aborted.Load() {
		return nil // Serve reports ctx's error
	}
	return errors.Join(reqErr, respErr)
}

// linger half-closes the client and lets it finish sending for a moment
// before the connection is closed, so the last response is not destroyed
// by a reset for unread input.
func (c *conn) linger(reqDone chan error) error {
	cw, ok := c.client.(closeWriter)
	if !ok || cw.CloseWrite() != nil {
		c.client.Close()
		return <-reqDone
	}
	timer := time.NewTimer(lingerTimeout)
	defer timer.Stop()
	var reqErr error
	select {
	case reqErr = <-reqDone:
	case <-timer.C:
		c.client.Close()
		return <-reqDone
	}
	// The request side is gone; drain what the client still sends.
	drained := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, c.client)
		close(drained)
	}()
	select {
	case <-drained:
	case <-timer.C:
	}
	c.client.Close()
	<-drained
	return reqErr
}

// record reports e with the response status, once.
func (c *conn) record(e *exchange, status int) {
	if e.recorded {
		return
	}
	e.recorded = true
	e.rec.HTTP.Status = status
	e.rec.Duration = time.Since(e.start)
	c.s.Record(e.rec)
}

// ioError classifies an I/O error of either side: nil once teardown began
// or for a plain close, wrapped otherwise.
func (c *conn) ioError(what string, err error) error {
	if err == nil || c.closing.Load() || errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
		return nil
	}
	return fmt.Errorf("http1: %s: %w", what, err)
}

// malformedInput logs and wraps a malformed-input error.
func (c *conn) malformedInput(from string, err error) error {
	c.log.Warn("http1: malformed input, closing the connection", "from", from, "reason", err.Error())
	return fmt.Errorf("http1: %s: %w", from, err)
}

// flushReader flushes a writer before reading, so that buffered output
// goes out whenever the reader would wait for input.
type flushReader struct {
	r io.Reader
	w *bufio.Writer
}

func newFlushReader(r io.Reader, w *bufio.Writer) *flushReader {
	return &flushReader{r: r, w: w}
}

func (f *flushReader) Read(p []byte) (int, error) {
	if f.w.Buffered() > 0 {
		if err := f.w.Flush(); err != nil {
			return 0, err
		}
	}
	return f.r.Read(p)
}

// isHead reports whether method is HEAD.
func isHead(method string) bool { return method == http.MethodHead }
