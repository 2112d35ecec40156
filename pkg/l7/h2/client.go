package h2

import (
	"errors"
	"fmt"
	"io"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/palisade-net/palisade/pkg/l7"
)

// clientLoop reads the client's frames and forwards, answers or drops
// each, until the client is done or breaks the protocol.
func (c *conn) clientLoop() error {
	preface := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(c.cr, preface); err != nil {
		if c.closing.Load() {
			return nil
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return c.malformed(http2.ErrCodeProtocol, "connection closed inside the client preface")
		}
		return c.ioError("reading the client preface", err)
	}
	if string(preface) != http2.ClientPreface {
		return c.malformed(http2.ErrCodeProtocol, "bad client connection preface")
	}
	if _, err := c.bw.Write(preface); err != nil {
		return c.ioError("writing to the backend", err)
	}
	first := true
	for {
		c.applyBackendSettings()
		f, err := c.cfr.ReadFrame()
		if err != nil {
			if c.closing.Load() {
				return nil
			}
			var se http2.StreamError
			if errors.As(err, &se) {
				if err := c.streamError(se); err != nil {
					return err
				}
				continue
			}
			return c.readError(err)
		}
		if first {
			if sf, ok := f.(*http2.SettingsFrame); !ok || sf.IsAck() {
				return c.malformed(http2.ErrCodeProtocol, "the client's first frame is not SETTINGS")
			}
			first = false
		}
		if err := c.clientFrame(f); err != nil {
			return err
		}
	}
}

// readError classifies an error from reading the client's frames.
func (c *conn) readError(err error) error {
	var ce http2.ConnectionError
	switch {
	case errors.As(err, &ce):
		reason := http2.ErrCode(ce).String()
		if d := c.cfr.ErrorDetail(); d != nil {
			reason = d.Error()
		}
		return c.malformed(http2.ErrCode(ce), reason)
	case errors.Is(err, http2.ErrFrameTooLarge):
		return c.malformed(http2.ErrCodeFrameSize, "frame larger than SETTINGS_MAX_FRAME_SIZE")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return c.malformed(http2.ErrCodeProtocol, "connection closed inside a frame")
	}
	return c.ioError("reading the client", err)
}

// clientFrame handles one frame from the client.
func (c *conn) clientFrame(f http2.Frame) error {
	switch f := f.(type) {
	case *http2.MetaHeadersFrame:
		return c.clientHeaders(f)
	case *http2.DataFrame:
		return c.clientData(f)
	case *http2.SettingsFrame:
		return c.clientSettings(f)
	case *http2.WindowUpdateFrame:
		return c.clientWindowUpdate(f)
	case *http2.RSTStreamFrame:
		return c.clientReset(f)
	case *http2.PingFrame:
		return c.backendWrite(c.bwf.WritePing(f.IsAck(), f.Data))
	case *http2.GoAwayFrame:
		return c.backendWrite(c.bwf.WriteGoAway(f.LastStreamID, f.ErrCode, f.DebugData()))
	case *http2.PushPromiseFrame:
		return c.malformed(http2.ErrCodeProtocol, "PUSH_PROMISE from the client")
	}
	// PRIORITY and PRIORITY_UPDATE are hints between two hops (and RFC
	// 9113 deprecates the former); unknown frame types must be ignored
	// (RFC 9113 §5.5). Forwarding them could name streams the backend
	// never saw, so they are dropped.
	return nil
}

func (c *conn) backendWrite(err error) error { return c.ioError("writing to the backend", err) }

