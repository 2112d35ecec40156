package l7test

import (
	"bytes"
	"io"
	"net"
	"sync"
	"time"
)

// MemConn is an in-memory net.Conn for the fuzz targets: what it reads
// is fixed in advance and what is written to it is kept. Writes after
// Close fail with net.ErrClosed; deadlines are ignored. It has no
// CloseWrite: a caller that needs one adds it.
type MemConn struct {
	mu     sync.Mutex
	in     *bytes.Reader
	out    bytes.Buffer
	closed chan struct{}
	once   sync.Once
	idle   bool
}

// NewMemConn returns a MemConn reading in, then io.EOF: a client that
// sends in and half-closes. Reads after Close fail with net.ErrClosed.
func NewMemConn(in []byte) *MemConn {
	return &MemConn{in: bytes.NewReader(in), closed: make(chan struct{})}
}

// NewIdleMemConn returns a MemConn reading in and then blocking until it
// is closed, when it reads io.EOF: a peer that sends in and then stays
// connected and silent. What is left of in can be read after Close.
func NewIdleMemConn(in []byte) *MemConn {
	c := NewMemConn(in)
	c.idle = true
	return c
}

// Read reads the fixed input.
func (c *MemConn) Read(p []byte) (int, error) {
	if c.idle {
		c.mu.Lock()
		if c.in.Len() > 0 {
			defer c.mu.Unlock()
			return c.in.Read(p)
		}
		c.mu.Unlock()
		<-c.closed
		return 0, io.EOF
	}
	if c.isClosed() {
		return 0, net.ErrClosed
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.in.Read(p)
}

// Write keeps p.
func (c *MemConn) Write(p []byte) (int, error) {
	if c.isClosed() {
		return 0, net.ErrClosed
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.out.Write(p)
}

// Output returns a copy of all that was written.
func (c *MemConn) Output() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]byte(nil), c.out.Bytes()...)
}

// isClosed reports whether c was closed.
func (c *MemConn) isClosed() bool {
	select {
	case <-c.closed:
		return true
	default:
		return false
	}
}

// Close closes c; it never fails.
func (c *MemConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return nil
}

// LocalAddr returns an empty TCP address.
func (c *MemConn) LocalAddr() net.Addr { return &net.TCPAddr{} }

// RemoteAddr returns an empty TCP address.
func (c *MemConn) RemoteAddr() net.Addr { return &net.TCPAddr{} }

// SetDeadline does nothing.
func (c *MemConn) SetDeadline(time.Time) error { return nil }

// SetReadDeadline does nothing.
func (c *MemConn) SetReadDeadline(time.Time) error { return nil }

// SetWriteDeadline does nothing.
func (c *MemConn) SetWriteDeadline(time.Time) error { return nil }
