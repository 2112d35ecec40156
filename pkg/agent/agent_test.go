package agent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/palisade-net/palisade/pkg/cluster"
	"github.com/palisade-net/palisade/pkg/handoff"
	"github.com/palisade-net/palisade/pkg/netns"
	"github.com/palisade-net/palisade/pkg/workload"
)

// journal records the order of calls across the fakes.
type journal struct {
	mu  sync.Mutex
	ops []string
}

func (j *journal) add(format string, a ...any) {
	j.mu.Lock()
	j.ops = append(j.ops, fmt.Sprintf(format, a...))
	j.mu.Unlock()
}

func (j *journal) take() string {
	j.mu.Lock()
	defer j.mu.Unlock()
	s := strings.Join(j.ops, " ")
	j.ops = nil
	return s
}

type fakeProxy struct {
	j   *journal
	err error
}

func (p *fakeProxy) AddWorkload(ctx context.Context, w workload.Workload, f *os.File) error {
	p.j.add("proxy-add:%s:%s", w.Name, w.Mode)
	return p.err
}

func (p *fakeProxy) DeleteWorkload(ctx context.Context, uid string) error {
	p.j.add("proxy-del:%s", uid)
	return nil
}

// fakeRules tracks installation per namespace handle.
type fakeRules struct {
	j         *journal
	mu        sync.Mutex
	installed map[*netns.Handle]bool
	names     map[*netns.Handle]string
	// newInstalls counts InstallNew calls by pod name.
	newInstalls map[string]int
}

func (r *fakeRules) Install(ctx context.Context, h *netns.Handle) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.installed[h] = true
	r.j.add("rules-install:%s", r.names[h])
	return nil
}

// InstallNew is Install, counted apart.
func (r *fakeRules) InstallNew(ctx context.Context, h *netns.Handle) error {
	r.mu.Lock()
	if r.newInstalls == nil {
		r.newInstalls = map[string]int{}
	}
	r.newInstalls[r.names[h]]++
	r.mu.Unlock()
	return r.Install(ctx, h)
}

func (r *fakeRules) Remove(ctx context.Context, h *netns.Handle) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.installed, h)
	r.j.add("rules-remove:%s", r.names[h])
	return nil
}

func (r *fakeRules) Installed(ctx context.Context, h *netns.Handle) (bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.installed[h], nil
}

// fakeFinder hands out a handle on this process's own namespace per pod
// (the agent only passes handles along; the fakes never enter them).
type fakeFinder struct {
	t       *testing.T
	rules   *fakeRules
	missing map[string]bool
}

func (f *fakeFinder) Find(uid, hint string, ips []netip.Addr) (*netns.Handle, string, error) {
	if f.missing[uid] {
		return nil, "", ErrNotFound
	}
	h, err := netns.Open("/proc/self/ns/net")
	if err != nil {
		f.t.Fatal(err)
	}
	f.rules.mu.Lock()
	f.rules.names[h] = uid
	f.rules.mu.Unlock()
	return h, "/proc/self/ns/net", nil
}

const podsYAML = `
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {palisade.dev/mtls: enabled}}
---
apiVersion: v1
kind: Namespace
metadata: {name: plain}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: shop, uid: a}
spec: {nodeName: n1}
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: shop, uid: b, labels: {palisade.dev/mtls: disabled}}
spec: {nodeName: n1}
status: {podIP: 10.0.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: shop, uid: c}
spec: {nodeName: n2}
status: {podIP: 10.0.0.3}
---
apiVersion: v1
kind: Pod
metadata: {name: d, namespace: plain, uid: d}
spec: {nodeName: n1}
status: {podIP: 10.0.0.4}
`

func snapshot(t *testing.T, yaml string) *cluster.Snapshot {
	t.Helper()
	s := cluster.NewSnapshot()
	if err := s.Decode("test", strings.NewReader(yaml)); err != nil {
		t.Fatal(err)
	}
	return s
}

