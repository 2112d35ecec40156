package hbone

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

const (
	// initialWindow is the HTTP/2 default window before SETTINGS apply.
	initialWindow = 65535
	maxWindow     = 1<<31 - 1
	// headerTableSize is the HPACK dynamic table size used in both
	// directions (the HTTP/2 default).
	headerTableSize = 4096
	// reasonHeader carries the refusal reason in non-200 replies.
	reasonHeader = "palisade-reason"
)

// PING payloads the server sends.
var (
	pingKeepalive = [8]byte{'p', 'a', 'l', 'i', 'v', 'e', 0, 0}
	pingDrain     = [8]byte{'p', 'a', 'd', 'r', 'a', 'i', 'n', 0}
)

var errStreamReset = errors.New("hbone: stream reset")

// serverConn is one HTTP/2 connection of a Server, implemented on x/net's
// Framer. The read loop (serve) owns the Framer's read side; writes go
// through w (see wire.go) and are flushed at the end of each write, so
// every DATA frame leaves without delay.
type serverConn struct {
	srv    *Server
	tc     *tls.Conn
	peer   spiffeid.ID
	remote net.Addr
	local  net.Addr
	log    *slog.Logger

	fr *http2.Framer // read side
	w  *frameWriter

	lastRead atomic.Int64 // unix nanoseconds of the last frame read
	timer    *time.Timer

	mu       sync.Mutex
	sendCond sync.Cond // flow-control waiters; L is &mu
	streams  map[uint32]*serverStream
	// maxStreamID is the highest stream ID the client has used.
	maxStreamID uint32
	active      int // streams open in the protocol sense
	handlers    int // stream goroutines running
	sendWindow  int64
	recvWindow  int64 // what the client may still send on the connection
	recvUnacked int64 // consumed bytes not yet returned by WINDOW_UPDATE
	peerWindow  int64 // client's SETTINGS_INITIAL_WINDOW_SIZE
	peerFrame   int   // client's SETTINGS_MAX_FRAME_SIZE
	pinging     bool
	draining    bool
	goAwayFinal bool
	idleSince   time.Time
	closed      bool
}

func newServerConn(s *Server, tc *tls.Conn, raw *bufConn, peer spiffeid.ID) *serverConn {
	sc := &serverConn{
		srv:        s,
		tc:         tc,
		peer:       peer,
		remote:     tc.RemoteAddr(),
		local:      tc.LocalAddr(),
		streams:    make(map[uint32]*serverStream),
		sendWindow: initialWindow,
		recvWindow: int64(s.tuning.ConnWindow),
		peerWindow: initialWindow,
		peerFrame:  16 << 10,
		idleSince:  time.Now(),
	}
	sc.log = s.log.With("peer", peer.String(), "remote", sc.remote.String())
	sc.sendCond.L = &sc.mu
	sc.timer = time.AfterFunc(time.Duration(math.MaxInt64), sc.tick) // armed by serve
	sc.w, sc.fr = newFrameWriter(tc, raw, s.tuning.MaxFrameSize, s.cfg.MaxHeaderBytes)
	return sc
}

// connError is a connection-level protocol error: GOAWAY with code, then
// close.
type connError struct {
	code   http2.ErrCode
	reason string
}

func (e connError) Error() string { return fmt.Sprintf("%v: %s", e.code, e.reason) }

// serve runs the read loop until the connection ends.
func (sc *serverConn) serve() {
	err := sc.readPreface()
	if err == nil {
		sc.lastRead.Store(time.Now().UnixNano())
		sc.timer.Reset(sc.tickPeriod())
		err = sc.readLoop()
	}
	var ce connError
	switch {
	case errors.As(err, &ce):
		sc.log.Warn("hbone connection closed on protocol error", "code", ce.code.String(), "reason", ce.reason)
		sc.writeGoAway(ce.code, []byte(ce.reason))
	case err != nil && !isClosedErr(err):
		sc.log.Debug("hbone connection ended", "err", err)
	}
	sc.closeNow(err)
}

func isClosedErr(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, errConnClosed)
}

var errConnClosed = errors.New("hbone: connection closed")

