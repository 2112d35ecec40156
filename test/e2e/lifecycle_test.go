package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/palisade-net/palisade/pkg/lab"
	"github.com/palisade-net/palisade/pkg/netns"
	"github.com/palisade-net/palisade/pkg/redirect"
)

// latePods adds a namespace "late" (unlabelled unless labelled is set) with
// n echo pods on node.
func latePods(labelled bool, node string, n int) string {
	labels := "{}"
	if labelled {
		labels = "{palisade.dev/mtls: enabled}"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: late, labels: %s}\n", labels)
	for i := 0; i < n; i++ {
		fmt.Fprintf(&b, `---
apiVersion: v1
kind: Pod
metadata: {name: app%d, namespace: late}
spec:
  nodeName: %s
  containers:
  - {name: echo, command: ["$(LAB_BIN)", "serve-echo", "--addr", ":9000"], ports: [{containerPort: 9000}]}
`, i, node)
	}
	return b.String()
}

func apply(t *testing.T, l *lab.Lab, yaml string) {
	t.Helper()
	objs, err := lab.Decode(yaml)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := l.Apply(ctx, objs); err != nil {
		t.Fatalf("lab apply: %v", err)
	}
}

func rulesInstalled(t *testing.T, h *netns.Handle) bool {
	t.Helper()
	ok, err := redirect.Installed(context.Background(), h, redirect.DefaultConfig())
	if err != nil {
		t.Fatalf("redirect.Installed: %v", err)
	}
	return ok
}

func dumpRules(t *testing.T, h *netns.Handle) string {
	t.Helper()
	d, err := redirect.Dump(context.Background(), h)
	if err != nil {
		t.Fatalf("redirect.Dump: %v", err)
	}
	return d
}

// lastFlowTo returns the newest outbound flow to dst recorded on a node.
func lastFlowTo(t *testing.T, node *netns.Handle, dst string) (flow, bool) {
	fs := flows(t, node)
	for i := len(fs) - 1; i >= 0; i-- {
		if fs[i].Direction == "outbound" && fs[i].Destination == dst {
			return fs[i], true
		}
	}
	return flow{}, false
}

// waitFlowTo waits for the newest outbound flow to dst on a node to have the
// given transport. Flow records are written when the relay ends, just after
// the client has seen the end of the echo, hence the wait.
func waitFlowTo(t *testing.T, node *netns.Handle, dst, transport string) {
	t.Helper()
	eventually(t, 5*time.Second, "flow to "+dst+" over "+transport, func() error {
		if f, ok := lastFlowTo(t, node, dst); !ok || f.Transport != transport {
			return fmt.Errorf("newest flow %+v", f)
		}
		return nil
	})
}

