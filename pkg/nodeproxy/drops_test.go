package nodeproxy

import (
	"context"
	"log/slog"
	"reflect"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/palisade-net/palisade/pkg/flowlog"
	"github.com/palisade-net/palisade/pkg/handoff"
	"github.com/palisade-net/palisade/pkg/workload"
)

// TestDroppedRecords: the agent's drop reports become packet records with
// verdict dropped, the datapath's reason, the packet's details and both
// sides named from the cluster view; an address of no pod keeps only the
// address, and nothing is recorded while telemetry is off.
func TestDroppedRecords(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, recs := newTestProxyRecords(reg)
	p := &Proxy{cfg: Config{Node: "node1", TrustDomain: spiffeid.RequireTrustDomainFromString("palisade.local")}, metrics: m, records: recs,
		log: slog.New(slog.DiscardHandler)}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "vault", Labels: map[string]string{"palisade.dev/mtls": "enabled"}}}
	pod := func(name, ip, sa string) workload.Pod {
		return workload.Pod{Namespace: ns, Pod: &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "vault", Labels: map[string]string{"app": name}},
			Spec:       corev1.PodSpec{ServiceAccountName: sa, NodeName: "node1"},
			Status:     corev1.PodStatus{PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}},
		}}
	}
	p.index.Store(workload.NewIndex([]workload.Pod{pod("rogue", "10.0.1.4", "rogue"), pod("vecho", "10.0.2.5", "echo")}, nil, nil))

	at := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	drops := []handoff.Drop{
		{Time: at, Pod: "vault/rogue", Direction: "from_pod", Source: "10.0.1.4:40404", Destination: "10.0.2.5:9000",
			Protocol: "tcp", TCPFlags: "SYN", Reason: "plaintext_between_enrolled", Interface: "vethA", Length: 60},
		{Time: at.Add(time.Second), Pod: "vault/vecho", Direction: "to_pod", Source: "192.0.2.9:5555", Destination: "10.0.2.5:9000",
			Protocol: "tcp", TCPFlags: "SYN", Reason: "strict_plaintext_inbound", Interface: "vethB", Length: 60},
		{Time: at.Add(2 * time.Second), Pod: "vault/rogue", Direction: "from_pod", Source: "garbage", Destination: "10.0.2.5:0",
			Protocol: "17", Reason: "truncated_header", Interface: "vethA", Length: 20},
	}
	if err := p.Dropped(context.Background(), drops); err != nil {
		t.Fatal(err)
	}
	got := recs.Hub().Recent(flowlog.Filter{Types: []string{flowlog.TypePacket}, Verdicts: []string{flowlog.Dropped}}, 0)
	if len(got) != 3 {
		t.Fatalf("got %d packet records, want 3: %+v", len(got), got)
	}
	r := got[0]
	if r.Node != "node1" || r.Pod != "vault/rogue" || r.Direction != dirOutbound || r.Protocol != "tcp" || r.Transport != "plaintext" ||
		r.Reason != "plaintext_between_enrolled" || !r.Time.Equal(at) ||
		r.Packet == nil || *r.Packet != (flowlog.Packet{Interface: "vethA", Length: 60, TCPFlags: "SYN"}) {
		t.Errorf("record 0 = %+v (packet %+v)", r, r.Packet)
	}
	if s := r.Source; s.Pod != "rogue" || s.Namespace != "vault" || s.Workload != "rogue" || s.Address != "10.0.1.4:40404" ||
		s.Identity != "spiffe://palisade.local/ns/vault/sa/rogue" {
		t.Errorf("record 0 source = %+v", s)
	}
	if d := r.Destination; d.Pod != "vecho" || d.Identity != "spiffe://palisade.local/ns/vault/sa/echo" || d.Address != "10.0.2.5:9000" {
		t.Errorf("record 0 destination = %+v", d)
	}
	if r := got[1]; r.Direction != dirInboundPlain || r.Pod != "vault/vecho" || !reflect.DeepEqual(r.Source, flowlog.Endpoint{Address: "192.0.2.9:5555"}) ||
		r.Destination.Pod != "vecho" || r.Reason != "strict_plaintext_inbound" {
		t.Errorf("record 1 = %+v", r)
	}
	if r := got[2]; !reflect.DeepEqual(r.Source, flowlog.Endpoint{Address: "garbage"}) || r.Destination.Pod != "vecho" || r.Protocol != "17" || r.Packet.TCPFlags != "" {
		t.Errorf("record 2 = %+v", r)
	}
	// The filters of kubectl palisade observe select them.
	f, err := flowlog.ParseFilter(map[string][]string{"verdict": {"dropped"}, "type": {"packet"}, "pod": {"vault/vecho"}, "protocol": {"tcp"}})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(recs.Hub().Recent(f, 0)); n != 2 {
		t.Errorf("filter %+v selects %d records, want 2", f, n)
	}

	p.SetTelemetry(false)
	if err := p.Dropped(context.Background(), drops[:1]); err != nil {
		t.Fatal(err)
	}
	if n := len(recs.Hub().Recent(flowlog.Filter{}, 0)); n != 3 {
		t.Errorf("%d records after a drop with telemetry off, want 3", n)
	}
}
