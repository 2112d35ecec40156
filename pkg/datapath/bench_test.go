package datapath

import (
	"errors"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// baselineProgram is an empty tc program returning TC_ACT_OK: the cost of
// BPF_PROG_TEST_RUN itself, to set the datapath's cost beside.
func baselineProgram(b *testing.B) *ebpf.Program {
	b.Helper()
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "pal_baseline",
		Type: ebpf.SchedCLS,
		Instructions: asm.Instructions{
			asm.Mov.Imm(asm.R0, 0), // TC_ACT_OK
			asm.Return(),
		},
		License: "Dual BSD/GPL",
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { p.Close() })
	return p
}

// BenchmarkGuard reports the per-packet cost of the datapath program
// (ns/pkt) beside an empty program in the same run (baseline-ns/pkt) and
// their difference (overhead-ns/pkt), from BPF_PROG_TEST_RUN with repeat,
// for the kinds of packets it sees. The endpoint map holds 2,000 addresses.
func BenchmarkGuard(b *testing.B) {
	d := newTestDatapath(b, DefaultConfig())
	setEndpoints(b, d)
	for i := range 1000 {
		a4 := netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)})
		a6 := netip.AddrFrom16([16]byte{0xfd, 1, 14: byte(i >> 8), 15: byte(i)})
		for _, a := range []netip.Addr{a4, a6} {
			if err := d.SetEndpoint(a, Endpoint{Index: uint32(100 + i)}); err != nil {
				b.Fatal(err)
			}
		}
	}
	events, err := d.Events()
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { events.Close() })
	base := baselineProgram(b)

	payload := strings.Repeat("x", 1400)
	cases := []struct {
		name string
		dir  Direction
		pkt  []byte
	}{
		{"v4-hbone", FromPod, ip4{src: podA, dst: podB, proto: protoTCP}.packet(tcpSeg(40000, 15008, tcpACK, payload))},
		{"v4-outside-pass", FromPod, ip4{src: podA, dst: outX, proto: protoTCP}.packet(tcpSeg(40000, 80, tcpACK, payload))},
		{"v4-udp", FromPod, ip4{src: podA, dst: podB, proto: protoUDP}.packet(udpDgram(40000, 53, "query"))},
		{"v4-plaintext-drop", FromPod, ip4{src: podA, dst: podB, proto: protoTCP}.packet(tcpSeg(40000, 8080, tcpSYN, ""))},
		{"v4-strict-drop", ToPod, ip4{src: outX, dst: podS, proto: protoTCP}.packet(tcpSeg(40000, 8080, tcpSYN, ""))},
		{"v6-hbone", FromPod, ip6{src: podA6, dst: podB6, proto: protoTCP}.packet(tcpSeg(40000, 15008, tcpACK, payload))},
		{"v6-exthdrs-hbone", FromPod, ip6{src: podA6, dst: podB6, proto: protoTCP, exts: []ext6{{typ: protoHopOpts, body: []byte{5, 2, 0, 0}}, {typ: protoDstOpts, body: make([]byte, 6)}}}.packet(tcpSeg(40000, 15008, tcpACK, payload))},
		{"arp", FromPod, arpRequest()},
	}
	// Below the ring buffer's capacity, so that every drop writes its event
	// (the ring is drained between batches).
	const repeat = 2000
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			prog := d.FromPod()
			if tc.dir == ToPod {
				prog = d.ToPod()
			}
			var guard, baseline time.Duration
			var n int
			for b.Loop() {
				_, g, err := prog.Benchmark(tc.pkt, repeat, nil)
				if err != nil {
					b.Fatal(err)
				}
				_, z, err := base.Benchmark(tc.pkt, repeat, nil)
				if err != nil {
					b.Fatal(err)
				}
				guard += g
				baseline += z
				n++
				drain(b, events)
			}
			g := float64(guard.Nanoseconds()) / float64(n)
			z := float64(baseline.Nanoseconds()) / float64(n)
			b.ReportMetric(g, "ns/pkt")
			b.ReportMetric(z, "baseline-ns/pkt")
			b.ReportMetric(g-z, "overhead-ns/pkt")
		})
	}
	if st, err := d.Stats(); err != nil || st.EventsLost != 0 {
		b.Errorf("stats %+v %v: events were lost, the drop cases did not measure writing them", st, err)
	}
}

func drain(b *testing.B, r *EventReader) {
	for {
		r.SetDeadline(time.Now())
		_, err := r.Read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return
		}
		if err != nil {
			b.Fatal(err)
		}
	}
}
