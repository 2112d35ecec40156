// Package agent is the per-node enrollment controller. It watches the
// cluster view, decides which pods on its node are enrolled, installs the
// in-pod redirect rules (pkg/redirect) and hands each enrolled pod's network
// namespace to the node proxy (pkg/handoff).
//
// The agent keeps no state that it cannot rebuild: after a crash it finds the
// pods' namespaces again (scanning, see discover.go), re-applies rules
// idempotently and replays its snapshot to the node proxy. Ordering is chosen
// so that a pod never sends plaintext to an enrolled peer: the node proxy's
// listeners are created before the redirect rules, and on removal the rules
// go first; while rules exist but no proxy listens, connections are refused.
//
// With a kernel datapath (Config.Datapath, pkg/agent/ebpf) the agent also
// keeps its table of the cluster's enrolled endpoints up to date on every
// reconcile, and attaches its programs to each enrolled pod after the rules
// (detaching them last on removal).
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/palisade-net/palisade/pkg/cluster"
	"github.com/palisade-net/palisade/pkg/handoff"
	"github.com/palisade-net/palisade/pkg/netns"
	"github.com/palisade-net/palisade/pkg/redirect"
	"github.com/palisade-net/palisade/pkg/workload"
	corev1 "k8s.io/api/core/v1"
)

// Proxy is the node proxy as the agent sees it (implemented by
// handoff.Server).
type Proxy interface {
	AddWorkload(ctx context.Context, w workload.Workload, netns *os.File) error
	DeleteWorkload(ctx context.Context, uid string) error
}

// Rules installs and removes the in-pod redirect rules (implemented by
// pkg/redirect through RedirectRules).
type Rules interface {
	Install(ctx context.Context, h *netns.Handle) error
	// InstallNew is Install for a namespace that holds none of the
	// agent's rules as far as it knows: cheaper there, and still correct
	// (only slower) where rules are.
	InstallNew(ctx context.Context, h *netns.Handle) error
	Remove(ctx context.Context, h *netns.Handle) error
	Installed(ctx context.Context, h *netns.Handle) (bool, error)
}

// Datapath is the kernel datapath (eBPF) as the agent drives it
// (implemented by pkg/agent/ebpf). It guards the host side of each enrolled
// pod's interface, out of the pod's reach, in addition to the redirect
// rules; without it (Config.Datapath nil) enforcement is iptables-only.
type Datapath interface {
	// SetEndpoints makes the guard's table of enrolled endpoints hold
	// exactly eps: every pod of the cluster enrolled by policy, on this
	// node and on the others, with its IPs and mode. It also drops what
	// deleted interfaces left behind. It is called on every reconcile.
	SetEndpoints(ctx context.Context, eps []workload.Workload) error
	// Attach guards the pod of this node whose network namespace is h. It
	// is idempotent, and takes over attachments left by an earlier agent.
	Attach(ctx context.Context, w workload.Workload, h *netns.Handle) error
	// Detach removes the guard from the pod whose network namespace is h.
	// A pod without it, or whose interface is gone, is not an error.
	Detach(ctx context.Context, w workload.Workload, h *netns.Handle) error
}

// NetnsFinder locates a pod's network namespace (implemented by *Finder).
type NetnsFinder interface {
	Find(uid, hint string, ips []netip.Addr) (*netns.Handle, string, error)
}

// Config configures an Agent.
type Config struct {
	Node   string
	Proxy  Proxy
	Rules  Rules
	Finder NetnsFinder
	// Datapath, when set, guards enrolled pods in the kernel as well.
	Datapath Datapath
	Logger   *slog.Logger
	// CNIWait is how long a CNI ADD waits for the pod to appear in the
	// cluster view before failing.
	CNIWait time.Duration
	// OnEnrolled, when set, is called after every reconcile (and every CNI
	// DEL) with the workloads of this node that are enrolled by policy,
	// including pods whose sandbox is not up yet, sorted by namespace and
	// name. It is not called before the first cluster view. It runs with
	// the agent's lock held and must not block (the SPIRE registration
	// reconciler only records the set).
	OnEnrolled func([]workload.Workload)
	// Metrics, when set, receives the reconcile and pod-state series.
	Metrics *Metrics
	// EnrollWorkers is how many pods are enrolled at once
	// (DefaultEnrollWorkers): their hand-offs, redirect rules (iptables
	// processes in the pod's namespace) and datapath attachments overlap.
	EnrollWorkers int
	// OnPodStatus, when set, is called after every reconcile with the pods
	// of this node whose EnrollmentAnnotation differs from what the agent
	// knows (Status "" means the annotation should go). Like OnEnrolled it
	// runs with the agent's lock held and must not block.
	OnPodStatus func([]PodStatus)
}

