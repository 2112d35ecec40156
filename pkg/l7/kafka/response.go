package kafka

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/twmb/franz-go/pkg/kmsg"
)

// Response-side limits.
const (
	// bufferedResponse is the largest response relayed in one write;
	// larger ones are streamed.
	bufferedResponse = 64 << 10
	// fetchPeek is how much of a Fetch response is peeked at for its
	// session fields (header tags included).
	fetchPeek = 64
)

// responseHeader is the size and correlation id of one broker response,
// or the error that ended the broker's stream.
type responseHeader struct {
	size int // bytes after the size prefix, correlation id included
	corr int32
	err  error
	// nextBuffered: the rest of this response and the next header are
	// already buffered, so another header follows without waiting.
	nextBuffered bool
}

// readResponseHeaders reads the header of each broker response and hands
// it to the response writer, which reads the body and hands the backend
// back on bodyDone. It ends with the broker's stream.
func (c *conn) readResponseHeaders() {
	var hdr [8]byte
	for {
		h := responseHeader{}
		if _, err := io.ReadFull(c.fromBackend, hdr[:]); err != nil {
			switch {
			case errors.Is(err, io.ErrUnexpectedEOF):
				h.err = fmt.Errorf("%w: stream ended inside a response header", ErrBackend)
			default:
				h.err = err
			}
		} else {
			h.size = int(int32(binary.BigEndian.Uint32(hdr[:4])))
			h.corr = int32(binary.BigEndian.Uint32(hdr[4:]))
			h.nextBuffered = c.fromBackend.Buffered() >= h.size-4+8
			if h.size < 4 {
				h.err = fmt.Errorf("%w: response size %d", ErrBackend, h.size)
			}
		}
		select {
		case c.headers <- h:
		case <-c.writerDone:
			return
		}
		if h.err != nil {
			return
		}
		select {
		case <-c.bodyDone:
		case <-c.writerDone:
			return
		}
	}
}

// writeResponses answers the client in request order: broker responses
// for forwarded requests, the inspector's answers for the others. It ends
// when the client is done and every answer is written (nil), or when the
// broker's stream ends (nil between responses when nothing is owed).
func (c *conn) writeResponses() error {
	w := writer{c: c, queue: c.queue}
	for {
		if err := w.answerHead(); err != nil {
			return err
		}
		if w.queue == nil && len(w.q) == 0 {
			return c.flushClient()
		}
		h, ok, err := w.next()
		if err != nil {
			return err
		}
		if !ok {
			continue
		}
		if done, err := w.response(h); done || err != nil {
			return err
		}
	}
}

// writer is the response writer's view of the queue.
type writer struct {
	c *conn
	// q holds the requests taken from queue and not answered yet, in
	// request order.
	q     []*pending
	queue <-chan *pending // nil once closed
	// headerComing: the next response header is already buffered, so
	// waiting for it needs no flush first.
	headerComing bool
}

// answerHead writes the answers at the head of q: their turn has come.
func (w *writer) answerHead() error {
	for len(w.q) > 0 && w.q[0].kind == answer {
		p := w.q[0]
		if _, err := w.c.toClient.Write(p.frame); err != nil {
			return fmt.Errorf("kafka: writing a denial: %w", err)
		}
		w.c.record(p, time.Now())
		w.pop()
	}
	return nil
}

func (w *writer) pop() {
	w.q[0] = nil
	w.q = w.q[1:]
}

// take appends a queued request to q (ok) or notes that the queue closed.
func (w *writer) take(p *pending, ok bool) {
	if !ok {
		w.queue = nil
		return
	}
	w.q = append(w.q, p)
}

// next waits for the next event: a queued request (taken into q, ok
// false) or a response header (ok true). Ready events are handled
// without flushing, so that answers and responses that are ready batch
// into one write; before blocking it flushes.
func (w *writer) next() (h responseHeader, ok bool, err error) {
	queue := w.queue
	if len(w.q) >= queueDepth {
		queue = nil // full: let the request reader block
	}
	select {
	case p, open := <-queue:
		w.take(p, open)
		return h, false, nil
	case h = <-w.c.headers:
		w.headerComing = false
		return h, true, nil
	default:
	}
	if !w.headerComing {
		if err := w.c.flushClient(); err != nil {
			return h, false, err
		}
	}
	select {
	case p, open := <-queue:
		w.take(p, open)
		return h, false, nil
	case h = <-w.c.headers:
		w.headerComing = false
		return h, true, nil
	}
}

// drain takes the requests already queued, without blocking and up to
// the queue depth (by then q holds the oldest request awaiting a response).
func (w *writer) drain() {
	for w.queue != nil && len(w.q) < queueDepth {
		select {
		case p, open := <-w.queue:
			w.take(p, open)
		default:
			return
		}
	}
}

// response handles the broker's next response header; done reports the
// broker's clean end.
func (w *writer) response(h responseHeader) (done bool, err error) {
	// The request of this response was queued before it was forwarded,
	// so its entry is in the channel even when select picked the header
	// first: take what is queued, and answer the denials ahead of it.
	w.drain()
	if err := w.answerHead(); err != nil {
		return false, err
	}
	if h.err != nil {
		switch {
		case errors.Is(h.err, io.EOF) && len(w.q) == 0:
			return true, w.c.flushClient()
		case errors.Is(h.err, io.EOF):
			return true, fmt.Errorf("kafka: the broker closed the connection with %d requests unanswered: %w", len(w.q), io.ErrUnexpectedEOF)
		case errors.Is(h.err, ErrBackend):
			return true, fmt.Errorf("kafka: %w", h.err)
		default:
			return true, fmt.Errorf("kafka: reading a response: %w", h.err)
		}
	}
	if len(w.q) == 0 {
		return true, fmt.Errorf("kafka: %w: unsolicited response with correlation id %d", ErrBackend, h.corr)
	}
	p := w.q[0]
	if h.corr != p.corr {
		return true, fmt.Errorf("kafka: %w: response correlation id %d, expected %d (%s v%d)",
			ErrBackend, h.corr, p.corr, kmsg.NameForKey(p.key), p.version)
	}
	if err := w.c.respond(p, h); err != nil {
		return true, err
	}
	w.pop()
	w.headerComing = h.nextBuffered
	w.c.bodyDone <- struct{}{} // the backend reader waits for it
	return false, nil
}

