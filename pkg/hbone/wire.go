package hbone

import (
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"net"
	"sync"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// The write side of an HTTP/2 connection, shared by the client (clientConn)
// and the server (serverConn), and the buffering beneath TLS.
//
// Cost model that shaped it (see docs/benchmarks.md): on the node proxies'
// hosts every goroutine hand-off and every syscall is expensive compared
// with AES-GCM. So:
//
//   - frames are appended to one buffer and leave in a single tls.Conn.Write
//     per flush, and bufConn turns the TLS records of that write into a
//     single write(2): a 32 KiB chunk costs one syscall instead of three
//     (16 KiB, 16 KiB and a 9-byte tail record). Reads are not buffered
//     beyond what tls.Conn does: a 64 KiB read buffer measured no faster
//     and would be held by every idle connection;
//   - the read loop never waits for the write lock: the control frames it
//     produces (WINDOW_UPDATE, PING and SETTINGS acks, RST_STREAM) are
//     queued and written by whoever holds the lock next, or by a short-lived
//     goroutine. A read loop blocked on a write could otherwise deadlock
//     with a peer whose read loop is blocked the same way, both TCP send
//     buffers full.

const (
	// maxDataFrame caps the payload of the DATA frames we send (the peer's
	// SETTINGS_MAX_FRAME_SIZE applies too). Larger frames make the receiver
	// wait for more bytes before it can forward any; frames of one TLS
	// record (16 KiB − 9) measured 5–15% more CPU per MiB, as each frame
	// costs the receiver a write(2) into the destination socket.
	maxDataFrame = 64 << 10
	// maxWriteBatch is how many bytes of frames are gathered before a flush
	// is forced.
	maxWriteBatch = 256 << 10
	// ioBufferSize is the initial capacity of a write batch buffer.
	ioBufferSize = 64 << 10
)

// batchPool recycles write batch buffers, so that an idle connection holds
// none. A Pool or Server shares one among its connections.
type batchPool struct{ p sync.Pool }

func newBatchPool() *batchPool {
	return &batchPool{p: sync.Pool{New: func() any {
		b := make([]byte, 0, ioBufferSize+1<<10)
		return &b
	}}}
}

// get returns an empty buffer; the pointer goes back to put with the
// buffer as it grew (pointers, so that neither allocates).
func (bp *batchPool) get() *[]byte {
	b := bp.p.Get().(*[]byte)
	*b = (*b)[:0]
	return b
}

// put recycles b unless a rare large batch made it big.
func (bp *batchPool) put(b *[]byte) {
	if cap(*b) <= maxWriteBatch+2*ioBufferSize {
		bp.p.Put(b)
	}
}

// bufConn sits between tls.Conn and the TCP connection. Writes pass
// through, except between beginBatch and endBatch, when the records of one
// tls.Conn.Write are gathered and written with one syscall. tls.Conn
// serialises its own writes; mu orders them with endBatch.
type bufConn struct {
	net.Conn
	batch *batchPool

	mu       sync.Mutex
	batching bool
	buf      *[]byte // from batch while batching
}

func newBufConn(c net.Conn, batch *batchPool) *bufConn {
	return &bufConn{Conn: c, batch: batch}
}

// Write writes p, or gathers it while a batch is open.
func (c *bufConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.batching {
		*c.buf = append(*c.buf, p...)
		return len(p), nil
	}
	return c.Conn.Write(p)
}

func (c *bufConn) beginBatch() {
	c.mu.Lock()
	c.batching = true
	c.buf = c.batch.get()
	c.mu.Unlock()
}

// endBatch writes what the batch gathered.
func (c *bufConn) endBatch() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.batching = false
	var err error
	if len(*c.buf) > 0 {
		_, err = c.Conn.Write(*c.buf)
	}
	c.batch.put(c.buf)
	c.buf = nil
	return err
}

// ctlKind is the type of a queued control frame.
type ctlKind uint8

const (
	ctlWindow ctlKind = iota
	ctlPingAck
	ctlPing
	ctlSettingsAck
	ctlReset
	ctlMark // write nothing, set sent
)