// DefaultEnrollWorkers is Config.EnrollWorkers' default.
const DefaultEnrollWorkers = 4

// EnrollmentAnnotation is the pod annotation that says whether a pod of an
// enrolled namespace is "enrolled", "pending: <why>" or "failed: <why>".
const EnrollmentAnnotation = cluster.EnrollmentAnnotation

// PodStatus is the enrollment state of one pod of this node.
type PodStatus struct {
	Namespace, Name, UID string
	// Status is the wanted value of EnrollmentAnnotation ("" to remove it).
	Status string
	// Current is the annotation's value in the cluster view.
	Current string
}

// Agent reconciles enrolled pods on one node.
type Agent struct {
	cfg Config
	log *slog.Logger

	mu       sync.Mutex // serialises reconciles
	snap     *cluster.Snapshot
	enrolled map[string]*pod   // by pod UID
	known    map[string]string // netns path by pod UID, learned from CNI
	// cniIPs are pod IPs by UID from the CNI ADD's prevResult: with
	// Kubernetes, the kubelet reports status.podIP only after the ADD
	// returns, and the ADD must enroll the pod before that.
	cniIPs map[string][]netip.Addr
	// deleted holds UIDs removed by CNI DEL, so that a cluster view that
	// still lists the pod does not enroll it again.
	deleted map[string]bool
	// straysCleaned is set once the start-up sweep for rules left by a
	// previous run has succeeded; while running, unenroll removes rules.
	straysCleaned bool
	changed       chan struct{}
	// snapSeen is closed/replaced whenever a new snapshot arrives, so that
	// a CNI ADD can wait for its pod.
	snapSeen chan struct{}
}

type pod struct {
	// awaitingProxy is set while the pod is enrolled without a node proxy
	// connected; reconciles retry the hand-off until one takes it.
	awaitingProxy bool
	wl            workload.Workload
	ns            *netns.Handle
	path          string
	inode         uint64
	status        string
}

// New returns an agent. Call Run to start it.
func New(cfg Config) *Agent {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.CNIWait == 0 {
		cfg.CNIWait = 10 * time.Second
	}
	if cfg.EnrollWorkers <= 0 {
		cfg.EnrollWorkers = DefaultEnrollWorkers
	}
	return &Agent{
		cfg:      cfg,
		log:      cfg.Logger,
		enrolled: map[string]*pod{},
		known:    map[string]string{},
		cniIPs:   map[string][]netip.Addr{},
		deleted:  map[string]bool{},
		changed:  make(chan struct{}, 1),
		snapSeen: make(chan struct{}),
	}
}

// OnSnapshot publishes a new cluster view; reconciliation follows
// asynchronously in Run.
func (a *Agent) OnSnapshot(s *cluster.Snapshot) {
	a.mu.Lock()
	a.snap = s
	for uid := range a.deleted {
		if !hasUID(s, uid) {
			delete(a.deleted, uid)
		}
	}
	close(a.snapSeen)
	a.snapSeen = make(chan struct{})
	a.mu.Unlock()
	select {
	case a.changed <- struct{}{}:
	default:
	}
}

// Run reconciles on every change until ctx ends. ready is called once after
// the first full reconcile.
func (a *Agent) Run(ctx context.Context, ready func()) error {
	first := true
	retry := time.NewTimer(time.Hour)
	defer retry.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-a.changed:
		case <-retry.C:
		}
		err := a.Reconcile(ctx)
		if err != nil {
			a.log.Warn("reconcile incomplete; retrying", "error", err)
			retry.Reset(time.Second)
		}
		if first && a.snapshot() != nil {
			first = false
			if ready != nil {
				ready()
			}
		}
	}
}

func (a *Agent) snapshot() *cluster.Snapshot {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.snap
}

