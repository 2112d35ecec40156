package hbone

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"golang.org/x/net/http2"
)

// StreamTaker is implemented by a backend that serves the tunnel stream
// itself instead of having the server splice the stream to it. When the
// ConnectFunc's backend implements it, the server answers 200, calls
// TakeStream with the stream as a *Stream, and ends the stream (Close) and
// closes the backend once TakeStream returns.
//
// The node proxy's L7 inspectors take streams this way: they read the
// client's requests straight from the stream's receive buffer and write the
// answers straight to the tunnel, with no socket between the tunnel and the
// inspector.
type StreamTaker interface {
	TakeStream(s *Stream)
}

// Stream is one server-side CONNECT stream as a net.Conn, handed to a
// StreamTaker. Read returns what the client sent (io.EOF after its
// END_STREAM); Write sends DATA within the HTTP/2 flow-control windows;
// CloseWrite sends END_STREAM; Close ends the stream as a server that has
// answered in full does (END_STREAM, then RST_STREAM NO_ERROR if the client
// is still sending, RFC 9113 §8.1); Reset aborts it.
//
// Deadlines are not supported: the Set*Deadline methods return an error
// wrapping errors.ErrUnsupported. Writes are serialized; one goroutine may
// read while others write.
type Stream struct {
	st        *serverStream
	local     net.Addr
	remote    net.Addr
	wmu       sync.Mutex // serializes Write and CloseWrite
	truncated bool       // guarded by wmu: a Write gave up for Close with bytes unsent
}

var _ net.Conn = (*Stream)(nil)

// errStreamClosed is what reads and writes on a closed Stream return.
var errStreamClosed = fmt.Errorf("hbone: stream: %w", net.ErrClosed)

// errDeadlines is what the deadline setters return.
var errDeadlines = fmt.Errorf("hbone: stream deadlines: %w", errors.ErrUnsupported)

// errStreamClosing is what writeData returns when it would wait for flow
// control after a Stream's Close began.
var errStreamClosing = errors.New("hbone: stream closed while a write waited for flow control")

// ended wraps why the stream ended for a caller of Read or Write: as
// net.ErrClosed too, so that a client's reset or the connection's end reads
// as a closed connection (as a reset socket would to a relay), with the
// cause still in the chain.
func ended(op string, err error) error {
	if errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("hbone: stream %s: %w", op, err)
	}
	return fmt.Errorf("hbone: stream %s: %w: %w", op, net.ErrClosed, err)
}

// Read reads bytes the client sent; io.EOF after its END_STREAM.
func (s *Stream) Read(p []byte) (int, error) {
	st := s.st
	sc := st.sc
	sc.mu.Lock()
	for {
		switch {
		case st.closing:
			sc.mu.Unlock()
			return 0, errStreamClosed
		case !st.recv.empty() && len(p) > 0:
			n := st.recv.read(sc.srv.bufs, p)
			connInc, streamInc := st.consumedLocked(int64(n))
			sc.mu.Unlock()
			sc.writeWindowUpdates(st.id, connInc, streamInc)
			return n, nil
		case st.err != nil:
			err := st.err
			sc.mu.Unlock()
			return 0, ended("read", err)
		case st.recvDone:
			sc.mu.Unlock()
			return 0, io.EOF
		case len(p) == 0:
			sc.mu.Unlock()
			return 0, nil
		}
		st.recvCond.Wait()
	}
}

// Write sends p to the client. It returns once all of p is framed for the
// TLS connection (written, or pending with the goroutine writing there),
// which happens as flow control allows.
func (s *Stream) Write(p []byte) (int, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if err := s.writable(); err != nil {
		return 0, err
	}
	if len(p) == 0 {
		return 0, nil
	}
	if err := s.st.writeData(p, false); err != nil {
		// writeData reports no partial count; the stream is unusable.
		if errors.Is(err, errStreamClosing) {
			s.truncated = true
		}
		return 0, ended("write", err)
	}
	return len(p), nil
}

