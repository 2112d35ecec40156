package hbone

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"sync"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

var errRefused = errors.New("hbone: stream refused")

// serverStream is one CONNECT stream. Two goroutines serve it once Connect
// allowed it: run copies backend → client (downstream), upstream copies
// client → backend what the read loop could not write into the backend
// directly (sink.go). Fields marked "mu" are guarded by the connection
// mutex.
type serverStream struct {
	sc     *serverConn
	id     uint32
	ctx    context.Context
	cancel context.CancelFunc

	recvCond    sync.Cond     // signalled on new data, END_STREAM or abort; L is &sc.mu
	recv        recvBuffer    // mu
	recvWindow  int64         // mu: what the client may still send
	recvUnacked int64         // mu
	recvDone    bool          // mu: END_STREAM received
	sendWindow  int64         // mu
	sentEnd     bool          // mu: END_STREAM sent
	closed      bool          // mu: closed in the protocol sense, not in sc.streams
	err         error         // mu: why the stream was aborted
	backend     net.Conn      // mu
	sink        TryWriter     // mu: the backend, when it can be written without blocking
	upWriting   bool          // mu: upstream is writing bytes it took from recv
	closing     bool          // mu: the Stream's Close began; its reads and writes fail, writeData no longer waits for flow control
	rstSent     bool          // guarded by the write lock (sc.w)
	_           [0]sync.Mutex // not copyable
}

func newServerStream(sc *serverConn, id uint32) *serverStream {
	ctx, cancel := sc.streamContext()
	st := &serverStream{
		sc:         sc,
		id:         id,
		ctx:        ctx,
		cancel:     cancel,
		recvWindow: int64(sc.srv.tuning.StreamWindow),
	}
	st.recvCond.L = &sc.mu
	return st
}

// run calls Connect and, on success, splices the stream to the backend or
// hands it to the backend (StreamTaker).
func (st *serverStream) run(req *Request, authority string) {
	sc := st.sc
	defer sc.streamFinished()
	defer st.cancel()

	backend, status, err := st.connect(req)
	reason := ""
	switch {
	case err == nil && backend != nil && (status == 0 || status == http.StatusOK):
		status = http.StatusOK
	case status == 0 || status == http.StatusOK:
		status = http.StatusServiceUnavailable
		if err == nil {
			err = errors.New("no backend connection")
		}
		reason = err.Error()
	case err != nil:
		reason = err.Error()
	default:
		reason = http.StatusText(status)
	}
	if status != http.StatusOK && backend != nil {
		backend.Close()
		backend = nil
	}

	sc.mu.Lock()
	if st.err != nil { // reset by the client or connection closed meanwhile
		sc.mu.Unlock()
		if backend != nil {
			backend.Close()
		}
		return
	}
	if status != http.StatusOK {
		resetToo := !st.recvDone
		st.err = errRefused
		connInc := sc.creditConnLocked(int64(st.recv.discard(sc.srv.bufs)))
		st.closeLocked()
		sc.mu.Unlock()
		sc.srv.refused(sc, status, reason, authority)
		sc.writeRefusal(st.id, status, reason, resetToo)
		sc.writeWindowUpdates(0, connInc, 0)
		return
	}
	st.backend = backend
	taker, takes := backend.(StreamTaker)
	if !takes {
		st.sink = directWriterFor(backend)
	}
	sc.mu.Unlock()

	if err := st.writeOK(); err != nil {
		st.abort(err, false, false, 0)
		backend.Close()
		return
	}
	if takes {
		s := &Stream{st: st, local: req.LocalAddr, remote: req.RemoteAddr}
		taker.TakeStream(s)
		s.Close()
		backend.Close()
		return
	}
	upDone := make(chan struct{})
	go func() {
		defer close(upDone)
		st.upstream(backend)
	}()
	st.downstream(backend)
	<-upDone
	backend.Close()
}

