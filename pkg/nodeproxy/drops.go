package nodeproxy

import (
	"context"
	"net/netip"

	"github.com/palisade-net/palisade/pkg/flowlog"
	"github.com/palisade-net/palisade/pkg/handoff"
	"github.com/palisade-net/palisade/pkg/workload"
)

// Dropped turns the packets the node's eBPF datapath dropped, as the agent
// reports them, into flow records (handoff.Handler): type packet, verdict
// dropped, the datapath's reason, both sides named from the cluster view
// (pods of every node, with their identities). It never fails: a record
// whose addresses do not parse keeps them as they came.
func (p *Proxy) Dropped(_ context.Context, drops []handoff.Drop) error {
	if p.telemetryOff.Load() {
		return nil
	}
	ix := p.index.Load()
	for i := range drops {
		p.records.Add(p.dropRecord(ix, &drops[i]))
	}
	return nil
}

// dropRecord builds the record of one dropped packet.
func (p *Proxy) dropRecord(ix *workload.Index, d *handoff.Drop) *flowlog.Record {
	dir := dirOutbound
	if d.Direction != "from_pod" {
		dir = dirInboundPlain
	}
	return &flowlog.Record{
		Time: d.Time, Type: flowlog.TypePacket, Node: p.cfg.Node, Direction: dir, Pod: d.Pod,
		Source: p.packetSide(ix, d.Source), Destination: p.packetSide(ix, d.Destination),
		Transport: "plaintext", Protocol: d.Protocol, Verdict: flowlog.Dropped, Reason: d.Reason,
		Packet: &flowlog.Packet{Interface: d.Interface, Length: d.Length, TCPFlags: d.TCPFlags},
	}
}

// packetSide describes one address of a dropped packet: the pod it
// belongs to, if any, with the pod's identity.
func (p *Proxy) packetSide(ix *workload.Index, addr string) flowlog.Endpoint {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil || ix == nil {
		return flowlog.Endpoint{Address: addr}
	}
	w := ix.Workload(ap.Addr().Unmap())
	if w == nil {
		return flowlog.Endpoint{Address: addr}
	}
	var id string
	if sid, err := w.Identity(p.cfg.TrustDomain); err == nil {
		id = sid.String()
	}
	return side(w, addr, id)
}
