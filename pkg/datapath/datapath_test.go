package datapath

import (
	"errors"
	"maps"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/cilium/ebpf"
)

// requireBPF skips a test that loads BPF programs when the process cannot,
// unless CI is set, where that is a failure.
func requireBPF(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "" {
		t.Skip("needs root (CAP_BPF and CAP_NET_ADMIN) to load tc programs (set CI to make this a failure)")
	}
	t.Fatal("needs root (CAP_BPF and CAP_NET_ADMIN) to load tc programs; CI runs as root")
}

// newTestDatapath loads the programs without pinning.
func newTestDatapath(t testing.TB, cfg Config) *Datapath {
	t.Helper()
	requireBPF(t)
	d, err := Load(cfg, Options{})
	if errors.Is(err, ebpf.ErrNotSupported) && os.Getenv("CI") == "" {
		t.Skipf("kernel lacks a BPF feature the datapath needs: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d.Close(); err != nil {
			t.Error(err)
		}
	})
	return d
}

// skbContext mirrors struct __sk_buff for BPF_PROG_TEST_RUN. The kernel
// accepts non-zero values only in mark, priority, ingress_ifindex, ifindex,
// cb, tstamp, wire_len, gso_segs, gso_size and hwtstamp, and copies them
// back after the run.
type skbContext struct {
	Len, PktType, Mark, QueueMapping, Protocol uint32
	VlanPresent, VlanTCI, VlanProto, Priority  uint32
	IngressIfindex, Ifindex, TCIndex           uint32
	CB                                         [5]uint32
	Hash, TCClassid, Data, DataEnd, NapiID     uint32
	Family, RemoteIP4, LocalIP4                uint32
	RemoteIP6, LocalIP6                        [4]uint32
	RemotePort, LocalPort, DataMeta            uint32
	FlowKeys                                   uint64
	Tstamp                                     uint64
	WireLen, GSOSegs                           uint32
	Sk                                         uint64
	GSOSize                                    uint32
	TstampType                                 uint8
	_                                          [3]uint8
	Hwtstamp                                   uint64
}

// tcActUnspec is TC_ACT_UNSPEC (-1) as BPF_PROG_TEST_RUN returns it.
const (
	tcActUnspec = 0xffffffff
	tcActShot   = 2
)

// run feeds one frame to the program of dir repeat times and returns the
// program's return value and the mark it left.
func run(t *testing.T, d *Datapath, dir Direction, pkt []byte, mark, gsoSegs uint32, repeat uint32) (uint32, uint32) {
	t.Helper()
	prog := d.FromPod()
	if dir == ToPod {
		prog = d.ToPod()
	}
	in := skbContext{Mark: mark, GSOSegs: gsoSegs}
	var out skbContext
	ret, err := prog.Run(&ebpf.RunOptions{Data: pkt, Context: in, ContextOut: &out, Repeat: repeat})
	if err != nil {
		t.Fatalf("run %s: %v", dir, err)
	}
	return ret, out.Mark
}

func resetCounters(t *testing.T, d *Datapath) {
	t.Helper()
	var (
		k  datapathPalCounterKey
		vs []datapathPalCounter
		ks []datapathPalCounterKey
	)
	it := d.objs.PalCounters.Iterate()
	for it.Next(&k, &vs) {
		ks = append(ks, k)
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	for _, k := range ks {
		if err := d.objs.PalCounters.Delete(k); err != nil {
			t.Fatal(err)
		}
	}
}

// drainEvents returns the events waiting in the ring buffer.
func drainEvents(t *testing.T, r *EventReader) []Event {
	t.Helper()
	var out []Event
	for {
		r.SetDeadline(time.Now())
		e, err := r.Read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, e)
	}
}

