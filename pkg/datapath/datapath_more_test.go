package datapath

import (
	"errors"
	"maps"
	"net/netip"
	"strings"
	"testing"
)

func TestNonIPUntouched(t *testing.T) {
	d := newTestDatapath(t, DefaultConfig())
	setEndpoints(t, d)
	for _, dir := range []Direction{FromPod, ToPod} {
		resetCounters(t, d)
		ret, mark := run(t, d, dir, arpRequest(), MarkMask|0x539, 0, 1)
		if ret != tcActUnspec || mark != MarkMask|0x539 {
			t.Errorf("%s: ARP got return %#x mark %#x, want TC_ACT_UNSPEC and the mark untouched", dir, ret, mark)
		}
		if c, err := d.Counters(); err != nil || len(c) != 0 {
			t.Errorf("%s: ARP counted: %v %v", dir, c, err)
		}
	}
}

// TestGSOSegments checks that a GSO packet counts as its segments.
func TestGSOSegments(t *testing.T) {
	d := newTestDatapath(t, DefaultConfig())
	setEndpoints(t, d)
	pkt := ip4{src: podA, dst: podB, proto: protoTCP}.packet(tcpSeg(40000, 15008, tcpACK, strings.Repeat("x", 1000)))
	cases := []struct {
		segs uint32
		want uint64
	}{{0, 1}, {1, 1}, {4, 4}}
	for _, tc := range cases {
		resetCounters(t, d)
		run(t, d, FromPod, pkt, 0, tc.segs, 1)
		got, err := d.Counters()
		if err != nil {
			t.Fatal(err)
		}
		want := map[CounterKey]Counter{{Index: 1, Direction: FromPod, Verdict: VerdictHBONE}: {Packets: tc.want, Bytes: uint64(len(pkt))}}
		if !maps.Equal(got, want) {
			t.Errorf("gso_segs %d: counters %v, want %v", tc.segs, got, want)
		}
	}
}

// TestConfigConstants loads the programs with other constants and checks
// that they, not the defaults, decide.
func TestConfigConstants(t *testing.T) {
	custom := DefaultConfig()
	custom.HBONEPort = 16008
	custom.ProxyMark = 0x111
	custom.ProbeSourceV4 = netip.Addr{}
	custom.ProbeSourceV6 = netip.MustParseAddr("fd00::7127")

	tcp4 := func(src, dst netip.Addr, dport uint16) []byte {
		return ip4{src: src, dst: dst, proto: protoTCP}.packet(tcpSeg(40000, dport, tcpSYN, ""))
	}
	tcp6 := func(src, dst netip.Addr, dport uint16) []byte {
		return ip6{src: src, dst: dst, proto: protoTCP}.packet(tcpSeg(40000, dport, tcpSYN, ""))
	}
	cases := []struct {
		name    string
		cfg     Config
		dir     Direction
		pkt     []byte
		mark    uint32
		verdict Verdict
	}{
		{"default hbone port", DefaultConfig(), FromPod, tcp4(podA, podB, 15008), 0, VerdictHBONE},
		{"15008 is plaintext with another port", custom, FromPod, tcp4(podA, podB, 15008), 0, VerdictDrop},
		{"custom hbone port", custom, FromPod, tcp4(podA, podB, 16008), 0, VerdictHBONE},
		{"default proxy mark", DefaultConfig(), FromPod, tcp4(podA, podB, 8080), 0x539, VerdictProxy},
		{"0x539 is not the custom proxy mark", custom, FromPod, tcp4(podA, podB, 8080), 0x539, VerdictDrop},
		{"custom proxy mark", custom, FromPod, tcp4(podA, podB, 8080), 0x111, VerdictProxy},
		{"default v4 probe source", DefaultConfig(), ToPod, tcp4(probe4, podS, 8080), 0, VerdictPass},
		{"v4 probe source disabled", custom, ToPod, tcp4(probe4, podS, 8080), 0, VerdictDrop},
		{"default v6 probe source", DefaultConfig(), ToPod, tcp6(probe6, podS6, 8080), 0, VerdictPass},
		{"old v6 probe source", custom, ToPod, tcp6(probe6, podS6, 8080), 0, VerdictDrop},
		{"custom v6 probe source", custom, ToPod, tcp6(netip.MustParseAddr("fd00::7127"), podS6, 8080), 0, VerdictPass},
	}
	loaded := map[Config]*Datapath{}
	for _, cfg := range []Config{DefaultConfig(), custom} {
		loaded[cfg] = newTestDatapath(t, cfg)
		setEndpoints(t, loaded[cfg])
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d := loaded[tc.cfg]
			resetCounters(t, d)
			run(t, d, tc.dir, tc.pkt, tc.mark, 0, 1)
			c, err := d.Counters()
			if err != nil {
				t.Fatal(err)
			}
			if len(c) != 1 {
				t.Fatalf("counters %v, want one", c)
			}
			for k := range c {
				if k.Verdict != tc.verdict {
					t.Errorf("verdict %s, want %s", k.Verdict, tc.verdict)
				}
			}
		})
	}
}