// readPreface reads the client preface and first SETTINGS and sends ours.
func (sc *serverConn) readPreface() error {
	t := sc.srv.tuning
	sc.tc.SetReadDeadline(time.Now().Add(sc.srv.cfg.HandshakeTimeout))
	defer sc.tc.SetReadDeadline(time.Time{})

	sc.w.lock()
	sc.w.fr.WriteSettings(
		http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: sc.srv.cfg.MaxConcurrentStreams},
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: t.StreamWindow},
		http2.Setting{ID: http2.SettingMaxFrameSize, Val: t.MaxFrameSize},
		http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: sc.srv.cfg.MaxHeaderBytes},
	)
	if t.ConnWindow > initialWindow {
		sc.w.fr.WriteWindowUpdate(0, t.ConnWindow-initialWindow)
	}
	if err := sc.w.unlockWait(); err != nil {
		return fmt.Errorf("write settings: %w", err)
	}

	var preface [len(http2.ClientPreface)]byte
	if _, err := io.ReadFull(sc.tc, preface[:]); err != nil {
		return fmt.Errorf("read preface: %w", err)
	}
	if string(preface[:]) != http2.ClientPreface {
		return connError{http2.ErrCodeProtocol, "bad client preface"}
	}
	f, err := sc.fr.ReadFrame()
	if err != nil {
		return fmt.Errorf("read first frame: %w", err)
	}
	sf, ok := f.(*http2.SettingsFrame)
	if !ok || sf.IsAck() {
		return connError{http2.ErrCodeProtocol, "first frame is not SETTINGS"}
	}
	return sc.processSettings(sf)
}

func (sc *serverConn) readLoop() error {
	for {
		f, err := sc.fr.ReadFrame()
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				// A malformed request header block (x/net validated it):
				// the connection survives, the stream does not.
				if se.StreamID%2 == 1 {
					sc.mu.Lock()
					sc.maxStreamID = max(sc.maxStreamID, se.StreamID)
					sc.mu.Unlock()
				}
				sc.srv.refused(sc, 0, "malformed request headers: "+errString(sc.fr.ErrorDetail(), se), "")
				sc.resetStream(se.StreamID, se.Code)
				continue
			}
			var ce http2.ConnectionError
			if errors.As(err, &ce) {
				return connError{http2.ErrCode(ce), errString(sc.fr.ErrorDetail(), err)}
			}
			return err
		}
		sc.lastRead.Store(time.Now().UnixNano())
		if err := sc.processFrame(f); err != nil {
			return err
		}
	}
}

func errString(detail, err error) string {
	if detail != nil {
		return detail.Error()
	}
	return err.Error()
}

func (sc *serverConn) processFrame(f http2.Frame) error {
	switch f := f.(type) {
	case *http2.DataFrame:
		return sc.processData(f)
	case *http2.MetaHeadersFrame:
		return sc.processHeaders(f)
	case *http2.WindowUpdateFrame:
		return sc.processWindowUpdate(f)
	case *http2.SettingsFrame:
		if f.IsAck() {
			return nil
		}
		return sc.processSettings(f)
	case *http2.PingFrame:
		return sc.processPing(f)
	case *http2.RSTStreamFrame:
		return sc.processReset(f)
	case *http2.GoAwayFrame:
		// The client stops opening streams; it closes the connection
		// once its streams are done.
		return nil
	case *http2.PushPromiseFrame:
		return connError{http2.ErrCodeProtocol, "PUSH_PROMISE from client"}
	default:
		// PRIORITY and unknown frame types are ignored.
		return nil
	}
}

func (sc *serverConn) processSettings(f *http2.SettingsFrame) error {
	ack := ctlFrame{kind: ctlSettingsAck}
	err := f.ForeachSetting(func(s http2.Setting) error {
		if err := s.Valid(); err != nil {
			var ce http2.ConnectionError
			if errors.As(err, &ce) {
				return connError{http2.ErrCode(ce), "invalid " + s.String()}
			}
			return connError{http2.ErrCodeProtocol, "invalid " + s.String()}
		}
		switch s.ID {
		case http2.SettingInitialWindowSize:
			sc.mu.Lock()
			delta := int64(s.Val) - sc.peerWindow
			sc.peerWindow = int64(s.Val)
			for _, st := range sc.streams {
				st.sendWindow += delta
				if st.sendWindow > maxWindow {
					sc.mu.Unlock()
					return connError{http2.ErrCodeFlowControl, "SETTINGS_INITIAL_WINDOW_SIZE overflows a stream window"}
				}
			}
			sc.sendCond.Broadcast()
			sc.mu.Unlock()
		case http2.SettingMaxFrameSize:
			sc.mu.Lock()
			sc.peerFrame = int(s.Val)
			sc.mu.Unlock()
		case http2.SettingHeaderTableSize:
			ack.tableSize, ack.hasTableSize = s.Val, true
		}
		return nil
	})
	if err != nil {
		return err
	}
	sc.w.control(ack)
	return nil
}

