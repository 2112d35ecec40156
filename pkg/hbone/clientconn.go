package hbone

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// clientConn is one pooled HTTP/2 connection of the client, written on
// x/net's Framer and hpack like the server (serverConn) rather than on
// x/net's ClientConn. x/net's client sends a request body from a goroutine
// of its own that reads the body (an io.Pipe for a tunnel): every chunk the
// relay wrote crossed two goroutines before it reached the socket, and
// every chunk received crossed the read loop and a body pipe. Here the
// goroutine that calls Conn.Write frames and encrypts its bytes itself,
// and the read loop delivers received bytes straight into the destination
// socket when it can (sink.go), so a chunk normally crosses no goroutine
// at all.
//
// One read loop goroutine per connection owns the Framer's read side;
// writes go through w (wire.go). Stream state is guarded by mu; lock order
// is w.mu, then mu, then w.ctlMu.
type clientConn struct {
	key     Key
	tuning  Tuning
	idleFor time.Duration
	log     *slog.Logger
	bufs    *bufPool
	tc      *tls.Conn
	local   net.Addr
	remote  net.Addr

	fr *http2.Framer // read side
	w  *frameWriter

	lastRead atomic.Int64 // unix nanoseconds of the last frame read
	timer    *time.Timer
	done     chan struct{} // closed when the connection is closed

	mu             sync.Mutex
	sendCond       sync.Cond // flow-control and deadline waiters; L is &mu
	streams        map[uint32]*Conn
	nextID         uint32
	reserved       int   // streams promised to Dial callers, not yet opened
	sendWindow     int64 // what we may still send on the connection
	recvWindow     int64 // what the server may still send
	recvUnacked    int64 // consumed bytes not yet returned by WINDOW_UPDATE
	peerWindow     int64 // server's SETTINGS_INITIAL_WINDOW_SIZE
	peerFrame      int   // server's SETTINGS_MAX_FRAME_SIZE
	peerMaxStreams int   // server's SETTINGS_MAX_CONCURRENT_STREAMS
	peerMaxHeaders int64 // server's SETTINGS_MAX_HEADER_LIST_SIZE; 0: none
	goAway         bool  // the server sent GOAWAY
	shutdown       bool  // we are draining: no new streams
	drained        chan struct{}
	closed         bool
	closeErr       error
	pinging        bool
	idleSince      time.Time
}

// Errors of streams whose connection went away.
var (
	errConnGoAway   = errors.New("hbone: connection is going away")
	errIDsExhausted = errors.New("hbone: stream IDs exhausted")
)

// StreamResetError is returned (wrapped) by Pool.Dial and by reads and
// writes on a Conn when the server reset the stream with RST_STREAM: a
// CONNECT_ERROR when the backend connection failed or was reset,
// REFUSED_STREAM when the server did not process the stream at all, …
type StreamResetError struct {
	// Code is the RST_STREAM error code.
	Code http2.ErrCode
}

// Error names the code.
func (e *StreamResetError) Error() string {
	return "hbone: stream reset by server: " + e.Code.String()
}

// newClientConn sends the connection preface and starts the read loop on a
// TLS connection that negotiated h2.
func newClientConn(p *Pool, key Key, tc *tls.Conn, raw *bufConn) (*clientConn, error) {
	t := p.cfg.Tuning
	cc := &clientConn{
		key:            key,
		tuning:         t,
		idleFor:        p.cfg.IdleTimeout,
		log:            p.log.With("key", key.String()),
		bufs:           p.bufs,
		tc:             tc,
		local:          tc.LocalAddr(),
		remote:         tc.RemoteAddr(),
		done:           make(chan struct{}),
		streams:        make(map[uint32]*Conn),
		nextID:         1,
		sendWindow:     initialWindow,
		recvWindow:     int64(t.ConnWindow),
		peerWindow:     initialWindow,
		peerFrame:      16 << 10,
		peerMaxStreams: math.MaxInt32,
		idleSince:      time.Now(),
	}
	cc.sendCond.L = &cc.mu
	cc.w, cc.fr = newFrameWriter(tc, raw, t.MaxFrameSize, maxResponseHeaderBytes)

	cc.w.lock()
	cc.w.buf.b = append(cc.w.buf.b, http2.ClientPreface...)
	cc.w.fr.WriteSettings(
		http2.Setting{ID: http2.SettingEnablePush, Val: 0},
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: t.StreamWindow},
		http2.Setting{ID: http2.SettingMaxFrameSize, Val: t.MaxFrameSize},
		http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: maxResponseHeaderBytes},
	)
	if t.ConnWindow > initialWindow {
		cc.w.fr.WriteWindowUpdate(0, t.ConnWindow-initialWindow)
	}
	if err := cc.w.unlockWait(); err != nil {
		return nil, fmt.Errorf("hbone: HTTP/2 preface: %w", err)
	}
	cc.lastRead.Store(time.Now().UnixNano())
	cc.timer = time.AfterFunc(cc.tickPeriod(), cc.tick)
	go cc.readLoop()
	return cc, nil
}