// Status reports each enrolled pod's state, keyed by "namespace/name".
func (a *Agent) Status() map[string]string {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := map[string]string{}
	for _, p := range a.enrolled {
		out[p.wl.Key()] = p.status
	}
	return out
}

// desired returns the enrolled workloads on this node, by UID.
func (a *Agent) desired(s *cluster.Snapshot) map[string]workload.Workload {
	out := map[string]workload.Workload{}
	if s == nil {
		return out
	}
	for _, p := range s.PodsOnNode(a.cfg.Node) {
		ns := s.Namespace(p.Namespace)
		if !workload.PodEnrolled(ns, p) {
			continue
		}
		w := workload.FromPod(ns, p)
		if len(w.IPs) == 0 {
			w.IPs = a.cniIPs[w.UID]
		}
		if len(w.IPs) == 0 || w.UID == "" || a.deleted[w.UID] {
			continue // not running yet; CNI ADD or a later snapshot brings it
		}
		if p.Status.Phase == corev1.PodPending && a.known[w.UID] == "" {
			// Its sandbox is being set up: the CNI ADD brings its
			// namespace. Scanning now could race the runtime.
			continue
		}
		out[w.UID] = w
	}
	return out
}

// notifyEnrolled hands the pods of this node that are enrolled by policy to
// Config.OnEnrolled. Unlike desired, it includes pods not running yet, so
// that what they need (their SPIRE entry) can be ready when they start.
func (a *Agent) notifyEnrolled() {
	a.notifyPodStatus(false)
	a.countPods()
	if a.cfg.OnEnrolled == nil || a.snap == nil {
		return
	}
	var out []workload.Workload
	for _, p := range a.snap.PodsOnNode(a.cfg.Node) {
		ns := a.snap.Namespace(p.Namespace)
		if !workload.PodEnrolled(ns, p) || (p.UID != "" && a.deleted[string(p.UID)]) {
			continue
		}
		out = append(out, workload.FromPod(ns, p))
	}
	slices.SortFunc(out, func(x, y workload.Workload) int { return strings.Compare(x.Key(), y.Key()) })
	a.cfg.OnEnrolled(out)
}

// notifyPodStatus hands Config.OnPodStatus the pods whose enrollment
// annotation is out of date. In the middle of a pass (partial), pods the
// pass has not reached yet are left out: a restarted agent knows none of
// them, and they are not "pending" just because their turn has not come.
func (a *Agent) notifyPodStatus(partial bool) {
	if a.cfg.OnPodStatus == nil || a.snap == nil {
		return
	}
	var out []PodStatus
	for _, p := range a.snap.PodsOnNode(a.cfg.Node) {
		want, known := a.wantedStatus(p)
		if partial && want != "" && !known {
			continue
		}
		if have := p.Annotations[EnrollmentAnnotation]; have != want {
			out = append(out, PodStatus{Namespace: p.Namespace, Name: p.Name, UID: string(p.UID), Status: want, Current: have})
		}
	}
	a.cfg.OnPodStatus(out)
}

// wantedStatus is the enrollment status of a pod of this node: "" when
// policy does not enroll it, the agent's status when it has one (known),
// else pending until CNI ADD hands over its namespace. a.mu is held.
func (a *Agent) wantedStatus(p *corev1.Pod) (want string, known bool) {
	uid := string(p.UID)
	if !workload.PodEnrolled(a.snap.Namespace(p.Namespace), p) || a.deleted[uid] {
		return "", false
	}
	if cur := a.enrolled[uid]; cur != nil && cur.status != "" {
		return cur.status, true
	}
	return "pending: waiting for the pod's network namespace (CNI ADD)", false
}

// setEndpoints hands Config.Datapath every pod of the cluster enrolled by
// policy that has an address (this node's pods deleted by CNI DEL aside).
func (a *Agent) setEndpoints(ctx context.Context) error {
	if a.cfg.Datapath == nil || a.snap == nil {
		return nil
	}
	var eps []workload.Workload
	for _, p := range a.snap.Pods {
		ns := a.snap.Namespace(p.Namespace)
		if !workload.PodEnrolled(ns, p) {
			continue
		}
		w := workload.FromPod(ns, p)
		if w.Node == a.cfg.Node {
			if a.deleted[w.UID] {
				continue
			}
			if len(w.IPs) == 0 {
				w.IPs = a.cniIPs[w.UID]
			}
		}
		if len(w.IPs) > 0 {
			eps = append(eps, w)
		}
	}
	if err := a.cfg.Datapath.SetEndpoints(ctx, eps); err != nil {
		return staged(StageDatapath, fmt.Errorf("kernel datapath endpoints: %w", err))
	}
	return nil
}