func (sc *serverConn) processPing(f *http2.PingFrame) error {
	if f.IsAck() {
		sc.mu.Lock()
		sc.pinging = false
		sc.mu.Unlock()
		if f.Data == pingDrain {
			sc.finishDrain()
		}
		return nil
	}
	sc.w.control(ctlFrame{kind: ctlPingAck, data: f.Data})
	return nil
}

func (sc *serverConn) processWindowUpdate(f *http2.WindowUpdateFrame) error {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	inc := int64(f.Increment)
	if f.StreamID == 0 {
		sc.sendWindow += inc
		if sc.sendWindow > maxWindow {
			return connError{http2.ErrCodeFlowControl, "connection window overflow"}
		}
		sc.sendCond.Broadcast()
		return nil
	}
	st := sc.streams[f.StreamID]
	if st == nil {
		if f.StreamID > sc.maxStreamID {
			return connError{http2.ErrCodeProtocol, "WINDOW_UPDATE on idle stream"}
		}
		return nil // closed stream: allowed, ignored
	}
	st.sendWindow += inc
	if st.sendWindow > maxWindow {
		go st.resetLocal(http2.ErrCodeFlowControl, "stream window overflow")
		return nil
	}
	sc.sendCond.Broadcast()
	return nil
}

func (sc *serverConn) processReset(f *http2.RSTStreamFrame) error {
	sc.mu.Lock()
	st := sc.streams[f.StreamID]
	idle := st == nil && f.StreamID > sc.maxStreamID
	sc.mu.Unlock()
	if idle {
		return connError{http2.ErrCodeProtocol, "RST_STREAM on idle stream"}
	}
	if st != nil {
		st.abort(fmt.Errorf("%w by client: %v", errStreamReset, f.ErrCode), f.ErrCode == http2.ErrCodeConnect, false, 0)
	}
	return nil
}

func (sc *serverConn) processData(f *http2.DataFrame) error {
	id := f.StreamID
	n := int64(f.Length) // flow control counts padding too
	sc.mu.Lock()
	if n > sc.recvWindow {
		sc.mu.Unlock()
		return connError{http2.ErrCodeFlowControl, "connection window exceeded"}
	}
	sc.recvWindow -= n
	st := sc.streams[id]
	if st == nil || st.recvDone || st.err != nil {
		if st == nil && id > sc.maxStreamID {
			sc.mu.Unlock()
			return connError{http2.ErrCodeProtocol, "DATA on idle stream"}
		}
		connInc := sc.creditConnLocked(n)
		sc.mu.Unlock()
		sc.writeWindowUpdates(0, connInc, 0)
		if st != nil && st.recvDone && st.err == nil {
			st.resetLocal(http2.ErrCodeStreamClosed, "DATA after END_STREAM")
		}
		return nil
	}
	if n > st.recvWindow {
		connInc := sc.creditConnLocked(n)
		sc.mu.Unlock()
		sc.writeWindowUpdates(0, connInc, 0)
		st.resetLocal(http2.ErrCodeFlowControl, "stream window exceeded")
		return nil
	}
	st.recvWindow -= n
	data := f.Data()
	var connInc, streamInc uint32
	if pad := n - int64(len(data)); pad > 0 {
		connInc = sc.creditConnLocked(pad)
		streamInc = st.creditLocked(pad)
	}
	if len(data) > 0 && st.sink != nil && st.recv.empty() && !st.upWriting {
		// Direct delivery (sink.go): no hand-off to the upstream copier
		// when the backend takes the bytes at once.
		sc.mu.Unlock()
		k, err := st.sink.TryWrite(data)
		sc.mu.Lock()
		if k > 0 {
			connInc += sc.creditConnLocked(int64(k))
			if !f.StreamEnded() {
				streamInc += st.creditLocked(int64(k))
			}
			data = data[k:]
		}
		switch {
		case st.err != nil: // aborted meanwhile: drop the rest
			connInc += sc.creditConnLocked(int64(len(data)))
			data = nil
		case err != nil:
			connInc += sc.creditConnLocked(int64(len(data)))
			sc.mu.Unlock()
			sc.writeWindowUpdates(id, connInc, 0)
			st.resetLocal(http2.ErrCodeConnect, "backend write: "+err.Error())
			return nil
		}
	}
	if len(data) > 0 {
		st.recv.write(sc.srv.bufs, data)
	}
	if f.StreamEnded() {
		st.recvDone = true
	}
	if len(data) > 0 || f.StreamEnded() {
		// Only then has the upstream copier something to do: waking it
		// after a direct delivery would cost the hand-off it saved.
		st.recvCond.Signal()
	}
	if f.StreamEnded() {
		st.maybeCloseLocked()
	}
	sc.mu.Unlock()
	sc.writeWindowUpdates(id, connInc, streamInc)
	return nil
}

