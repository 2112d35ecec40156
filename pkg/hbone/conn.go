package hbone

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/net/http2"
)

// Conn is one HBONE stream as returned by Pool.Dial: a full-duplex net.Conn
// whose CloseWrite sends END_STREAM (the server half-closes its backend) and
// whose Close resets the stream if it is still open.
//
// Write frames the bytes in the calling goroutine and writes them to the
// TLS connection, or leaves them to the goroutine already writing there
// (see frameWriter.release), waiting for HTTP/2 flow control as needed.
// Read returns bytes the connection's read loop queued; WriteTo (used by
// io.Copy) lets the read loop write them straight into a socket
// destination when the socket can take them (see TryWriter).
//
// Deadlines behave as on TCP: an expired deadline fails waiting reads and
// writes with os.ErrDeadlineExceeded and can be extended afterwards. A write
// that is already under way on the shared TLS connection finishes first.
type Conn struct {
	cc     *clientConn
	id     uint32
	local  net.Addr
	remote net.Addr
	resp   chan struct{} // closed once the response arrived or the stream failed

	// Guarded by cc.mu.
	status      int    // final response status; 0 before it
	reason      string // palisade-reason of a refusal
	respDone    bool   // resp is closed
	recv        recvBuffer
	recvCond    sync.Cond // new data, END_STREAM, abort, deadline; L is &cc.mu
	recvWindow  int64     // what the server may still send
	recvUnacked int64
	recvDone    bool  // END_STREAM received
	sendWindow  int64 // what we may still send
	sentEnd     bool  // END_STREAM sent (CloseWrite)
	writeErr    error // the server closed our sending side (RST_STREAM NO_ERROR after its END_STREAM)
	err         error // why the stream ended abnormally
	closed      bool  // Close was called
	deadlines   [2]time.Time
	timers      [2]*time.Timer
	// Direct delivery to WriteTo's destination (sink.go).
	sink        TryWriter
	sinkBusy    bool  // the read loop is writing to sink
	sinkWriting bool  // WriteTo is writing bytes it took from recv
	sinkN       int64 // bytes the read loop wrote to sink, not yet counted
	sinkErr     error

	rstSent bool // guarded by the write lock: no DATA may follow
}

const (
	readDeadline = iota
	writeDeadline
)

var _ net.Conn = (*Conn)(nil)

// errLocked is the error for op on a stream that ended abnormally.
func (c *Conn) errLocked(op string) error {
	if c.closed {
		return fmt.Errorf("hbone: %s: %w", op, net.ErrClosed)
	}
	return fmt.Errorf("hbone: %s: %w", op, c.err)
}

func (c *Conn) expiredLocked(i int) bool {
	d := c.deadlines[i]
	return !d.IsZero() && !time.Now().Before(d)
}

func deadlineErr(op string) error {
	return fmt.Errorf("hbone: %s: %w", op, os.ErrDeadlineExceeded)
}

// consumedLocked credits n bytes taken from recv to the windows and
// returns the WINDOW_UPDATE increments due.
func (c *Conn) consumedLocked(n int64) (connInc, streamInc uint32) {
	connInc = c.cc.creditConnLocked(n)
	if !c.recvDone && c.err == nil {
		streamInc = c.creditLocked(n)
	}
	return connInc, streamInc
}

// creditLocked returns n consumed bytes to the stream window and reports
// the WINDOW_UPDATE increment to send now, if any (batched to a quarter
// window).
func (c *Conn) creditLocked(n int64) uint32 {
	c.recvUnacked += n
	if c.recvUnacked < int64(c.cc.tuning.StreamWindow)/4 {
		return 0
	}
	inc := c.recvUnacked
	c.recvUnacked = 0
	c.recvWindow += inc
	return uint32(inc)
}

// Read reads bytes the server sent; io.EOF after the server's END_STREAM.
func (c *Conn) Read(p []byte) (int, error) {
	cc := c.cc
	cc.mu.Lock()
	for {
		if !c.recv.empty() && len(p) > 0 {
			n := c.recv.read(cc.bufs, p)
			connInc, streamInc := c.consumedLocked(int64(n))
			cc.mu.Unlock()
			cc.w.windowUpdates(c.id, connInc, streamInc)
			return n, nil
		}
		var err error
		switch {
		case c.err != nil:
			err = c.errLocked("read")
		case c.recvDone:
			err = io.EOF
		case len(p) == 0:
		case c.expiredLocked(readDeadline):
			err = deadlineErr("read")
		default:
			c.recvCond.Wait()
			continue
		}
		cc.mu.Unlock()
		return 0, err
	}
}

