package h2

import (
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// maxResponseBlock bounds a response header block from the backend.
const maxResponseBlock = 4 << 20

// backendLoop relays the backend's frames to the client until the backend
// is done.
func (c *conn) backendLoop() error {
	first := true
	for {
		c.bfr.SetMaxReadFrameSize(c.clientMaxFrame.Load())
		c.rdec.SetAllowedMaxDynamicTableSize(c.clientTableSize.Load())
		f, err := c.bfr.ReadFrame()
		if err != nil {
			if c.closing.Load() {
				return nil
			}
			if errors.Is(err, io.EOF) {
				c.backendEnded()
				return nil
			}
			return c.backendReadError(err)
		}
		if first {
			if sf, ok := f.(*http2.SettingsFrame); !ok || sf.IsAck() {
				return c.backendBroke("the backend's first frame is not SETTINGS")
			}
			first = false
		}
		if err := c.backendFrame(f); err != nil {
			return err
		}
	}
}

// backendReadError classifies an error from reading the backend's frames.
func (c *conn) backendReadError(err error) error {
	var ce http2.ConnectionError
	var se http2.StreamError
	switch {
	case errors.As(err, &ce):
		reason := http2.ErrCode(ce).String()
		if d := c.bfr.ErrorDetail(); d != nil {
			reason = d.Error()
		}
		return c.backendBroke(reason)
	case errors.As(err, &se):
		return c.backendBroke(se.Error())
	case errors.Is(err, http2.ErrFrameTooLarge):
		return c.backendBroke("frame larger than the client's SETTINGS_MAX_FRAME_SIZE")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return c.backendBroke("connection closed inside a frame")
	}
	return c.ioError("reading the backend", err)
}

// backendEnded handles the backend closing: the client is told by a
// half-close after what is buffered, and has a moment to finish.
func (c *conn) backendEnded() {
	_ = c.flushClient()
	c.beginClose()
	c.backend.Close()
	if cw, ok := c.client.(closeWriter); ok && cw.CloseWrite() == nil {
		time.AfterFunc(lingerTimeout, func() { c.client.Close() })
		return
	}
	c.client.Close()
}

// backendBroke ends the connection over a protocol error of the
// backend's.
func (c *conn) backendBroke(reason string) error {
	c.log.Warn("h2: malformed input, closing the connection", "from", "backend", "reason", reason)
	c.goAway(http2.ErrCodeInternal, "backend protocol error")
	c.shutdown()
	return fmt.Errorf("h2: backend: %w: %s", ErrMalformed, reason)
}

// relay writes a frame to the client.
func (c *conn) relay(write func(fr *http2.Framer) error) error {
	c.cmu.Lock()
	defer c.cmu.Unlock()
	if c.goingAway {
		return errClosing
	}
	return c.ioError("writing to the client", write(c.cwf))
}

// backendFrame relays one frame from the backend.
func (c *conn) backendFrame(f http2.Frame) error {
	switch f := f.(type) {
	case *http2.HeadersFrame:
		return c.relayBlock(f.StreamID, 0, f.HeaderBlockFragment(), f.HeadersEnded(), f.StreamEnded())
	case *http2.PushPromiseFrame:
		return c.relayBlock(f.StreamID, f.PromiseID, f.HeaderBlockFragment(), f.HeadersEnded(), false)
	case *http2.DataFrame:
		if !c.flow.tryTake(int64(f.Length)) {
			// The client credits only what it received: what is
			// buffered must reach it before waiting for its credit.
			if err := c.flushClient(); err != nil {
				return c.ioError("writing to the client", err)
			}
			if !c.flow.take(int64(f.Length)) {
				return nil
			}
		}
		if err := c.relay(func(fr *http2.Framer) error { return writeData(fr, f) }); err != nil {
			return err
		}
		if f.StreamEnded() {
			if st := c.lookup(f.StreamID); st != nil {
				c.finish(st, false, true)
			}
		}
		return nil
	case *http2.SettingsFrame:
		return c.backendSettings(f)
	case *http2.WindowUpdateFrame:
		return c.relay(func(fr *http2.Framer) error { return fr.WriteWindowUpdate(f.StreamID, f.Increment) })
	case *http2.RSTStreamFrame:
		if st := c.lookup(f.StreamID); st != nil {
			c.finish(st, true, true)
		}
		return c.relay(func(fr *http2.Framer) error { return fr.WriteRSTStream(f.StreamID, f.ErrCode) })
	case *http2.PingFrame:
		return c.relay(func(fr *http2.Framer) error { return fr.WritePing(f.IsAck(), f.Data) })
	case *http2.GoAwayFrame:
		return c.relay(func(fr *http2.Framer) error { return fr.WriteGoAway(f.LastStreamID, f.ErrCode, f.DebugData()) })
	}
	return nil // PRIORITY, PRIORITY_UPDATE, unknown types: see clientFrame
}

// backendSettings applies what the backend's SETTINGS ask of the proxy's
// client side, before forwarding them (so that the client's ACK, which
// the client side forwards, finds them in force), and marks the server
// preface sent.
func (c *conn) backendSettings(f *http2.SettingsFrame) error {
	if f.IsAck() {
		return c.relay(func(fr *http2.Framer) error { return fr.WriteSettingsAck() })
	}
	var settings []http2.Setting
	err := f.ForeachSetting(func(s http2.Setting) error {
		if err := s.Valid(); err != nil {
			return err
		}
		switch s.ID {
		case http2.SettingHeaderTableSize:
			c.smu.Lock()
			c.encLimits = append(c.encLimits, s.Val)
			c.smu.Unlock()
			c.backendTableMax.Store(max(c.backendTableMax.Load(), s.Val))
		case http2.SettingMaxFrameSize:
			c.backendMaxFrame.Store(max(c.backendMaxFrame.Load(), s.Val))
		}
		settings = append(settings, s)
		return nil
	})
	if err != nil {
		return c.backendBroke("invalid SETTINGS: " + err.Error())
	}
	c.cmu.Lock()
	defer c.cmu.Unlock()
	if c.goingAway {
		return nil
	}
	if err := c.cwf.WriteSettings(settings...); err != nil {
		return c.ioError("writing to the client", err)
	}
	if !c.prefaceSent {
		c.prefaceSent = true
		close(c.prefaceCh)
	}
	return nil
}

// relayBlock relays a response (or push promise) header block, with its
// CONTINUATION frames, to the client in one write. It is decoded with a
// mirror of the client's HPACK decoder, only to read the status codes the
// records need.
func (c *conn) relayBlock(id, promised uint32, frag []byte, ended, endStream bool) error {
	c.block = append(c.block[:0], frag...)
	c.respStat, c.grpcStat = "", ""
	if _, err := c.rdec.Write(frag); err != nil {
		return c.backendBroke("HPACK: " + err.Error())
	}
	for !ended {
		f, err := c.bfr.ReadFrame()
		if err != nil {
			if c.closing.Load() {
				return nil
			}
			return c.backendReadError(err)
		}
		cf, ok := f.(*http2.ContinuationFrame)
		if !ok {
			return c.backendBroke("header block not continued") // the Framer checks order
		}
		if len(c.block)+len(cf.HeaderBlockFragment()) > maxResponseBlock {
			return c.backendBroke("response header block too large")
		}
		c.block = append(c.block, cf.HeaderBlockFragment()...)
		if _, err := c.rdec.Write(cf.HeaderBlockFragment()); err != nil {
			return c.backendBroke("HPACK: " + err.Error())
		}
		ended = cf.HeadersEnded()
	}
	if err := c.rdec.Close(); err != nil {
		return c.backendBroke("HPACK: " + err.Error())
	}
	// The record goes first, so it exists once the client has the
	// response.
	if promised == 0 {
		c.responseHead(id, endStream)
	}
	return c.relay(func(fr *http2.Framer) error {
		return writeBlock(fr, id, c.block, endStream, http2.PriorityParam{}, promised)
	})
}

// onResponseField notes the fields of a response block the records need.
func (c *conn) onResponseField(f hpack.HeaderField) {
	switch f.Name {
	case ":status":
		c.respStat = f.Value
	case "grpc-status":
		c.grpcStat = f.Value
	}
}

// responseHead updates the stream's record after a response block.
func (c *conn) responseHead(id uint32, endStream bool) {
	st := c.lookup(id)
	if st == nil || st.denied {
		return
	}
	status, _ := strconv.Atoi(c.respStat)
	c.mu.Lock()
	if status >= 200 && st.status == 0 {
		st.status = status
		st.headAfter = time.Since(st.start)
	}
	if g, err := strconv.Atoi(c.grpcStat); err == nil && st.grpc {
		st.grpcStatus = g
	}
	now := !st.grpc && st.status != 0 || st.grpc && st.grpcStatus >= 0
	c.mu.Unlock()
	if now {
		c.recordNow(st)
	}
	if endStream {
		c.finish(st, false, true)
	}
}
