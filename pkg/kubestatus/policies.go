package kubestatus

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/client-go/util/workqueue"

	"github.com/palisade-net/palisade/pkg/apis/policy/v1alpha1"
	"github.com/palisade-net/palisade/pkg/cluster"
	"github.com/palisade-net/palisade/pkg/flowlog"
	"github.com/palisade-net/palisade/pkg/policy"
)

// Resources of the policy kinds whose status Palisade owns.
var (
	L7PolicyResource        = v1alpha1.GroupVersion().WithResource("l7policies")
	ClusterL7PolicyResource = v1alpha1.GroupVersion().WithResource("clusterl7policies")
	FlowLogResource         = v1alpha1.GroupVersion().WithResource("flowlogs")
)

// PolicyStatusWriter sets the Accepted condition of every L7Policy and
// ClusterL7Policy from what policy.Compile reports about it, and of every
// FlowLog from what flowlog.Compile reports, while Leading.
// Every agent runs one; leader election makes one of them write.
type PolicyStatusWriter struct {
	dyn   dynamic.Interface
	log   *slog.Logger
	queue workqueue.TypedRateLimitingInterface[policy.ObjectRef]
	now   func() metav1.Time

	leading atomic.Bool

	mu   sync.Mutex
	want map[policy.ObjectRef]wantStatus
}

type wantStatus struct {
	obj  *unstructured.Unstructured
	cond metav1.Condition
}

// NewPolicyStatusWriter returns a writer using dyn.
func NewPolicyStatusWriter(dyn dynamic.Interface, log *slog.Logger) *PolicyStatusWriter {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &PolicyStatusWriter{
		dyn: dyn,
		log: log,
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[policy.ObjectRef](),
			workqueue.TypedRateLimitingQueueConfig[policy.ObjectRef]{Name: "policy-status"}),
		now:  func() metav1.Time { return metav1.NewTime(time.Now().Truncate(time.Second)) },
		want: map[policy.ObjectRef]wantStatus{},
	}
}