func (c *conn) flushClient() error {
	if err := c.toClient.Flush(); err != nil {
		return fmt.Errorf("kafka: writing responses: %w", err)
	}
	return nil
}

// respond reads the body of the broker's response to p and answers the
// client: the response itself (relay), or the denial built from it
// (probe).
func (c *conn) respond(p *pending, h responseHeader) error {
	now := time.Now()
	if p.kind == probe {
		return c.answerProbe(p, h, now)
	}
	c.record(p, now)

	decode := p.key == int16(kmsg.ApiVersions) || learnsIDs(p.key, p.version)
	if decode && h.size <= maxDecodedResponseSize || h.size <= bufferedResponse {
		var buf []byte
		if !decode {
			buf = c.respBuf // relayed and dropped before the next response
		}
		full, err := c.readBody(h, buf)
		if err != nil {
			return err
		}
		if !decode {
			c.respBuf = full
		}
		if decode {
			body, ok := responseBody(full[4:], p.flexibleHeader)
			switch {
			case !ok:
			case p.key == int16(kmsg.ApiVersions):
				if rewritten := rewriteAPIVersions(p.corr, p.version, body); rewritten != nil {
					full = rewritten
				}
			default:
				c.state.learnIDs(p.key, p.version, body)
			}
		}
		if p.fetch != nil {
			c.fetchSession(p.fetch, full[4:], p.flexibleHeader)
		}
		if _, err := c.toClient.Write(full); err != nil {
			return fmt.Errorf("kafka: relaying a response: %w", err)
		}
		return nil
	}

	// A large response: streamed. Fetch responses are the usual ones;
	// their session fields come from a peek at the start.
	if p.fetch != nil {
		peek, _ := c.fromBackend.Peek(min(h.size-4, fetchPeek))
		start := binary.BigEndian.AppendUint32(make([]byte, 0, 4+len(peek)), uint32(h.corr))
		c.fetchSession(p.fetch, append(start, peek...), p.flexibleHeader)
	}
	var hdr [8]byte
	binary.BigEndian.PutUint32(hdr[:4], uint32(h.size))
	binary.BigEndian.PutUint32(hdr[4:], uint32(h.corr))
	if _, err := c.toClient.Write(hdr[:]); err != nil {
		return fmt.Errorf("kafka: relaying a response: %w", err)
	}
	if _, err := io.CopyN(c.toClient, c.fromBackend, int64(h.size-4)); err != nil {
		return fmt.Errorf("kafka: relaying a %d-byte response: %w", h.size, err)
	}
	return nil
}

// readBody reads the rest of the response h into buf (grown as needed)
// and returns the complete frame, size prefix and correlation id included.
func (c *conn) readBody(h responseHeader, buf []byte) ([]byte, error) {
	if cap(buf) < 4+h.size {
		buf = make([]byte, 4+h.size)
	}
	full := buf[:4+h.size]
	binary.BigEndian.PutUint32(full, uint32(h.size))
	binary.BigEndian.PutUint32(full[4:], uint32(h.corr))
	if _, err := io.ReadFull(c.fromBackend, full[8:]); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("kafka: %w: stream ended inside a %d-byte response", ErrBackend, h.size)
		}
		return nil, fmt.Errorf("kafka: reading a response: %w", err)
	}
	return full, nil
}

// fetchSession updates the fetch sessions from the start of a Fetch
// response: frame holds its correlation id and at least the first bytes
// of what follows.
func (c *conn) fetchSession(req *kmsg.FetchRequest, frame []byte, flexibleHeader bool) {
	if req.Version < 7 {
		return
	}
	body, ok := responseBody(frame, flexibleHeader)
	var errCode int16
	var session int32
	if ok {
		errCode, session, ok = fetchSessionFields(body)
	}
	if !ok {
		errCode, session = -1, 0 // unknown: forget the session
	}
	c.state.fetchResponded(req, errCode, session)
}

// answerProbe builds and writes the denial of a Metadata request from the
// broker's answer to the brokers-only probe sent in its place.
func (c *conn) answerProbe(p *pending, h responseHeader, now time.Time) error {
	if h.size > maxDecodedResponseSize {
		return fmt.Errorf("kafka: %w: %d-byte answer to a brokers-only Metadata request", ErrBackend, h.size)
	}
	full, err := c.readBody(h, nil)
	if err != nil {
		return err
	}
	meta := kmsg.NewPtrMetadataResponse()
	meta.Version = p.probeVersion
	body, ok := responseBody(full[4:], meta.IsFlexible())
	if !ok || decodeBody(meta, body) != nil {
		return fmt.Errorf("kafka: %w: undecodable answer to a brokers-only Metadata v%d request", ErrBackend, p.probeVersion)
	}
	resp := p.metadata.ResponseKind()
	p.rec.ErrorCode = denyMetadata(p.metadata, resp.(*kmsg.MetadataResponse), &denial{msg: p.msg, meta: meta})
	if _, err := c.toClient.Write(appendResponse(nil, p.corr, resp)); err != nil {
		return fmt.Errorf("kafka: writing a denial: %w", err)
	}
	c.record(p, now)
	return nil
}