// connState is what the pool needs to know about a connection.
type connState struct {
	closed  bool // gone
	closing bool // takes no new streams
	streams int  // open and reserved streams
}

func (cc *clientConn) state() connState {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return connState{
		closed:  cc.closed,
		closing: cc.closed || cc.goAway || cc.shutdown || cc.nextID > maxWindow,
		streams: len(cc.streams) + cc.reserved,
	}
}

// tryReserve promises one stream to a Dial caller when the connection has
// room under limit and the server's SETTINGS_MAX_CONCURRENT_STREAMS.
func (cc *clientConn) tryReserve(limit int) bool {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.closed || cc.goAway || cc.shutdown || cc.nextID > maxWindow {
		return false
	}
	if len(cc.streams)+cc.reserved >= min(limit, cc.peerMaxStreams) {
		return false
	}
	cc.reserved++
	cc.idleSince = time.Time{}
	return true
}

// headerFields returns the CONNECT request's header list and its size as
// SETTINGS_MAX_HEADER_LIST_SIZE counts it, or an error for a field that
// is not valid HTTP.
func headerFields(authority string, header http.Header) ([]hpack.HeaderField, int64, error) {
	if !httpguts.ValidHostHeader(authority) {
		return nil, 0, fmt.Errorf("hbone: invalid authority %q", authority)
	}
	fields := make([]hpack.HeaderField, 0, 2+len(header))
	fields = append(fields,
		hpack.HeaderField{Name: ":method", Value: http.MethodConnect},
		hpack.HeaderField{Name: ":authority", Value: authority})
	for k, vs := range header {
		if !httpguts.ValidHeaderFieldName(k) {
			return nil, 0, fmt.Errorf("hbone: invalid header field name %q", k)
		}
		name := strings.ToLower(k)
		switch name {
		case "host", "connection", "proxy-connection", "keep-alive", "transfer-encoding", "upgrade", "te":
			continue // connection-specific: not allowed in HTTP/2 (RFC 9113 §8.2.2)
		}
		for _, v := range vs {
			if !httpguts.ValidHeaderFieldValue(v) {
				return nil, 0, fmt.Errorf("hbone: invalid value for header field %q", k)
			}
			fields = append(fields, hpack.HeaderField{Name: name, Value: v})
		}
	}
	var size int64
	for _, f := range fields {
		size += int64(f.Size())
	}
	return fields, size, nil
}

// openStream sends a CONNECT request on a reserved stream and waits for the
// response. Errors that mean the request never reached the server's
// application logic wrap errConnGoAway, errConnClosed or a REFUSED_STREAM
// StreamResetError (Pool.Dial retries those).
func (cc *clientConn) openStream(ctx context.Context, authority string, header http.Header) (*Conn, error) {
	fields, size, err := headerFields(authority, header)
	if err != nil {
		cc.mu.Lock()
		cc.reserved--
		cc.maybeIdleLocked()
		cc.mu.Unlock()
		return nil, err
	}
	st := &Conn{cc: cc, local: cc.local, remote: cc.remote, resp: make(chan struct{})}
	st.recvCond.L = &cc.mu

	cc.w.lock()
	cc.mu.Lock()
	cc.reserved--
	switch {
	case cc.closed:
		err = errConnClosed
	case cc.goAway:
		err = errConnGoAway
	case cc.nextID > maxWindow:
		err = errIDsExhausted
	case cc.peerMaxHeaders > 0 && size > cc.peerMaxHeaders:
		err = fmt.Errorf("hbone: request header list of %d bytes exceeds the server's limit of %d", size, cc.peerMaxHeaders)
	}
	if err != nil {
		cc.maybeIdleLocked()
		cc.mu.Unlock()
		cc.w.unlock()
		return nil, err
	}
	st.id = cc.nextID
	cc.nextID += 2
	st.sendWindow = cc.peerWindow
	st.recvWindow = int64(cc.tuning.StreamWindow)
	cc.streams[st.id] = st
	maxFrame := cc.peerFrame
	cc.mu.Unlock()
	// IDs are taken and HEADERS written under the write lock: streams open
	// in ID order, as RFC 9113 §5.1.1 requires.
	err = cc.w.appendHeaders(st.id, false, maxFrame, fields...)
	if uerr := cc.w.unlock(); err == nil {
		err = uerr
	}
	if err != nil {
		cc.closeNow(err)
		return nil, fmt.Errorf("%w: %v", errConnClosed, err)
	}

	select {
	case <-st.resp:
	case <-ctx.Done():
		st.Close()
		return nil, ctx.Err()
	}
	cc.mu.Lock()
	status, reason, rerr := st.status, st.reason, st.err
	cc.mu.Unlock()
	if rerr != nil && status == 0 {
		st.Close()
		return nil, rerr
	}
	if status != http.StatusOK {
		st.Close()
		return nil, &StatusError{Code: status, Reason: reason}
	}
	return st, nil
}