// creditConnLocked returns n consumed bytes to the connection window and
// reports the WINDOW_UPDATE increment to send now, if any. Updates are
// batched to a quarter of the window.
func (sc *serverConn) creditConnLocked(n int64) uint32 {
	sc.recvUnacked += n
	if sc.recvUnacked < int64(sc.srv.tuning.ConnWindow)/4 {
		return 0
	}
	inc := sc.recvUnacked
	sc.recvUnacked = 0
	sc.recvWindow += inc
	return uint32(inc)
}

// writeWindowUpdates queues WINDOW_UPDATE frames; it never blocks.
func (sc *serverConn) writeWindowUpdates(id uint32, connInc, streamInc uint32) {
	sc.w.windowUpdates(id, connInc, streamInc)
}

func (sc *serverConn) processHeaders(f *http2.MetaHeadersFrame) error {
	id := f.StreamID
	if id%2 == 0 {
		return connError{http2.ErrCodeProtocol, "client used an even stream ID"}
	}
	sc.mu.Lock()
	if st := sc.streams[id]; st != nil {
		sc.mu.Unlock()
		// Trailers: nothing in them matters for a tunnel, but they must end
		// the stream.
		if !f.StreamEnded() {
			st.resetLocal(http2.ErrCodeProtocol, "HEADERS without END_STREAM on an open stream")
			return nil
		}
		sc.mu.Lock()
		st.recvDone = true
		st.recvCond.Signal()
		st.maybeCloseLocked()
		sc.mu.Unlock()
		return nil
	}
	if id <= sc.maxStreamID {
		sc.mu.Unlock()
		return connError{http2.ErrCodeStreamClosed, "HEADERS on a closed stream"}
	}
	sc.maxStreamID = id
	authority := f.PseudoValue("authority")
	var refuse string
	switch {
	case sc.goAwayFinal || sc.closed:
		refuse = "connection is draining"
	case sc.active >= int(sc.srv.cfg.MaxConcurrentStreams):
		refuse = "too many concurrent streams"
	case sc.handlers >= 2*int(sc.srv.cfg.MaxConcurrentStreams):
		refuse = "too many streams still closing"
	}
	sc.mu.Unlock()
	if refuse != "" {
		sc.srv.refused(sc, 0, refuse+" (RST_STREAM REFUSED_STREAM)", authority)
		sc.resetStream(id, http2.ErrCodeRefusedStream)
		return nil
	}

	status, reason := 0, ""
	var ap netip.AddrPort
	switch method := f.PseudoValue("method"); {
	case f.Truncated:
		status, reason = http.StatusRequestHeaderFieldsTooLarge, fmt.Sprintf("request headers exceed %d bytes", sc.srv.cfg.MaxHeaderBytes)
	case method != http.MethodConnect:
		status, reason = http.StatusBadRequest, fmt.Sprintf("method %q is not CONNECT", method)
	case f.PseudoValue("path") != "" || f.PseudoValue("scheme") != "" || f.PseudoValue("protocol") != "":
		status, reason = http.StatusBadRequest, "CONNECT with :path, :scheme or :protocol (extended CONNECT is not supported)"
	default:
		var err error
		ap, err = netip.ParseAddrPort(authority)
		if err != nil || ap.Port() == 0 || !ap.Addr().IsValid() {
			status, reason = http.StatusBadRequest, fmt.Sprintf("authority %q is not ip:port", authority)
		}
	}
	if status != 0 {
		sc.srv.refused(sc, status, reason, authority)
		sc.writeRefusal(id, status, reason, !f.StreamEnded())
		return nil
	}

	regular := f.RegularFields()
	header := make(http.Header, len(regular))
	for _, hf := range regular {
		k := http.CanonicalHeaderKey(hf.Name)
		header[k] = append(header[k], hf.Value)
	}
	req := &Request{
		Authority:  ap,
		Peer:       sc.peer,
		Forwarded:  header.Get("Forwarded"),
		Header:     header,
		RemoteAddr: sc.remote,
		LocalAddr:  sc.local,
	}
	st := newServerStream(sc, id)
	sc.mu.Lock()
	if sc.closed {
		sc.mu.Unlock()
		return errConnClosed
	}
	st.sendWindow = sc.peerWindow
	st.recvDone = f.StreamEnded()
	sc.streams[id] = st
	sc.active++
	sc.handlers++
	sc.idleSince = time.Time{}
	sc.srv.wg.Add(1)
	sc.mu.Unlock()
	go st.run(req, authority)
	return nil
}