var (
	podA   = netip.MustParseAddr("10.0.1.1")   // enrolled, permissive, index 1
	podB   = netip.MustParseAddr("10.0.2.2")   // enrolled, permissive, index 2
	podS   = netip.MustParseAddr("10.0.3.3")   // enrolled, strict, index 3
	outX   = netip.MustParseAddr("192.0.2.9")  // not enrolled
	outY   = netip.MustParseAddr("192.0.2.10") // not enrolled
	probe4 = netip.MustParseAddr("169.254.7.127")

	podA6   = netip.MustParseAddr("fd00::a") // same pod as podA
	podB6   = netip.MustParseAddr("fd00::b")
	podS6   = netip.MustParseAddr("fd00::5")
	outX6   = netip.MustParseAddr("2001:db8::9")
	probe6  = netip.MustParseAddr("fd16:9254:7127:1337:ffff:ffff:ffff:ffff")
	testEPs = map[netip.Addr]Endpoint{
		podA:  {Index: 1, Mode: ModePermissive},
		podB:  {Index: 2, Mode: ModePermissive},
		podS:  {Index: 3, Mode: ModeStrict},
		podA6: {Index: 1, Mode: ModePermissive},
		podB6: {Index: 2, Mode: ModePermissive},
		podS6: {Index: 3, Mode: ModeStrict},
	}
)

func setEndpoints(t testing.TB, d *Datapath) {
	t.Helper()
	for a, ep := range testEPs {
		if err := d.SetEndpoint(a, ep); err != nil {
			t.Fatal(err)
		}
	}
}

type verdictCase struct {
	name string
	dir  Direction
	pkt  []byte
	mark uint32 // skb->mark before the program

	verdict Verdict
	reason  Reason
	index   uint32 // the counter's endpoint index
	outMark uint32 // skb->mark after the program (ignored for drops)
	// For drops: the event's addresses and ports.
	src, dst netip.AddrPort
}

func ap(a netip.Addr, port uint16) netip.AddrPort { return netip.AddrPortFrom(a, port) }

