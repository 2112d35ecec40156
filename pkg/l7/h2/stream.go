package h2

import (
	"time"

	"github.com/palisade-net/palisade/pkg/l7"
)

// stream is a client-initiated stream the proxy judged.
type stream struct {
	id      uint32
	denied  bool
	grpc    bool
	service string
	method  string
	http    l7.HTTPRecord
	verdict l7.Verdict
	start   time.Time

	status     int // final :status, 0 until seen
	grpcStatus int // grpc-status, -1 until seen
	headAfter  time.Duration
	recorded   bool

	clientDone  bool // the client ended its side (END_STREAM)
	backendDone bool // the response ended (END_STREAM), or the proxy's did

	// Denied streams only (client side): the client's stream window for
	// the denial's body, and the body while it waits for window.
	window int64
	body   []byte
}

// record is the stream's Record.
func (st *stream) record() l7.Record {
	d := st.headAfter
	if st.status == 0 {
		d = time.Since(st.start)
	}
	r := l7.Record{Time: st.start, Duration: d, Verdict: st.verdict}
	if st.grpc {
		r.Protocol = "grpc"
		r.GRPC = &l7.GRPCRecord{Service: st.service, Method: st.method, Status: st.grpcStatus}
	} else {
		r.Protocol = "h2"
		h := st.http
		h.Status = st.status
		r.HTTP = &h
	}
	return r
}

// lookup returns the stream with id, or nil.
func (c *conn) lookup(id uint32) *stream {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.streams[id]
}

// finish marks one side of st ended (or both, reset) and forgets st once
// both are; a stream forgotten without its Record gets it now.
func (c *conn) finish(st *stream, client, backend bool) {
	var rec *l7.Record
	c.mu.Lock()
	st.clientDone = st.clientDone || client
	st.backendDone = st.backendDone || backend
	if st.clientDone && st.backendDone {
		if c.streams[st.id] == st {
			delete(c.streams, st.id)
		}
		if !st.recorded {
			st.recorded = true
			r := st.record()
			rec = &r
		}
	}
	c.mu.Unlock()
	if rec != nil {
		c.s.Record(*rec)
	}
}

// recordNow reports st if it was not yet.
func (c *conn) recordNow(st *stream) {
	c.mu.Lock()
	if st.recorded {
		c.mu.Unlock()
		return
	}
	st.recorded = true
	r := st.record()
	c.mu.Unlock()
	c.s.Record(r)
}

// recordRest reports the streams still open when the connection ended.
func (c *conn) recordRest() {
	c.mu.Lock()
	var recs []l7.Record
	for id, st := range c.streams {
		if !st.recorded {
			st.recorded = true
			recs = append(recs, st.record())
		}
		delete(c.streams, id)
	}
	c.mu.Unlock()
	for _, r := range recs {
		c.s.Record(r)
	}
}