// clientHeaders handles a request header block or trailers.
func (c *conn) clientHeaders(f *http2.MetaHeadersFrame) error {
	id := f.StreamID
	if id%2 == 0 {
		return c.malformed(http2.ErrCodeProtocol, fmt.Sprintf("HEADERS on server stream %d", id))
	}
	st := c.lookup(id)
	switch {
	case st != nil && st.denied:
		if f.StreamEnded() {
			c.deniedClientEnd(st)
		}
		return nil // trailers of a denied request
	case st != nil:
		return c.forwardTrailers(st, f)
	case id <= c.maxClientStream.Load():
		return nil // a stream already closed; its block is decoded, that is all
	}
	c.maxClientStream.Store(id)
	if f.Truncated {
		c.log.Warn("h2: request header list too large, refused", "stream", id)
		return c.answer(id, statusBlock(431), f.StreamEnded())
	}
	req, why := parseRequest(f.Fields)
	if why != "" {
		c.log.Warn("h2: malformed request, stream reset", "stream", id, "reason", why)
		return c.resetClient(id, http2.ErrCodeProtocol)
	}
	c.mu.Lock()
	n := len(c.streams)
	c.mu.Unlock()
	if n >= maxStreams {
		return c.malformed(http2.ErrCodeEnhanceYourCalm, "too many concurrent streams")
	}
	start := time.Now()
	v := c.s.Judge.HTTP(req)
	st = &stream{id: id, start: start, verdict: v, grpcStatus: -1, denied: !v.Allow,
		http: l7.HTTPRecord{Method: req.Method, Path: req.Path, Host: req.Host}}
	st.service, st.method, st.grpc = req.GRPC()
	c.mu.Lock()
	c.streams[id] = st
	st.window = c.initialWindow
	c.mu.Unlock()
	if !v.Allow {
		return c.deny(st, req, f.StreamEnded())
	}
	fields := f.Fields
	if len(v.Edits) > 0 {
		var ok []l7.HeaderEdit
		for _, e := range v.Edits {
			if why := checkEdit(e); why != "" {
				c.log.Warn("h2: header edit skipped", "action", string(e.Action), "header", e.Name, "reason", why,
					"policy", v.Policy, "rule", v.Rule)
				continue
			}
			ok = append(ok, e)
		}
		fields = applyEdits(fields, ok)
	}
	var prio http2.PriorityParam
	if f.HasPriority() {
		prio = f.Priority
	}
	if f.StreamEnded() {
		c.finish(st, true, false)
	}
	return c.backendWrite(c.writeBackendBlock(id, fields, f.StreamEnded(), prio))
}

// forwardTrailers forwards the trailer block of an allowed stream.
func (c *conn) forwardTrailers(st *stream, f *http2.MetaHeadersFrame) error {
	if !f.StreamEnded() || len(f.PseudoFields()) > 0 {
		c.log.Warn("h2: malformed trailers, stream reset", "stream", st.id)
		c.finish(st, true, true)
		if err := c.backendWrite(c.bwf.WriteRSTStream(st.id, http2.ErrCodeProtocol)); err != nil {
			return err
		}
		return c.resetClient(st.id, http2.ErrCodeProtocol)
	}
	c.finish(st, true, false)
	return c.backendWrite(c.writeBackendBlock(st.id, f.Fields, true, http2.PriorityParam{}))
}

// writeBackendBlock HPACK-encodes fields with the proxy's own encoder,
// whose state the backend's decoder follows, and writes them.
func (c *conn) writeBackendBlock(id uint32, fields []hpack.HeaderField, endStream bool, prio http2.PriorityParam) error {
	c.encBuf.Reset()
	for _, f := range fields {
		if err := c.enc.WriteField(f); err != nil {
			return err
		}
	}
	return writeBlock(c.bwf, id, c.encBuf.Bytes(), endStream, prio, 0)
}

// applyBackendSettings applies what the backend's SETTINGS ask of the
// client side: its HEADER_TABLE_SIZE bounds the proxy's encoder and the
// client's (which the proxy decodes), its MAX_FRAME_SIZE the client's
// frames.
func (c *conn) applyBackendSettings() {
	c.smu.Lock()
	limits := c.encLimits
	c.encLimits = nil
	c.smu.Unlock()
	for _, v := range limits {
		c.enc.SetMaxDynamicTableSizeLimit(v)
	}
	c.cdec.SetAllowedMaxDynamicTableSize(c.backendTableMax.Load())
	c.cfr.SetMaxReadFrameSize(c.backendMaxFrame.Load())
}

