package http1

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"

	"github.com/palisade-net/palisade/pkg/l7"
)

// errUnsolicited is a backend sending bytes while no request is
// outstanding.
var errUnsolicited = errors.New("backend sent data with no request outstanding")

// responseLoop answers the queued exchanges in order until the request
// side is done and every exchange is answered, a response ends the
// connection, or an upgrade turns it into a tunnel (tunnel is then true).
// A nil error means a clean end.
func (c *conn) responseLoop() (tunnel bool, err error) {
	var e *exchange
	defer func() {
		// An exchange cut short by an error is still reported.
		if e != nil && e.kind != exBad {
			status := 0
			if e.kind == exDeny {
				status = l7.DeniedStatus
			}
			c.record(e, status)
		}
	}()
	for {
		e, err = c.next()
		if e == nil || err != nil {
			return false, err
		}
		switch e.kind {
		case exDeny:
			c.record(e, l7.DeniedStatus)
			if _, err := c.cw.WriteString(e.reply); err != nil {
				return false, c.ioError("writing to the client", err)
			}
			if e.close {
				return false, c.ioError("writing to the client", c.cw.Flush())
			}
		case exBad:
			_, _ = c.cw.WriteString(e.reply)
			_ = c.cw.Flush()
			return false, nil
		case exForward:
			more, tunnel, err := c.relayResponse(e)
			if err != nil || !more {
				return tunnel, err
			}
		}
	}
}

// next returns the next exchange, or nil when the request side is done
// and all are answered. While none is queued it reads the backend itself
// (no goroutine of its own watches the backend, which would cost a
// hand-off per response): the response to a forwarded request wakes it,
// as that exchange is queued before the request is forwarded; a backend
// close ends the connection cleanly; other data is a protocol violation.
// The request side interrupts the read (wake) for exchanges the backend
// will not answer and when it is done.
func (c *conn) next() (*exchange, error) {
	for {
		select {
		case e, ok := <-c.queue:
			if !ok {
				return nil, c.ioError("writing to the client", c.cw.Flush())
			}
			return e, nil
		default:
		}
		// Answers of the proxy's may be buffered; the backend's answer
		// can take its time.
		if err := c.cw.Flush(); err != nil {
			return nil, c.ioError("writing to the client", err)
		}
		c.idle.mu.Lock()
		select {
		case e, ok := <-c.queue:
			c.idle.mu.Unlock()
			if !ok {
				return nil, nil
			}
			return e, nil
		default:
		}
		c.idle.waiting = true
		c.idle.mu.Unlock()

		_, err := c.br.Peek(1)

		c.idle.mu.Lock()
		c.idle.waiting = false
		woken := c.idle.woken
		c.idle.woken = false
		c.idle.mu.Unlock()
		if woken {
			if derr := c.backend.SetReadDeadline(time.Time{}); derr != nil {
				return nil, c.ioError("reading from the backend", derr)
			}
			if errors.Is(err, os.ErrDeadlineExceeded) {
				continue
			}
		}
		// A request may have been queued just before its response
		// arrived: exchanges are queued before they are forwarded.
		select {
		case e, ok := <-c.queue:
			if ok {
				return e, nil
			}
		default:
		}
		if err != nil {
			return nil, c.ioError("reading from the backend", err)
		}
		c.log.Warn("http1: closing the connection", "reason", errUnsolicited.Error())
		return nil, fmt.Errorf("http1: %w", errUnsolicited)
	}
}

// wake interrupts the response side's read of the backend in next, if it
// is waiting there, with a read deadline in the past (which next clears).
// The request side calls it after queueing an exchange the backend will
// not answer, and once it is done.
func (c *conn) wake() {
	c.idle.mu.Lock()
	defer c.idle.mu.Unlock()
	if c.idle.waiting && !c.idle.woken {
		c.idle.woken = true
		_ = c.backend.SetReadDeadline(time.Unix(1, 0))
	}
}

// relayResponse relays the backend's response to e, interim responses
// included. more reports whether the connection goes on; tunnel that an
// upgrade took effect.
func (c *conn) relayResponse(e *exchange) (more, tunnel bool, err error) {
	r := &c.resp
	method := e.rec.HTTP.Method
	wrote := false // whether anything of this response reached the client
	for {
		err := r.read(c.br, maxResponseHead, false)
		if err == nil {
			err = r.parse(method)
		}
		if err != nil {
			return false, false, c.badResponse(e, wrote, err)
		}
		if r.status == http.StatusSwitchingProtocols && !e.upgrade {
			return false, false, c.badResponse(e, wrote, errorf("101 to a request that did not upgrade"))
		}
		final := r.status >= 200 || r.status == http.StatusSwitchingProtocols
		if final {
			c.record(e, r.status) // before the client can have the response
		}
		if _, err := c.cw.Write(r.buf); err != nil {
			return false, false, c.ioError("writing to the client", err)
		}
		wrote = true
		if r.status == http.StatusSwitchingProtocols || e.connect && r.status/100 == 2 {
			e.switched <- true
			return false, true, c.tunnelToClient()
		}
		if final {
			break
		}
		// 1xx interim responses (100 Continue, 103 Early Hints, …)
		// are relayed; the final one follows.
		if err := c.cw.Flush(); err != nil {
			return false, false, c.ioError("writing to the client", err)
		}
	}
	if e.upgrade {
		e.switched <- false
	}
	if err := copyBody(c.cw, c.br, r.body, &c.scratch); err != nil {
		if errors.Is(err, ErrMalformed) {
			return false, false, c.malformedInput("backend", err)
		}
		if err == errTruncated {
			return false, false, fmt.Errorf("http1: backend: %w", err)
		}
		return false, false, c.ioError("relaying a response body", err)
	}
	if r.close || e.close {
		return false, false, c.ioError("writing to the client", c.cw.Flush())
	}
	return true, false, nil
}

// badResponse ends the connection after a malformed or missing response,
// answering 502 when nothing of the response was relayed yet.
func (c *conn) badResponse(e *exchange, wrote bool, err error) error {
	if !wrote && !c.closing.Load() {
		reason := "no response from the backend"
		if m, ok := err.(*malformed); ok {
			reason = m.reason
		}
		c.record(e, http.StatusBadGateway)
		if _, werr := c.cw.WriteString(errorReply(http.StatusBadGateway, reason)); werr == nil {
			_ = c.cw.Flush()
		}
	}
	if errors.Is(err, ErrMalformed) {
		return c.malformedInput("backend", err)
	}
	if err == io.EOF {
		if c.closing.Load() {
			return nil
		}
		return errors.New("http1: backend closed the connection before responding")
	}
	return c.ioError("reading from the backend", err)
}

// tunnelToClient relays the backend's bytes to the client unparsed after
// an upgrade, then half-closes the client.
func (c *conn) tunnelToClient() error {
	if n := c.br.Buffered(); n > 0 {
		b, _ := c.br.Peek(n)
		if _, err := c.cw.Write(b); err != nil {
			return c.ioError("tunnel to the client", err)
		}
		_, _ = c.br.Discard(n)
	}
	if err := c.cw.Flush(); err != nil {
		return c.ioError("tunnel to the client", err)
	}
	_, err := io.Copy(c.client, c.backend)
	halfClose(c.client)
	return c.ioError("tunnel to the client", err)
}