// writeRefusal answers a stream with a final non-200 status and, when the
// client may still send, resets it with NO_ERROR (RFC 9113 §8.1) so that it
// stops.
func (sc *serverConn) writeRefusal(id uint32, status int, reason string, reset bool) {
	fields := []hpack.HeaderField{{Name: ":status", Value: statusString(status)}}
	if reason != "" {
		fields = append(fields, hpack.HeaderField{Name: reasonHeader, Value: sanitizeReason(reason)})
	}
	sc.mu.Lock()
	maxFrame := sc.peerFrame
	sc.mu.Unlock()
	sc.w.lock()
	sc.w.appendHeaders(id, true, maxFrame, fields...)
	if reset {
		sc.w.fr.WriteRSTStream(id, http2.ErrCodeNo)
	}
	if err := sc.w.unlock(); err != nil {
		sc.closeNow(err)
	}
}

func statusString(code int) string {
	switch code {
	case http.StatusOK:
		return "200"
	case http.StatusBadRequest:
		return "400"
	case http.StatusUnauthorized:
		return "401"
	case http.StatusServiceUnavailable:
		return "503"
	}
	return strconv.Itoa(code)
}

// sanitizeReason makes reason a short, valid header value.
func sanitizeReason(reason string) string {
	const maxLen = 256
	b := []byte(reason)
	if len(b) > maxLen {
		b = b[:maxLen]
	}
	for i, c := range b {
		if c < 0x20 || c > 0x7e {
			b[i] = '?'
		}
	}
	return string(b)
}

// resetStream sends RST_STREAM for a stream that has no serverStream (or
// whose serverStream is already gone).
func (sc *serverConn) resetStream(id uint32, code http2.ErrCode) {
	sc.w.control(ctlFrame{kind: ctlReset, id: id, val: uint32(code)})
}

func (sc *serverConn) writeGoAway(code http2.ErrCode, debug []byte) {
	sc.mu.Lock()
	last := sc.maxStreamID
	sc.mu.Unlock()
	sc.w.goAway(last, code, debug)
}

// startDrain begins a graceful shutdown of the connection: GOAWAY with the
// largest stream ID (no new streams, but those already in flight are still
// accepted), then a PING; its ACK (finishDrain) proves the client has seen
// the GOAWAY, and the final GOAWAY names the last stream served. The
// connection closes when its streams are done.
func (sc *serverConn) startDrain() {
	sc.mu.Lock()
	if sc.draining || sc.closed {
		sc.mu.Unlock()
		return
	}
	sc.draining = true
	sc.mu.Unlock()
	sc.w.lock()
	sc.w.fr.WriteGoAway(maxWindow, http2.ErrCodeNo, nil)
	sc.w.fr.WritePing(false, pingDrain)
	if err := sc.w.unlockWait(); err != nil {
		sc.closeNow(err)
	}
}