// WriteTo writes what the server sends to w until the server's END_STREAM
// (then it returns a nil error) or a failure, and returns the number of
// bytes written to w. When w is a socket (or a TryWriter) the connection's
// read loop writes into it directly whenever it can take the bytes at once.
func (c *Conn) WriteTo(w io.Writer) (int64, error) {
	cc := c.cc
	var total int64
	cc.mu.Lock()
	c.sink = directWriterFor(w)
	defer cc.mu.Unlock() // every return below detaches the sink first
	for {
		total += c.sinkN
		c.sinkN = 0
		switch {
		case c.sinkErr != nil:
			// The read loop's write failed; w is broken.
			err := c.sinkErr
			c.sinkErr = nil
			return total + c.drainSinkLocked(), err
		case !c.recv.empty():
			buf, data := c.recv.pop()
			c.sinkWriting = true
			cc.mu.Unlock()
			n, err := w.Write(data)
			cc.bufs.put(buf)
			cc.mu.Lock()
			c.sinkWriting = false
			total += int64(n)
			connInc, streamInc := c.consumedLocked(int64(len(data)))
			cc.w.windowUpdates(c.id, connInc, streamInc)
			if err != nil {
				return total + c.drainSinkLocked(), err
			}
			if n < len(data) {
				return total + c.drainSinkLocked(), io.ErrShortWrite
			}
		case c.err != nil:
			return total + c.drainSinkLocked(), c.errLocked("read")
		case c.recvDone:
			return total + c.drainSinkLocked(), nil
		case c.expiredLocked(readDeadline):
			return total + c.drainSinkLocked(), deadlineErr("read")
		default:
			c.recvCond.Wait()
		}
	}
}

// drainSinkLocked detaches the sink, waits for a direct write in progress
// and returns the bytes it wrote that are not yet counted.
func (c *Conn) drainSinkLocked() int64 {
	c.sink = nil
	for c.sinkBusy {
		c.recvCond.Wait()
	}
	n := c.sinkN
	c.sinkN = 0
	return n
}

// Write sends p on the stream. It returns once all of p is framed for the
// TLS connection (written, or pending with the goroutine writing there),
// which happens as flow control allows.
func (c *Conn) Write(p []byte) (int, error) {
	cc := c.cc
	written := 0
	for len(p) > 0 {
		cc.mu.Lock()
		for c.err == nil && c.writeErr == nil && !c.sentEnd && !cc.closed && (c.sendWindow <= 0 || cc.sendWindow <= 0) && !c.expiredLocked(writeDeadline) {
			cc.sendCond.Wait()
		}
		var err error
		switch {
		case c.err != nil:
			err = c.errLocked("write")
		case c.writeErr != nil:
			err = fmt.Errorf("hbone: write: %w", c.writeErr)
		case c.sentEnd:
			err = fmt.Errorf("hbone: write: %w", errWriteAfterCloseWrite)
		case cc.closed:
			err = fmt.Errorf("hbone: write: %w", cc.closeErr)
		case c.sendWindow <= 0 || cc.sendWindow <= 0:
			err = deadlineErr("write")
		}
		if err != nil {
			cc.mu.Unlock()
			return written, err
		}
		n := int(min(int64(len(p)), c.sendWindow, cc.sendWindow))
		c.sendWindow -= int64(n)
		cc.sendWindow -= int64(n)
		maxFrame := min(cc.peerFrame, maxDataFrame)
		cc.mu.Unlock()

		cc.w.lock()
		if c.rstSent {
			err = errStreamReset
		} else {
			err = cc.w.appendData(c.id, false, p[:n], maxFrame, &c.rstSent)
		}
		if uerr := cc.w.unlock(); err == nil {
			err = uerr
		}
		if errors.Is(err, errStreamReset) {
			cc.mu.Lock()
			err := c.errLocked("write")
			cc.mu.Unlock()
			return written, err
		}
		if err != nil {
			cc.closeNow(err)
			return written, fmt.Errorf("hbone: write: %w", err)
		}
		written += n
		p = p[n:]
	}
	return written, nil
}

