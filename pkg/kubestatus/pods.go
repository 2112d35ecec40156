// Package kubestatus writes what Palisade learns back to the Kubernetes API:
// each pod's enrollment state as an annotation (by the agent of its node)
// and the Accepted condition of L7Policy and ClusterL7Policy objects (by one
// elected agent). Writes happen off the reconcile path, through rate-limited
// work queues, and are retried until the API server takes them.
package kubestatus

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/workqueue"

	"github.com/palisade-net/palisade/pkg/agent"
)

// PodAnnotator keeps agent.EnrollmentAnnotation on the pods of one node in
// step with the agent's view. Update never blocks; Run does the writes.
type PodAnnotator struct {
	client kubernetes.Interface
	log    *slog.Logger
	queue  workqueue.TypedRateLimitingInterface[types.NamespacedName]

	mu      sync.Mutex
	want    map[types.NamespacedName]agent.PodStatus
	written map[types.NamespacedName]string // last value the API server took
}

// NewPodAnnotator returns an annotator writing through client.
func NewPodAnnotator(client kubernetes.Interface, log *slog.Logger) *PodAnnotator {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &PodAnnotator{
		client: client,
		log:    log,
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[types.NamespacedName](),
			workqueue.TypedRateLimitingQueueConfig[types.NamespacedName]{Name: "pod-enrollment-annotations"}),
		want:    map[types.NamespacedName]agent.PodStatus{},
		written: map[types.NamespacedName]string{},
	}
}

// Update takes the agent's list of out-of-date pods (agent.Config.OnPodStatus).
func (a *PodAnnotator) Update(list []agent.PodStatus) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, ps := range list {
		key := types.NamespacedName{Namespace: ps.Namespace, Name: ps.Name}
		a.want[key] = ps
		if w, ok := a.written[key]; ok && w == ps.Status {
			continue // written already; the cluster view has not caught up
		}
		a.queue.Add(key)
	}
}

// AnnotationWorkers is how many PATCHes are in flight at once: a label
// that enrolls a hundred pods on a node should not wait for a hundred
// round trips in a row.
const AnnotationWorkers = 16

// Run writes annotations until ctx ends.
func (a *PodAnnotator) Run(ctx context.Context) {
	runQueue(ctx, a.queue, AnnotationWorkers, func(key types.NamespacedName) error {
		a.mu.Lock()
		ps, ok := a.want[key]
		w, written := a.written[key]
		a.mu.Unlock()
		if !ok || (written && w == ps.Status) {
			// Gone, or queued again while its write was under way.
			return nil
		}
		return a.write(ctx, ps)
	}, a.log, "the pod's enrollment annotation")
}

func (a *PodAnnotator) write(ctx context.Context, ps agent.PodStatus) error {
	var value any // JSON null removes the annotation in a merge patch
	if ps.Status != "" {
		value = ps.Status
	}
	patch := map[string]any{"metadata": map[string]any{"annotations": map[string]any{agent.EnrollmentAnnotation: value}}}
	if ps.UID != "" {
		// Only the pod we mean: a pod re-created under the same name
		// fails the precondition and is handled by its own update.
		patch["metadata"].(map[string]any)["uid"] = ps.UID
	}
	data, err := json.Marshal(patch)
	if err != nil {
		return err
	}
	_, err = a.client.CoreV1().Pods(ps.Namespace).Patch(ctx, ps.Name, types.MergePatchType, data, metav1.PatchOptions{FieldManager: "palisade-agent"})
	key := types.NamespacedName{Namespace: ps.Namespace, Name: ps.Name}
	switch {
	case apierrors.IsNotFound(err) || apierrors.IsConflict(err) || apierrors.IsInvalid(err):
		// Gone or replaced: nothing to annotate any more.
		a.mu.Lock()
		delete(a.want, key)
		delete(a.written, key)
		a.mu.Unlock()
		return nil
	case err != nil:
		return fmt.Errorf("patch pod %s: %w", key, err)
	}
	a.mu.Lock()
	a.written[key] = ps.Status
	a.mu.Unlock()
	a.log.Debug("pod enrollment annotation", "pod", key.String(), "status", ps.Status)
	return nil
}
