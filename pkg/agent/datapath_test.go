package agent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/palisade-net/palisade/pkg/netns"
	"github.com/palisade-net/palisade/pkg/workload"
)

// fakeDatapath records calls in the journal; endpoints are summarised as
// "ns/name=ips:mode" sorted.
type fakeDatapath struct {
	j         *journal
	attachErr error
	endpoints []string
}

func (d *fakeDatapath) SetEndpoints(_ context.Context, eps []workload.Workload) error {
	var s []string
	for _, w := range eps {
		var ips []string
		for _, ip := range w.IPs {
			ips = append(ips, ip.String())
		}
		s = append(s, fmt.Sprintf("%s=%s:%s", w.Key(), strings.Join(ips, ","), w.Mode))
	}
	slices.Sort(s)
	d.endpoints = s
	d.j.add("dp-endpoints:%d", len(eps))
	return nil
}

func (d *fakeDatapath) Attach(_ context.Context, w workload.Workload, _ *netns.Handle) error {
	d.j.add("dp-attach:%s", w.Name)
	return d.attachErr
}

func (d *fakeDatapath) Detach(_ context.Context, w workload.Workload, _ *netns.Handle) error {
	d.j.add("dp-detach:%s", w.Name)
	return nil
}

func newDatapathAgent(t *testing.T) (*Agent, *journal, *fakeDatapath) {
	a, j, _ := newTestAgent(t, nil)
	dp := &fakeDatapath{j: j}
	a.cfg.Datapath = dp
	return a, j, dp
}

// TestDatapathHook: the endpoint table is set first on every reconcile,
// with every enrolled pod of the cluster (other nodes' too) and its mode;
// programs are attached after the rules and detached after the proxy lets
// go of the pod.
func TestDatapathHook(t *testing.T) {
	a, j, dp := newDatapathAgent(t)
	ctx := context.Background()
	a.OnSnapshot(snapshot(t, podsYAML))
	if err := a.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	// The first reconcile also sweeps programs left on pods of this node
	// that are not enrolled (b, d) by an earlier agent.
	if got, want := j.take(), "dp-endpoints:2 proxy-add:a:permissive rules-install:a dp-attach:a dp-detach:b dp-detach:d"; got != want {
		t.Fatalf("enrollment: %q, want %q", got, want)
	}
	// a (this node) and c (node n2); b opted out, d is not enrolled.
	if got, want := strings.Join(dp.endpoints, " "), "shop/a=10.0.0.1:permissive shop/c=10.0.0.3:permissive"; got != want {
		t.Fatalf("endpoints %q, want %q", got, want)
	}
	// Nothing changed: the table is handed over again (the datapath
	// diffs), nothing else happens.
	if err := a.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if got, want := j.take(), "dp-endpoints:2"; got != want {
		t.Fatalf("second reconcile: %q, want %q", got, want)
	}
	// Strict mode reaches the table, for remote pods as well.
	a.OnSnapshot(snapshot(t, strings.Replace(podsYAML, "palisade.dev/mtls: enabled}", "palisade.dev/mtls: enabled, palisade.dev/mtls-mode: strict}", 1)))
	if err := a.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(dp.endpoints, " "), "shop/a=10.0.0.1:strict shop/c=10.0.0.3:strict"; got != want {
		t.Fatalf("endpoints %q, want %q", got, want)
	}
	if got, want := j.take(), "dp-endpoints:2 proxy-add:a:strict rules-install:a dp-attach:a"; got != want {
		t.Fatalf("mode change: %q, want %q", got, want)
	}
	// Unlabelling: the table empties first, then rules, proxy, programs.
	a.OnSnapshot(snapshot(t, strings.Replace(podsYAML, "labels: {palisade.dev/mtls: enabled}", "labels: {}", 1)))
	if err := a.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if got, want := j.take(), "dp-endpoints:0 rules-remove:a proxy-del:a dp-detach:a"; got != want {
		t.Fatalf("unenrollment: %q, want %q", got, want)
	}
}

// TestDatapathAttachFailureRetries: a pod whose programs could not be
// attached is not reported enrolled, and the next reconcile tries again.
func TestDatapathAttachFailureRetries(t *testing.T) {
	a, j, dp := newDatapathAgent(t)
	dp.attachErr = errors.New("no veth")
	ctx := context.Background()
	a.OnSnapshot(snapshot(t, podsYAML))
	if err := a.Reconcile(ctx); err == nil || !strings.Contains(err.Error(), "kernel datapath: no veth") {
		t.Fatalf("want the datapath's error, got %v", err)
	}
	if st := a.Status()["shop/a"]; !strings.HasPrefix(st, "failed") {
		t.Fatalf("status %q, want failed", st)
	}
	j.take()
	dp.attachErr = nil
	if err := a.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if got, want := j.take(), "dp-endpoints:2 proxy-add:a:permissive rules-install:a dp-attach:a"; got != want {
		t.Fatalf("retry: %q, want %q", got, want)
	}
	if st := a.Status()["shop/a"]; st != "enrolled" {
		t.Fatalf("status %q, want enrolled", st)
	}
}

// TestDatapathCNI: a pod's addresses from the CNI ADD reach the table
// before the cluster view has them; CNI DEL detaches and takes them out at
// once, and a cluster view still listing the pod does not bring them back.
func TestDatapathCNI(t *testing.T) {
	a, j, dp := newDatapathAgent(t)
	ctx := context.Background()
	noIP := strings.Replace(podsYAML, "spec: {nodeName: n1}\nstatus: {podIP: 10.0.0.1}", "spec: {nodeName: n1}", 1)
	if noIP == podsYAML {
		t.Fatal("test YAML changed: pod a still has its IP")
	}
	a.OnSnapshot(snapshot(t, noIP))
	if err := a.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(dp.endpoints, " "), "shop/c=10.0.0.3:permissive"; got != want {
		t.Fatalf("endpoints before the ADD %q, want %q", got, want)
	}
	j.take()
	ev := PodEvent{Namespace: "shop", Name: "a", UID: "a", Netns: "/proc/self/ns/net", IPs: mustAddrs("10.0.0.9")}
	if err := a.PodAdded(ctx, ev); err != nil {
		t.Fatal(err)
	}
	if got, want := j.take(), "dp-endpoints:2 proxy-add:a:permissive rules-install:a dp-attach:a"; got != want {
		t.Fatalf("CNI ADD: %q, want %q", got, want)
	}
	if got, want := strings.Join(dp.endpoints, " "), "shop/a=10.0.0.9:permissive shop/c=10.0.0.3:permissive"; got != want {
		t.Fatalf("endpoints after the ADD %q, want %q", got, want)
	}
	if err := a.PodDeleted(ctx, PodEvent{Namespace: "shop", Name: "a", UID: "a"}); err != nil {
		t.Fatal(err)
	}
	if got, want := j.take(), "rules-remove:a proxy-del:a dp-detach:a dp-endpoints:1"; got != want {
		t.Fatalf("CNI DEL: %q, want %q", got, want)
	}
	if err := a.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(dp.endpoints, " "), "shop/c=10.0.0.3:permissive"; got != want {
		t.Fatalf("endpoints after the DEL %q, want %q", got, want)
	}
}

func mustAddrs(s ...string) []netip.Addr {
	var out []netip.Addr
	for _, a := range s {
		out = append(out, netip.MustParseAddr(a))
	}
	return out
}