// connect calls the Connect callback; a panic in it refuses the stream (503)
// instead of taking down every tunnel of the process.
func (st *serverStream) connect(req *Request) (backend net.Conn, status int, err error) {
	defer func() {
		if r := recover(); r != nil {
			buf := make([]byte, 16<<10)
			buf = buf[:runtime.Stack(buf, false)]
			st.sc.log.Error("hbone Connect callback panicked", "panic", fmt.Sprint(r), "stack", string(buf))
			backend, status, err = nil, http.StatusServiceUnavailable, fmt.Errorf("internal error: %v", r)
		}
	}()
	return st.sc.srv.cfg.Connect(st.ctx, req)
}

func (st *serverStream) writeOK() error {
	sc := st.sc
	sc.mu.Lock()
	maxFrame := sc.peerFrame
	sc.mu.Unlock()
	sc.w.lock()
	if st.rstSent {
		sc.w.unlock()
		return errStreamReset
	}
	if err := sc.w.appendHeaders(st.id, false, maxFrame, hpack.HeaderField{Name: ":status", Value: "200"}); err != nil {
		sc.w.unlock()
		return err
	}
	return sc.w.unlock()
}

// upstream copies client → backend, then propagates END_STREAM as
// CloseWrite.
func (st *serverStream) upstream(backend net.Conn) {
	sc := st.sc
	for {
		sc.mu.Lock()
		for st.recv.empty() && !st.recvDone && st.err == nil {
			st.recvCond.Wait()
		}
		if st.err != nil {
			sc.mu.Unlock()
			return
		}
		if st.recv.empty() { // END_STREAM and everything written
			sc.mu.Unlock()
			if cw, ok := backend.(interface{ CloseWrite() error }); ok {
				cw.CloseWrite()
			}
			return
		}
		buf, data := st.recv.pop()
		st.upWriting = true
		sc.mu.Unlock()

		_, err := backend.Write(data)
		n := int64(len(data))
		sc.srv.bufs.put(buf)

		sc.mu.Lock()
		st.upWriting = false
		connInc, streamInc := st.consumedLocked(n)
		sc.mu.Unlock()
		sc.writeWindowUpdates(st.id, connInc, streamInc)
		if err != nil {
			st.resetLocal(http2.ErrCodeConnect, "backend write: "+err.Error())
			return
		}
	}
}

// downstream copies backend → client, then ends the stream on backend EOF.
func (st *serverStream) downstream(backend net.Conn) {
	bp := st.sc.srv.bufs.get()
	defer st.sc.srv.bufs.put(bp)
	buf := *bp
	for {
		n, rerr := backend.Read(buf)
		if n > 0 {
			if err := st.writeData(buf[:n], false); err != nil {
				return
			}
		}
		if rerr == io.EOF {
			st.writeData(nil, true)
			return
		}
		if rerr != nil {
			if !st.aborted() {
				st.resetLocal(http2.ErrCodeConnect, "backend read: "+rerr.Error())
			}
			return
		}
	}
}

// writeData sends p as DATA frames within the flow-control windows and the
// client's max frame size, flushing each frame; end sets END_STREAM on the
// last one (an empty frame when p is empty).
func (st *serverStream) writeData(p []byte, end bool) error {
	sc := st.sc
	for {
		sc.mu.Lock()
		for st.err == nil && !sc.closed && !st.closing && len(p) > 0 && (st.sendWindow <= 0 || sc.sendWindow <= 0) {
			sc.sendCond.Wait()
		}
		if st.err != nil {
			err := st.err
			sc.mu.Unlock()
			return err
		}
		if sc.closed {
			sc.mu.Unlock()
			return errConnClosed
		}
		if len(p) > 0 && (st.sendWindow <= 0 || sc.sendWindow <= 0) {
			// st.closing: a Stream's Close does not wait for the client
			// to make room.
			sc.mu.Unlock()
			return errStreamClosing
		}
		n := min(int64(len(p)), st.sendWindow, sc.sendWindow)
		st.sendWindow -= n
		sc.sendWindow -= n
		last := end && n == int64(len(p))
		if last {
			st.sentEnd = true
		}
		maxFrame := min(sc.peerFrame, maxDataFrame)
		sc.mu.Unlock()

		var err error
		sc.w.lock()
		if st.rstSent {
			err = errStreamReset
		} else {
			err = sc.w.appendData(st.id, last, p[:n], maxFrame, &st.rstSent)
		}
		if uerr := sc.w.unlock(); err == nil {
			err = uerr
		}
		if err != nil {
			if !errors.Is(err, errStreamReset) {
				sc.closeNow(err)
			}
			return err
		}
		p = p[n:]
		if last {
			sc.mu.Lock()
			st.maybeCloseLocked()
			sc.mu.Unlock()
			return nil
		}
		if len(p) == 0 {
			return nil
		}
	}
}