// ctlFrame is a control frame waiting for the write lock.
type ctlFrame struct {
	kind ctlKind
	id   uint32
	val  uint32 // window increment or error code
	data [8]byte
	// sent, for ctlReset and ctlMark, is set under the write lock when
	// the frame is written (ctlMark: instead of writing anything), so that
	// no DATA follows it.
	sent *bool
	// tableSize, for ctlSettingsAck, is the peer's new
	// SETTINGS_HEADER_TABLE_SIZE, applied to the encoder before the ACK
	// leaves (header blocks before it still use the old size).
	tableSize    uint32
	hasTableSize bool
}

// frameWriter serialises frame writes on one connection. Holders of mu
// append frames to buf (directly or through fr and henc) and flush.
type frameWriter struct {
	tc    *tls.Conn
	raw   *bufConn
	batch *batchPool

	mu   sync.Mutex
	fr   *http2.Framer // write side only; appends to buf
	buf  frameBuf
	bufp *[]byte // where buf.b came from, while frames are pending or the lock is held
	henc *hpack.Encoder
	hbuf bytes.Buffer
	err  error // sticky: the connection is unusable once a write failed

	// Write combining (see release). All guarded by mu.
	flushing bool      // a goroutine is writing a batch to the TLS connection
	taken    uint64    // batches taken by writers so far
	written  uint64    // of those, the ones written (or failed)
	waiters  int       // goroutines waiting in release
	moved    sync.Cond // on mu: a batch was taken, or the writer stopped

	ctlMu      sync.Mutex
	ctl        []ctlFrame
	ctlRunning bool // a goroutine is on its way to write ctl
}

// frameBuf is the writer behind the Framer's write side. b comes from the
// batch pool while the write lock is held, and goes back at each flush.
type frameBuf struct{ b []byte }

func (w *frameBuf) Write(p []byte) (int, error) {
	w.b = append(w.b, p...)
	return len(p), nil
}

// newFrameWriter returns the writer and the Framer whose read side the
// connection's read loop uses (its write side belongs to the writer).
func newFrameWriter(tc *tls.Conn, raw *bufConn, maxReadFrame, maxHeaderList uint32) (*frameWriter, *http2.Framer) {
	w := &frameWriter{tc: tc, raw: raw, batch: raw.batch}
	w.moved.L = &w.mu
	fr := http2.NewFramer(&w.buf, tc)
	fr.SetReuseFrames()
	fr.SetMaxReadFrameSize(maxReadFrame)
	fr.ReadMetaHeaders = hpack.NewDecoder(headerTableSize, nil)
	fr.MaxHeaderListSize = maxHeaderList
	w.fr = fr
	w.henc = hpack.NewEncoder(&w.hbuf)
	return w, fr
}

// lock takes the write lock and appends the control frames queued so far,
// so that a stream's writer sees whether its RST_STREAM went out.
func (w *frameWriter) lock() {
	w.mu.Lock()
	if w.bufp == nil {
		w.bufp = w.batch.get()
		w.buf.b = *w.bufp
	}
	w.appendControlLocked()
}

// unlock releases the write lock and sees to it that the frames appended
// are written, by this goroutine or by the one writing already (see
// release). It returns the connection's write error known so far: a
// failure to write these frames may be reported to a later caller only,
// so callers treat any error as the end of the connection.
func (w *frameWriter) unlock() error { return w.release(false) }

// unlockWait is unlock, but returns only once the frames appended are
// written or the connection has failed: for the preface, GOAWAY and
// other frames whose caller acts on their having left.
func (w *frameWriter) unlockWait() error { return w.release(true) }

// release implements unlock and unlockWait.
//
// Write combining: the goroutine that finds nobody writing becomes the
// writer. It takes the pending frames, releases the lock for the
// tls.Conn.Write, and goes on with whatever other goroutines appended
// meanwhile. Those goroutines return as soon as their frames are appended
// instead of waiting for the lock through the writer's syscall: when
// several streams' bytes arrive together (requests sent in bursts) they
// leave in one TLS write and one write(2), and the streams' goroutines
// neither sleep on the lock nor wake each other.
//
// A goroutine that finds maxWriteBatch bytes pending waits until the
// writer takes them, so a peer that does not read holds up its writers as
// before. Once its own frames are written, the writer hands over to such
// a waiting goroutine, and after one batch of others' frames to a
// goroutine of its own (writeRest), so that busy streams cannot keep one
// stream's goroutine writing for ever.
func (w *frameWriter) release(wait bool) error {
	if w.flushing {
		mine := w.taken + 1 // the batch being filled
		w.waiters++
		for w.flushing && w.err == nil && (len(w.buf.b) >= maxWriteBatch || (wait && w.written < mine)) {
			w.moved.Wait()
		}
		w.waiters--
		// A writer that stopped has written every batch it took, so this
		// goroutine's frames are written unless they are still pending.
		if w.flushing || w.err != nil || len(w.buf.b) == 0 {
			err := w.err
			w.mu.Unlock()
			return err
		}
		// The writer handed over: write what is pending.
	}
	w.flushing = true
	w.writeLocked(writerBatches)
	err := w.err
	w.mu.Unlock()
	return err
}