// Reconcile converges the node to the current snapshot once.
func (a *Agent) Reconcile(ctx context.Context) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.reconcileLocked(ctx, nil)
}

// reconcileLocked converges every pod, or only the UIDs in only when given.
func (a *Agent) reconcileLocked(ctx context.Context, only map[string]bool) error {
	want := a.desired(a.snap)
	var errs []error
	if err := a.setEndpoints(ctx); err != nil {
		errs = append(errs, err)
	}
	// Removals first: pods that left, were unlabelled or opted out.
	for _, uid := range slices.Sorted(maps.Keys(a.enrolled)) {
		if only != nil && !only[uid] {
			continue
		}
		if _, ok := want[uid]; ok {
			continue
		}
		if err := a.unenroll(ctx, uid); err != nil {
			errs = append(errs, err)
		}
	}
	errs = append(errs, a.enrollAll(ctx, want, only)...)
	a.notifyEnrolled()
	if only == nil && !a.straysCleaned && a.snap != nil {
		// Stray rules can only come from a time the agent was not running,
		// so the host-wide namespace scan runs once (until it succeeds),
		// not on every reconcile.
		strayErrs := a.cleanStrays(ctx, want)
		a.straysCleaned = len(strayErrs) == 0
		for _, err := range strayErrs {
			errs = append(errs, staged(StageStrays, err))
		}
	}
	a.cfg.Metrics.observeReconcile(errs)
	return errors.Join(errs...)
}

// enrollAll enrolls the pods of want (only those in only, when given),
// EnrollWorkers at a time. Each pod's status goes out as soon as it is
// known, not after the whole pass: a label enrolling a hundred pods shows
// progress.
func (a *Agent) enrollAll(ctx context.Context, want map[string]workload.Workload, only map[string]bool) []error {
	var errs []error
	var jobs []*enrollJob
	for _, uid := range slices.Sorted(maps.Keys(want)) {
		if only != nil && !only[uid] {
			continue
		}
		job, err := a.prepareEnroll(ctx, want[uid])
		if err != nil {
			errs = append(errs, err)
			a.notifyPodStatus(true)
		}
		if job != nil {
			jobs = append(jobs, job)
		}
	}
	if len(jobs) == 0 {
		return errs
	}
	workers := min(a.cfg.EnrollWorkers, len(jobs))
	todo := make(chan *enrollJob, len(jobs))
	for _, job := range jobs {
		todo <- job
	}
	close(todo)
	done := make(chan *enrollJob)
	for range workers {
		go func() {
			for job := range todo {
				a.applyEnroll(ctx, job)
				done <- job
			}
		}()
	}
	for range jobs {
		if err := a.finishEnroll(<-done); err != nil {
			errs = append(errs, err)
		}
		a.notifyPodStatus(true)
	}
	return errs
}

// enrollJob is one pod's enrollment: prepared and finished under the
// agent's lock, applied (hand-off, rules, datapath) by a worker.
type enrollJob struct {
	w   workload.Workload
	cur *pod
	// handoffOnly: only the hand-off is still to do (see prepareEnroll).
	handoffOnly bool
	// fresh: the pod's namespace holds none of our rules as far as the
	// agent knows (see prepareEnroll); its rules go in with InstallNew.
	fresh bool
	// Results of apply.
	perr  error  // the hand-off's
	err   error  // the failure that ends the attempt, staged
	cause string // its message for the pod's status
}