// consumedLocked credits n bytes taken from recv to the windows and
// returns the WINDOW_UPDATE increments due (none for the stream once the
// client ended it or it was aborted).
func (st *serverStream) consumedLocked(n int64) (connInc, streamInc uint32) {
	connInc = st.sc.creditConnLocked(n)
	if !st.recvDone && st.err == nil {
		streamInc = st.creditLocked(n)
	}
	return connInc, streamInc
}

// creditLocked returns n consumed bytes to the stream window and reports the
// WINDOW_UPDATE increment to send now, if any (batched to a quarter window).
func (st *serverStream) creditLocked(n int64) uint32 {
	st.recvUnacked += n
	if st.recvUnacked < int64(st.sc.srv.tuning.StreamWindow)/4 {
		return 0
	}
	inc := st.recvUnacked
	st.recvUnacked = 0
	st.recvWindow += inc
	return uint32(inc)
}

// maybeCloseLocked closes the stream once both sides sent END_STREAM.
func (st *serverStream) maybeCloseLocked() {
	if st.recvDone && st.sentEnd {
		st.closeLocked()
	}
}

// closeLocked removes the stream from the connection's open streams.
func (st *serverStream) closeLocked() {
	if st.closed {
		return
	}
	st.closed = true
	delete(st.sc.streams, st.id)
	st.sc.active--
}

func (st *serverStream) aborted() bool {
	st.sc.mu.Lock()
	defer st.sc.mu.Unlock()
	return st.err != nil
}

// resetLocal aborts the stream and sends RST_STREAM with code.
func (st *serverStream) resetLocal(code http2.ErrCode, reason string) {
	st.sc.log.Debug("hbone stream reset", "stream", st.id, "code", code.String(), "reason", reason)
	st.abort(fmt.Errorf("%w: %s", errStreamReset, reason), code == http2.ErrCodeConnect, true, code)
}

// abort ends the stream at once: buffered bytes are dropped (and returned to
// the connection window), both copiers are woken, the backend is closed — with
// a TCP RST when rstBackend, mirroring a CONNECT_ERROR (RFC 9113 §8.5) — and,
// when sendRST and the stream was still open, RST_STREAM is sent.
func (st *serverStream) abort(err error, rstBackend, sendRST bool, code http2.ErrCode) {
	sc := st.sc
	sc.mu.Lock()
	if st.err != nil {
		sc.mu.Unlock()
		return
	}
	st.err = err
	wasOpen := !st.closed
	connInc := sc.creditConnLocked(int64(st.recv.discard(sc.srv.bufs)))
	st.closeLocked()
	backend := st.backend
	st.recvCond.Broadcast()
	sc.sendCond.Broadcast()
	sc.mu.Unlock()

	st.cancel()
	// Queued, never waiting for the write lock: abort also runs on the
	// read loop. Either way nothing more is written on this stream.
	if sendRST && wasOpen {
		sc.w.control(ctlFrame{kind: ctlReset, id: st.id, val: uint32(code), sent: &st.rstSent})
	} else {
		sc.w.control(ctlFrame{kind: ctlMark, sent: &st.rstSent})
	}
	sc.writeWindowUpdates(0, connInc, 0)
	if backend != nil {
		if rstBackend {
			if tc, ok := backend.(*net.TCPConn); ok {
				tc.SetLinger(0)
			}
		}
		backend.Close()
	}
}
