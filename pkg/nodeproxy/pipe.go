package nodeproxy

import (
	"errors"
	"io"
	"net"
	"sync"

	"github.com/palisade-net/palisade/pkg/hbone"
)

// copyBufSize is the size of the buffers used to move bytes between the two
// halves of a proxied connection. 32 KiB matches io.Copy's default while
// letting us pool the buffers (io.Copy allocates one per call).
const copyBufSize = 32 << 10

type bufPool struct{ p sync.Pool }

func newBufPool() *bufPool {
	return &bufPool{p: sync.Pool{New: func() any { b := make([]byte, copyBufSize); return &b }}}
}

type closeWriter interface{ CloseWrite() error }

// pipe copies bytes both ways between a and b until both directions end,
// propagating half-closes, and returns the byte counts (a→b, b→a). Both
// connections are closed when it returns.
func (bp *bufPool) pipe(a, b net.Conn) (aToB, bToA int64, err error) {
	var wg sync.WaitGroup
	var errAB, errBA error
	wg.Add(1)
	go func() {
		defer wg.Done()
		aToB, errAB = bp.copyHalf(b, a)
	}()
	bToA, errBA = bp.copyHalf(a, b)
	wg.Wait()
	a.Close()
	b.Close()
	return aToB, bToA, errors.Join(errAB, errBA)
}

// copyHalf copies src to dst, then half-closes dst (or closes it fully when
// it cannot half-close, which also unblocks the other direction).
func (bp *bufPool) copyHalf(dst, src net.Conn) (int64, error) {
	var n int64
	var err error
	dt, dok := dst.(*net.TCPConn)
	st, sok := src.(*net.TCPConn)
	switch hc, hok := src.(*hbone.Conn); {
	case dok && sok:
		n, err = dt.ReadFrom(st) // splice(2): no copy through user space
	case hok:
		// The tunnel's read loop writes straight into dst when the socket
		// takes the bytes at once, without waking this goroutine; the
		// count includes those bytes.
		n, err = hc.WriteTo(dst)
	default:
		buf := bp.p.Get().(*[]byte)
		n, err = io.CopyBuffer(writerOnly{dst}, readerOnly{src}, *buf)
		bp.p.Put(buf)
	}
	if cw, ok := dst.(closeWriter); ok {
		if cerr := cw.CloseWrite(); cerr != nil {
			dst.Close()
			src.Close()
		}
	} else {
		dst.Close()
	}
	if err != nil {
		// A failed direction tears both down: the peer must not wait for
		// bytes that will never come.
		dst.Close()
		src.Close()
		if isClosedErr(err) {
			err = nil
		}
	}
	return n, err
}

// readerOnly and writerOnly hide ReadFrom/WriteTo so that CopyBuffer uses
// our pooled buffer (TCPConn.ReadFrom would otherwise use splice or its own
// buffer, which is fine for TCP↔TCP but not for the TLS/HTTP2 side).
type readerOnly struct{ io.Reader }
type writerOnly struct{ io.Writer }

func isClosedErr(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrClosedPipe)
}