func (cc *clientConn) readLoop() {
	err := cc.readFrames()
	var ce connError
	if errors.As(err, &ce) {
		cc.log.Warn("hbone connection closed on protocol error", "code", ce.code.String(), "reason", ce.reason)
		cc.w.goAway(0, ce.code, []byte(ce.reason))
	} else if err != nil && !isClosedErr(err) {
		cc.log.Debug("hbone connection ended", "err", err)
	}
	cc.closeNow(err)
}

func (cc *clientConn) readFrames() error {
	for {
		f, err := cc.fr.ReadFrame()
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				// Malformed response headers: the stream fails, the
				// connection survives.
				cc.resetStream(se.StreamID, se.Code, fmt.Errorf("hbone: malformed response: %s", errString(cc.fr.ErrorDetail(), se)))
				continue
			}
			var ce http2.ConnectionError
			if errors.As(err, &ce) {
				return connError{http2.ErrCode(ce), errString(cc.fr.ErrorDetail(), err)}
			}
			return err
		}
		cc.lastRead.Store(time.Now().UnixNano())
		if err := cc.processFrame(f); err != nil {
			return err
		}
	}
}

func (cc *clientConn) processFrame(f http2.Frame) error {
	switch f := f.(type) {
	case *http2.DataFrame:
		return cc.processData(f)
	case *http2.MetaHeadersFrame:
		return cc.processHeaders(f)
	case *http2.WindowUpdateFrame:
		return cc.processWindowUpdate(f)
	case *http2.SettingsFrame:
		if f.IsAck() {
			return nil
		}
		return cc.processSettings(f)
	case *http2.PingFrame:
		if f.IsAck() {
			cc.mu.Lock()
			cc.pinging = false
			cc.mu.Unlock()
			return nil
		}
		cc.w.control(ctlFrame{kind: ctlPingAck, data: f.Data})
		return nil
	case *http2.RSTStreamFrame:
		return cc.processReset(f)
	case *http2.GoAwayFrame:
		cc.processGoAway(f)
		return nil
	case *http2.PushPromiseFrame:
		return connError{http2.ErrCodeProtocol, "PUSH_PROMISE with push disabled"}
	default:
		return nil // PRIORITY and unknown frame types
	}
}

func (cc *clientConn) processSettings(f *http2.SettingsFrame) error {
	ack := ctlFrame{kind: ctlSettingsAck}
	err := f.ForeachSetting(func(s http2.Setting) error {
		if err := s.Valid(); err != nil {
			var ce http2.ConnectionError
			if errors.As(err, &ce) {
				return connError{http2.ErrCode(ce), "invalid " + s.String()}
			}
			return connError{http2.ErrCodeProtocol, "invalid " + s.String()}
		}
		cc.mu.Lock()
		defer cc.mu.Unlock()
		switch s.ID {
		case http2.SettingInitialWindowSize:
			delta := int64(s.Val) - cc.peerWindow
			cc.peerWindow = int64(s.Val)
			for _, st := range cc.streams {
				st.sendWindow += delta
				if st.sendWindow > maxWindow {
					return connError{http2.ErrCodeFlowControl, "SETTINGS_INITIAL_WINDOW_SIZE overflows a stream window"}
				}
			}
			cc.sendCond.Broadcast()
		case http2.SettingMaxFrameSize:
			cc.peerFrame = int(s.Val)
		case http2.SettingMaxConcurrentStreams:
			cc.peerMaxStreams = int(min(s.Val, math.MaxInt32))
		case http2.SettingMaxHeaderListSize:
			cc.peerMaxHeaders = int64(s.Val)
		case http2.SettingHeaderTableSize:
			ack.tableSize, ack.hasTableSize = s.Val, true
		}
		return nil
	})
	if err != nil {
		return err
	}
	cc.w.control(ack)
	return nil
}