// prepareEnroll finds the pod's namespace and records the pod; a nil job
// means there is nothing to do (or the error says why not).
func (a *Agent) prepareEnroll(ctx context.Context, w workload.Workload) (*enrollJob, error) {
	cur := a.enrolled[w.UID]
	if cur != nil && sameFacts(cur.wl, w) && cur.status == "enrolled" && !cur.awaitingProxy {
		return nil, nil
	}
	if cur != nil && a.known[w.UID] != "" && a.known[w.UID] != cur.path {
		// CNI named the pod's namespace after a scan had found one: the
		// runtime's word wins.
		a.log.Warn("pod namespace differs from the one found by scanning; using the runtime's", "pod", w.Key(), "scanned", cur.path, "cni", a.known[w.UID])
		if cur.status == "enrolled" {
			a.cfg.Rules.Remove(ctx, cur.ns)
		}
		if a.cfg.Datapath != nil {
			a.cfg.Datapath.Detach(ctx, cur.wl, cur.ns)
		}
		cur.ns.Close()
		delete(a.enrolled, w.UID)
		cur = nil
	}
	// A pod this agent has not enrolled since it started has no rules of
	// ours once the start-up sweep has removed what an earlier agent left
	// (pods it should not enroll) and the first reconcile went through the
	// full install (pods it should): then, and for a pod whose sandbox the
	// runtime created while this agent ran (it told us by CNI ADD), the
	// rules go in without reading the tables first.
	fresh := cur == nil && (a.straysCleaned || a.known[w.UID] != "")
	if cur == nil {
		h, path, err := a.openNetns(w)
		if err != nil {
			return nil, staged(StageNetns, fmt.Errorf("enroll %s: %w", w.Key(), err))
		}
		ino, _ := h.Inode()
		cur = &pod{ns: h, path: path, inode: ino}
		a.enrolled[w.UID] = cur
	}
	// A pod waiting for the node proxy got its rules and programs with the
	// first attempt; the retries (every second while the proxy is away)
	// only repeat the hand-off.
	job := &enrollJob{w: w, cur: cur, handoffOnly: cur.awaitingProxy && sameFacts(cur.wl, w), fresh: fresh}
	cur.wl = w
	return job, nil
}

// applyEnroll hands the pod to the node proxy and installs its rules and
// datapath. It touches only the job and the agent's components (each safe
// for concurrent use on different pods), so jobs of different pods may run
// at once.
func (a *Agent) applyEnroll(ctx context.Context, job *enrollJob) {
	w, h := job.w, job.cur.ns
	a.log.Debug("enrolling pod", "pod", w.Key(), "uid", w.UID)
	// Listeners first, then rules: no window in which captured traffic finds
	// no proxy. If the proxy is absent the rules still go in: the pod's
	// connections are refused until it arrives, never sent in plaintext.
	job.perr = a.cfg.Proxy.AddWorkload(ctx, w, h.File())
	if job.perr != nil && !errors.Is(job.perr, handoff.ErrNoProxy) {
		job.err = staged(StageHandoff, fmt.Errorf("enroll %s: node proxy: %w", w.Key(), job.perr))
		job.cause = job.perr.Error()
		return
	}
	if job.handoffOnly {
		return
	}
	install := a.cfg.Rules.Install
	if job.fresh {
		install = a.cfg.Rules.InstallNew
	}
	if err := install(ctx, h); err != nil {
		job.err = staged(StageRules, fmt.Errorf("enroll %s: redirect rules: %w", w.Key(), err))
		job.cause = err.Error()
		return
	}
	if a.cfg.Datapath != nil {
		if err := a.cfg.Datapath.Attach(ctx, w, h); err != nil {
			job.err = staged(StageDatapath, fmt.Errorf("enroll %s: kernel datapath: %w", w.Key(), err))
			job.cause = err.Error()
		}
	}
}

