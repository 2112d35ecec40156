package ebpf

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	cebpf "github.com/cilium/ebpf"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sys/unix"

	"github.com/palisade-net/palisade/pkg/agent"
	"github.com/palisade-net/palisade/pkg/datapath"
	"github.com/palisade-net/palisade/pkg/netns"
	"github.com/palisade-net/palisade/pkg/workload"
)

var _ agent.Datapath = (*Manager)(nil)

// requireRoot skips without root outside CI and fails in CI.
func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "" {
		t.Skip("needs root (network namespaces, bpffs, CAP_BPF); set CI to make this a failure")
	}
	t.Fatal("needs root (network namespaces, bpffs, CAP_BPF); CI runs as root")
}

func ipCmd(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// newNetns creates a named network namespace of the test's own, deleted
// when the test ends.
func newNetns(t *testing.T, prefix string) (string, *netns.Handle) {
	t.Helper()
	b := make([]byte, 4)
	rand.Read(b)
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

// testNode is a node namespace with a bridge and pods hanging off it by
// veth pairs, as in the lab: host side in the node, eth0 in the pod.
type testNode struct {
	name string
	ns   *netns.Handle
	pods map[string]*testPod
}

type testPod struct {
	w        workload.Workload
	ns       *netns.Handle
	netns    string
	hostVeth string
}

func newTestNode(t *testing.T, pods ...workload.Workload) *testNode {
	t.Helper()
	name, h := newNetns(t, "palisade-test-ebpf-node-")
	n := &testNode{name: name, ns: h, pods: map[string]*testPod{}}
	ipCmd(t, "-n", name, "link", "add", "br0", "type", "bridge")
	ipCmd(t, "-n", name, "addr", "add", "10.98.0.1/24", "dev", "br0")
	ipCmd(t, "-n", name, "link", "set", "br0", "up")
	for i, w := range pods {
		pname, ph := newNetns(t, "palisade-test-ebpf-pod-")
		p := &testPod{w: w, ns: ph, netns: pname, hostVeth: fmt.Sprintf("veth-t%d", i)}
		ipCmd(t, "-n", name, "link", "add", p.hostVeth, "type", "veth", "peer", "name", "eth0", "netns", pname)
		ipCmd(t, "-n", name, "link", "set", p.hostVeth, "master", "br0", "up")
		ipCmd(t, "-n", pname, "addr", "add", w.IPs[0].String()+"/24", "dev", "eth0")
		ipCmd(t, "-n", pname, "link", "set", "eth0", "up")
		n.pods[w.Name] = p
	}
	return n
}

// do runs fn in the node's namespace, where the agent runs.
func (n *testNode) do(t *testing.T, fn func() error) {
	t.Helper()
	if err := n.ns.Do(fn); err != nil {
		t.Fatal(err)
	}
}

func mountBPFFS(t testing.TB) string {
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

func pod(name string, ip string, node string, mode workload.Mode) workload.Workload {
	return workload.Workload{UID: "uid-" + name, Namespace: "ns", Name: name, Node: node, IPs: []netip.Addr{netip.MustParseAddr(ip)}, Mode: mode}
}

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

// exchange connects from ns to addr and checks an echo.
func exchange(ns *netns.Handle, addr string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := (&netns.Dialer{Netns: ns}).DialContext(ctx, "tcp", addr)
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

type flowCase struct {
	from string
	to   string // pod:port
	ok   bool
}

func (n *testNode) check(t *testing.T, flows []flowCase) {
	t.Helper()
	for _, f := range flows {
		to, port, _ := strings.Cut(f.to, ":")
		addr := n.pods[to].w.IPs[0].String() + ":" + port
		timeout := 3 * time.Second
		if !f.ok {
			timeout = 700 * time.Millisecond // a dropped SYN: the dial times out
		}
		err := exchange(n.pods[f.from].ns, addr, timeout)
		switch {
		case f.ok && err != nil:
			t.Errorf("%s -> %s: %v, want a working connection", f.from, f.to, err)
		case !f.ok && err == nil:
			t.Errorf("%s -> %s: connected, want it blocked", f.from, f.to)
		}
	}
}

func open(t *testing.T, pinDir string) *Manager {
	t.Helper()
	return openMode(t, pinDir, datapath.AttachAuto)
}

func openMode(t *testing.T, pinDir string, mode datapath.AttachMode) *Manager {
	t.Helper()
	m, err := Open(Options{Node: "n1", PinDir: pinDir, AttachMode: mode})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
		m.Close()
	})
	return m
}

// scrape renders the Manager's metrics in the text format.
func scrape(t *testing.T, m *Manager) string {
	t.Helper()
	reg := prometheus.NewRegistry()
	if err := reg.Register(m); err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.HTTPErrorOnError}).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != 200 {
		t.Fatalf("scrape: %d %s", rec.Code, rec.Body)
	}
	return rec.Body.String()
}

