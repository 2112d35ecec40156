package kafka

import (
	"io"
	"net"
	"sync"
	"time"
)

// memConn is one end of an in-memory duplex connection with half-close,
// for fuzzing without sockets.
type memConn struct {
	r         *io.PipeReader
	w         *io.PipeWriter
	closeOnce sync.Once
}

// memPair returns two connected ends.
func memPair() (*memConn, *memConn) {
	ar, bw := io.Pipe()
	br, aw := io.Pipe()
	return &memConn{r: ar, w: aw}, &memConn{r: br, w: bw}
}

func (c *memConn) Read(p []byte) (int, error)  { return c.r.Read(p) }
func (c *memConn) Write(p []byte) (int, error) { return c.w.Write(p) }

// CloseWrite ends the stream the peer reads.
func (c *memConn) CloseWrite() error { return c.w.Close() }

// Close ends both directions; the peer's writes fail.
func (c *memConn) Close() error {
	c.closeOnce.Do(func() {
		c.r.CloseWithError(net.ErrClosed)
		c.w.Close()
	})
	return nil
}

type memAddr struct{}

func (memAddr) Network() string { return "mem" }
func (memAddr) String() string  { return "mem" }

func (c *memConn) LocalAddr() net.Addr              { return memAddr{} }
func (c *memConn) RemoteAddr() net.Addr             { return memAddr{} }
func (c *memConn) SetDeadline(time.Time) error      { return nil }
func (c *memConn) SetReadDeadline(time.Time) error  { return nil }
func (c *memConn) SetWriteDeadline(time.Time) error { return nil }