// writable reports why the stream cannot be written, or nil.
func (s *Stream) writable() error {
	sc := s.st.sc
	sc.mu.Lock()
	defer sc.mu.Unlock()
	switch {
	case s.st.closing:
		return errStreamClosed
	case s.st.err != nil:
		return ended("write", s.st.err)
	case s.st.sentEnd:
		return fmt.Errorf("hbone: stream write: %w", errWriteAfterCloseWrite)
	}
	return nil
}

// CloseWrite sends END_STREAM after the bytes already written; reading
// goes on until the client's END_STREAM.
func (s *Stream) CloseWrite() error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	return s.closeWriteLocked()
}

// closeWriteLocked sends END_STREAM unless it was sent; s.wmu is held.
func (s *Stream) closeWriteLocked() error {
	sc := s.st.sc
	sc.mu.Lock()
	switch {
	case s.st.err != nil:
		err := s.st.err
		sc.mu.Unlock()
		return ended("close write", err)
	case s.st.sentEnd:
		sc.mu.Unlock()
		return nil
	}
	sc.mu.Unlock()
	if err := s.st.writeData(nil, true); err != nil {
		return fmt.Errorf("hbone: stream close write: %w", err)
	}
	return nil
}

// Close ends the stream: END_STREAM unless CloseWrite sent it, then, if
// the client has not ended its side, RST_STREAM NO_ERROR, which tells it to
// stop sending while what it was sent stays readable. Bytes the client
// sent that were not read are dropped (and returned to the connection's
// flow-control window). A Write waiting for flow control when Close is
// called fails, and the stream is reset (RST_STREAM CANCEL) instead, as
// its bytes cannot all be delivered. Close is safe to call more than
// once; after it, Read and Write fail with net.ErrClosed. The backend
// stays open until TakeStream returns.
func (s *Stream) Close() error {
	st := s.st
	sc := st.sc
	sc.mu.Lock()
	if st.closing {
		sc.mu.Unlock()
		return nil
	}
	st.closing = true
	connInc := sc.creditConnLocked(int64(st.recv.discard(sc.srv.bufs)))
	st.recvCond.Broadcast()
	sc.sendCond.Broadcast()
	sc.mu.Unlock()
	sc.writeWindowUpdates(0, connInc, 0)

	// A Write under way finishes what flow control allows now, or gives
	// up (truncated).
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.truncated {
		s.abort(http2.ErrCodeCancel)
		return nil
	}
	err := s.closeWriteLocked()
	// Only the client's side may still be open.
	s.abort(http2.ErrCodeNo)
	if err != nil && !errors.Is(err, errStreamReset) {
		return err
	}
	return nil
}

// abort ends a stream that is still open with RST_STREAM code, leaving the
// backend to the StreamTaker (run closes it when TakeStream returns).
func (s *Stream) abort(code http2.ErrCode) {
	st := s.st
	sc := st.sc
	sc.mu.Lock()
	open := !st.closed && st.err == nil
	if open {
		st.backend = nil
	}
	sc.mu.Unlock()
	if open {
		st.abort(errStreamClosed, false, true, code)
	}
}

// Reset aborts the stream: RST_STREAM CONNECT_ERROR to the client, which
// sees its connection reset rather than ended, and the backend closed.
// reason is logged (at debug level).
func (s *Stream) Reset(reason string) {
	s.st.resetLocal(http2.ErrCodeConnect, reason)
}

// LocalAddr returns the local address of the tunnel's TCP connection.
func (s *Stream) LocalAddr() net.Addr { return s.local }

// RemoteAddr returns the address of the peer node proxy (the tunnel's
// TCP connection); Request.Forwarded names the original client.
func (s *Stream) RemoteAddr() net.Addr { return s.remote }

// SetDeadline is not supported.
func (s *Stream) SetDeadline(time.Time) error { return errDeadlines }

// SetReadDeadline is not supported.
func (s *Stream) SetReadDeadline(time.Time) error { return errDeadlines }

// SetWriteDeadline is not supported.
func (s *Stream) SetWriteDeadline(time.Time) error { return errDeadlines }