func TestConfigValidate(t *testing.T) {
	cases := []struct {
		name   string
		modify func(*Config)
		want   string
	}{
		{"default", func(*Config) {}, ""},
		{"zero port", func(c *Config) { c.HBONEPort = 0 }, "HBONEPort"},
		{"mark outside mask", func(c *Config) { c.ProxyMark = 0x1539 }, "ProxyMark"},
		{"zero mark", func(c *Config) { c.ProxyMark = 0 }, "ProxyMark"},
		{"mask over the datapath bits", func(c *Config) { c.ProxyMask = 0xffff }, "ProxyMask"},
		{"v6 probe as v4", func(c *Config) { c.ProbeSourceV4 = netip.MustParseAddr("fd00::1") }, "ProbeSourceV4"},
		{"v4 probe as v6", func(c *Config) { c.ProbeSourceV6 = netip.MustParseAddr("10.0.0.1") }, "ProbeSourceV6"},
		{"mapped v4 probe as v6", func(c *Config) { c.ProbeSourceV6 = netip.MustParseAddr("::ffff:10.0.0.1") }, "ProbeSourceV6"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			tc.modify(&c)
			err := c.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("unexpected error: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("error %v, want one naming %s", err, tc.want)
			}
			if tc.want != "" {
				if _, err := Load(c, Options{}); err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Errorf("Load: error %v, want one naming %s", err, tc.want)
				}
			}
		})
	}
}

func TestEndpoints(t *testing.T) {
	d := newTestDatapath(t, DefaultConfig())

	bad := []struct {
		name string
		addr netip.Addr
		ep   Endpoint
		want string
	}{
		{"invalid address", netip.Addr{}, Endpoint{Index: 1}, "invalid address"},
		{"index 0", podA, Endpoint{}, "index 0 is reserved"},
		{"unknown mode", podA, Endpoint{Index: 1, Mode: 7}, "unknown mode"},
	}
	for _, tc := range bad {
		if err := d.SetEndpoint(tc.addr, tc.ep); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want %q", tc.name, err, tc.want)
		}
	}

	// An IPv4-mapped address is the IPv4 address; zones are ignored.
	if err := d.SetEndpoint(netip.MustParseAddr("::ffff:10.0.1.1"), Endpoint{Index: 1}); err != nil {
		t.Fatal(err)
	}
	if err := d.SetEndpoint(netip.MustParseAddr("fd00::b%eth0"), Endpoint{Index: 2, Mode: ModeStrict}); err != nil {
		t.Fatal(err)
	}
	if err := d.SetEndpoint(podB, Endpoint{Index: 2, Mode: ModeStrict}); err != nil {
		t.Fatal(err)
	}
	got, err := d.Endpoints()
	if err != nil {
		t.Fatal(err)
	}
	want := map[netip.Addr]Endpoint{
		podA:  {Index: 1, Mode: ModePermissive},
		podB:  {Index: 2, Mode: ModeStrict},
		podB6: {Index: 2, Mode: ModeStrict},
	}
	if len(got) != len(want) {
		t.Fatalf("endpoints %v, want %v", got, want)
	}
	for a, ep := range want {
		if got[a] != ep {
			t.Errorf("endpoint %s = %+v, want %+v", a, got[a], ep)
		}
	}

	plain := ip4{src: podA, dst: podB, proto: protoTCP}.packet(tcpSeg(40000, 8080, tcpSYN, ""))
	if ret, _ := run(t, d, FromPod, plain, 0, 0, 1); ret != tcActShot {
		t.Errorf("plaintext between enrolled: return %#x, want drop", ret)
	}
	if err := d.DeleteEndpoint(podB); err != nil {
		t.Fatal(err)
	}
	if err := d.DeleteEndpoint(podB); err != nil {
		t.Errorf("deleting an absent endpoint: %v", err)
	}
	if ret, mark := run(t, d, FromPod, plain, 0, 0, 1); ret != tcActUnspec || mark != MarkSrcEnrolled {
		t.Errorf("after unenrolling the destination: return %#x mark %#x, want pass with %#x", ret, mark, MarkSrcEnrolled)
	}
	if err := d.DeleteEndpoint(netip.Addr{}); err == nil {
		t.Error("deleting an invalid address: no error")
	}
}