var errWriteAfterCloseWrite = errors.New("stream closed for writing")

// CloseWrite half-closes the stream: END_STREAM follows the bytes already
// written, and the server half-closes its backend. Reading goes on until
// the server's END_STREAM.
func (c *Conn) CloseWrite() error {
	cc := c.cc
	cc.mu.Lock()
	if c.err != nil {
		err := c.errLocked("close write")
		cc.mu.Unlock()
		return err
	}
	if c.sentEnd {
		cc.mu.Unlock()
		return nil
	}
	c.sentEnd = true
	cc.sendCond.Broadcast()
	cc.mu.Unlock()

	cc.w.lock()
	var err error
	if !c.rstSent {
		err = cc.w.appendData(c.id, true, nil, 1, nil)
	}
	if uerr := cc.w.unlock(); err == nil {
		err = uerr
	}
	if err != nil {
		cc.closeNow(err)
		return fmt.Errorf("hbone: close write: %w", err)
	}
	cc.mu.Lock()
	cc.maybeCloseStreamLocked(c)
	cc.mu.Unlock()
	return nil
}

// Close ends the stream in both directions, resetting it (RST_STREAM
// CANCEL) if either side is still open. It is safe to call more than once.
func (c *Conn) Close() error {
	cc := c.cc
	cc.mu.Lock()
	if c.closed {
		cc.mu.Unlock()
		return nil
	}
	c.closed = true
	open := cc.streams[c.id] == c
	c.abortLocked(net.ErrClosed)
	for i, t := range c.timers {
		if t != nil {
			t.Stop()
			c.timers[i] = nil
		}
	}
	cc.mu.Unlock()
	if open {
		cc.w.control(ctlFrame{kind: ctlReset, id: c.id, val: uint32(http2.ErrCodeCancel), sent: &c.rstSent})
	} else {
		cc.w.control(ctlFrame{kind: ctlMark, sent: &c.rstSent})
	}
	return nil
}

// abortLocked ends the stream with err: buffered bytes are dropped and
// returned to the connection window, waiters wake, the connection forgets
// the stream. The caller sends RST_STREAM if one is due.
func (c *Conn) abortLocked(err error) {
	cc := c.cc
	if c.err != nil {
		return
	}
	c.err = err
	if n := c.recv.discard(cc.bufs); n > 0 {
		cc.w.windowUpdates(0, cc.creditConnLocked(int64(n)), 0)
	}
	if !c.respDone {
		c.respDone = true
		close(c.resp)
	}
	cc.removeStreamLocked(c)
	c.recvCond.Broadcast()
	cc.sendCond.Broadcast()
}

// LocalAddr returns the local address of the underlying TCP connection.
func (c *Conn) LocalAddr() net.Addr { return c.local }

// RemoteAddr returns the address of the peer node proxy (ip:15008).
func (c *Conn) RemoteAddr() net.Addr { return c.remote }

// SetDeadline sets both deadlines; see the type documentation.
func (c *Conn) SetDeadline(t time.Time) error {
	c.setDeadline(readDeadline, t)
	c.setDeadline(writeDeadline, t)
	return nil
}

// SetReadDeadline sets the read deadline; see the type documentation.
func (c *Conn) SetReadDeadline(t time.Time) error {
	c.setDeadline(readDeadline, t)
	return nil
}

// SetWriteDeadline sets the write deadline; see the type documentation.
func (c *Conn) SetWriteDeadline(t time.Time) error {
	c.setDeadline(writeDeadline, t)
	return nil
}

func (c *Conn) setDeadline(i int, t time.Time) {
	cc := c.cc
	cc.mu.Lock()
	defer cc.mu.Unlock()
	c.deadlines[i] = t
	if c.timers[i] != nil {
		c.timers[i].Stop()
		c.timers[i] = nil
	}
	if t.IsZero() || c.closed {
		return
	}
	c.timers[i] = time.AfterFunc(time.Until(t), func() {
		cc.mu.Lock()
		c.recvCond.Broadcast()
		cc.sendCond.Broadcast()
		cc.mu.Unlock()
	})
}