// finishEnroll records the outcome of an applied job.
func (a *Agent) finishEnroll(job *enrollJob) error {
	w, cur := job.w, job.cur
	if job.err != nil {
		cur.status = "failed: " + job.cause
		cur.awaitingProxy = false // the next attempt applies everything again
		return job.err
	}
	log := a.log.With("pod", w.Key(), "uid", w.UID, "netns", cur.path)
	if job.perr != nil {
		cur.awaitingProxy = true
		// After an agent restart the node proxy is usually still running
		// and serving the pod; it reconnects within moments and the
		// snapshot replay hands it the pod. A pod the cluster view shows
		// as enrolled keeps that status meanwhile, so the annotation does
		// not flap; a new pod is pending. Either way the reconcile is
		// retried until the proxy takes the pod.
		if cur.status != "enrolled" && a.annotated(w) != "enrolled" {
			cur.status = "pending: node proxy not connected"
		} else {
			cur.status = "enrolled"
		}
		log.Warn("pod enrolled without a node proxy connected; its new connections are refused until one takes it", "reason", job.perr)
		return staged(StageHandoff, fmt.Errorf("enroll %s: %w", w.Key(), errAwaitingProxy))
	}
	if cur.status != "enrolled" || cur.awaitingProxy {
		log.Info("pod enrolled", "mode", w.Mode, "ips", w.IPs)
	}
	cur.awaitingProxy = false
	cur.status = "enrolled"
	return nil
}

// errAwaitingProxy marks a reconcile incomplete (and so retried) while a
// pod waits for a node proxy.
var errAwaitingProxy = errors.New("waiting for the node proxy to connect")

// annotated returns the pod's EnrollmentAnnotation in the cluster view.
func (a *Agent) annotated(w workload.Workload) string {
	if a.snap == nil {
		return ""
	}
	if p := a.snap.Pod(w.Namespace, w.Name); p != nil && string(p.UID) == w.UID {
		return p.Annotations[EnrollmentAnnotation]
	}
	return ""
}

func (a *Agent) unenroll(ctx context.Context, uid string) error {
	cur := a.enrolled[uid]
	log := a.log.With("pod", cur.wl.Key(), "uid", uid)
	var errs []error
	if err := a.cfg.Rules.Remove(ctx, cur.ns); err != nil {
		errs = append(errs, fmt.Errorf("redirect rules: %w", err))
	}
	if err := a.cfg.Proxy.DeleteWorkload(ctx, uid); err != nil && !errors.Is(err, handoff.ErrNoProxy) {
		errs = append(errs, fmt.Errorf("node proxy: %w", err))
	}
	if a.cfg.Datapath != nil {
		if err := a.cfg.Datapath.Detach(ctx, cur.wl, cur.ns); err != nil {
			errs = append(errs, fmt.Errorf("kernel datapath: %w", err))
		}
	}
	if len(errs) > 0 {
		return staged(StageUnenroll, fmt.Errorf("unenroll %s: %w", cur.wl.Key(), errors.Join(errs...)))
	}
	cur.ns.Close()
	delete(a.enrolled, uid)
	// The CNI-given namespace path stays (until CNI DEL): enrolling the
	// pod again, when its namespace is labelled again, needs no scan.
	log.Info("pod unenrolled")
	return nil
}

// cleanStrays removes rules left in namespaces of pods on this node that are
// not enrolled (for example a namespace unlabelled while the agent was down).
func (a *Agent) cleanStrays(ctx context.Context, want map[string]workload.Workload) []error {
	if a.snap == nil || a.cfg.Finder == nil {
		return nil
	}
	var errs []error
	for _, p := range a.snap.PodsOnNode(a.cfg.Node) {
		uid := string(p.UID)
		if _, ok := want[uid]; ok {
			continue
		}
		if _, ok := a.enrolled[uid]; ok {
			continue
		}
		ips := workload.PodIPs(p)
		if len(ips) == 0 {
			continue
		}
		h, _, err := a.cfg.Finder.Find(uid, a.known[uid], ips)
		if err != nil {
			continue // no namespace, nothing to clean
		}
		installed, err := a.cfg.Rules.Installed(ctx, h)
		if err == nil && installed {
			if err := a.cfg.Rules.Remove(ctx, h); err != nil {
				errs = append(errs, fmt.Errorf("remove stray rules of %s/%s: %w", p.Namespace, p.Name, err))
			} else {
				a.log.Info("removed stray redirect rules", "pod", p.Namespace+"/"+p.Name)
			}
		}
		if a.cfg.Datapath != nil {
			if err := a.cfg.Datapath.Detach(ctx, workload.FromPod(a.snap.Namespace(p.Namespace), p), h); err != nil {
				errs = append(errs, fmt.Errorf("remove stray datapath programs of %s/%s: %w", p.Namespace, p.Name, err))
			}
		}
		h.Close()
	}
	return errs
}