// TestUnenrollRestoresRules: labelling a namespace enrolls its pods (rules in
// place, traffic tunneled); removing the label restores each pod netns to
// exactly its previous rules and traffic flows plain again; deleting an
// enrolled pod stops its service in the node proxy.
func TestUnenrollRestoresRules(t *testing.T) {
	l := upLab(t, meshYAML+latePods(false, "node2", 1))
	client := podNetns(t, l, "shop", "client")
	app := podNetns(t, l, "late", "app0")
	node1 := nodeNetns(t, l, "node1")
	dst := podAddr(t, l, "late", "app0", 9000)

	before := dumpRules(t, app)
	if rulesInstalled(t, app) {
		t.Fatal("rules installed in a pod of an unlabelled namespace")
	}
	mustEcho(t, client, dst, "plain-before", 4096)
	waitFlowTo(t, node1, dst, "plaintext")

	apply(t, l, meshYAML+latePods(true, "node2", 1))
	eventually(t, 15*time.Second, "late/app0 enrolled", func() error {
		if !rulesInstalled(t, app) {
			return errors.New("rules not installed")
		}
		if err := tryEcho(client, dst, "tunneled", 4096); err != nil {
			return err
		}
		if f, _ := lastFlowTo(t, node1, dst); f.Transport != "hbone" {
			return fmt.Errorf("flow %+v is not tunneled", f)
		}
		return nil
	})
	if enrolled := dumpRules(t, app); enrolled == before {
		t.Fatal("enrollment did not change the pod's rules")
	}

	apply(t, l, meshYAML+latePods(false, "node2", 1))
	// Removal is one restore per family (v4, then v6): wait for both.
	var after string
	eventually(t, 15*time.Second, "late/app0's rules back to the pre-enrollment dump", func() error {
		if after = dumpRules(t, app); after != before {
			return errors.New("rules differ from the pre-enrollment dump")
		}
		return nil
	})
	if rulesInstalled(t, app) {
		t.Fatal("rules still reported installed after unenrollment")
	}
	eventually(t, 15*time.Second, "traffic to late/app0 plain again", func() error {
		if err := tryEcho(client, dst, "plain-after", 4096); err != nil {
			return err
		}
		if f, _ := lastFlowTo(t, node1, dst); f.Transport != "plaintext" {
			return fmt.Errorf("flow %+v is not plaintext", f)
		}
		return nil
	})

	// Removing an enrolled pod: the node proxy stops serving it.
	apply(t, l, meshYAML+latePods(true, "node2", 1))
	node2 := nodeNetns(t, l, "node2")
	served := func() bool {
		var dump struct {
			Workloads []struct {
				Namespace, Name string
			} `json:"workloads"`
		}
		adminGet(t, node2, "/config_dump", &dump)
		for _, w := range dump.Workloads {
			if w.Namespace == "late" && w.Name == "app0" {
				return true
			}
		}
		return false
	}
	eventually(t, 15*time.Second, "late/app0 served again", func() error {
		if !served() {
			return errors.New("not served")
		}
		return nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := l.DeletePod(ctx, "late", "app0"); err != nil {
		t.Fatal(err)
	}
	if served() {
		t.Fatal("node2's proxy still serves the deleted pod after CNI DEL")
	}
}

// longConn is an open echo connection that can be exercised repeatedly.
type longConn struct {
	c net.Conn
}

func openLong(t *testing.T, h *netns.Handle, addr string) *longConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := dialFrom(ctx, h, addr)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	lc := &longConn{c: c}
	if err := lc.roundTrip("hello"); err != nil {
		t.Fatal(err)
	}
	return lc
}

func (lc *longConn) roundTrip(msg string) error {
	lc.c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := lc.c.Write([]byte(msg)); err != nil {
		return fmt.Errorf("write on the long connection: %w", err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(lc.c, buf); err != nil {
		return fmt.Errorf("read on the long connection: %w", err)
	}
	if string(buf) != msg {
		return fmt.Errorf("long connection echoed %q, want %q", buf, msg)
	}
	return nil
}

// TestAgentKilledMidReconcile: SIGKILL the agent while it enrolls a batch
// of pods, restart it: every pod ends with exactly the clean rules, the node
// proxy serves them, and an established tunneled connection survives.
func TestAgentKilledMidReconcile(t *testing.T) {
	const n = 6
	l := upLab(t, meshYAML+latePods(false, "node1", n))
	client := podNetns(t, l, "shop", "client")
	long := openLong(t, client, podAddr(t, l, "shop", "echo2", 9000))
	reference := dumpRules(t, client) // a cleanly enrolled pod on node1

	objs, err := lab.Decode(meshYAML + latePods(true, "node1", n))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := l.Apply(ctx, objs); err != nil {
		t.Fatal(err)
	}
	// The agent polls its cluster view every 200ms; kill it while the batch
	// is being enrolled (some pods done, some not, one possibly half-way).
	time.Sleep(250 * time.Millisecond)
	if err := l.StopAgent(ctx, "node1", syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := long.roundTrip("while the agent is down"); err != nil {
		t.Fatal(err)
	}
	if err := l.StartAgent(ctx, "node1"); err != nil {
		t.Fatal(err)
	}
	var handles []*netns.Handle
	for i := 0; i < n; i++ {
		handles = append(handles, podNetns(t, l, "late", fmt.Sprintf("app%d", i)))
	}
	eventually(t, 20*time.Second, "all late pods enrolled after the restart", func() error {
		for i, h := range handles {
			if !rulesInstalled(t, h) {
				return fmt.Errorf("late/app%d not enrolled", i)
			}
		}
		return nil
	})
	for i, h := range handles {
		if d := dumpRules(t, h); d != reference {
			t.Errorf("late/app%d rules differ from a cleanly enrolled pod's:\n%s\n--- reference\n%s", i, d, reference)
		}
	}
	if d := dumpRules(t, client); d != reference {
		t.Errorf("the restart changed shop/client's rules:\n%s", d)
	}
	if err := long.roundTrip("after the agent restart"); err != nil {
		t.Fatal(err)
	}
	// The restarted agent replayed its snapshot: the proxy serves every pod,
	// and traffic to them is tunneled.
	for i := 0; i < n; i++ {
		dst := podAddr(t, l, "late", fmt.Sprintf("app%d", i), 9000)
		mustEcho(t, client, dst, "after-restart", 1024)
		waitFlowTo(t, nodeNetns(t, l, "node1"), dst, "hbone")
	}
}

// TestNodeProxyRestart: while node1's proxy is down, enrolled pods' new
// connections fail (never plaintext); once restarted it serves new
// connections again. SIGTERM drains: an open connection keeps working during
// the drain, new ones are refused.
func TestNodeProxyRestart(t *testing.T) {
	l := upLab(t, meshYAML)
	client := podNetns(t, l, "shop", "client")
	echo2 := podAddr(t, l, "shop", "echo2", 9000)
	underlay := startCapture(t, l.UnderlayNetns(), lab.UnderlayBridge)
	ns, iface := hostVeth(t, l, "shop", "client")
	veth := startCapture(t, ns, iface)
	marker := "PROXY-RESTART-" + randHex(8)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := l.StopNodeProxy(ctx, "node1", syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		cctx, ccancel := context.WithTimeout(ctx, 3*time.Second)
		got, err := echoRoundTrip(cctx, client, echo2, makePayload(marker, 4096))
		ccancel()
		if err == nil && len(got) > 0 {
			t.Fatalf("a connection succeeded while the node proxy was down (%d bytes back)", len(got))
		}
	}
	if err := l.StartNodeProxy(ctx, "node1"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "new connections after the node proxy restart", func() error {
		cctx, ccancel := context.WithTimeout(ctx, 3*time.Second)
		defer ccancel()
		payload := makePayload(marker, 4096)
		got, err := echoRoundTrip(cctx, client, echo2, payload)
		if err != nil || len(got) != len(payload) {
			return fmt.Errorf("echo: %d bytes, %v", len(got), err)
		}
		return nil
	})
	for _, c := range []*capture{underlay, veth} {
		if strings.Contains(string(c.stop()), marker) {
			t.Errorf("plaintext marker escaped during the proxy restart (capture %s)", c.file)
		}
	}

	// Drain on SIGTERM (the lab runs proxies with --drain-timeout 2s).
	long := openLong(t, client, echo2)
	stopped := make(chan error, 1)
	go func() { stopped <- l.StopNodeProxy(ctx, "node2", syscall.SIGTERM) }()
	time.Sleep(300 * time.Millisecond)
	if err := long.roundTrip("during the drain"); err != nil {
		t.Errorf("open connection broken at the start of the drain: %v", err)
	}
	cctx, ccancel := context.WithTimeout(ctx, 3*time.Second)
	if got, err := echoRoundTrip(cctx, client, echo2, []byte("new during drain")); err == nil && len(got) > 0 {
		t.Errorf("a new connection was served by a draining proxy")
	}
	ccancel()
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
	if err := long.roundTrip("after the drain"); err == nil {
		t.Error("the connection outlived the drain deadline")
	}
	if err := l.StartNodeProxy(ctx, "node2"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "node2 serves again", func() error {
		cctx, ccancel := context.WithTimeout(ctx, 3*time.Second)
		defer ccancel()
		_, err := echoRoundTrip(cctx, client, echo2, []byte("back"))
		return err
	})
}

// TestAgentScanIgnoresOtherNamespacesWithSameIP: two labs on one host use
// the same pod addresses. A restarted agent, which has to find its pods'
// namespaces by scanning, must pick its own node's pods, never the other
// lab's namespaces that hold the same IP (and sort first).
func TestAgentScanIgnoresOtherNamespacesWithSameIP(t *testing.T) {
	other := upLabNamed(t, "e2e0"+randHex(2), strings.Replace(meshYAML, "labels: {palisade.dev/mtls: enabled}", "labels: {}", 1))
	l := upLabNamed(t, "e2ef"+randHex(2), meshYAML)
	mine := podNetns(t, l, "shop", "client")
	theirs := podNetns(t, other, "shop", "client")
	if a, b := podAddr(t, l, "shop", "client", 0), podAddr(t, other, "shop", "client", 0); a != b {
		t.Fatalf("the labs do not share the client's address (%s, %s); the test needs them to", a, b)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := l.StopAgent(ctx, "node1", syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// Remove our client's rules while the agent is down, so the restarted
	// agent must find the namespace (by scanning) to put them back.
	if err := redirect.Remove(ctx, mine, redirect.DefaultConfig()); err != nil {
		t.Fatal(err)
	}
	if err := l.StartAgent(ctx, "node1"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 15*time.Second, "the restarted agent re-installs our client's rules", func() error {
		if !rulesInstalled(t, mine) {
			return errors.New("not installed")
		}
		return nil
	})
	if rulesInstalled(t, theirs) {
		t.Fatal("the agent installed rules in the other lab's namespace that holds the same IP")
	}
	mustEcho(t, mine, podAddr(t, l, "shop", "echo2", 9000), "after-scan", 4096)
	waitFlowTo(t, nodeNetns(t, l, "node1"), podAddr(t, l, "shop", "echo2", 9000), "hbone")
}