func newTestAgent(t *testing.T, proxyErr error) (*Agent, *journal, *fakeRules) {
	j := &journal{}
	rules := &fakeRules{j: j, installed: map[*netns.Handle]bool{}, names: map[*netns.Handle]string{}}
	a := New(Config{
		Node:   "n1",
		Proxy:  &fakeProxy{j: j, err: proxyErr},
		Rules:  rules,
		Finder: &fakeFinder{t: t, rules: rules, missing: map[string]bool{}},
	})
	return a, j, rules
}

func TestReconcile(t *testing.T) {
	a, j, _ := newTestAgent(t, nil)
	ctx := context.Background()
	a.OnSnapshot(snapshot(t, podsYAML))
	if err := a.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	// Only shop/a is enrolled: b opted out, c is on another node, d's
	// namespace is plain. The proxy gets the pod before the rules go in.
	if got, want := j.take(), "proxy-add:a:permissive rules-install:a"; got != want {
		t.Fatalf("enrollment: %q, want %q", got, want)
	}
	if st := a.Status(); st["shop/a"] != "enrolled" || len(st) != 1 {
		t.Fatalf("status: %v", st)
	}
	// Idempotent: nothing changes, nothing is done.
	if err := a.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if got := j.take(); got != "" {
		t.Fatalf("second reconcile did %q", got)
	}
	// A mode change updates the proxy (and re-asserts the rules).
	a.OnSnapshot(snapshot(t, strings.Replace(podsYAML, "palisade.dev/mtls: enabled}", "palisade.dev/mtls: enabled, palisade.dev/mtls-mode: strict}", 1)))
	if err := a.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if got, want := j.take(), "proxy-add:a:strict rules-install:a"; got != want {
		t.Fatalf("mode change: %q, want %q", got, want)
	}
	// Unlabelling removes: rules first, then the proxy.
	a.OnSnapshot(snapshot(t, strings.Replace(podsYAML, "labels: {palisade.dev/mtls: enabled}", "labels: {}", 1)))
	if err := a.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if got, want := j.take(), "rules-remove:a proxy-del:a"; got != want {
		t.Fatalf("unenrollment: %q, want %q", got, want)
	}
	if st := a.Status(); len(st) != 0 {
		t.Fatalf("status after unenrollment: %v", st)
	}
}

// TestInstallNewOnlyWhenKnownClean: the first reconcile after a start
// reads the tables (an earlier agent may have left rules), and so does a
// re-install of a pod that is enrolled; a pod enrolled again after its
// rules were removed, and a pod the runtime just created, get the
// one-restore install.
func TestInstallNewOnlyWhenKnownClean(t *testing.T) {
	a, j, rules := newTestAgent(t, nil)
	ctx := context.Background()
	newInstalls := func() int {
		rules.mu.Lock()
		defer rules.mu.Unlock()
		return rules.newInstalls["a"]
	}
	a.OnSnapshot(snapshot(t, podsYAML))
	if err := a.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if got, want := j.take(), "proxy-add:a:permissive rules-install:a"; got != want || newInstalls() != 0 {
		t.Fatalf("first reconcile: %q with %d InstallNew, want %q with the full install", got, newInstalls(), want)
	}
	strict := strings.Replace(podsYAML, "palisade.dev/mtls: enabled}", "palisade.dev/mtls: enabled, palisade.dev/mtls-mode: strict}", 1)
	a.OnSnapshot(snapshot(t, strict))
	if err := a.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if got := j.take(); got != "proxy-add:a:strict rules-install:a" || newInstalls() != 0 {
		t.Fatalf("re-install of an enrolled pod: %q with %d InstallNew, want the full install", got, newInstalls())
	}
	a.OnSnapshot(snapshot(t, strings.Replace(podsYAML, "labels: {palisade.dev/mtls: enabled}", "labels: {}", 1)))
	if err := a.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	j.take()
	a.OnSnapshot(snapshot(t, podsYAML))
	if err := a.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if got := j.take(); got != "proxy-add:a:permissive rules-install:a" || newInstalls() != 1 {
		t.Fatalf("enrolled again: %q with %d InstallNew, want one", got, newInstalls())
	}

	// A fresh agent: nothing swept yet, but CNI ADD names a new sandbox.
	b, j2, rules2 := newTestAgent(t, nil)
	b.OnSnapshot(snapshot(t, podsYAML))
	if err := b.PodAdded(ctx, PodEvent{Namespace: "shop", Name: "a", UID: "a", Netns: "/proc/self/ns/net"}); err != nil {
		t.Fatal(err)
	}
	rules2.mu.Lock()
	n := rules2.newInstalls["a"]
	rules2.mu.Unlock()
	if got := j2.take(); got != "proxy-add:a:permissive rules-install:a" || n != 1 {
		t.Fatalf("CNI ADD: %q with %d InstallNew, want one", got, n)
	}
}