func (sc *serverConn) finishDrain() {
	sc.mu.Lock()
	if !sc.draining || sc.goAwayFinal || sc.closed {
		sc.mu.Unlock()
		return
	}
	sc.goAwayFinal = true
	last := sc.maxStreamID
	idle := sc.active == 0 && sc.handlers == 0
	sc.mu.Unlock()
	sc.w.lock()
	sc.w.fr.WriteGoAway(last, http2.ErrCodeNo, nil)
	if err := sc.w.unlockWait(); err != nil {
		sc.closeNow(err)
		return
	}
	if idle {
		sc.closeGracefully()
	}
}

func (sc *serverConn) tickPeriod() time.Duration {
	t := sc.srv.tuning
	d := min(t.PingInterval, t.PingTimeout) / 2
	if it := sc.srv.cfg.IdleTimeout; it > 0 {
		d = min(d, it/2)
	}
	return max(d, 10*time.Millisecond)
}

// tick runs the keepalive and idle checks.
func (sc *serverConn) tick() {
	t := sc.srv.tuning
	now := time.Now()
	silent := now.Sub(time.Unix(0, sc.lastRead.Load()))
	if silent >= t.PingInterval+t.PingTimeout {
		sc.log.Warn("hbone connection closed: peer silent", "silent_for", silent.Round(time.Millisecond))
		sc.closeNow(errors.New("keepalive timeout"))
		return
	}
	sc.mu.Lock()
	if sc.closed {
		sc.mu.Unlock()
		return
	}
	ping := silent >= t.PingInterval && !sc.pinging
	if ping {
		sc.pinging = true
	}
	it := sc.srv.cfg.IdleTimeout
	idleFor := now.Sub(sc.idleSince)
	idle := it > 0 && sc.active == 0 && sc.handlers == 0 && !sc.idleSince.IsZero() && idleFor >= it
	sc.mu.Unlock()
	if ping {
		// Queued: a writer stuck on a dead peer must not stall the
		// keepalive; the silence check above closes such connections.
		sc.w.control(ctlFrame{kind: ctlPing, data: pingKeepalive})
	}
	if idle {
		sc.log.Debug("hbone connection closed: idle", "idle_for", idleFor.Round(time.Millisecond))
		sc.writeGoAway(http2.ErrCodeNo, nil)
		sc.closeGracefully()
		return
	}
	sc.timer.Reset(sc.tickPeriod())
}

// closeGracefully writes the frames still pending (the last streams'
// ends) and closes the connection.
func (sc *serverConn) closeGracefully() {
	sc.w.flushPending()
	sc.closeNow(nil)
}

// closeNow closes the connection and aborts every stream.
func (sc *serverConn) closeNow(reason error) {
	sc.mu.Lock()
	if sc.closed {
		sc.mu.Unlock()
		return
	}
	sc.closed = true
	streams := make([]*serverStream, 0, len(sc.streams))
	for _, st := range sc.streams {
		streams = append(streams, st)
	}
	sc.sendCond.Broadcast()
	sc.mu.Unlock()
	sc.timer.Stop()
	// Close the socket first: it unblocks a writer stuck on a dead peer.
	sc.w.closeConn()
	err := errConnClosed
	if reason != nil && !isClosedErr(reason) {
		err = fmt.Errorf("%w: %v", errConnClosed, reason)
	}
	for _, st := range streams {
		st.abort(err, false, false, 0)
	}
}

// streamFinished is called when a stream goroutine exits.
func (sc *serverConn) streamFinished() {
	sc.mu.Lock()
	sc.handlers--
	closeNow := sc.handlers == 0 && sc.active == 0 && sc.goAwayFinal
	if sc.handlers == 0 && sc.active == 0 {
		sc.idleSince = time.Now()
	}
	sc.mu.Unlock()
	if closeNow {
		sc.closeGracefully()
	}
	sc.srv.wg.Done()
}

// context for streams: cancelled with the server.
func (sc *serverConn) streamContext() (context.Context, context.CancelFunc) {
	return context.WithCancel(sc.srv.ctx)
}