// writerBatches is how many batches a goroutine that became the writer in
// release writes at most: its own and one of the frames others appended
// meanwhile. Frames pending after that are written by a goroutine of their
// own, so that a stream's goroutine (or the read loop, which writes its
// refusals) goes back to its own work however busy the other streams are.
const writerBatches = 2

// writeLocked writes pending batches; w.mu is held (and released during
// each write) and flushing is set. It writes at most limit batches (no
// limit: 0) and hands over after its first to a goroutine waiting in
// release. It clears flushing, unless it left the rest to writeRest.
func (w *frameWriter) writeLocked(limit int) {
	for n := 0; ; n++ {
		w.appendControlLocked()
		if len(w.buf.b) == 0 || w.err != nil || (n > 0 && w.waiters > 0) {
			break
		}
		if n == limit && limit > 0 {
			go w.writeRest()
			return
		}
		out, outp := w.buf.b, w.bufp
		w.bufp = w.batch.get()
		w.buf.b = *w.bufp
		w.taken++
		w.moved.Broadcast()
		w.mu.Unlock()
		err := w.write(out)
		*outp = out[:0]
		w.batch.put(outp)
		w.mu.Lock()
		if err != nil && w.err == nil {
			w.err = fmt.Errorf("hbone: write: %w", err)
		}
		w.written = w.taken
	}
	w.flushing = false
	w.moved.Broadcast()
	if len(w.buf.b) == 0 || w.err != nil {
		// Nothing pending (or nothing will be written): an idle
		// connection holds no buffer.
		*w.bufp = w.buf.b[:0]
		w.batch.put(w.bufp)
		w.bufp, w.buf.b = nil, nil
	}
}

// writeRest writes what a writer left pending. Nobody waits for its
// result, so a failed write closes the connection (its read loop then
// ends it properly).
func (w *frameWriter) writeRest() {
	w.mu.Lock()
	w.writeLocked(0)
	err := w.err
	w.mu.Unlock()
	if err != nil {
		w.closeConn()
	}
}

// write writes one batch of frames with a single tls.Conn.Write, whose
// records bufConn gathers into a single write(2). Only the goroutine that
// is flushing calls it.
func (w *frameWriter) write(b []byte) error {
	w.raw.beginBatch()
	_, err := w.tc.Write(b)
	if berr := w.raw.endBatch(); err == nil {
		err = berr
	}
	return err
}

// appendData appends DATA frames for p, each at most maxFrame bytes, the
// last with END_STREAM when end. An empty p with end makes one empty
// frame. rst, if not nil, is the stream's flag that its RST_STREAM was
// appended: errStreamReset when that happens while p is appended. The
// caller holds the write lock.
func (w *frameWriter) appendData(id uint32, end bool, p []byte, maxFrame int, rst *bool) error {
	for {
		n := min(len(p), maxFrame)
		var flags byte
		if end && n == len(p) {
			flags = byte(http2.FlagDataEndStream)
		}
		var hdr [9]byte
		hdr[0], hdr[1], hdr[2] = byte(n>>16), byte(n>>8), byte(n)
		hdr[3] = byte(http2.FrameData)
		hdr[4] = flags
		binary.BigEndian.PutUint32(hdr[5:], id&(1<<31-1))
		w.buf.b = append(w.buf.b, hdr[:]...)
		w.buf.b = append(w.buf.b, p[:n]...)
		p = p[n:]
		if len(p) == 0 {
			return nil
		}
		if len(w.buf.b) >= maxWriteBatch {
			// Let the batch go before appending more of p. Relocking
			// appends queued control frames, perhaps this stream's
			// RST_STREAM, which no DATA may follow.
			err := w.unlock()
			w.lock()
			if err != nil {
				return err
			}
			if rst != nil && *rst {
				return errStreamReset
			}
		}
	}
}

