package nodeproxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync/atomic"
	"time"

	"github.com/palisade-net/palisade/pkg/flowlog"
	"github.com/palisade-net/palisade/pkg/l7"
	"github.com/palisade-net/palisade/pkg/l7/httpl7"
	"github.com/palisade-net/palisade/pkg/l7/kafka"
)

// inspectors maps each protocol a port's rules can need to its inspector.
func inspectors() map[l7.Protocol]l7.ServeFunc {
	return map[l7.Protocol]l7.ServeFunc{
		l7.HTTP:  httpl7.Serve,
		l7.Kafka: kafka.Serve,
	}
}

// Request is one L7 request the proxy judged, with the connection it came
// on, as the admin endpoint lists it.
type Request struct {
	Time        time.Time       `json:"time"`
	Direction   string          `json:"direction"`
	Pod         string          `json:"pod"`
	Source      string          `json:"source"`
	Destination string          `json:"destination"`
	SrcIdentity string          `json:"sourceIdentity,omitempty"`
	Protocol    string          `json:"protocol"`
	HTTP        *l7.HTTPRecord  `json:"http,omitempty"`
	GRPC        *l7.GRPCRecord  `json:"grpc,omitempty"`
	Kafka       *l7.KafkaRecord `json:"kafka,omitempty"`
	Verdict     string          `json:"verdict"` // allowed or denied
	Policy      string          `json:"policy,omitempty"`
	Rule        string          `json:"rule,omitempty"`
	Reason      string          `json:"reason,omitempty"`
	Duration    string          `json:"duration"`
}

// Requests returns the most recent L7 request records, oldest first, in
// the shape of /debug/requests (from the flow records the hub keeps).
func (p *Proxy) Requests() []Request {
	recs := p.records.Hub().Recent(flowlog.Filter{Types: []string{flowlog.TypeRequest}}, 0)
	out := make([]Request, 0, len(recs))
	for _, r := range recs {
		out = append(out, requestOf(r))
	}
	return out
}

// requestOf is a flow record in the shape of /debug/requests.
func requestOf(r *flowlog.Record) Request {
	proto := r.Protocol
	if proto == flowlog.ProtoHTTP {
		proto = "http/1.1"
		if r.HTTPVersion == "2" {
			proto = "h2"
		}
	}
	return Request{
		Time: r.Time, Direction: r.Direction, Pod: r.Pod, Source: r.Source.Address, Destination: r.Destination.Address,
		SrcIdentity: r.Source.Identity, Protocol: proto, HTTP: r.HTTP, GRPC: r.GRPC, Kafka: r.Kafka,
		Verdict: r.Verdict, Policy: r.Policy, Rule: r.Rule, Reason: r.Reason,
		Duration: time.Duration(r.DurationMs * float64(time.Millisecond)).String(),
	}
}

// observe turns an inspector's record into a request record, a flow
// record and metrics.
// last caches the metric series of the connection's previous request.
func (p *Proxy) observe(f *Flow, last *atomic.Pointer[reqCacheEntry], r l7.Record) {
	if !r.Verdict.Allow {
		p.log.Info("request denied", "direction", f.Direction, "pod", f.Pod, "src", f.Source, "dst", f.Destination,
			"source_identity", f.SrcIdentity, "protocol", r.Protocol, "policy", r.Verdict.Policy, "rule", r.Verdict.Rule,
			"reason", r.Verdict.Reason)
	}
	for _, msg := range r.Verdict.Logs {
		p.log.Info("policy log", "pod", f.Pod, "src", f.Source, "protocol", r.Protocol, "policy", r.Verdict.Policy,
			"rule", r.Verdict.Rule, "message", msg)
	}
	if p.telemetryOff.Load() {
		return
	}
	rec := p.requestRecord(f, &r)
	p.records.Add(rec)
	p.metrics.request(last, rec, r.Duration)
}

// inspectAndClose runs the connection's inspector between client and
// backend until the connection ends, closes both, and returns the bytes
// written to and read from the backend. An inspector error (malformed
// traffic, a refused upgrade) is recorded on a before it returns, so the
// flow record carries it.
func (pp *podProxy) inspectAndClose(client net.Conn, backend *countedConn, a *authorized, f *Flow) (sent, recv int64) {
	p := pp.p
	defer func() {
		client.Close()
		backend.Close()
		sent, recv = backend.sent.Load(), backend.recv.Load()
	}()
	serve := p.inspectors[a.proto]
	if serve == nil {
		a.fail(fmt.Errorf("no inspector for protocol %q", a.proto))
		return
	}
	// The requests of a connection mostly share their metric labels.
	var last atomic.Pointer[reqCacheEntry]
	s := &l7.Session{
		Judge:   a,
		Observe: func(r l7.Record) { p.observe(f, &last, r) },
		Log:     p.log.With("pod", f.Pod, "direction", f.Direction, "src", f.Source, "dst", f.Destination, "protocol", string(a.proto)),
	}
	err := serve(pp.ctx, client, backend, s)
	if err == nil || errors.Is(err, context.Canceled) || a.revoked.Load() != nil {
		return
	}
	a.fail(err)
	p.metrics.l7Errors.WithLabelValues(f.Direction, string(a.proto)).Inc()
	return
}