func TestNoProxyStillInstallsRules(t *testing.T) {
	a, j, _ := newTestAgent(t, fmt.Errorf("add: %w", handoff.ErrNoProxy))
	a.OnSnapshot(snapshot(t, podsYAML))
	// The reconcile is incomplete (so Run retries it) until a proxy takes
	// the pod.
	if err := a.Reconcile(context.Background()); !errors.Is(err, errAwaitingProxy) {
		t.Fatalf("reconcile without a proxy: %v, want errAwaitingProxy", err)
	}
	// Fail closed: the rules go in so the pod's traffic is refused, never
	// sent in plaintext, until a proxy connects and gets the snapshot.
	if got, want := j.take(), "proxy-add:a:permissive rules-install:a"; got != want {
		t.Fatalf("%q, want %q", got, want)
	}
	if st := a.Status()["shop/a"]; !strings.HasPrefix(st, "pending") {
		t.Fatalf("status %q, want pending", st)
	}
	// The retry while the proxy is still away repeats only the hand-off.
	if err := a.Reconcile(context.Background()); !errors.Is(err, errAwaitingProxy) {
		t.Fatalf("retry without a proxy: %v, want errAwaitingProxy", err)
	}
	if got, want := j.take(), "proxy-add:a:permissive"; got != want {
		t.Fatalf("retry: %q, want %q", got, want)
	}
}

// TestMetrics: pods by state and reconcile errors by stage.
func TestMetrics(t *testing.T) {
	for _, tc := range []struct {
		name                       string
		proxyErr                   error
		enrolled, pending, handoff float64
	}{
		{"proxy takes the pod", nil, 1, 0, 0},
		{"no proxy", fmt.Errorf("add: %w", handoff.ErrNoProxy), 0, 1, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, _, _ := newTestAgent(t, tc.proxyErr)
			a.cfg.Metrics = NewMetrics(prometheus.NewRegistry())
			a.OnSnapshot(snapshot(t, podsYAML))
			a.Reconcile(context.Background())
			m := a.cfg.Metrics
			if got := testutil.ToFloat64(m.pods.WithLabelValues("enrolled")); got != tc.enrolled {
				t.Errorf("enrolled pods %v, want %v", got, tc.enrolled)
			}
			if got := testutil.ToFloat64(m.pods.WithLabelValues("pending")); got != tc.pending {
				t.Errorf("pending pods %v, want %v", got, tc.pending)
			}
			if got := testutil.ToFloat64(m.errors.WithLabelValues(StageHandoff)); got != tc.handoff {
				t.Errorf("handoff errors %v, want %v", got, tc.handoff)
			}
			if got := testutil.ToFloat64(m.reconciles); got != 1 {
				t.Errorf("reconciles %v, want 1", got)
			}
		})
	}
}