// sample returns the value of the series name{labels} (labels sorted by
// name, as in the exposition), or -1 if absent.
func sample(text, name, labels string) float64 {
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name+"{"+labels+"}") + ` (\S+)$`)
	m := re.FindStringSubmatch(text)
	if m == nil {
		return -1
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	return v
}

func waitFor(t *testing.T, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func findDrop(m *Manager, match func(Drop) bool) error {
	for _, d := range m.Drops() {
		if match(d) {
			return nil
		}
	}
	return fmt.Errorf("not among %d drops: %+v", len(m.Drops()), m.Drops())
}

const dropPlain = `direction="from_pod",pod="ns/a",reason="plaintext_between_enrolled",verdict="drop"`

// TestManager: the Manager finds each pod's host-side veth from its
// namespace, guards it (plaintext between enrolled pods and into a strict
// pod dropped, HBONE and permissive traffic pass), reports drops as
// records and metrics labelled with this node's pods, and a new Manager on
// the same pins (an agent restart) finds the same indexes and counters,
// which kept counting in between.
func TestManager(t *testing.T) {
	requireRoot(t)
	a := pod("a", "10.98.0.10", "n1", workload.Permissive)
	s := pod("s", "10.98.0.11", "n1", workload.Strict)
	c := pod("c", "10.98.0.12", "n1", workload.Permissive) // not enrolled
	remote := pod("r", "10.98.1.5", "n2", workload.Strict)
	n := newTestNode(t, a, s, c)
	for _, p := range n.pods {
		echoServer(t, p.ns, ":8080")
		echoServer(t, p.ns, ":15008")
	}
	pinDir := mountBPFFS(t)
	m := open(t, pinDir)
	eps := []workload.Workload{a, s, remote}

	n.do(t, func() error { return m.SetEndpoints(t.Context(), eps) })
	for _, p := range []*testPod{n.pods["a"], n.pods["s"]} {
		n.do(t, func() error { return m.Attach(t.Context(), p.w, p.ns) })
	}
	// A namespace with no veth into the node is left unguarded, or an
	// error with RequireVeth (--ebpf on).
	_, lone := newNetns(t, "palisade-test-ebpf-lone-")
	if err := n.ns.Do(func() error { return m.Attach(t.Context(), a, lone) }); err != nil {
		t.Errorf("attach to a namespace without a veth into the node: %v, want a warning only", err)
	}
	m.opts.RequireVeth = true
	if err := n.ns.Do(func() error { return m.Attach(t.Context(), a, lone) }); err == nil || !strings.Contains(err.Error(), "no veth") {
		t.Errorf("attach to a namespace without a veth into the node with RequireVeth: %v", err)
	}
	m.opts.RequireVeth = false
	n.check(t, []flowCase{
		{"a", "s:8080", false}, // plaintext between enrolled pods
		{"a", "s:15008", true}, // HBONE
		{"c", "s:8080", false}, // plaintext into strict
		{"c", "a:8080", true},  // plaintext into permissive
		{"a", "c:8080", true},  // enrolled to outside the mesh
		{"c", "s:15008", true}, // HBONE into strict
	})

	waitFor(t, "drop records", func() error {
		if err := findDrop(m, func(d Drop) bool {
			return d.Pod == "ns/a" && d.Direction == "from_pod" && d.Reason == "plaintext_between_enrolled" &&
				strings.HasPrefix(d.Source, "10.98.0.10:") && d.Destination == "10.98.0.11:8080" &&
				d.SourcePod == "ns/a" && d.DestinationPod == "ns/s" && d.Interface == n.pods["a"].hostVeth && d.TCPFlags == "SYN"
		}); err != nil {
			return err
		}
		return findDrop(m, func(d Drop) bool {
			return d.Pod == "ns/s" && d.Direction == "to_pod" && d.Reason == "strict_plaintext_inbound" &&
				strings.HasPrefix(d.Source, "10.98.0.12:") && d.Destination == "10.98.0.11:8080" && d.SourcePod == "" &&
				d.Interface == n.pods["s"].hostVeth
		})
	})
	text := scrape(t, m)
	before := sample(text, "palisade_ebpf_packets_total", dropPlain)
	if before < 1 {
		t.Fatalf("no plaintext drop counted for ns/a:\n%s", text)
	}
	for _, series := range []string{
		`direction="from_pod",pod="ns/a",reason="none",verdict="hbone"`,
		`direction="to_pod",pod="ns/s",reason="strict_plaintext_inbound",verdict="drop"`,
		`direction="to_pod",pod="ns/a",reason="none",verdict="pass"`,
	} {
		if sample(text, "palisade_ebpf_packets_total", series) < 1 || sample(text, "palisade_ebpf_bytes_total", series) < 40 {
			t.Errorf("series {%s} missing or empty:\n%s", series, text)
		}
	}
	if strings.Contains(text, `pod="ns/c"`) || strings.Contains(text, `pod="ns/r"`) {
		t.Errorf("counters labelled with a pod that is not enrolled here:\n%s", text)
	}
	if v := sample(strings.ReplaceAll(text, "palisade_ebpf_endpoints ", "palisade_ebpf_endpoints{} "), "palisade_ebpf_endpoints", ""); v != 3 {
		t.Errorf("palisade_ebpf_endpoints %v, want 3", v)
	}

	// Restart: the old Manager goes; the guard stays and keeps counting.
	m.Close()
	n.check(t, []flowCase{{"a", "s:8080", false}, {"a", "s:15008", true}})
	m2 := open(t, pinDir)
	// Before the first SetEndpoints no counter is labelled (the pods of
	// the indexes are not known yet).
	if text := scrape(t, m2); strings.Contains(text, "palisade_ebpf_packets_total{") {
		t.Errorf("counters reported before the endpoints were set:\n%s", text)
	}
	// The other order: indexes come from the pinned map, not the order.
	n.do(t, func() error { return m2.SetEndpoints(t.Context(), []workload.Workload{remote, s, a}) })
	for _, p := range []*testPod{n.pods["a"], n.pods["s"]} {
		n.do(t, func() error { return m2.Attach(t.Context(), p.w, p.ns) })
	}
	after := sample(scrape(t, m2), "palisade_ebpf_packets_total", dropPlain)
	if after <= before {
		t.Errorf("plaintext drops of ns/a: %v before the restart, %v after it: the counters were reset or missed the downtime", before, after)
	}
	// The drop of the downtime was on the pinned ring buffer.
	waitFor(t, "the downtime's drop read after the restart", func() error {
		return findDrop(m2, func(d Drop) bool { return d.Pod == "ns/a" && d.Reason == "plaintext_between_enrolled" })
	})
	links, err := os.ReadDir(filepath.Join(pinDir, "links"))
	if err != nil || len(links) != 4 {
		t.Fatalf("pinned links after the restart: %v %v, want 4 (2 pods, 2 directions)", links, err)
	}

	// a leaves the mesh: its counters and programs go, s's stay.
	n.do(t, func() error { return m2.SetEndpoints(t.Context(), []workload.Workload{remote, s}) })
	n.do(t, func() error { return m2.Detach(t.Context(), a, n.pods["a"].ns) })
	text = scrape(t, m2)
	if strings.Contains(text, `pod="ns/a"`) {
		t.Errorf("counters of ns/a after it left:\n%s", text)
	}
	if links, _ := os.ReadDir(filepath.Join(pinDir, "links")); len(links) != 2 {
		t.Errorf("pinned links after a detach: %v, want 2", links)
	}
	n.check(t, []flowCase{{"a", "c:8080", true}, {"a", "s:8080", false}}) // s is strict
	// Detaching again, or a pod without programs, is not an error.
	n.do(t, func() error { return m2.Detach(t.Context(), a, n.pods["a"].ns) })
	n.do(t, func() error { return m2.Detach(t.Context(), c, n.pods["c"].ns) })

	// s's veth is deleted (the pod is gone): its pins are pruned.
	ipCmd(t, "-n", n.name, "link", "del", n.pods["s"].hostVeth)
	n.do(t, func() error { return m2.SetEndpoints(t.Context(), []workload.Workload{remote}) })
	if links, _ := os.ReadDir(filepath.Join(pinDir, "links")); len(links) != 0 {
		t.Errorf("pinned links after the veth was deleted: %v, want none", links)
	}
	eps2, err := m2.dp.Endpoints()
	if err != nil || len(eps2) != 1 || eps2[netip.MustParseAddr("10.98.1.5")].Mode != datapath.ModeStrict {
		t.Errorf("endpoint map %v %v, want only the remote strict pod", eps2, err)
	}
}

// TestOpenUnavailable: a pin directory that is not on bpffs is reported as
// datapath.ErrUnavailable (what --ebpf auto falls back on).
func TestOpenUnavailable(t *testing.T) {
	_, err := Open(Options{Node: "n1", PinDir: filepath.Join(t.TempDir(), "palisade")})
	if !errors.Is(err, datapath.ErrUnavailable) {
		t.Fatalf("Open on a tmpfs directory: %v, want ErrUnavailable", err)
	}
}

// TestRemove: what an agent with the datapath left (TCX links, or cls_bpf
// filters with tc) is taken down by Remove, as an agent started with
// --ebpf off does: traffic it dropped flows again and no pin is left.
func TestRemove(t *testing.T) {
	requireRoot(t)
	for _, mode := range []datapath.AttachMode{datapath.AttachTCX, datapath.AttachTC} {
		t.Run(mode.String(), func(t *testing.T) {
			a := pod("a", "10.98.0.10", "n1", workload.Permissive)
			b := pod("b", "10.98.0.11", "n1", workload.Permissive)
			n := newTestNode(t, a, b)
			echoServer(t, n.pods["b"].ns, ":8080")
			pinDir := mountBPFFS(t)
			m := openMode(t, pinDir, mode)
			n.do(t, func() error { return m.SetEndpoints(t.Context(), []workload.Workload{a, b}) })
			for _, p := range n.pods {
				n.do(t, func() error { return m.Attach(t.Context(), p.w, p.ns) })
			}
			n.check(t, []flowCase{{"a", "b:8080", false}})
			m.Close()
			n.check(t, []flowCase{{"a", "b:8080", false}})

			var removed bool
			n.do(t, func() error {
				var err error
				removed, err = Remove(pinDir, slog.New(slog.DiscardHandler))
				return err
			})
			if !removed {
				t.Fatal("Remove found nothing to remove")
			}
			n.check(t, []flowCase{{"a", "b:8080", true}})
			if _, err := os.Stat(pinDir); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("pin directory still there: %v", err)
			}
			n.do(t, func() error {
				var err error
				removed, err = Remove(pinDir, slog.New(slog.DiscardHandler))
				return err
			})
			if removed {
				t.Error("second Remove found something")
			}
		})
	}
}