func (cc *clientConn) processWindowUpdate(f *http2.WindowUpdateFrame) error {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	inc := int64(f.Increment)
	if f.StreamID == 0 {
		cc.sendWindow += inc
		if cc.sendWindow > maxWindow {
			return connError{http2.ErrCodeFlowControl, "connection window overflow"}
		}
		cc.sendCond.Broadcast()
		return nil
	}
	st := cc.streams[f.StreamID]
	if st == nil {
		if f.StreamID >= cc.nextID {
			return connError{http2.ErrCodeProtocol, "WINDOW_UPDATE on idle stream"}
		}
		return nil // closed stream
	}
	st.sendWindow += inc
	if st.sendWindow > maxWindow {
		cc.resetStreamLocked(st, http2.ErrCodeFlowControl, errors.New("hbone: stream window overflow"))
		return nil
	}
	cc.sendCond.Broadcast()
	return nil
}

func (cc *clientConn) processReset(f *http2.RSTStreamFrame) error {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	st := cc.streams[f.StreamID]
	if st == nil {
		if f.StreamID >= cc.nextID {
			return connError{http2.ErrCodeProtocol, "RST_STREAM on idle stream"}
		}
		return nil
	}
	cc.w.control(ctlFrame{kind: ctlMark, sent: &st.rstSent})
	if f.ErrCode == http2.ErrCodeNo && st.recvDone {
		// The response is complete and the server asks us to stop
		// sending (RFC 9113 §8.1): what it sent stays readable.
		st.writeErr = &StreamResetError{Code: f.ErrCode}
		cc.removeStreamLocked(st)
		cc.sendCond.Broadcast()
		return nil
	}
	st.abortLocked(&StreamResetError{Code: f.ErrCode})
	return nil
}

func (cc *clientConn) processGoAway(f *http2.GoAwayFrame) {
	if f.ErrCode != http2.ErrCodeNo {
		cc.log.Warn("hbone server sent GOAWAY", "code", f.ErrCode.String(), "debug", string(f.DebugData()))
	}
	cc.mu.Lock()
	cc.goAway = true
	for id, st := range cc.streams {
		if id > f.LastStreamID {
			// Never processed by the server: safe to retry elsewhere.
			st.abortLocked(errConnGoAway)
			cc.w.control(ctlFrame{kind: ctlMark, sent: &st.rstSent})
		}
	}
	idle := len(cc.streams) == 0 && cc.reserved == 0
	cc.mu.Unlock()
	if idle {
		go cc.closeGracefully()
	}
}

func (cc *clientConn) processHeaders(f *http2.MetaHeadersFrame) error {
	cc.mu.Lock()
	st := cc.streams[f.StreamID]
	if st == nil {
		defer cc.mu.Unlock()
		if f.StreamID >= cc.nextID || f.StreamID%2 == 0 {
			return connError{http2.ErrCodeProtocol, "HEADERS on a stream we did not open"}
		}
		return nil // a stream we reset
	}
	defer cc.mu.Unlock()
	if st.status != 0 {
		// Trailers: they must end the stream.
		if !f.StreamEnded() {
			cc.resetStreamLocked(st, http2.ErrCodeProtocol, errors.New("hbone: HEADERS without END_STREAM after the response"))
			return nil
		}
		st.recvDone = true
		st.recvCond.Broadcast()
		cc.maybeCloseStreamLocked(st)
		return nil
	}
	code, err := strconv.Atoi(f.PseudoValue("status"))
	if err != nil || code < 100 || code > 999 {
		cc.resetStreamLocked(st, http2.ErrCodeProtocol, fmt.Errorf("hbone: malformed response status %q", f.PseudoValue("status")))
		return nil
	}
	if code < 200 {
		if f.StreamEnded() {
			cc.resetStreamLocked(st, http2.ErrCodeProtocol, errors.New("hbone: informational response ends the stream"))
		}
		return nil // 1xx: wait for the final response
	}
	st.status = code
	for _, hf := range f.RegularFields() {
		if hf.Name == reasonHeader {
			st.reason = hf.Value
		}
	}
	if f.StreamEnded() {
		st.recvDone = true
		cc.maybeCloseStreamLocked(st)
	}
	st.respDone = true
	close(st.resp)
	return nil
}