// clientSettings records what the proxy needs of the client's SETTINGS
// and forwards them.
func (c *conn) clientSettings(f *http2.SettingsFrame) error {
	if f.IsAck() {
		return c.backendWrite(c.bwf.WriteSettingsAck())
	}
	var settings []http2.Setting
	err := f.ForeachSetting(func(s http2.Setting) error {
		if err := s.Valid(); err != nil {
			return err
		}
		switch s.ID {
		case http2.SettingHeaderTableSize:
			c.clientTableSize.Store(max(c.clientTableSize.Load(), s.Val))
		case http2.SettingMaxFrameSize:
			c.clientMaxFrame.Store(max(c.clientMaxFrame.Load(), s.Val))
		case http2.SettingInitialWindowSize:
			c.mu.Lock()
			delta := int64(s.Val) - c.initialWindow
			c.initialWindow = int64(s.Val)
			for _, st := range c.streams {
				if st.denied {
					st.window += delta
				}
			}
			c.mu.Unlock()
		}
		settings = append(settings, s)
		return nil
	})
	if err != nil {
		var ce http2.ConnectionError
		if errors.As(err, &ce) {
			return c.malformed(http2.ErrCode(ce), "invalid SETTINGS value")
		}
		return c.malformed(http2.ErrCodeProtocol, err.Error())
	}
	if err := c.bwf.WriteSettings(settings...); err != nil {
		return c.backendWrite(err)
	}
	return c.sendPending()
}

// clientData forwards DATA of allowed streams and drops the rest.
func (c *conn) clientData(f *http2.DataFrame) error {
	st := c.lookup(f.StreamID)
	if st != nil && !st.denied {
		if f.StreamEnded() {
			c.finish(st, true, false)
		}
		return c.backendWrite(writeData(c.bwf, f))
	}
	if f.StreamID > c.maxClientStream.Load() {
		return c.malformed(http2.ErrCodeProtocol, fmt.Sprintf("DATA on idle stream %d", f.StreamID))
	}
	if st != nil && f.StreamEnded() {
		c.deniedClientEnd(st)
	}
	return c.dropData(f.Length)
}

// clientWindowUpdate forwards the client's credit to the backend, minus
// what pays for the proxy's own DATA; credit for denied streams is kept.
func (c *conn) clientWindowUpdate(f *http2.WindowUpdateFrame) error {
	if f.StreamID == 0 {
		fwd := c.flow.credit(f.Increment)
		if fwd > 0 {
			if err := c.backendWrite(c.bwf.WriteWindowUpdate(0, fwd)); err != nil {
				return err
			}
		}
		return c.sendPending()
	}
	st := c.lookup(f.StreamID)
	switch {
	case st != nil && st.denied:
		c.mu.Lock()
		st.window += int64(f.Increment)
		c.mu.Unlock()
		return c.sendPending()
	case st == nil && f.StreamID%2 == 1:
		return nil // closed (or never forwarded) stream
	}
	return c.backendWrite(c.bwf.WriteWindowUpdate(f.StreamID, f.Increment))
}

// clientReset forwards RST_STREAM for forwarded streams.
func (c *conn) clientReset(f *http2.RSTStreamFrame) error {
	st := c.lookup(f.StreamID)
	switch {
	case st != nil:
		c.finish(st, true, true)
		if st.denied {
			return nil
		}
	case f.StreamID%2 == 1 && f.StreamID > c.maxClientStream.Load():
		return c.malformed(http2.ErrCodeProtocol, fmt.Sprintf("RST_STREAM on idle stream %d", f.StreamID))
	case f.StreamID%2 == 1:
		return nil
	}
	return c.backendWrite(c.bwf.WriteRSTStream(f.StreamID, f.ErrCode))
}

// streamError resets a stream whose frame the Framer found malformed.
func (c *conn) streamError(se http2.StreamError) error {
	reason := se.Code.String()
	if se.Cause != nil {
		reason = se.Cause.Error()
	}
	c.log.Warn("h2: malformed stream, reset", "stream", se.StreamID, "reason", reason)
	if se.StreamID%2 == 1 && se.StreamID > c.maxClientStream.Load() {
		c.maxClientStream.Store(se.StreamID)
	}
	if st := c.lookup(se.StreamID); st != nil {
		c.finish(st, true, true)
		if !st.denied {
			if err := c.backendWrite(c.bwf.WriteRSTStream(se.StreamID, se.Code)); err != nil {
				return err
			}
		}
	}
	return c.resetClient(se.StreamID, se.Code)
}