// TestRestartWithoutProxyKeepsEnrolledStatus: an agent restarting while
// its node proxy has not reconnected yet keeps a pod the cluster view shows
// as enrolled "enrolled" (no flapping annotation), and retries the hand-off
// until the proxy takes it.
func TestRestartWithoutProxyKeepsEnrolledStatus(t *testing.T) {
	j := &journal{}
	p := &fakeProxy{j: j, err: fmt.Errorf("add: %w", handoff.ErrNoProxy)}
	rules := &fakeRules{j: j, installed: map[*netns.Handle]bool{}, names: map[*netns.Handle]string{}}
	var statuses [][]PodStatus
	a := New(Config{Node: "n1", Proxy: p, Rules: rules, Finder: &fakeFinder{t: t, rules: rules, missing: map[string]bool{}},
		OnPodStatus: func(s []PodStatus) { statuses = append(statuses, s) }})
	snap := snapshot(t, podsYAML)
	for _, pod := range snap.Pods {
		pod.Annotations = map[string]string{EnrollmentAnnotation: "enrolled"}
	}
	a.OnSnapshot(snap)
	if err := a.Reconcile(context.Background()); !errors.Is(err, errAwaitingProxy) {
		t.Fatalf("reconcile without a proxy: %v", err)
	}
	if st := a.Status()["shop/a"]; st != "enrolled" {
		t.Fatalf("status %q, want enrolled kept", st)
	}
	for _, s := range statuses {
		for _, ps := range s {
			if ps.Name == "a" {
				t.Fatalf("annotation of a would change to %q", ps.Status)
			}
		}
	}
	// The proxy is back: the retry hands it the pod.
	p.err = nil
	j.take()
	if err := a.Reconcile(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := j.take(); !strings.Contains(got, "proxy-add:a") {
		t.Fatalf("retry did not hand the pod to the proxy: %q", got)
	}
}

func TestProxyErrorLeavesNoRules(t *testing.T) {
	a, j, _ := newTestAgent(t, errors.New("listen: address in use"))
	a.OnSnapshot(snapshot(t, podsYAML))
	if err := a.Reconcile(context.Background()); err == nil || !strings.Contains(err.Error(), "address in use") {
		t.Fatalf("want the proxy's error, got %v", err)
	}
	if got, want := j.take(), "proxy-add:a:permissive"; got != want {
		t.Fatalf("%q, want %q (no rules without listeners)", got, want)
	}
	if st := a.Status()["shop/a"]; !strings.HasPrefix(st, "failed") {
		t.Fatalf("status %q, want failed", st)
	}
}

func TestCNIAddAndDel(t *testing.T) {
	a, j, _ := newTestAgent(t, nil)
	ctx := context.Background()
	a.OnSnapshot(snapshot(t, podsYAML))
	if err := a.PodAdded(ctx, PodEvent{Namespace: "shop", Name: "a", UID: "a", Netns: "/proc/self/ns/net"}); err != nil {
		t.Fatal(err)
	}
	if got, want := j.take(), "proxy-add:a:permissive rules-install:a"; got != want {
		t.Fatalf("CNI ADD: %q, want %q", got, want)
	}
	// A pod not enrolled is accepted without action.
	if err := a.PodAdded(ctx, PodEvent{Namespace: "plain", Name: "d", UID: "d"}); err != nil {
		t.Fatal(err)
	}
	if got := j.take(); got != "" {
		t.Fatalf("CNI ADD of a plain pod did %q", got)
	}
	if err := a.PodDeleted(ctx, PodEvent{Namespace: "shop", Name: "a", UID: "a"}); err != nil {
		t.Fatal(err)
	}
	if got, want := j.take(), "rules-remove:a proxy-del:a"; got != want {
		t.Fatalf("CNI DEL: %q, want %q", got, want)
	}
	// The cluster view still lists the deleted pod: it must not come back.
	if err := a.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if got := j.take(); got != "" {
		t.Fatalf("reconcile after CNI DEL re-enrolled: %q", got)
	}
}

func TestCNIAddWaitsForClusterView(t *testing.T) {
	a, _, _ := newTestAgent(t, nil)
	a.cfg.CNIWait = 50_000_000 // 50ms
	a.OnSnapshot(snapshot(t, podsYAML))
	err := a.PodAdded(context.Background(), PodEvent{Namespace: "shop", Name: "zz", UID: "zz"})
	if err == nil || !strings.Contains(err.Error(), "not in the agent's cluster view") {
		t.Fatalf("want a clear error for an unknown pod, got %v", err)
	}
}

func TestOnEnrolled(t *testing.T) {
	a, _, _ := newTestAgent(t, nil)
	var calls []string
	a.cfg.OnEnrolled = func(ws []workload.Workload) {
		var s []string
		for _, w := range ws {
			s = append(s, w.Key()+"@"+w.ServiceAccountOrDefault())
		}
		calls = append(calls, "["+strings.Join(s, " ")+"]")
	}
	ctx := context.Background()
	if err := a.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if len(calls) != 0 {
		t.Fatalf("called before any cluster view: %v", calls)
	}
	// A pod scheduled here but not started yet (no IP) counts: its
	// identity should be ready when it starts.
	pending := podsYAML + `---
apiVersion: v1
kind: Pod
metadata: {name: e, namespace: shop, uid: e}
spec: {nodeName: n1, serviceAccountName: api}
`
	a.OnSnapshot(snapshot(t, pending))
	if err := a.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if err := a.PodDeleted(ctx, PodEvent{Namespace: "shop", Name: "a", UID: "a"}); err != nil {
		t.Fatal(err)
	}
	a.OnSnapshot(snapshot(t, strings.Replace(pending, "labels: {palisade.dev/mtls: enabled}", "labels: {}", 1)))
	if err := a.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(calls, " "), "[shop/a@default shop/e@api] [shop/e@api] []"; got != want {
		t.Fatalf("OnEnrolled calls %q, want %q", got, want)
	}
}

// gatedRules is a Rules whose Install waits until `want` installs are under
// way at once (or a timeout), recording the most seen together.
type gatedRules struct {
	*fakeRules
	want    int
	mu      sync.Mutex
	cond    *sync.Cond
	running int
	most    int
}

func (r *gatedRules) Install(ctx context.Context, h *netns.Handle) error {
	r.mu.Lock()
	r.running++
	r.most = max(r.most, r.running)
	r.cond.Broadcast()
	deadline := time.AfterFunc(2*time.Second, func() { r.mu.Lock(); r.cond.Broadcast(); r.mu.Unlock() })
	start := time.Now()
	for r.most < r.want && time.Since(start) < 2*time.Second {
		r.cond.Wait()
	}
	deadline.Stop()
	r.running--
	r.mu.Unlock()
	return r.fakeRules.Install(ctx, h)
}

// TestEnrollsPodsInParallel: a label enrolling many pods of the node runs
// EnrollWorkers enrollments at once, each still handing the pod to the
// proxy before its rules go in, and every pod ends enrolled.
func TestEnrollsPodsInParallel(t *testing.T) {
	const pods, workers = 9, 3
	var b strings.Builder
	b.WriteString("apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {palisade.dev/mtls: enabled}}\n")
	for i := range pods {
		fmt.Fprintf(&b, "---\napiVersion: v1\nkind: Pod\nmetadata: {name: p%d, namespace: shop, uid: p%d}\nspec: {nodeName: n1}\nstatus: {podIP: 10.0.0.%d}\n", i, i, i+1)
	}
	j := &journal{}
	fr := &fakeRules{j: j, installed: map[*netns.Handle]bool{}, names: map[*netns.Handle]string{}}
	rules := &gatedRules{fakeRules: fr, want: workers}
	rules.cond = sync.NewCond(&rules.mu)
	a := New(Config{Node: "n1", Proxy: &fakeProxy{j: j}, Rules: rules, Finder: &fakeFinder{t: t, rules: fr, missing: map[string]bool{}},
		EnrollWorkers: workers})
	a.OnSnapshot(snapshot(t, b.String()))
	if err := a.Reconcile(context.Background()); err != nil {
		t.Fatal(err)
	}
	if rules.most != workers {
		t.Fatalf("at most %d rule installs ran at once, want %d (EnrollWorkers)", rules.most, workers)
	}
	ops := strings.Fields(j.take())
	for i := range pods {
		add := slices.Index(ops, fmt.Sprintf("proxy-add:p%d:permissive", i))
		inst := slices.Index(ops, fmt.Sprintf("rules-install:p%d", i))
		if add < 0 || inst < 0 || add > inst {
			t.Fatalf("p%d: proxy-add at %d, rules-install at %d: %v", i, add, inst, ops)
		}
	}
	st := a.Status()
	if len(st) != pods {
		t.Fatalf("status of %d pods, want %d: %v", len(st), pods, st)
	}
	for k, v := range st {
		if v != "enrolled" {
			t.Fatalf("%s: %q", k, v)
		}
	}
}
