package ebpf

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/palisade-net/palisade/pkg/workload"
)

// BenchmarkSetEndpoints is the agent's cost per reconcile of keeping the
// endpoint map in step with a cluster of 5,000 enrolled pods (110 of them
// on this node): unchanged (the common case: only the diff is written, and
// the pins are pruned), and with one pod replaced by another (its address
// rewritten, the old index's counters deleted).
func BenchmarkSetEndpoints(b *testing.B) {
	requireRoot(b)
	m, err := Open(Options{Node: "n0", PinDir: mountBPFFS(b)})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { m.Close() })
	pods := make([]workload.Workload, 5000)
	for i := range pods {
		pods[i] = workload.Workload{
			UID: fmt.Sprintf("uid-%d", i), Namespace: "ns", Name: fmt.Sprintf("p%d", i), Node: fmt.Sprintf("n%d", i/110),
			IPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)})},
		}
	}
	if err := m.SetEndpoints(b.Context(), pods); err != nil {
		b.Fatal(err)
	}
	b.Run("unchanged", func(b *testing.B) {
		for b.Loop() {
			if err := m.SetEndpoints(b.Context(), pods); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("one-pod-replaced", func(b *testing.B) {
		n := 0
		for b.Loop() {
			n++
			pods[0].UID = fmt.Sprintf("uid-replaced-%d", n)
			if err := m.SetEndpoints(b.Context(), pods); err != nil {
				b.Fatal(err)
			}
		}
	})
}