// appendHeaders encodes fields and appends HEADERS (and CONTINUATION
// frames when the block is larger than maxFrame). The caller holds the
// write lock.
func (w *frameWriter) appendHeaders(id uint32, end bool, maxFrame int, fields ...hpack.HeaderField) error {
	w.hbuf.Reset()
	for _, f := range fields {
		if err := w.henc.WriteField(f); err != nil {
			return err
		}
	}
	block := w.hbuf.Bytes()
	first := true
	for {
		n := min(len(block), maxFrame)
		frag, rest := block[:n], block[n:]
		var err error
		if first {
			err = w.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: frag, EndStream: end, EndHeaders: len(rest) == 0})
		} else {
			err = w.fr.WriteContinuation(id, len(rest) == 0, frag)
		}
		if err != nil {
			return err
		}
		if len(rest) == 0 {
			return nil
		}
		block, first = rest, false
	}
}

// control queues a control frame; it never waits for the write lock.
func (w *frameWriter) control(c ctlFrame) {
	w.ctlMu.Lock()
	w.ctl = append(w.ctl, c)
	start := !w.ctlRunning
	w.ctlRunning = true
	w.ctlMu.Unlock()
	if start {
		go w.writeControl()
	}
}

// writeControl writes the queued control frames (unless a holder of the
// lock did first).
func (w *frameWriter) writeControl() {
	w.lock()
	if err := w.unlock(); err != nil {
		// Nobody waits for this write's result: end the connection, so
		// that its read loop notices and closes it properly.
		w.closeConn()
	}
}

// appendControlLocked appends the queued control frames.
func (w *frameWriter) appendControlLocked() {
	w.ctlMu.Lock()
	q := w.ctl
	w.ctl = nil
	w.ctlRunning = false
	w.ctlMu.Unlock()
	for _, c := range q {
		switch c.kind {
		case ctlWindow:
			w.fr.WriteWindowUpdate(c.id, c.val)
		case ctlPingAck:
			w.fr.WritePing(true, c.data)
		case ctlPing:
			w.fr.WritePing(false, c.data)
		case ctlSettingsAck:
			if c.hasTableSize {
				w.henc.SetMaxDynamicTableSize(min(c.tableSize, headerTableSize))
			}
			w.fr.WriteSettingsAck()
		case ctlMark:
			*c.sent = true
		case ctlReset:
			if c.sent != nil {
				if *c.sent {
					continue
				}
				*c.sent = true
			}
			w.fr.WriteRSTStream(c.id, http2.ErrCode(c.val))
		}
	}
}

// windowUpdates queues WINDOW_UPDATE frames for the increments that are
// not zero.
func (w *frameWriter) windowUpdates(id uint32, connInc, streamInc uint32) {
	if connInc > 0 {
		w.control(ctlFrame{kind: ctlWindow, val: connInc})
	}
	if streamInc > 0 {
		w.control(ctlFrame{kind: ctlWindow, id: id, val: streamInc})
	}
}

// goAway writes GOAWAY at once, giving up after a second on a peer that
// does not read.
func (w *frameWriter) goAway(last uint32, code http2.ErrCode, debug []byte) {
	w.tc.SetWriteDeadline(time.Now().Add(time.Second))
	w.lock()
	w.fr.WriteGoAway(last, code, debug)
	w.unlockWait()
	w.tc.SetWriteDeadline(time.Time{})
}

// flushPending waits until the frames other goroutines appended are
// written (see release), or closes the connection after a second: a
// connection that closes gracefully sends them first.
func (w *frameWriter) flushPending() {
	t := time.AfterFunc(time.Second, w.closeConn) // a peer that does not read
	defer t.Stop()
	w.lock()
	w.unlockWait()
}

// closeConn closes the TCP connection under TLS at once, without
// close_notify: a writer stuck on a dead peer is released, and HTTP/2
// ends connections with GOAWAY, not with TLS alerts.
func (w *frameWriter) closeConn() {
	w.raw.Conn.Close()
	w.tc.Close()
}
