package nodeproxy

import (
	"errors"
	"io"
	"net"
	"sync"

	"github.com/palisade-net/palisade/pkg/hbone"
)

// Buffers that move bytes between the two halves of a proxied connection.
// Every connection starts with a small one (io.Copy's default size); a
// direction whose reads fill it, a bulk transfer, moves to a large one:
// fewer reads, wake-ups and tunnel writes per MiB. It moves back once a
// read returns no more than the small buffer holds (the burst is over), so
// that the many mostly idle connections wait in Read with the small one.
// (io.Copy allocates its buffer per call and never changes its size.)
const (
	copyBufSize     = 32 << 10
	bulkCopyBufSize = 256 << 10
)

type bufPool struct{ small, bulk sync.Pool }

func newBufPool() *bufPool {
	return &bufPool{
		small: sync.Pool{New: func() any { b := make([]byte, copyBufSize); return &b }},
		bulk:  sync.Pool{New: func() any { b := make([]byte, bulkCopyBufSize); return &b }},
	}
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
		n, err = bp.copy(dst, src)
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

// copy copies src to dst until EOF (a nil error) or a failure, with a
// pooled buffer that grows to bulkCopyBufSize once a read fills it and
// shrinks again after a read the small one would have held.
func (bp *bufPool) copy(dst io.Writer, src io.Reader) (int64, error) {
	pool := &bp.small
	buf := pool.Get().(*[]byte)
	defer func() { pool.Put(buf) }()
	use := func(p *sync.Pool) {
		pool.Put(buf)
		pool, buf = p, p.Get().(*[]byte)
	}
	var total int64
	for {
		nr, rerr := src.Read(*buf)
		if nr > 0 {
			nw, werr := dst.Write((*buf)[:nr])
			total += int64(nw)
			if werr != nil {
				return total, werr
			}
			if nw != nr {
				return total, io.ErrShortWrite
			}
			switch {
			case pool == &bp.small && nr == len(*buf):
				use(&bp.bulk)
			case pool == &bp.bulk && nr <= copyBufSize:
				use(&bp.small)
			}
		}
		if rerr == io.EOF {
			return total, nil
		}
		if rerr != nil {
			return total, rerr
		}
	}
}

func isClosedErr(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrClosedPipe)
}