func (cc *clientConn) processData(f *http2.DataFrame) error {
	id := f.StreamID
	n := int64(f.Length) // flow control counts padding too
	cc.mu.Lock()
	if n > cc.recvWindow {
		cc.mu.Unlock()
		return connError{http2.ErrCodeFlowControl, "connection window exceeded"}
	}
	cc.recvWindow -= n
	st := cc.streams[id]
	if st == nil || st.err != nil || st.recvDone || st.status == 0 || n > st.recvWindow {
		var err error
		switch {
		case st == nil && (id >= cc.nextID || id%2 == 0):
			err = connError{http2.ErrCodeProtocol, "DATA on idle stream"}
		case st == nil || st.err != nil:
		case st.recvDone:
			cc.resetStreamLocked(st, http2.ErrCodeStreamClosed, errors.New("hbone: DATA after END_STREAM"))
		case st.status == 0:
			cc.resetStreamLocked(st, http2.ErrCodeProtocol, errors.New("hbone: DATA before the response"))
		default:
			cc.resetStreamLocked(st, http2.ErrCodeFlowControl, errors.New("hbone: stream window exceeded"))
		}
		connInc := cc.creditConnLocked(n)
		cc.mu.Unlock()
		cc.w.windowUpdates(0, connInc, 0)
		return err
	}
	st.recvWindow -= n
	data := f.Data()
	var connInc, streamInc uint32
	if pad := n - int64(len(data)); pad > 0 {
		connInc = cc.creditConnLocked(pad)
		streamInc = st.creditLocked(pad)
	}
	if len(data) > 0 && st.sink != nil && st.recv.empty() && !st.sinkWriting && st.sinkErr == nil {
		// Direct delivery (sink.go) into the socket WriteTo copies to.
		st.sinkBusy = true
		cc.mu.Unlock()
		k, err := st.sink.TryWrite(data)
		cc.mu.Lock()
		st.sinkBusy = false
		st.sinkN += int64(k)
		connInc += cc.creditConnLocked(int64(k))
		if !f.StreamEnded() {
			streamInc += st.creditLocked(int64(k))
		}
		data = data[k:]
		if err != nil {
			st.sinkErr = err
		}
		if st.err != nil || st.sinkErr != nil {
			// Nobody will read the rest.
			connInc += cc.creditConnLocked(int64(len(data)))
			data = nil
		}
	}
	if len(data) > 0 {
		st.recv.write(cc.bufs, data)
	}
	if f.StreamEnded() {
		st.recvDone = true
		cc.maybeCloseStreamLocked(st)
	}
	// Wake the reader only when it has something to do: waking it after a
	// direct delivery would cost the hand-off that delivery saved. WriteTo
	// collects sinkN when it next wakes; one that detached the sink
	// meanwhile waits for sinkBusy to clear.
	if len(data) > 0 || f.StreamEnded() || st.sinkErr != nil || st.sink == nil {
		st.recvCond.Broadcast()
	}
	cc.mu.Unlock()
	cc.w.windowUpdates(id, connInc, streamInc)
	return nil
}

// creditConnLocked returns n consumed bytes to the connection window and
// reports the WINDOW_UPDATE increment to send now, if any. Updates are
// batched to a quarter of the window.
func (cc *clientConn) creditConnLocked(n int64) uint32 {
	cc.recvUnacked += n
	if cc.recvUnacked < int64(cc.tuning.ConnWindow)/4 {
		return 0
	}
	inc := cc.recvUnacked
	cc.recvUnacked = 0
	cc.recvWindow += inc
	return uint32(inc)
}

// resetStream resets a stream by ID (for errors the Framer reports).
func (cc *clientConn) resetStream(id uint32, code http2.ErrCode, err error) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if st := cc.streams[id]; st != nil {
		cc.resetStreamLocked(st, code, err)
		return
	}
	cc.w.control(ctlFrame{kind: ctlReset, id: id, val: uint32(code)})
}

// resetStreamLocked aborts st with err and sends RST_STREAM with code.
func (cc *clientConn) resetStreamLocked(st *Conn, code http2.ErrCode, err error) {
	if st.err != nil {
		return
	}
	cc.log.Debug("hbone stream reset", "stream", st.id, "code", code.String(), "err", err)
	st.abortLocked(err)
	cc.w.control(ctlFrame{kind: ctlReset, id: st.id, val: uint32(code), sent: &st.rstSent})
}