// SetLeading switches writing on or off (leader election callbacks).
func (w *PolicyStatusWriter) SetLeading(on bool) {
	w.leading.Store(on)
	if !on {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for ref := range w.want {
		w.queue.Add(ref)
	}
}

// OnSnapshot compiles the snapshot's policies and queues the objects whose
// Accepted condition differs from the wanted one.
func (w *PolicyStatusWriter) OnSnapshot(s *cluster.Snapshot) {
	var objs []*unstructured.Unstructured
	for _, o := range s.Other {
		if isOwned(o) {
			objs = append(objs, o)
		}
	}
	_, problems := policy.Compile(objs)
	flowLogs, flowProblems := flowLogObjects(s.Other)
	now := w.now()
	w.mu.Lock()
	defer w.mu.Unlock()
	seen := map[policy.ObjectRef]bool{}
	for _, o := range append(objs, flowLogs...) {
		var ref policy.ObjectRef
		var cond metav1.Condition
		if flowlog.IsFlowLog(o) {
			ref = policy.ObjectRef{Kind: v1alpha1.KindFlowLog, Name: o.GetName()}
			cond = flowLogCondition(flowProblems[o.GetName()], o.GetGeneration(), now)
		} else {
			ref, _ = policy.RefOf(o)
			cond = policy.AcceptedCondition(ref, problems, o.GetGeneration(), now)
		}
		seen[ref] = true
		if cur := currentAccepted(o); cur != nil && sameCondition(*cur, cond) {
			delete(w.want, ref)
			continue
		}
		w.want[ref] = wantStatus{obj: o, cond: cond}
		if w.leading.Load() {
			w.queue.Add(ref)
		}
	}
	for ref := range w.want {
		if !seen[ref] {
			delete(w.want, ref)
		}
	}
}

// flowLogObjects returns the FlowLogs among objs and the problems of each
// by name.
func flowLogObjects(objs []*unstructured.Unstructured) ([]*unstructured.Unstructured, map[string][]string) {
	var out []*unstructured.Unstructured
	for _, o := range objs {
		if flowlog.IsFlowLog(o) {
			out = append(out, o)
		}
	}
	_, problems := flowlog.Compile(out)
	byName := map[string][]string{}
	for _, p := range problems {
		byName[p.Name] = append(byName[p.Name], p.Message)
	}
	return out, byName
}

// flowLogCondition is a FlowLog's Accepted condition.
func flowLogCondition(problems []string, generation int64, now metav1.Time) metav1.Condition {
	c := metav1.Condition{
		Type: v1alpha1.ConditionAccepted, Status: metav1.ConditionTrue, Reason: v1alpha1.ReasonAccepted,
		Message: "the node proxies record the flows it selects", ObservedGeneration: generation, LastTransitionTime: now,
	}
	if len(problems) > 0 {
		c.Status, c.Reason = metav1.ConditionFalse, v1alpha1.ReasonInvalid
		c.Message = "ignored: " + strings.Join(problems, "; ")
	}
	return c
}

func isOwned(o *unstructured.Unstructured) bool {
	gv, err := schema.ParseGroupVersion(o.GetAPIVersion())
	return err == nil && gv.Group == v1alpha1.Group && (o.GetKind() == v1alpha1.KindL7Policy || o.GetKind() == v1alpha1.KindClusterL7Policy)
}

func currentAccepted(o *unstructured.Unstructured) *metav1.Condition {
	return meta.FindStatusCondition(conditionsOf(o), v1alpha1.ConditionAccepted)
}

// conditionsOf decodes status.conditions of an unstructured object,
// skipping entries that are not conditions.
func conditionsOf(o *unstructured.Unstructured) []metav1.Condition {
	raw, found, err := unstructured.NestedSlice(o.Object, "status", "conditions")
	if err != nil || !found {
		return nil
	}
	var conds []metav1.Condition
	for _, r := range raw {
		m, ok := r.(map[string]any)
		if !ok {
			continue
		}
		var c metav1.Condition
		if runtime.DefaultUnstructuredConverter.FromUnstructured(m, &c) == nil {
			conds = append(conds, c)
		}
	}
	return conds
}

func sameCondition(a, b metav1.Condition) bool {
	return a.Status == b.Status && a.Reason == b.Reason && a.Message == b.Message && a.ObservedGeneration == b.ObservedGeneration
}

// Run writes statuses until ctx ends (only while leading).
func (w *PolicyStatusWriter) Run(ctx context.Context) {
	runQueue(ctx, w.queue, 1, func(ref policy.ObjectRef) error {
		w.mu.Lock()
		ws, ok := w.want[ref]
		w.mu.Unlock()
		if !ok || !w.leading.Load() {
			return nil
		}
		return w.write(ctx, ref, ws)
	}, w.log, "policy status")
}

func (w *PolicyStatusWriter) write(ctx context.Context, ref policy.ObjectRef, ws wantStatus) error {
	var ri dynamic.ResourceInterface
	switch ws.obj.GetKind() {
	case v1alpha1.KindClusterL7Policy:
		ri = w.dyn.Resource(ClusterL7PolicyResource)
	case v1alpha1.KindFlowLog:
		ri = w.dyn.Resource(FlowLogResource)
	default:
		ri = w.dyn.Resource(L7PolicyResource).Namespace(ws.obj.GetNamespace())
	}
	// Start from the latest object so that the write does not conflict
	// with spec changes made since the snapshot.
	cur, err := ri.Get(ctx, ws.obj.GetName(), metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if cur.GetGeneration() != ws.obj.GetGeneration() {
		return nil // the next snapshot brings the new generation's verdict
	}
	conds := conditionsOf(cur)
	meta.SetStatusCondition(&conds, ws.cond)
	out := make([]any, 0, len(conds))
	for _, c := range conds {
		m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&c)
		if err != nil {
			return err
		}
		out = append(out, m)
	}
	if err := unstructured.SetNestedSlice(cur.Object, out, "status", "conditions"); err != nil {
		return err
	}
	if _, err := ri.UpdateStatus(ctx, cur, metav1.UpdateOptions{FieldManager: "palisade-agent"}); err != nil {
		return fmt.Errorf("update status of %s: %w", ref, err)
	}
	w.log.Info("status", "object", ref.String(), "accepted", string(ws.cond.Status), "reason", ws.cond.Reason, "message", ws.cond.Message)
	return nil
}

// LeaderElection runs leader election for the status writer on a Lease
// named name in namespace until ctx ends, switching w on while this process
// leads. identity names this candidate (the node name, for example).
func LeaderElection(ctx context.Context, client kubernetes.Interface, namespace, name, identity string, w *PolicyStatusWriter, log *slog.Logger) error {
	if identity == "" {
		identity, _ = os.Hostname()
	}
	lock, err := resourcelock.New(resourcelock.LeasesResourceLock, namespace, name, client.CoreV1(), client.CoordinationV1(),
		resourcelock.ResourceLockConfig{Identity: identity})
	if err != nil {
		return fmt.Errorf("leader election lock: %w", err)
	}
	le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock:            lock,
		LeaseDuration:   15 * time.Second,
		RenewDeadline:   10 * time.Second,
		RetryPeriod:     2 * time.Second,
		ReleaseOnCancel: true,
		Name:            name,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(context.Context) {
				log.Info("leading: writing policy status", "lease", namespace+"/"+name)
				w.SetLeading(true)
			},
			OnStoppedLeading: func() {
				log.Info("no longer leading: policy status left to the new leader", "lease", namespace+"/"+name)
				w.SetLeading(false)
			},
		},
	})
	if err != nil {
		return fmt.Errorf("leader election: %w", err)
	}
	// Run returns when leadership is lost; stand again until ctx ends.
	for ctx.Err() == nil {
		le.Run(ctx)
	}
	return nil
}
