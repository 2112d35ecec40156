package hbone

import (
	"fmt"
	"net"
	"os"
	"syscall"
)

// Direct delivery. Bytes that arrive on a stream are normally queued by
// the connection's read loop and written out by the goroutine that serves
// the stream (the server's upstream copier, the client's Read or WriteTo):
// one goroutine hand-off, often a thread wake-up, per DATA frame. When the
// destination is a socket, the read loop first tries to write the frame's
// bytes into it without blocking. Whatever the socket cannot take at once
// is queued as before, and the read loop does not write to that stream
// again until the queue has drained, so bytes stay in order and a slow
// destination never holds up the other streams of the connection.

// TryWriter is implemented by connections that can take bytes without
// blocking. A backend returned by a ConnectFunc, or the destination of
// Conn.WriteTo, that implements it (or is a *net.TCPConn or
// *net.UnixConn) receives bytes straight from the connection's read loop
// whenever it can take them at once.
type TryWriter interface {
	// TryWrite writes as much of p as the connection accepts without
	// waiting and returns how many bytes it wrote: fewer than len(p),
	// with a nil error, when it is full for now.
	TryWrite(p []byte) (n int, err error)
}

// NewTryWriter returns a TryWriter for a socket connection (anything that
// implements syscall.Conn, such as *net.TCPConn), or nil for other
// connections. Wrappers that count bytes, for example, can implement
// TryWrite with it. The TryWriter must not be used by several goroutines
// at once.
func NewTryWriter(c net.Conn) TryWriter {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	s := &socketWriter{rc: rc}
	s.fn = s.write
	return s
}

// directWriterFor returns how to write to w without blocking, or nil.
func directWriterFor(w any) TryWriter {
	switch c := w.(type) {
	case TryWriter:
		return c
	case *net.TCPConn:
		return NewTryWriter(c)
	case *net.UnixConn:
		return NewTryWriter(c)
	}
	return nil
}

// socketWriter writes to a non-blocking socket (Go's net package puts
// every socket in non-blocking mode) and stops at EAGAIN. The arguments
// and results of one call live in the struct, so that the function handed
// to RawConn.Write is allocated once, not per call.
type socketWriter struct {
	rc  syscall.RawConn
	fn  func(fd uintptr) bool // s.write
	p   []byte
	n   int
	err error
}

// TryWrite implements TryWriter.
func (s *socketWriter) TryWrite(p []byte) (int, error) {
	s.p, s.n, s.err = p, 0, nil
	werr := s.rc.Write(s.fn)
	n, err := s.n, s.err
	s.p, s.err = nil, nil
	if err != nil {
		return n, fmt.Errorf("hbone: direct write: %w", os.NewSyscallError("write", err))
	}
	if werr != nil {
		return n, fmt.Errorf("hbone: direct write: %w", werr)
	}
	return n, nil
}

func (s *socketWriter) write(fd uintptr) bool {
	for len(s.p) > 0 {
		m, e := syscall.Write(int(fd), s.p)
		switch {
		case e == syscall.EINTR:
			continue
		case e == syscall.EAGAIN:
			return true
		case e != nil:
			s.err = e
			return true
		case m <= 0:
			return true
		}
		s.n += m
		s.p = s.p[m:]
	}
	return true // never wait for the socket to become writable
}
