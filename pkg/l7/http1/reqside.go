package http1

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/palisade-net/palisade/pkg/l7"
)

// requestLoop reads, judges and forwards (or refuses) the client's
// requests until the client is done, the connection is to close, or the
// input is malformed.
func (c *conn) requestLoop() error {
	r := &c.req
	for {
		if c.closing.Load() {
			_, _ = io.Copy(io.Discard, c.cr) // lingering close
			return nil
		}
		err := r.read(c.cr, maxRequestHead, true)
		if err == io.EOF {
			return nil
		}
		if err == nil {
			err = r.parse()
		}
		if err != nil {
			if !errors.Is(err, ErrMalformed) || c.closing.Load() {
				return c.ioError("reading a request", err)
			}
			c.enqueue(&exchange{kind: exBad, reply: errorReply(http.StatusBadRequest, err.(*malformed).reason)})
			return c.malformedInput("request", err)
		}
		if c.closing.Load() {
			continue
		}
		more, err := c.handle(r)
		if err != nil || !more {
			return err
		}
	}
}

// handle judges one parsed request and forwards or refuses it. It reports
// whether more requests may follow on the connection.
func (c *conn) handle(r *request) (bool, error) {
	start := time.Now()
	v := c.s.Judge.HTTP(r.l7Request())
	e := &exchange{
		head:  isHead(r.method),
		close: r.close,
		start: start,
		rec: l7.Record{
			Protocol: protocol,
			Time:     start,
			HTTP:     &l7.HTTPRecord{Method: r.method, Path: r.path, Host: r.host},
			Verdict:  v,
		},
	}
	if !v.Allow {
		if r.upgrade || r.connect {
			c.log.Info("http1: upgrade refused", "method", r.method, "path", r.path,
				"policy", v.Policy, "rule", v.Rule, "reason", v.Reason)
		}
		// A large declared body is not worth reading only to drop it:
		// the 403 then closes the connection.
		big := r.body.kind == bodyLength && r.body.n > maxDiscard
		e.close = r.close || big
		e.kind, e.reply = exDeny, denyReply(e.head, e.close)
		if !c.enqueue(e) || big {
			return false, nil
		}
		// The body (sent right away, or after a 403 to Expect:
		// 100-continue by clients that keep the connection, as
		// net/http's does) is read and dropped so the connection stays
		// usable; a client that closes instead just ends it.
		if err := copyBody(io.Discard, c.cr, r.body, &c.scratch); err != nil {
			return false, c.bodyError(err)
		}
		return !e.close, nil
	}

	e.kind = exForward
	e.connect = r.connect
	e.upgrade = r.upgrade || r.connect
	var rw *rewrite
	if len(v.Edits) > 0 || r.upgrade && offersH2C(&r.head) {
		rw = newRewrite(&r.head)
		for _, ed := range v.Edits {
			if why := checkEdit(ed); why != "" {
				c.log.Warn("http1: header edit skipped", "action", string(ed.Action), "header", ed.Name, "reason", why,
					"policy", v.Policy, "rule", v.Rule)
				continue
			}
			rw.apply(ed)
		}
		if r.upgrade && offersH2C(&r.head) {
			e.upgrade = stripH2CUpgrade(rw) || r.connect
		}
	}
	if e.upgrade {
		e.switched = make(chan bool, 1)
	}
	if !c.enqueue(e) {
		return false, nil
	}
	var err error
	if rw != nil {
		err = rw.writeTo(c.bw)
	} else {
		_, err = c.bw.Write(r.buf)
	}
	if err != nil {
		return false, c.ioError("writing to the backend", err)
	}
	if err := copyBody(c.bw, c.cr, r.body, &c.scratch); err != nil {
		// The backend holds part of a request: nothing sensible can
		// follow on either side.
		c.closing.Store(true)
		c.client.Close()
		c.backend.Close()
		return false, c.bodyError(err)
	}
	if e.upgrade {
		if err := c.bw.Flush(); err != nil {
			return false, c.ioError("writing to the backend", err)
		}
		select {
		case sw := <-e.switched:
			if sw {
				return false, c.tunnelToBackend()
			}
		case <-c.done:
			return false, nil
		}
	}
	return !r.close, nil
}

// bodyError classifies an error while copying a request body.
func (c *conn) bodyError(err error) error {
	if errors.Is(err, ErrMalformed) {
		// The head may already be at the backend, and the client is owed
		// earlier responses first: the connection just closes.
		return c.malformedInput("request body", err)
	}
	if err == errTruncated {
		return fmt.Errorf("http1: request body: %w", err)
	}
	return c.ioError("relaying a request body", err)
}

// enqueue hands e to the response side, waiting while the pipeline is
// full. It reports false when the response side has ended. An exchange
// the proxy answers itself wakes the response side, which may be waiting
// for the backend.
func (c *conn) enqueue(e *exchange) bool {
	select {
	case c.queue <- e:
	default:
		if c.bw.Flush() != nil {
			return false
		}
		select {
		case c.queue <- e:
		case <-c.done:
			return false
		}
	}
	if e.kind != exForward {
		c.wake()
	}
	return true
}

// tunnelToBackend relays the client's bytes to the backend unparsed after
// an allowed upgrade, then half-closes the backend.
func (c *conn) tunnelToBackend() error {
	if n := c.cr.Buffered(); n > 0 {
		b, _ := c.cr.Peek(n)
		if _, err := c.bw.Write(b); err != nil {
			return c.ioError("tunnel to the backend", err)
		}
		_, _ = c.cr.Discard(n)
	}
	if err := c.bw.Flush(); err != nil {
		return c.ioError("tunnel to the backend", err)
	}
	_, err := io.Copy(c.backend, c.client)
	halfClose(c.backend)
	return c.ioError("tunnel to the backend", err)
}

// halfClose ends the writes to conn, or closes it when it cannot
// half-close.
func halfClose(conn io.Closer) {
	if cw, ok := conn.(closeWriter); ok && cw.CloseWrite() == nil {
		return
	}
	conn.Close()
}