func TestVerdicts(t *testing.T) {
	d := newTestDatapath(t, DefaultConfig())
	setEndpoints(t, d)
	events, err := d.Events()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { events.Close() })

	const both = MarkSrcEnrolled | MarkDstEnrolled
	tcp4 := func(src, dst netip.Addr, sport, dport uint16, flags uint8) []byte {
		return ip4{src: src, dst: dst, proto: protoTCP}.packet(tcpSeg(sport, dport, flags, "hello"))
	}
	tcp6 := func(src, dst netip.Addr, sport, dport uint16, flags uint8, exts ...ext6) []byte {
		return ip6{src: src, dst: dst, proto: protoTCP, exts: exts}.packet(tcpSeg(sport, dport, flags, "hello"))
	}
	opt := func(n int) ext6 { return ext6{typ: protoDstOpts, body: make([]byte, n)} }
	hbh := ext6{typ: protoHopOpts, body: []byte{5, 2, 0, 0}} // router alert
	routing := ext6{typ: protoRouting, body: make([]byte, 6)}
	ah := ext6{typ: protoAH, body: make([]byte, 22)}
	rtrAlert := []byte{0x94, 0x04, 0, 0}

	cases := []verdictCase{
		// Between enrolled pods: HBONE only.
		{name: "v4 enrolled to enrolled hbone syn", dir: FromPod, pkt: tcp4(podA, podB, 40000, 15008, tcpSYN),
			verdict: VerdictHBONE, index: 1, outMark: both},
		{name: "v4 enrolled hbone reply from 15008", dir: ToPod, pkt: tcp4(podB, podA, 15008, 40000, tcpSYN|tcpACK),
			verdict: VerdictHBONE, index: 1, outMark: both},
		{name: "v4 enrolled hbone data from 15008", dir: FromPod, pkt: tcp4(podB, podA, 15008, 40000, tcpACK|tcpPSH),
			verdict: VerdictHBONE, index: 2, outMark: both},
		{name: "v4 enrolled plaintext syn", dir: FromPod, pkt: tcp4(podA, podB, 40000, 8080, tcpSYN),
			verdict: VerdictDrop, reason: ReasonPlaintext, index: 1, src: ap(podA, 40000), dst: ap(podB, 8080)},
		{name: "v4 enrolled plaintext mid-stream", dir: FromPod, pkt: tcp4(podA, podB, 40000, 8080, tcpACK|tcpPSH),
			verdict: VerdictDrop, reason: ReasonPlaintext, index: 1, src: ap(podA, 40000), dst: ap(podB, 8080)},
		{name: "v4 enrolled plaintext seen at destination", dir: ToPod, pkt: tcp4(podA, podB, 40000, 8080, tcpSYN),
			verdict: VerdictDrop, reason: ReasonPlaintext, index: 2, src: ap(podA, 40000), dst: ap(podB, 8080)},
		{name: "v4 enrolled plaintext reply", dir: ToPod, pkt: tcp4(podB, podA, 8080, 40000, tcpSYN|tcpACK),
			verdict: VerdictDrop, reason: ReasonPlaintext, index: 1, src: ap(podB, 8080), dst: ap(podA, 40000)},
		{name: "v4 source port 15008 cannot open plaintext", dir: FromPod, pkt: tcp4(podA, podB, 15008, 8080, tcpSYN),
			verdict: VerdictDrop, reason: ReasonPlaintext, index: 1, src: ap(podA, 15008), dst: ap(podB, 8080)},
		{name: "v4 enrolled rst to 8080", dir: FromPod, pkt: tcp4(podA, podB, 40000, 8080, tcpRST),
			verdict: VerdictDrop, reason: ReasonPlaintext, index: 1, src: ap(podA, 40000), dst: ap(podB, 8080)},
		{name: "v4 enrolled to strict plaintext", dir: FromPod, pkt: tcp4(podA, podS, 40000, 8080, tcpSYN),
			verdict: VerdictDrop, reason: ReasonPlaintext, index: 1, src: ap(podA, 40000), dst: ap(podS, 8080)},
		{name: "v4 enrolled dns over tcp", dir: FromPod, pkt: tcp4(podA, podB, 40000, 53, tcpSYN),
			verdict: VerdictPass, index: 1, outMark: both},
		{name: "v4 enrolled dns over tcp reply", dir: ToPod, pkt: tcp4(podB, podA, 53, 40000, tcpSYN|tcpACK),
			verdict: VerdictPass, index: 1, outMark: both},
		{name: "v4 source port 53 cannot open plaintext", dir: FromPod, pkt: tcp4(podA, podB, 53, 8080, tcpSYN),
			verdict: VerdictDrop, reason: ReasonPlaintext, index: 1, src: ap(podA, 53), dst: ap(podB, 8080)},
		{name: "v4 enrolled udp dns", dir: FromPod, pkt: ip4{src: podA, dst: podB, proto: protoUDP}.packet(udpDgram(40000, 53, "q")),
			verdict: VerdictPass, index: 1, outMark: both},
		{name: "v4 enrolled udp other", dir: FromPod, pkt: ip4{src: podA, dst: podB, proto: protoUDP}.packet(udpDgram(40000, 9999, "x")),
			verdict: VerdictPass, index: 1, outMark: both},
		{name: "v4 enrolled icmp", dir: FromPod, pkt: ip4{src: podA, dst: podB, proto: protoICMP}.packet(icmpEcho(8)),
			verdict: VerdictPass, index: 1, outMark: both},

		// Proxy mark.
		{name: "v4 proxy mark exempts plaintext", dir: FromPod, pkt: tcp4(podA, podB, 40000, 8080, tcpSYN), mark: 0x539,
			verdict: VerdictProxy, index: 1, outMark: 0x539 | both},
		{name: "v4 proxy mark under mask, other bits kept", dir: FromPod, pkt: tcp4(podA, podB, 40000, 8080, tcpSYN), mark: 0xabc0c539,
			verdict: VerdictProxy, index: 1, outMark: 0xabc0c539 | both},
		{name: "v4 other mark is not the proxy", dir: FromPod, pkt: tcp4(podA, podB, 40000, 8080, tcpSYN), mark: 0x53a,
			verdict: VerdictDrop, reason: ReasonPlaintext, index: 1, src: ap(podA, 40000), dst: ap(podB, 8080)},
		{name: "v4 hbone with proxy mark counts as hbone", dir: FromPod, pkt: tcp4(podA, podB, 40000, 15008, tcpSYN), mark: 0x539,
			verdict: VerdictHBONE, index: 1, outMark: 0x539 | both},

		// Enrolled <-> outside the mesh.
		{name: "v4 enrolled to outside", dir: FromPod, pkt: tcp4(podA, outX, 40000, 80, tcpSYN),
			verdict: VerdictPass, index: 1, outMark: MarkSrcEnrolled},
		{name: "v4 outside into permissive", dir: ToPod, pkt: tcp4(outX, podA, 40000, 80, tcpSYN),
			verdict: VerdictPass, index: 1, outMark: MarkDstEnrolled},
		{name: "v4 stale mark bits cleared", dir: FromPod, pkt: tcp4(outX, outY, 40000, 80, tcpSYN), mark: 0x1000 | 0x2000 | 0x4000,
			verdict: VerdictPass, index: 0, outMark: 0x4000},
		{name: "v4 outside syn into strict", dir: ToPod, pkt: tcp4(outX, podS, 40000, 8080, tcpSYN),
			verdict: VerdictDrop, reason: ReasonStrict, index: 3, src: ap(outX, 40000), dst: ap(podS, 8080)},
		{name: "v4 outside syn with data into strict", dir: ToPod, pkt: tcp4(outX, podS, 40000, 8080, tcpSYN|tcpPSH),
			verdict: VerdictDrop, reason: ReasonStrict, index: 3, src: ap(outX, 40000), dst: ap(podS, 8080)},
		{name: "v4 strict pod's own connection: syn-ack back", dir: ToPod, pkt: tcp4(outX, podS, 80, 40000, tcpSYN|tcpACK),
			verdict: VerdictPass, index: 3, outMark: MarkDstEnrolled},
		{name: "v4 strict pod's own connection: data back", dir: ToPod, pkt: tcp4(outX, podS, 80, 40000, tcpACK|tcpPSH),
			verdict: VerdictPass, index: 3, outMark: MarkDstEnrolled},
		{name: "v4 strict pod's own connection: syn out", dir: FromPod, pkt: tcp4(podS, outX, 40000, 80, tcpSYN),
			verdict: VerdictPass, index: 3, outMark: MarkSrcEnrolled},
		{name: "v4 outside hbone into strict", dir: ToPod, pkt: tcp4(outX, podS, 40000, 15008, tcpSYN),
			verdict: VerdictHBONE, index: 3, outMark: MarkDstEnrolled},
		{name: "v4 outside dns into strict", dir: ToPod, pkt: tcp4(outX, podS, 40000, 53, tcpSYN),
			verdict: VerdictPass, index: 3, outMark: MarkDstEnrolled},
		{name: "v4 kubelet probe into strict", dir: ToPod, pkt: tcp4(probe4, podS, 40000, 8080, tcpSYN),
			verdict: VerdictPass, index: 3, outMark: MarkDstEnrolled},
		{name: "v4 outside udp into strict", dir: ToPod, pkt: ip4{src: outX, dst: podS, proto: protoUDP}.packet(udpDgram(40000, 8080, "x")),
			verdict: VerdictPass, index: 3, outMark: MarkDstEnrolled},
		{name: "v4 outside icmp into strict", dir: ToPod, pkt: ip4{src: outX, dst: podS, proto: protoICMP}.packet(icmpEcho(8)),
			verdict: VerdictPass, index: 3, outMark: MarkDstEnrolled},

		// IPv4 options.
		{name: "v4 options, plaintext", dir: FromPod, pkt: ip4{src: podA, dst: podB, proto: protoTCP, options: rtrAlert}.packet(tcpSeg(40000, 8080, tcpSYN, "")),
			verdict: VerdictDrop, reason: ReasonPlaintext, index: 1, src: ap(podA, 40000), dst: ap(podB, 8080)},
		{name: "v4 40 bytes of options, hbone", dir: FromPod, pkt: ip4{src: podA, dst: podB, proto: protoTCP, options: make([]byte, 40)}.packet(tcpSeg(40000, 15008, tcpSYN, "")),
			verdict: VerdictHBONE, index: 1, outMark: both},
		{name: "v4 options hide nothing into strict", dir: ToPod, pkt: ip4{src: outX, dst: podS, proto: protoTCP, options: append(rtrAlert, 1, 1, 1, 1)}.packet(tcpSeg(40000, 8080, tcpSYN, "")),
			verdict: VerdictDrop, reason: ReasonStrict, index: 3, src: ap(outX, 40000), dst: ap(podS, 8080)},

		// Malformed and truncated.
		{name: "v4 ihl below 5", dir: FromPod, pkt: ip4{src: podA, dst: podB, proto: protoTCP, ihl: 4}.packet(tcpSeg(40000, 15008, tcpSYN, "")),
			verdict: VerdictDrop, reason: ReasonMalformed, index: 1, src: ap(podA, 0), dst: ap(podB, 0)},
		{name: "v4 wrong version", dir: FromPod, pkt: ip4{src: podA, dst: podB, proto: protoTCP, version: 5}.packet(tcpSeg(40000, 15008, tcpSYN, "")),
			verdict: VerdictDrop, reason: ReasonMalformed, index: 1, src: ap(podA, 0), dst: ap(podB, 0)},
		{name: "v4 ihl beyond the packet", dir: FromPod, pkt: ip4{src: podA, dst: podB, proto: protoTCP, ihl: 15}.packet(tcpSeg(40000, 8080, tcpSYN, "")),
			verdict: VerdictDrop, reason: ReasonTruncated, index: 1, src: ap(podA, 0), dst: ap(podB, 0)},
		{name: "v4 tcp header cut short", dir: FromPod, pkt: tcp4(podA, podB, 40000, 15008, tcpSYN)[:14+20+12],
			verdict: VerdictDrop, reason: ReasonTruncated, index: 1, src: ap(podA, 0), dst: ap(podB, 0)},
		{name: "v4 tcp data offset below 5", dir: FromPod, pkt: ip4{src: podA, dst: podB, proto: protoTCP}.packet(tcpSegOff(40000, 15008, tcpSYN, 4, "")),
			verdict: VerdictDrop, reason: ReasonTruncated, index: 1, src: ap(podA, 0), dst: ap(podB, 0)},
		{name: "v4 tcp cut short into strict", dir: ToPod, pkt: tcp4(outX, podS, 40000, 8080, tcpSYN)[:14+20+8],
			verdict: VerdictDrop, reason: ReasonTruncated, index: 3, src: ap(outX, 0), dst: ap(podS, 0)},
		{name: "v4 tcp cut short, unguarded", dir: ToPod, pkt: tcp4(outX, podA, 40000, 8080, tcpSYN)[:14+20+8],
			verdict: VerdictPass, index: 1, outMark: MarkDstEnrolled},
		{name: "v4 udp cut short between enrolled", dir: FromPod, pkt: ip4{src: podA, dst: podB, proto: protoUDP}.packet(udpDgram(1, 2, ""))[:14+20+4],
			verdict: VerdictPass, index: 1, outMark: both},

		// IPv4 fragments.
		{name: "v4 first fragment hbone", dir: FromPod, pkt: ip4{src: podA, dst: podB, proto: protoTCP, more: true}.packet(tcpSeg(40000, 15008, tcpACK, "abcdefgh")),
			verdict: VerdictHBONE, index: 1, outMark: both},
		{name: "v4 first fragment plaintext", dir: FromPod, pkt: ip4{src: podA, dst: podB, proto: protoTCP, more: true}.packet(tcpSeg(40000, 8080, tcpACK, "abcdefgh")),
			verdict: VerdictDrop, reason: ReasonPlaintext, index: 1, src: ap(podA, 40000), dst: ap(podB, 8080)},
		{name: "v4 tiny first fragment", dir: FromPod, pkt: ip4{src: podA, dst: podB, proto: protoTCP, more: true}.packet(tcpSeg(40000, 15008, tcpSYN, "")[:8]),
			verdict: VerdictDrop, reason: ReasonTruncated, index: 1, src: ap(podA, 0), dst: ap(podB, 0)},
		{name: "v4 later fragment of tcp between enrolled", dir: FromPod, pkt: ip4{src: podA, dst: podB, proto: protoTCP, fragOff: 3}.packet([]byte("plaintext payload")),
			verdict: VerdictDrop, reason: ReasonFragment, index: 1, src: ap(podA, 0), dst: ap(podB, 0)},
		{name: "v4 later fragment of udp between enrolled", dir: FromPod, pkt: ip4{src: podA, dst: podB, proto: protoUDP, fragOff: 3, more: true}.packet([]byte("datagram")),
			verdict: VerdictPass, index: 1, outMark: both},
		{name: "v4 later fragment of tcp into strict", dir: ToPod, pkt: ip4{src: outX, dst: podS, proto: protoTCP, fragOff: 3}.packet([]byte("reply")),
			verdict: VerdictPass, index: 3, outMark: MarkDstEnrolled},

		// IPv6.
		{name: "v6 enrolled hbone", dir: FromPod, pkt: tcp6(podA6, podB6, 40000, 15008, tcpSYN),
			verdict: VerdictHBONE, index: 1, outMark: both},
		{name: "v6 enrolled plaintext", dir: FromPod, pkt: tcp6(podA6, podB6, 40000, 8080, tcpSYN),
			verdict: VerdictDrop, reason: ReasonPlaintext, index: 1, src: ap(podA6, 40000), dst: ap(podB6, 8080)},
		{name: "v6 enrolled plaintext reply at destination", dir: ToPod, pkt: tcp6(podB6, podA6, 8080, 40000, tcpACK),
			verdict: VerdictDrop, reason: ReasonPlaintext, index: 1, src: ap(podB6, 8080), dst: ap(podA6, 40000)},
		{name: "v6 hop-by-hop and destination options, plaintext", dir: FromPod, pkt: tcp6(podA6, podB6, 40000, 8080, tcpSYN, hbh, opt(14)),
			verdict: VerdictDrop, reason: ReasonPlaintext, index: 1, src: ap(podA6, 40000), dst: ap(podB6, 8080)},
		{name: "v6 hop-by-hop, hbone", dir: FromPod, pkt: tcp6(podA6, podB6, 40000, 15008, tcpSYN, hbh),
			verdict: VerdictHBONE, index: 1, outMark: both},
		{name: "v6 routing header, hbone", dir: FromPod, pkt: tcp6(podA6, podB6, 40000, 15008, tcpSYN, routing),
			verdict: VerdictHBONE, index: 1, outMark: both},
		{name: "v6 long destination options, hbone", dir: FromPod, pkt: tcp6(podA6, podB6, 40000, 15008, tcpSYN, opt(254)),
			verdict: VerdictHBONE, index: 1, outMark: both},
		// Headers beyond PAL_MAX_DIRECT_OFF are read with bpf_skb_load_bytes,
		// as are headers outside the linear area of real packets.
		{name: "v6 headers read by the helper, hbone", dir: FromPod, pkt: tcp6(podA6, podB6, 40000, 15008, tcpSYN, opt(1198), opt(6)),
			verdict: VerdictHBONE, index: 1, outMark: both},
		{name: "v6 headers read by the helper, plaintext", dir: FromPod, pkt: tcp6(podA6, podB6, 40000, 8080, tcpSYN, opt(1198), opt(6)),
			verdict: VerdictDrop, reason: ReasonPlaintext, index: 1, src: ap(podA6, 40000), dst: ap(podB6, 8080)},
		{name: "v6 headers read by the helper, cut short", dir: FromPod, pkt: tcp6(podA6, podB6, 40000, 15008, tcpSYN, opt(1198), opt(6))[:14+40+1200+8+10],
			verdict: VerdictDrop, reason: ReasonTruncated, index: 1, src: ap(podA6, 0), dst: ap(podB6, 0)},
		{name: "v6 ah, plaintext", dir: FromPod, pkt: tcp6(podA6, podB6, 40000, 8080, tcpSYN, ah),
			verdict: VerdictDrop, reason: ReasonPlaintext, index: 1, src: ap(podA6, 40000), dst: ap(podB6, 8080)},
		{name: "v6 ah, hbone", dir: FromPod, pkt: tcp6(podA6, podB6, 40000, 15008, tcpSYN, ah),
			verdict: VerdictHBONE, index: 1, outMark: both},
		{name: "v6 six extension headers, hbone", dir: FromPod, pkt: tcp6(podA6, podB6, 40000, 15008, tcpSYN, hbh, opt(6), routing, opt(6), fragExt(0, false), opt(6)),
			verdict: VerdictHBONE, index: 1, outMark: both},
		{name: "v6 seven extension headers between enrolled", dir: FromPod, pkt: tcp6(podA6, podB6, 40000, 15008, tcpSYN, hbh, opt(6), opt(6), opt(6), opt(6), opt(6), opt(6)),
			verdict: VerdictDrop, reason: ReasonUnparsed, index: 1, src: ap(podA6, 0), dst: ap(podB6, 0)},
		{name: "v6 seven extension headers into strict", dir: ToPod, pkt: tcp6(outX6, podS6, 40000, 8080, tcpSYN, hbh, opt(6), opt(6), opt(6), opt(6), opt(6), opt(6)),
			verdict: VerdictDrop, reason: ReasonUnparsed, index: 3, src: ap(outX6, 0), dst: ap(podS6, 0)},
		{name: "v6 seven extension headers, unguarded", dir: ToPod, pkt: tcp6(outX6, podA6, 40000, 8080, tcpSYN, hbh, opt(6), opt(6), opt(6), opt(6), opt(6), opt(6)),
			verdict: VerdictPass, index: 1, outMark: MarkDstEnrolled},
		{name: "v6 extension header cut short", dir: FromPod, pkt: tcp6(podA6, podB6, 40000, 15008, tcpSYN, hbh)[:14+40+1],
			verdict: VerdictDrop, reason: ReasonTruncated, index: 1, src: ap(podA6, 0), dst: ap(podB6, 0)},
		{name: "v6 extension header longer than the packet", dir: FromPod, pkt: tcp6(podA6, podB6, 40000, 15008, tcpSYN, opt(254))[:14+40+100],
			verdict: VerdictDrop, reason: ReasonTruncated, index: 1, src: ap(podA6, 0), dst: ap(podB6, 0)},
		{name: "v6 tcp cut short", dir: FromPod, pkt: tcp6(podA6, podB6, 40000, 15008, tcpSYN)[:14+40+19],
			verdict: VerdictDrop, reason: ReasonTruncated, index: 1, src: ap(podA6, 0), dst: ap(podB6, 0)},
		{name: "v6 wrong version", dir: FromPod, pkt: ip6{src: podA6, dst: podB6, proto: protoTCP, version: 4}.packet(tcpSeg(40000, 15008, tcpSYN, "")),
			verdict: VerdictDrop, reason: ReasonMalformed, index: 1, src: ap(podA6, 0), dst: ap(podB6, 0)},
		{name: "v6 first fragment hbone", dir: FromPod, pkt: tcp6(podA6, podB6, 40000, 15008, tcpACK, fragExt(0, true)),
			verdict: VerdictHBONE, index: 1, outMark: both},
		{name: "v6 first fragment plaintext", dir: FromPod, pkt: tcp6(podA6, podB6, 40000, 8080, tcpACK, fragExt(0, true)),
			verdict: VerdictDrop, reason: ReasonPlaintext, index: 1, src: ap(podA6, 40000), dst: ap(podB6, 8080)},
		{name: "v6 later fragment of tcp between enrolled", dir: FromPod, pkt: ip6{src: podA6, dst: podB6, proto: protoTCP, exts: []ext6{fragExt(2, false)}}.packet([]byte("plaintext")),
			verdict: VerdictDrop, reason: ReasonFragment, index: 1, src: ap(podA6, 0), dst: ap(podB6, 0)},
		{name: "v6 later fragment of destination options between enrolled", dir: FromPod, pkt: ip6{src: podA6, dst: podB6, proto: protoDstOpts, exts: []ext6{fragExt(2, false)}}.packet([]byte("plaintext")),
			verdict: VerdictDrop, reason: ReasonFragment, index: 1, src: ap(podA6, 0), dst: ap(podB6, 0)},
		{name: "v6 later fragment of udp between enrolled", dir: FromPod, pkt: ip6{src: podA6, dst: podB6, proto: protoUDP, exts: []ext6{fragExt(2, true)}}.packet([]byte("datagram")),
			verdict: VerdictPass, index: 1, outMark: both},
		{name: "v6 fragment header cut short", dir: FromPod, pkt: tcp6(podA6, podB6, 40000, 15008, tcpACK, fragExt(0, true))[:14+40+4],
			verdict: VerdictDrop, reason: ReasonTruncated, index: 1, src: ap(podA6, 0), dst: ap(podB6, 0)},
		{name: "v6 enrolled icmpv6", dir: FromPod, pkt: ip6{src: podA6, dst: podB6, proto: protoICMPv6}.packet(icmpEcho(128)),
			verdict: VerdictPass, index: 1, outMark: both},
		{name: "v6 enrolled udp dns", dir: FromPod, pkt: ip6{src: podA6, dst: podB6, proto: protoUDP}.packet(udpDgram(40000, 53, "q")),
			verdict: VerdictPass, index: 1, outMark: both},
		{name: "v6 no next header", dir: FromPod, pkt: ip6{src: podA6, dst: podB6, proto: protoNone}.packet(nil),
			verdict: VerdictPass, index: 1, outMark: both},
		{name: "v6 outside syn into strict", dir: ToPod, pkt: tcp6(outX6, podS6, 40000, 8080, tcpSYN),
			verdict: VerdictDrop, reason: ReasonStrict, index: 3, src: ap(outX6, 40000), dst: ap(podS6, 8080)},
		{name: "v6 kubelet probe into strict", dir: ToPod, pkt: tcp6(probe6, podS6, 40000, 8080, tcpSYN),
			verdict: VerdictPass, index: 3, outMark: MarkDstEnrolled},
		{name: "v6 outside into permissive", dir: ToPod, pkt: tcp6(outX6, podA6, 40000, 8080, tcpSYN),
			verdict: VerdictPass, index: 1, outMark: MarkDstEnrolled},
		{name: "v6 link-local neighbour solicitation", dir: FromPod, pkt: ip6{src: netip.MustParseAddr("fe80::1"), dst: netip.MustParseAddr("ff02::1:ff00:b"), proto: protoICMPv6}.packet([]byte{135, 0, 0, 0}),
			verdict: VerdictPass, index: 0, outMark: 0},
	}

	const repeat = 3
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resetCounters(t, d)
			drainEvents(t, events)

			ret, mark := run(t, d, tc.dir, tc.pkt, tc.mark, 0, repeat)

			wantRet := uint32(tcActUnspec)
			if tc.verdict == VerdictDrop {
				wantRet = tcActShot
			}
			if ret != wantRet {
				t.Errorf("return value %#x, want %#x", ret, wantRet)
			}
			if tc.verdict != VerdictDrop && mark != tc.outMark {
				t.Errorf("mark %#x, want %#x", mark, tc.outMark)
			}
			if tc.verdict == VerdictDrop && mark != tc.mark {
				t.Errorf("dropped packet's mark changed: %#x, want %#x", mark, tc.mark)
			}

			counters, err := d.Counters()
			if err != nil {
				t.Fatal(err)
			}
			key := CounterKey{Index: tc.index, Direction: tc.dir, Verdict: tc.verdict, Reason: tc.reason}
			want := map[CounterKey]Counter{key: {Packets: repeat, Bytes: repeat * uint64(len(tc.pkt))}}
			if !maps.Equal(counters, want) {
				t.Errorf("counters %v, want %v", counters, want)
			}

			evs := drainEvents(t, events)
			if tc.verdict != VerdictDrop {
				if len(evs) != 0 {
					t.Errorf("events %+v, want none", evs)
				}
				return
			}
			if len(evs) != repeat {
				t.Fatalf("%d events, want %d: %+v", len(evs), repeat, evs)
			}
			e := evs[0]
			srcIdx, dstIdx := testEPs[tc.src.Addr()].Index, testEPs[tc.dst.Addr()].Index
			if e.Reason != tc.reason || e.Direction != tc.dir || e.Src != tc.src || e.Dst != tc.dst ||
				e.SrcIndex != srcIdx || e.DstIndex != dstIdx || e.Len != uint32(len(tc.pkt)) ||
				e.Mark != tc.mark || e.Ifindex != 1 {
				t.Errorf("event %+v, want reason %s direction %s %s -> %s indexes %d -> %d len %d mark %#x ifindex 1",
					e, tc.reason, tc.dir, tc.src, tc.dst, srcIdx, dstIdx, len(tc.pkt), tc.mark)
			}
			if age := time.Since(e.Time); age < -time.Second || age > time.Minute {
				t.Errorf("event time %v is %v away from now", e.Time, age)
			}
		})
	}
}