// TestOpenReplacesIncompatiblePins: maps pinned by a version with another
// layout (an upgrade) are replaced rather than making the datapath fail,
// also when the pin directory is the bpffs mount point itself (the lab's).
func TestOpenReplacesIncompatiblePins(t *testing.T) {
	requireRoot(t)
	sub := mountBPFFS(t)
	for _, pinDir := range []string{sub, filepath.Dir(sub)} {
		if err := os.MkdirAll(filepath.Join(pinDir, "maps"), 0o700); err != nil {
			t.Fatal(err)
		}
		old, err := cebpf.NewMap(&cebpf.MapSpec{Name: "pal_endpoints", Type: cebpf.Hash, KeySize: 16, ValueSize: 64, MaxEntries: 16})
		if err != nil {
			t.Fatal(err)
		}
		if err := old.Pin(filepath.Join(pinDir, "maps", "pal_endpoints")); err != nil {
			t.Fatal(err)
		}
		old.Close()
		m, err := Open(Options{Node: "n1", PinDir: pinDir})
		if err != nil {
			t.Fatalf("%s: %v", pinDir, err)
		}
		if eps, err := m.dp.Endpoints(); err != nil || len(eps) != 0 {
			t.Errorf("%s: endpoints %v %v, want a fresh empty map", pinDir, eps, err)
		}
		m.Close()
		if removed, err := Remove(pinDir, slog.New(slog.DiscardHandler)); err != nil || !removed {
			t.Errorf("%s: Remove: %v %v", pinDir, removed, err)
		}
	}
}

// TestRemoveNothing: a pin directory without a datapath (missing, or a
// bpffs root with only the kernel's own entries) is left alone.
func TestRemoveNothing(t *testing.T) {
	requireRoot(t)
	root := filepath.Dir(mountBPFFS(t))
	for _, dir := range []string{filepath.Join(t.TempDir(), "none"), root} {
		removed, err := Remove(dir, slog.New(slog.DiscardHandler))
		if err != nil || removed {
			t.Errorf("%s: %v %v, want nothing removed", dir, removed, err)
		}
	}
	if entries, _ := os.ReadDir(root); len(entries) > 0 {
		for _, e := range entries {
			if !strings.HasSuffix(e.Name(), ".debug") {
				t.Errorf("Remove created %s in the bpffs root", e.Name())
			}
		}
	}
}