func TestDeleteCounters(t *testing.T) {
	d := newTestDatapath(t, DefaultConfig())
	setEndpoints(t, d)
	run(t, d, FromPod, ip4{src: podA, dst: podB, proto: protoTCP}.packet(tcpSeg(1, 15008, tcpSYN, "")), 0, 0, 1)
	run(t, d, FromPod, ip4{src: podA, dst: podB, proto: protoTCP}.packet(tcpSeg(1, 80, tcpSYN, "")), 0, 0, 1)
	run(t, d, FromPod, ip4{src: podB, dst: podA, proto: protoTCP}.packet(tcpSeg(1, 15008, tcpSYN, "")), 0, 0, 1)
	if err := d.DeleteCounters(1); err != nil {
		t.Fatal(err)
	}
	got, err := d.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[CounterKey{Index: 2, Direction: FromPod, Verdict: VerdictHBONE}].Packets != 1 {
		t.Errorf("counters after deleting index 1: %v, want only index 2's", got)
	}
}

// TestEventsLost fills the ring buffer: every drop is still counted, and
// the events that did not fit are counted as lost.
func TestEventsLost(t *testing.T) {
	d := newTestDatapath(t, DefaultConfig())
	setEndpoints(t, d)
	events, err := d.Events()
	if err != nil {
		t.Fatal(err)
	}
	defer events.Close()
	const n = 10000 // the 256 KiB ring holds 3276 events of 72+8 bytes
	pkt := ip4{src: podA, dst: podB, proto: protoTCP}.packet(tcpSeg(40000, 8080, tcpSYN, ""))
	if ret, _ := run(t, d, FromPod, pkt, 0, 0, n); ret != tcActShot {
		t.Fatalf("return %#x, want drop", ret)
	}
	read := len(drainEvents(t, events))
	st, err := d.Stats()
	if err != nil {
		t.Fatal(err)
	}
	c, err := d.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if got := c[CounterKey{Index: 1, Direction: FromPod, Verdict: VerdictDrop, Reason: ReasonPlaintext}].Packets; got != n {
		t.Errorf("%d drops counted, want %d", got, n)
	}
	if read == 0 || st.EventsLost == 0 || uint64(read)+st.EventsLost != n {
		t.Errorf("%d events read + %d lost, want some of each adding up to %d", read, st.EventsLost, n)
	}
	if st.CountersFull != 0 {
		t.Errorf("CountersFull = %d, want 0", st.CountersFull)
	}
}

// TestEventReaderClose checks that Close ends a blocked Read.
func TestEventReaderClose(t *testing.T) {
	d := newTestDatapath(t, DefaultConfig())
	events, err := d.Events()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := events.Read()
		done <- err
	}()
	if err := events.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, ErrClosed) {
		t.Errorf("Read after Close: %v, want ErrClosed", err)
	}
}
