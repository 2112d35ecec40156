package hbone

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Conn is one HBONE stream as returned by Pool.Dial: a full-duplex net.Conn
// whose CloseWrite sends END_STREAM (the server half-closes its backend) and
// whose Close resets the stream if it is still open.
//
// Deadlines are supported with one difference from TCP: HTTP/2 reads and
// writes cannot be interrupted and resumed, so an expired deadline aborts
// the stream, and Read and Write then fail with os.ErrDeadlineExceeded.
// Extending a deadline before it expires is free.
type Conn struct {
	body   io.ReadCloser  // response body: server → client
	pw     *io.PipeWriter // request body: client → server
	cancel context.CancelFunc
	local  net.Addr
	remote net.Addr

	closed    atomic.Bool
	closeOnce sync.Once
	expired   atomic.Bool

	mu     sync.Mutex
	timers [2]deadline // read, write
}

type deadline struct {
	timer *time.Timer
	gen   uint64
}

var _ net.Conn = (*Conn)(nil)

// Read reads bytes the server sent; io.EOF after the server's END_STREAM.
func (c *Conn) Read(p []byte) (int, error) {
	n, err := c.body.Read(p)
	if err != nil && err != io.EOF {
		err = c.wrapErr("read", err)
	}
	return n, err
}

// Write sends p on the stream. It returns once the HTTP/2 transport has
// taken all of p, which happens as flow control allows.
func (c *Conn) Write(p []byte) (int, error) {
	n, err := c.pw.Write(p)
	if err != nil {
		err = c.wrapErr("write", err)
	}
	return n, err
}

func (c *Conn) wrapErr(op string, err error) error {
	switch {
	case c.expired.Load():
		return fmt.Errorf("hbone: %s: %w", op, os.ErrDeadlineExceeded)
	case c.closed.Load():
		return fmt.Errorf("hbone: %s: %w", op, net.ErrClosed)
	case errors.Is(err, io.ErrClosedPipe):
		return fmt.Errorf("hbone: %s: stream closed: %w", op, err)
	}
	return fmt.Errorf("hbone: %s: %w", op, err)
}

// CloseWrite half-closes the stream: END_STREAM is sent once the bytes
// already written are, and the server half-closes its backend. Reading goes
// on until the server's END_STREAM.
func (c *Conn) CloseWrite() error {
	return c.pw.Close()
}

// Close ends the stream in both directions, resetting it if either side is
// still open. It is safe to call more than once.
func (c *Conn) Close() error {
	c.closeOnce.Do(func() {
		c.closed.Store(true)
		c.pw.CloseWithError(net.ErrClosed)
		c.body.Close()
		c.cancel()
		c.mu.Lock()
		for i := range c.timers {
			if t := c.timers[i].timer; t != nil {
				t.Stop()
			}
		}
		c.mu.Unlock()
	})
	return nil
}

// LocalAddr returns the local address of the underlying TCP connection.
func (c *Conn) LocalAddr() net.Addr { return c.local }

// RemoteAddr returns the address of the peer node proxy (ip:15008).
func (c *Conn) RemoteAddr() net.Addr { return c.remote }

// SetDeadline sets both deadlines; see the type documentation.
func (c *Conn) SetDeadline(t time.Time) error {
	c.setDeadline(0, t)
	c.setDeadline(1, t)
	return nil
}

// SetReadDeadline sets the read deadline; see the type documentation.
func (c *Conn) SetReadDeadline(t time.Time) error {
	c.setDeadline(0, t)
	return nil
}

// SetWriteDeadline sets the write deadline; see the type documentation.
func (c *Conn) SetWriteDeadline(t time.Time) error {
	c.setDeadline(1, t)
	return nil
}

func (c *Conn) setDeadline(i int, t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	d := &c.timers[i]
	d.gen++
	if d.timer != nil {
		d.timer.Stop()
		d.timer = nil
	}
	if t.IsZero() || c.closed.Load() {
		return
	}
	gen := d.gen
	d.timer = time.AfterFunc(time.Until(t), func() {
		c.mu.Lock()
		current := c.timers[i].gen == gen
		c.mu.Unlock()
		if current {
			c.expired.Store(true)
			c.Close()
		}
	})
}