// maybeCloseStreamLocked forgets st once both sides sent END_STREAM.
func (cc *clientConn) maybeCloseStreamLocked(st *Conn) {
	if st.recvDone && st.sentEnd {
		cc.removeStreamLocked(st)
	}
}

// removeStreamLocked forgets st.
func (cc *clientConn) removeStreamLocked(st *Conn) {
	if cc.streams[st.id] != st {
		return
	}
	delete(cc.streams, st.id)
	cc.maybeIdleLocked()
}

// maybeIdleLocked notes that the connection has no streams: the idle clock
// starts, a drain completes, a connection the server is done with closes.
func (cc *clientConn) maybeIdleLocked() {
	if len(cc.streams) != 0 || cc.reserved != 0 || cc.closed {
		return
	}
	cc.idleSince = time.Now()
	if cc.shutdown && cc.drained != nil {
		select {
		case <-cc.drained:
		default:
			close(cc.drained)
		}
	}
	if cc.goAway {
		go cc.closeGracefully()
	}
}

func (cc *clientConn) tickPeriod() time.Duration {
	d := min(cc.tuning.PingInterval, cc.tuning.PingTimeout) / 2
	if cc.idleFor > 0 {
		d = min(d, cc.idleFor/2)
	}
	return max(d, 10*time.Millisecond)
}

// tick runs the keepalive and idle checks.
func (cc *clientConn) tick() {
	t := cc.tuning
	now := time.Now()
	silent := now.Sub(time.Unix(0, cc.lastRead.Load()))
	if silent >= t.PingInterval+t.PingTimeout {
		cc.log.Warn("hbone connection closed: server silent", "silent_for", silent.Round(time.Millisecond))
		cc.closeNow(errors.New("keepalive timeout"))
		return
	}
	cc.mu.Lock()
	if cc.closed {
		cc.mu.Unlock()
		return
	}
	ping := silent >= t.PingInterval && !cc.pinging
	if ping {
		cc.pinging = true
	}
	idle := len(cc.streams) == 0 && cc.reserved == 0 && !cc.idleSince.IsZero() && now.Sub(cc.idleSince) >= cc.idleFor
	if idle {
		cc.shutdown = true // no stream may start now
	}
	cc.mu.Unlock()
	if ping {
		cc.w.control(ctlFrame{kind: ctlPing, data: pingKeepalive})
	}
	if idle {
		cc.log.Debug("hbone connection closed: idle")
		cc.w.goAway(0, http2.ErrCodeNo, nil)
		cc.closeGracefully()
		return
	}
	cc.timer.Reset(cc.tickPeriod())
}

// Shutdown sends GOAWAY, takes no new streams and waits for the open ones
// to end; when ctx ends first the connection is closed and ctx's error
// returned.
func (cc *clientConn) Shutdown(ctx context.Context) error {
	cc.mu.Lock()
	cc.shutdown = true
	if cc.drained == nil {
		cc.drained = make(chan struct{})
	}
	drained := cc.drained
	cc.maybeIdleLocked()
	closed := cc.closed
	cc.mu.Unlock()
	if closed {
		return nil
	}
	cc.w.lock()
	cc.w.fr.WriteGoAway(0, http2.ErrCodeNo, nil)
	if err := cc.w.unlockWait(); err != nil {
		cc.closeNow(err)
		return err
	}
	select {
	case <-drained:
		cc.closeGracefully()
		return nil
	case <-cc.done:
		return nil
	case <-ctx.Done():
		cc.closeNow(ctx.Err())
		return ctx.Err()
	}
}

// closeGracefully writes the frames still pending (the last streams'
// ends) and closes the connection.
func (cc *clientConn) closeGracefully() {
	cc.w.flushPending()
	cc.closeNow(nil)
}

// closeNow closes the connection and aborts every stream.
func (cc *clientConn) closeNow(reason error) {
	cc.mu.Lock()
	if cc.closed {
		cc.mu.Unlock()
		return
	}
	cc.closed = true
	err := errConnClosed
	if reason != nil && !isClosedErr(reason) {
		err = fmt.Errorf("%w: %v", errConnClosed, reason)
	}
	cc.closeErr = err
	for _, st := range cc.streams {
		st.abortLocked(err)
	}
	cc.sendCond.Broadcast()
	close(cc.done)
	cc.mu.Unlock()
	if cc.timer != nil {
		cc.timer.Stop()
	}
	cc.w.closeConn()
}
