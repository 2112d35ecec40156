package hbone

import "sync"

// bufPool recycles copyBufferSize byte buffers. Pointers to slices are pooled
// so that Get and Put do not allocate.
type bufPool struct{ p sync.Pool }

func newBufPool() *bufPool {
	return &bufPool{p: sync.Pool{New: func() any {
		b := make([]byte, copyBufferSize)
		return &b
	}}}
}

func (bp *bufPool) get() *[]byte  { return bp.p.Get().(*[]byte) }
func (bp *bufPool) put(b *[]byte) { bp.p.Put(b) }

// chunk is a pooled buffer holding unread bytes in buf[r:w].
type chunk struct {
	buf  *[]byte
	r, w int
}

// recvBuffer queues bytes received on a stream until its reader takes them
// (the server's upstream copier, the client's Read or WriteTo). Bytes are
// copied once, from the HTTP/2 frame into pooled chunks; copiers take whole
// chunks. Guarded by the connection mutex.
type recvBuffer struct {
	chunks []chunk
	size   int
}

func (b *recvBuffer) empty() bool { return b.size == 0 }

// write appends a copy of p.
func (b *recvBuffer) write(bp *bufPool, p []byte) {
	b.size += len(p)
	for len(p) > 0 {
		if n := len(b.chunks); n > 0 {
			last := &b.chunks[n-1]
			if last.w < len(*last.buf) {
				c := copy((*last.buf)[last.w:], p)
				last.w += c
				p = p[c:]
				continue
			}
		}
		b.chunks = append(b.chunks, chunk{buf: bp.get()})
	}
}

// pop removes the oldest chunk; the caller owns it and returns it to the
// pool once written.
func (b *recvBuffer) pop() (buf *[]byte, data []byte) {
	c := b.chunks[0]
	n := copy(b.chunks, b.chunks[1:])
	b.chunks[n] = chunk{}
	b.chunks = b.chunks[:n]
	b.size -= c.w - c.r
	return c.buf, (*c.buf)[c.r:c.w]
}

// read copies buffered bytes into p and returns emptied chunks to the pool.
func (b *recvBuffer) read(bp *bufPool, p []byte) int {
	n := 0
	for n < len(p) && len(b.chunks) > 0 {
		c := &b.chunks[0]
		k := copy(p[n:], (*c.buf)[c.r:c.w])
		c.r += k
		n += k
		if c.r == c.w {
			bp.put(c.buf)
			m := copy(b.chunks, b.chunks[1:])
			b.chunks[m] = chunk{}
			b.chunks = b.chunks[:m]
		}
	}
	b.size -= n
	return n
}

// discard drops everything and reports how many bytes were dropped.
func (b *recvBuffer) discard(bp *bufPool) int {
	n := b.size
	for i := range b.chunks {
		bp.put(b.chunks[i].buf)
		b.chunks[i] = chunk{}
	}
	b.chunks = b.chunks[:0]
	b.size = 0
	return n
}