func (a *Agent) openNetns(w workload.Workload) (*netns.Handle, string, error) {
	if a.cfg.Finder == nil {
		return nil, "", errors.New("no way to find the pod's network namespace")
	}
	return a.cfg.Finder.Find(w.UID, a.known[w.UID], w.IPs)
}

func sameFacts(a, b workload.Workload) bool {
	return a.UID == b.UID && a.Name == b.Name && a.Namespace == b.Namespace &&
		a.ServiceAccount == b.ServiceAccount && a.Mode == b.Mode &&
		slices.Equal(a.IPs, b.IPs) && maps.Equal(a.Labels, b.Labels)
}

// PodEvent is what the CNI plugin reports about a pod.
type PodEvent struct {
	Namespace, Name, UID string
	Netns                string
	IPs                  []netip.Addr
}

// PodAdded handles a CNI ADD: it waits until the pod is in the cluster view
// and enrolls it before returning, so the pod's app starts with its traffic
// already captured.
func (a *Agent) PodAdded(ctx context.Context, ev PodEvent) error {
	deadline := time.NewTimer(a.cfg.CNIWait)
	defer deadline.Stop()
	for {
		a.mu.Lock()
		p := (*cluster.Snapshot)(nil)
		if a.snap != nil {
			if pp := a.snap.Pod(ev.Namespace, ev.Name); pp != nil && (ev.UID == "" || string(pp.UID) == ev.UID) {
				p = a.snap
			}
		}
		if p != nil {
			uid := ev.UID
			if uid == "" {
				uid = string(p.Pod(ev.Namespace, ev.Name).UID)
			}
			if ev.Netns != "" {
				a.known[uid] = ev.Netns
			}
			if len(ev.IPs) > 0 {
				a.cniIPs[uid] = ev.IPs
			}
			err := a.reconcileLocked(ctx, map[string]bool{uid: true})
			a.mu.Unlock()
			return err
		}
		wait := a.snapSeen
		a.mu.Unlock()
		select {
		case <-wait:
		case <-deadline.C:
			return fmt.Errorf("pod %s/%s (uid %s) is not in the agent's cluster view after %s", ev.Namespace, ev.Name, ev.UID, a.cfg.CNIWait)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// PodDeleted handles a CNI DEL: the pod's rules and listeners go away now,
// before its namespace is destroyed.
func (a *Agent) PodDeleted(ctx context.Context, ev PodEvent) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	uid := ev.UID
	if uid == "" {
		for id, p := range a.enrolled {
			if p.wl.Namespace == ev.Namespace && p.wl.Name == ev.Name {
				uid = id
			}
		}
	}
	delete(a.known, uid)
	delete(a.cniIPs, uid)
	if uid != "" {
		a.deleted[uid] = true
	}
	a.notifyEnrolled()
	var err error
	if _, ok := a.enrolled[uid]; ok {
		err = a.unenroll(ctx, uid)
	}
	// The pod's addresses leave the guard now rather than with the next
	// cluster view (a reconcile retries on failure).
	if derr := a.setEndpoints(ctx); derr != nil {
		a.log.Warn("CNI DEL: kernel datapath endpoints not updated; the next reconcile retries", "pod", ev.Namespace+"/"+ev.Name, "error", derr)
	}
	return err
}

// RedirectRules adapts pkg/redirect to the Rules interface.
type RedirectRules struct{ Config redirect.Config }

// Install implements Rules.
func (r RedirectRules) Install(ctx context.Context, h *netns.Handle) error {
	return redirect.Install(ctx, h, r.Config)
}

// InstallNew implements Rules.
func (r RedirectRules) InstallNew(ctx context.Context, h *netns.Handle) error {
	return redirect.InstallNew(ctx, h, r.Config)
}

// Remove implements Rules.
func (r RedirectRules) Remove(ctx context.Context, h *netns.Handle) error {
	return redirect.Remove(ctx, h, r.Config)
}

// Installed implements Rules.
func (r RedirectRules) Installed(ctx context.Context, h *netns.Handle) (bool, error) {
	return redirect.Installed(ctx, h, r.Config)
}

func hasUID(s *cluster.Snapshot, uid string) bool {
	for _, p := range s.Pods {
		if string(p.UID) == uid {
			return true
		}
	}
	return false
}
