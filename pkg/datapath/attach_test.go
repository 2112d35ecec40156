package datapath

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/palisade-net/palisade/pkg/netns"
)

// vethNode is a node network namespace with a bridge and pods hanging off
// it by veth pairs, as in the lab: the host-side ends are in the node, the
// pod side is eth0 in the pod's namespace.
type vethNode struct {
	name string
	ns   *netns.Handle
	pods map[string]*vethPod
}

type vethPod struct {
	name     string // namespace name
	ns       *netns.Handle
	hostVeth string // in the node namespace
	ip4, ip6 netip.Addr
}

const (
	labBridge  = "br0"
	labBridge4 = "10.99.0.1"
)

func ipCmd(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// newNetns creates a named network namespace with loopback up, deleted when
// the test ends whatever the outcome.
func newNetns(t *testing.T, prefix string) (string, *netns.Handle) {
	t.Helper()
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	name := prefix + hex.EncodeToString(b)
	ipCmd(t, "netns", "add", name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	h, err := netns.Open("/run/netns/" + name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	ipCmd(t, "-n", name, "link", "set", "lo", "up")
	return name, h
}

func newVethNode(t *testing.T, pods ...string) *vethNode {
	t.Helper()
	name, h := newNetns(t, "pal-dp-node-")
	n := &vethNode{name: name, ns: h, pods: map[string]*vethPod{}}
	ipCmd(t, "-n", name, "link", "add", labBridge, "type", "bridge")
	ipCmd(t, "-n", name, "addr", "add", labBridge4+"/24", "dev", labBridge)
	ipCmd(t, "-n", name, "addr", "add", "fd99::1/64", "dev", labBridge, "nodad")
	ipCmd(t, "-n", name, "link", "set", labBridge, "up")
	for i, p := range pods {
		pname, ph := newNetns(t, "pal-dp-"+p+"-")
		vp := &vethPod{
			name:     pname,
			ns:       ph,
			hostVeth: "pal-" + p,
			ip4:      netip.AddrFrom4([4]byte{10, 99, 0, byte(10 + i)}),
			ip6:      netip.MustParseAddr(fmt.Sprintf("fd99::%x", 0x10+i)),
		}
		ipCmd(t, "-n", name, "link", "add", vp.hostVeth, "type", "veth", "peer", "name", "eth0", "netns", pname)
		ipCmd(t, "-n", name, "link", "set", vp.hostVeth, "master", labBridge, "up")
		ipCmd(t, "-n", pname, "addr", "add", vp.ip4.String()+"/24", "dev", "eth0")
		ipCmd(t, "-n", pname, "addr", "add", vp.ip6.String()+"/64", "dev", "eth0", "nodad")
		ipCmd(t, "-n", pname, "link", "set", "eth0", "up")
		n.pods[p] = vp
	}
	return n
}

// mountBPFFS mounts a bpffs on a directory of the test's own and unmounts
// it at the end (never the host's /sys/fs/bpf).
func mountBPFFS(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "bpffs")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		t.Fatalf("mount bpffs on %s: %v", dir, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return filepath.Join(dir, "palisade")
}

// echoServer accepts connections on addr inside ns and echoes them.
func echoServer(t *testing.T, ns *netns.Handle, addr string) {
	t.Helper()
	ln, err := netns.Listen(t.Context(), ns, addr, netns.SocketOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
}

// exchange connects from ns to addr and checks an echo; it returns the
// error of the first step that failed.
func exchange(ctx context.Context, ns *netns.Handle, addr netip.AddrPort, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c, err := (&netns.Dialer{Netns: ns}).DialContext(ctx, "tcp", addr.String())
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte("ping")); err != nil {
		return err
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != "ping" {
		return fmt.Errorf("echo %q", buf)
	}
	return nil
}

type flow struct {
	from *vethPod
	to   netip.AddrPort
	ok   bool
}

func (f flow) String() string {
	return fmt.Sprintf("%s -> %s", f.from.hostVeth, f.to)
}

func checkFlows(t *testing.T, flows []flow) {
	t.Helper()
	for _, f := range flows {
		timeout := 3 * time.Second
		if !f.ok {
			timeout = 700 * time.Millisecond // a dropped SYN: the dial times out
		}
		err := exchange(t.Context(), f.from.ns, f.to, timeout)
		switch {
		case f.ok && err != nil:
			t.Errorf("%s: %v, want a working connection", f, err)
		case !f.ok && err == nil:
			t.Errorf("%s: connected, want the connection blocked", f)
		}
	}
}

// sendRaw sends an Ethernet frame of the given type and payload out of the
// pod's eth0 with an AF_PACKET socket.
func sendRaw(t *testing.T, p *vethPod, etherType uint16, payload []byte) {
	t.Helper()
	err := p.ns.Do(func() error {
		ifi, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		dst := net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
		f := append(append(append([]byte{}, dst...), ifi.HardwareAddr...), byte(etherType>>8), byte(etherType))
		f = append(f, payload...)
		sll := &unix.SockaddrLinklayer{Protocol: htons(etherType), Ifindex: ifi.Index, Halen: 6}
		copy(sll.Addr[:], dst)
		return unix.Sendto(fd, f, 0, sll)
	})
	if err != nil {
		t.Fatalf("send raw frame from %s: %v", p.hostVeth, err)
	}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func counter(t *testing.T, d *Datapath, k CounterKey) uint64 {
	t.Helper()
	c, err := d.Counters()
	if err != nil {
		t.Fatal(err)
	}
	return c[k].Packets
}

// waitCounter polls until the counter k reaches at least want: drops of
// raw frames are counted asynchronously to the send.
func waitCounter(t *testing.T, d *Datapath, k CounterKey, want uint64) uint64 {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for {
		got := counter(t, d, k)
		if got >= want || time.Now().After(deadline) {
			return got
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// tcxPrograms returns the IDs of the programs attached with TCX to ifname
// in the node.
func tcxPrograms(t *testing.T, n *vethNode, ifname string, at ebpf.AttachType) []ebpf.ProgramID {
	t.Helper()
	var ids []ebpf.ProgramID
	err := n.ns.Do(func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		res, err := link.QueryPrograms(link.QueryOptions{Target: ifi.Index, Attach: at})
		if err != nil {
			return err
		}
		for _, p := range res.Programs {
			ids = append(ids, p.ID)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("query tcx programs of %s: %v", ifname, err)
	}
	return ids
}

func ourTCFilters(t *testing.T, n *vethNode, ifname string) int {
	t.Helper()
	nl, err := netlink.NewHandleAt(vnetns.NsHandle(n.ns.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	defer nl.Close()
	l, err := nl.LinkByName(ifname)
	if err != nil {
		t.Fatal(err)
	}
	count := 0
	for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
		fs, err := nl.FilterList(l, parent)
		if err != nil {
			continue // no clsact
		}
		for _, f := range fs {
			if ourFilter(f) {
				count++
			}
		}
	}
	return count
}

func progID(t *testing.T, p *ebpf.Program) ebpf.ProgramID {
	t.Helper()
	info, err := p.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, ok := info.ID()
	if !ok {
		t.Fatal("program has no ID")
	}
	return id
}

// TestAttachVeth attaches the programs to the host-side veths of pods in
// namespaces of the test's own and checks real connections: plaintext
// between enrolled pods and into a strict pod is blocked and reported,
// HBONE and permissive traffic flow, marks reach the node's netfilter,
// frames too short for an IP header are dropped; the programs survive the
// loader closing, a new loader takes over the pinned state, the tc
// fallback works, and detach and prune clean up.
func TestAttachVeth(t *testing.T) {
	requireBPF(t)
	node := newVethNode(t, "a", "b", "s", "c")
	a, b, s, c := node.pods["a"], node.pods["b"], node.pods["s"], node.pods["c"]
	pinDir := mountBPFFS(t)

	d, err := Load(DefaultConfig(), Options{PinDir: pinDir})
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			d.Close()
		}
	})
	eps := []struct {
		pod *vethPod
		ep  Endpoint
	}{
		{a, Endpoint{Index: 1}},
		{b, Endpoint{Index: 2}},
		{s, Endpoint{Index: 3, Mode: ModeStrict}},
	}
	for _, e := range eps {
		for _, ip := range []netip.Addr{e.pod.ip4, e.pod.ip6} {
			if err := d.SetEndpoint(ip, e.ep); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, p := range []*vethPod{a, b, s} {
		mode, err := d.Attach(node.ns, p.hostVeth, AttachAuto)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s attached with %s", p.hostVeth, mode)
	}
	if _, err := d.Attach(node.ns, "no-such-veth", AttachAuto); err == nil || !strings.Contains(err.Error(), "no-such-veth") {
		t.Errorf("attach to a missing interface: %v, want an error naming it", err)
	}

	for _, p := range []*vethPod{a, b, s, c} {
		for _, ip := range []netip.Addr{p.ip4, p.ip6} {
			for _, port := range []int{8080, 15008} {
				echoServer(t, p.ns, netip.AddrPortFrom(ip, uint16(port)).String())
			}
		}
	}
	events, err := d.Events()
	if err != nil {
		t.Fatal(err)
	}
	defer events.Close()

	plaintext := []flow{
		{a, netip.AddrPortFrom(b.ip4, 8080), false},
		{a, netip.AddrPortFrom(b.ip6, 8080), false},
	}
	t.Run("guard", func(t *testing.T) {
		checkFlows(t, append(plaintext,
			flow{a, netip.AddrPortFrom(b.ip4, 15008), true},
			flow{a, netip.AddrPortFrom(b.ip6, 15008), true},
			flow{a, netip.AddrPortFrom(s.ip4, 8080), false},
			flow{a, netip.AddrPortFrom(c.ip4, 8080), true},
			flow{c, netip.AddrPortFrom(a.ip4, 8080), true},
			flow{c, netip.AddrPortFrom(s.ip4, 8080), false},
			flow{c, netip.AddrPortFrom(s.ip6, 8080), false},
			flow{c, netip.AddrPortFrom(s.ip4, 15008), true},
			flow{s, netip.AddrPortFrom(c.ip4, 8080), true},
		))
		if n := counter(t, d, CounterKey{Index: 1, Direction: FromPod, Verdict: VerdictDrop, Reason: ReasonPlaintext}); n == 0 {
			t.Error("no plaintext drop counted for pod a")
		}
		if n := counter(t, d, CounterKey{Index: 3, Direction: ToPod, Verdict: VerdictDrop, Reason: ReasonStrict}); n == 0 {
			t.Error("no strict drop counted for pod s")
		}
		if n := counter(t, d, CounterKey{Index: 2, Direction: ToPod, Verdict: VerdictHBONE}); n == 0 {
			t.Error("no HBONE packets counted into pod b")
		}
		seen := map[string]bool{}
		for _, e := range drainEvents(t, events) {
			seen[fmt.Sprintf("%s %s %s", e.Reason, e.Src.Addr(), e.Dst)] = true
		}
		for _, want := range []string{
			fmt.Sprintf("%s %s %s", ReasonPlaintext, a.ip4, netip.AddrPortFrom(b.ip4, 8080)),
			fmt.Sprintf("%s %s %s", ReasonPlaintext, a.ip6, netip.AddrPortFrom(b.ip6, 8080)),
			fmt.Sprintf("%s %s %s", ReasonStrict, c.ip4, netip.AddrPortFrom(s.ip4, 8080)),
		} {
			if !seen[want] {
				t.Errorf("no event %q among %v", want, seen)
			}
		}
	})

	t.Run("mark reaches the node", func(t *testing.T) {
		if _, err := exec.LookPath("iptables"); err != nil {
			if os.Getenv("CI") == "" {
				t.Skip("needs iptables to match the mark in the node namespace")
			}
			t.Fatal("needs iptables")
		}
		echoServer(t, node.ns, labBridge4+":9999")
		rule := []string{"netns", "exec", node.name, "iptables", "-w", "-A", "INPUT", "-p", "tcp", "--dport", "9999",
			"-m", "mark", "--mark", fmt.Sprintf("%#x/%#x", MarkSrcEnrolled, MarkSrcEnrolled), "-j", "REJECT", "--reject-with", "tcp-reset"}
		ipCmd(t, rule...)
		to := netip.MustParseAddrPort(labBridge4 + ":9999")
		if err := exchange(t.Context(), a.ns, to, 3*time.Second); !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("enrolled pod a to the node: %v, want the connection refused by the rule matching the mark", err)
		}
		if err := exchange(t.Context(), c.ns, to, 3*time.Second); err != nil {
			t.Errorf("pod c (not enrolled, unmarked) to the node: %v", err)
		}
	})

	t.Run("short ip headers", func(t *testing.T) {
		k := CounterKey{Index: 0, Direction: FromPod, Verdict: VerdictDrop, Reason: ReasonMalformed}
		before := counter(t, d, k)
		sendRaw(t, a, etherIPv4, []byte{0x45, 0, 0, 30, 0, 0, 0, 0, 64, 6})
		sendRaw(t, a, etherIPv6, make([]byte, 30))
		if got := waitCounter(t, d, k, before+2); got != before+2 {
			t.Errorf("malformed drops from a: %d, want %d", got, before+2)
		}
	})

	// The agent goes away: the pinned programs keep enforcing.
	before := counter(t, d, CounterKey{Index: 1, Direction: FromPod, Verdict: VerdictDrop, Reason: ReasonPlaintext})
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	closed = true
	t.Run("without the loader", func(t *testing.T) {
		checkFlows(t, append(plaintext, flow{a, netip.AddrPortFrom(b.ip4, 15008), true}))
	})

	// A new loader takes over the pins.
	d2, err := Load(DefaultConfig(), Options{PinDir: pinDir})
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	t.Run("restart", func(t *testing.T) {
		got, err := d2.Endpoints()
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 6 || got[s.ip4] != (Endpoint{Index: 3, Mode: ModeStrict}) {
			t.Errorf("endpoints after reload: %v", got)
		}
		after := counter(t, d2, CounterKey{Index: 1, Direction: FromPod, Verdict: VerdictDrop, Reason: ReasonPlaintext})
		if after <= before {
			t.Errorf("plaintext drops of a: %d after the reload, %d before it; want the counters kept and the drops while unloaded counted", after, before)
		}
		for _, p := range []*vethPod{a, b, s} {
			if mode, err := d2.Attach(node.ns, p.hostVeth, AttachAuto); err != nil {
				t.Fatal(err)
			} else if mode == AttachTCX {
				ids := tcxPrograms(t, node, p.hostVeth, ebpf.AttachTCXIngress)
				if len(ids) != 1 || ids[0] != progID(t, d2.FromPod()) {
					t.Errorf("%s ingress runs %v, want only the new loader's program %d", p.hostVeth, ids, progID(t, d2.FromPod()))
				}
			}
		}
		names, err := d2.linkNames()
		if err != nil {
			t.Fatal(err)
		}
		if len(names) != 6 && len(names) != 0 {
			t.Errorf("pinned links %v, want 2 per interface (tcx) or none (tc)", names)
		}
		checkFlows(t, append(plaintext, flow{a, netip.AddrPortFrom(b.ip4, 15008), true}))
	})

	t.Run("tc fallback", func(t *testing.T) {
		mode, err := d2.Attach(node.ns, a.hostVeth, AttachTC)
		if err != nil {
			t.Fatal(err)
		}
		if mode != AttachTC {
			t.Fatalf("mode %s, want tc", mode)
		}
		if ids := tcxPrograms(t, node, a.hostVeth, ebpf.AttachTCXIngress); len(ids) != 0 {
			t.Errorf("tcx programs %v still on %s after switching to tc", ids, a.hostVeth)
		}
		if n := ourTCFilters(t, node, a.hostVeth); n != 2 {
			t.Errorf("%d cls_bpf filters of ours on %s, want 2", n, a.hostVeth)
		}
		// Only a's side guards a -> c; b's side would also catch a -> b.
		k := CounterKey{Index: 1, Direction: FromPod, Verdict: VerdictDrop, Reason: ReasonPlaintext}
		before := counter(t, d2, k)
		checkFlows(t, plaintext[:1])
		if counter(t, d2, k) <= before {
			t.Error("no drop counted on a's side attached with tc")
		}
		if _, err := d2.Attach(node.ns, a.hostVeth, AttachTC); err != nil {
			t.Errorf("attach again with tc: %v", err)
		}
		if n := ourTCFilters(t, node, a.hostVeth); n != 2 {
			t.Errorf("%d cls_bpf filters of ours on %s after attaching twice, want 2", n, a.hostVeth)
		}
		if mode, err := d2.Attach(node.ns, a.hostVeth, AttachAuto); err != nil {
			t.Fatal(err)
		} else if mode == AttachTCX && ourTCFilters(t, node, a.hostVeth) != 0 {
			t.Error("cls_bpf filters left after switching back to tcx")
		}
	})

	t.Run("detach", func(t *testing.T) {
		for _, p := range []*vethPod{a, b} {
			if err := d2.Detach(node.ns, p.hostVeth); err != nil {
				t.Fatal(err)
			}
			if err := d2.Detach(node.ns, p.hostVeth); err != nil {
				t.Errorf("second detach of %s: %v", p.hostVeth, err)
			}
			if ids := tcxPrograms(t, node, p.hostVeth, ebpf.AttachTCXIngress); len(ids) != 0 {
				t.Errorf("tcx programs %v on %s after detach", ids, p.hostVeth)
			}
			if n := ourTCFilters(t, node, p.hostVeth); n != 0 {
				t.Errorf("%d filters on %s after detach", n, p.hostVeth)
			}
		}
		checkFlows(t, []flow{
			{a, netip.AddrPortFrom(b.ip4, 8080), true},
			{c, netip.AddrPortFrom(s.ip4, 8080), false},
		})
	})

	t.Run("prune", func(t *testing.T) {
		names, err := d2.linkNames()
		if err != nil {
			t.Fatal(err)
		}
		if len(names) != 2 {
			if os.Getenv("CI") != "" {
				t.Fatalf("pinned links %v, want s's 2 TCX links: CI needs a kernel with TCX (6.6)", names)
			}
			t.Skipf("pinned links %v: s is not attached with tcx (kernel without TCX)", names)
		}
		ipCmd(t, "-n", node.name, "link", "del", s.hostVeth)
		n, err := d2.Prune()
		if err != nil {
			t.Fatal(err)
		}
		if n != 2 {
			t.Errorf("pruned %d links, want 2", n)
		}
		if names, _ := d2.linkNames(); len(names) != 0 {
			t.Errorf("pins left after prune: %v", names)
		}
	})

	t.Run("remove", func(t *testing.T) {
		if err := Remove(pinDir); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(pinDir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s still there after Remove: %v", pinDir, err)
		}
		if err := Remove(pinDir); err != nil {
			t.Errorf("second Remove: %v", err)
		}
	})
}

// TestLoadUnavailable checks that a pin directory off bpffs is reported as
// the datapath being unavailable, not as a broken installation.
func TestLoadUnavailable(t *testing.T) {
	_, err := Load(DefaultConfig(), Options{PinDir: t.TempDir()})
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "bpffs") {
		t.Errorf("Load on a tmpfs pin dir: %v, want ErrUnavailable naming bpffs", err)
	}
}
