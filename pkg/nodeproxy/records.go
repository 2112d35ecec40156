package nodeproxy

import (
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/palisade-net/palisade/pkg/flowlog"
	"github.com/palisade-net/palisade/pkg/l7"
	"github.com/palisade-net/palisade/pkg/policy"
	"github.com/palisade-net/palisade/pkg/workload"
)

// side describes a pod (nil: outside the cluster) at addr with identity id
// for flow records and metric labels.
func side(w *workload.Workload, addr, id string) flowlog.Endpoint {
	e := flowlog.Endpoint{Address: addr, Identity: id}
	if w != nil {
		e.Pod, e.Namespace, e.Labels = w.Name, w.Namespace, w.Labels
		e.Workload = flowlog.WorkloadName(w.Name, w.Labels)
	}
	return e
}

// peerSide describes the source of an inbound connection from what policy
// knows of it: a verified pod (its address and labels were checked against
// the certificate) by name, otherwise only its identity and namespace.
func (p *Proxy) peerSide(ep policy.Endpoint, addr string) flowlog.Endpoint {
	var id string
	if !ep.Identity.IsZero() {
		id = ep.Identity.String()
	}
	if ep.InCluster && ep.IP.IsValid() {
		if w := p.index.Load().Workload(ep.IP); w != nil {
			return side(w, addr, id)
		}
	}
	return flowlog.Endpoint{Address: addr, Identity: id, Namespace: ep.Namespace}
}

// emitConn publishes a connection's record and counts its end.
func (p *Proxy) emitConn(f *Flow, failedReason string) {
	if p.telemetryOff.Load() {
		return
	}
	p.flows.add(*f)
	rec := &flowlog.Record{
		Time: f.Start, Type: flowlog.TypeConnection, Node: p.cfg.Node, Direction: f.Direction, Pod: f.Pod,
		Source: f.src, Destination: f.dst, Service: f.Service, Transport: f.Transport,
		Protocol: flowlog.ProtoTCP, Parser: f.Protocol, Verdict: f.Verdict,
		Policy: f.Policy, Rule: f.Rule, Reason: f.Reason,
		BytesSent: f.BytesSent, BytesReceived: f.BytesRecv, DurationMs: flowlog.Ms(f.elapsed),
	}
	p.records.Add(rec)
	if failedReason != "" {
		p.metrics.failed.WithLabelValues(f.Direction, failedReason,
			orUnknown(f.src.Namespace), orUnknown(f.src.Workload),
			orUnknown(f.dst.Namespace), orUnknown(f.dst.Workload)).Inc()
		return
	}
	s := f.series
	if s == nil { // telemetry was off when the connection opened
		s = p.metrics.conn(f.Direction, &f.src, &f.dst)
	}
	s.closed.Inc()
	s.sent.Add(float64(f.BytesSent))
	s.recv.Add(float64(f.BytesRecv))
}

// opened counts an established connection.
func (p *Proxy) opened(f *Flow) {
	if p.telemetryOff.Load() {
		return
	}
	f.series = p.metrics.conn(f.Direction, &f.src, &f.dst)
	f.series.opened.Inc()
}

// requestProtocol maps an inspector's protocol to the record's protocol
// and HTTP version.
func requestProtocol(proto string) (string, string) {
	switch proto {
	case "http/1.1":
		return flowlog.ProtoHTTP, "1.1"
	case "h2":
		return flowlog.ProtoHTTP, "2"
	case "grpc":
		return flowlog.ProtoGRPC, "2"
	}
	return strings.ToLower(proto), ""
}

// requestRecord turns an inspector's record into a flow record.
func (p *Proxy) requestRecord(f *Flow, r *l7.Record) *flowlog.Record {
	proto, version := requestProtocol(r.Protocol)
	verdict := flowlog.Allowed
	if !r.Verdict.Allow {
		verdict = flowlog.Denied
	}
	return &flowlog.Record{
		Time: r.Time, Type: flowlog.TypeRequest, Node: p.cfg.Node, Direction: f.Direction, Pod: f.Pod,
		Source: f.src, Destination: f.dst, Service: f.Service, Transport: f.Transport,
		Protocol: proto, HTTPVersion: version, HTTP: r.HTTP, GRPC: r.GRPC, Kafka: r.Kafka,
		Verdict: verdict, Policy: r.Verdict.Policy, Rule: r.Verdict.Rule, Reason: r.Verdict.Reason,
		DurationMs: flowlog.Ms(r.Duration),
	}
}

// updateFlowLogs compiles the FlowLog objects of a snapshot into the
// selection of what the flow log file records, when they changed (most
// snapshots change pods), logging each problem once.
func (p *Proxy) updateFlowLogs(objs []*unstructured.Unstructured) {
	var fls []*unstructured.Unstructured
	for _, o := range objs {
		if flowlog.IsFlowLog(o) {
			fls = append(fls, o)
		}
	}
	p.policyMu.Lock()
	defer p.policyMu.Unlock()
	if p.flowLogsSeen && equality.Semantic.DeepEqual(p.flowLogObjs, fls) {
		return
	}
	p.flowLogObjs, p.flowLogsSeen = fls, true
	sel, problems := flowlog.Compile(fls)
	for _, pr := range problems {
		if !slices.Contains(p.flowLogProblems, pr) {
			p.log.Warn("FlowLog problem", "flowlog", pr.Name, "problem", pr.Message)
		}
	}
	p.flowLogProblems = problems
	p.records.SetSelection(sel)
	p.metrics.flowLogs.Set(float64(sel.Len()))
}

// SetTelemetry switches flow records and the per-connection and
// per-request metrics on or off.
func (p *Proxy) SetTelemetry(on bool) {
	if p.telemetryOff.Swap(!on) == !on {
		return
	}
	p.log.Info("telemetry", "enabled", on)
}
