package h2

import (
	"time"

	"golang.org/x/net/http2"

	"github.com/palisade-net/palisade/pkg/l7"
)

// The client side's answers of its own: denials, refusals, resets and
// flow-control credit, all written with inject.

// dropData credits the client's connection window for n bytes of DATA
// the backend will never see, which the backend therefore never credits.
func (c *conn) dropData(n uint32) error {
	if n == 0 {
		return nil
	}
	return c.ioError("writing to the client", c.inject(func(fr *http2.Framer) error {
		return fr.WriteWindowUpdate(0, n)
	}))
}

// resetClient sends RST_STREAM to the client.
func (c *conn) resetClient(id uint32, code http2.ErrCode) error {
	return c.ioError("writing to the client", c.inject(func(fr *http2.Framer) error {
		return fr.WriteRSTStream(id, code)
	}))
}

// answer sends a headers-only response of the proxy's own and closes the
// stream (RFC 9113 §8.1: RST_STREAM(NO_ERROR) tells a client still
// sending that the rest is not needed).
func (c *conn) answer(id uint32, block []byte, clientEnded bool) error {
	err := c.inject(func(fr *http2.Framer) error {
		if err := writeBlock(fr, id, block, true, http2.PriorityParam{}, 0); err != nil {
			return err
		}
		if !clientEnded {
			return fr.WriteRSTStream(id, http2.ErrCodeNo)
		}
		return nil
	})
	return c.ioError("writing to the client", err)
}

// deny answers a denied stream. The headers go at once; a body waits
// until the client's windows have room for it.
func (c *conn) deny(st *stream, req *l7.HTTPRequest, clientEnded bool) error {
	d := denyResponse(req, st.verdict)
	c.mu.Lock()
	if st.grpc {
		st.status, st.grpcStatus = 200, l7.GRPCPermissionDenied
	} else {
		st.status = l7.DeniedStatus
	}
	st.headAfter = time.Since(st.start)
	st.clientDone = st.clientDone || clientEnded
	c.mu.Unlock()
	if d.body == nil {
		c.recordNow(st)
		// Closed on both sides: by the response's END_STREAM and by the
		// client's or by the RST_STREAM that follows it.
		c.finish(st, true, true)
		return c.answer(st.id, d.block, clientEnded)
	}
	c.recordNow(st)
	err := c.inject(func(fr *http2.Framer) error {
		return writeBlock(fr, st.id, d.block, false, http2.PriorityParam{}, 0)
	})
	if err != nil {
		return c.ioError("writing to the client", err)
	}
	c.mu.Lock()
	st.body = d.body
	c.mu.Unlock()
	c.pending = append(c.pending, st.id)
	return c.sendPending()
}

// deniedClientEnd notes that the client ended a denied stream.
func (c *conn) deniedClientEnd(st *stream) { c.finish(st, true, false) }

// sendPending sends the denial bodies that fit the client's windows now,
// each followed by RST_STREAM(NO_ERROR) when the client is still sending.
func (c *conn) sendPending() error {
	keep := c.pending[:0]
	var err error
	for _, id := range c.pending {
		st := c.lookup(id)
		if st == nil || err != nil {
			continue // reset by the client meanwhile
		}
		c.mu.Lock()
		body, fits := st.body, st.window >= int64(len(st.body))
		c.mu.Unlock()
		if !fits || !c.flow.inject(int64(len(body))) {
			keep = append(keep, id)
			continue
		}
		c.mu.Lock()
		clientDone := st.clientDone
		c.mu.Unlock()
		err = c.inject(func(fr *http2.Framer) error {
			if err := fr.WriteData(id, true, body); err != nil {
				return err
			}
			if !clientDone {
				return fr.WriteRSTStream(id, http2.ErrCodeNo)
			}
			return nil
		})
		c.finish(st, true, true)
	}
	c.pending = keep
	return c.ioError("writing to the client", err)
}
