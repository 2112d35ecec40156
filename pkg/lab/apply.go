package lab

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/palisade-net/palisade/pkg/cluster"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
)

// ApplyFiles reads YAML files or directories and applies them (see Apply).
func (l *Lab) ApplyFiles(ctx context.Context, paths ...string) error {
	objs, err := LoadObjects(paths, nil)
	if err != nil {
		return err
	}
	return l.Apply(ctx, objs)
}

// Apply makes the lab match objects, which describe the whole desired
// cluster (like "kubectl apply --prune"): Namespaces, Services and other
// objects are replaced in the cluster state (so the agents and node proxies
// see, for example, changed namespace labels) and, with Kube, applied to
// the API server (see Config.Kube; objects the lab applied before and
// objects no longer has are deleted there, Namespaces excepted); new pods
// are created, pods
// that are gone are deleted (CNI DEL, teardown), and pods whose spec
// changed are recreated with a new UID. A pod whose labels or annotations
// changed keeps running and is updated in place. New nodes are added as
// their pods need them. Services keep their cluster IPs.
//
// Invalid objects are rejected before anything changes.
func (l *Lab) Apply(ctx context.Context, objects *cluster.Snapshot) error {
	objs, err := normalize(objects)
	if err != nil {
		return fmt.Errorf("lab %s: apply: %w", l.st.Name, err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	st := l.st

	// Which pods go, which are recreated.
	var remove []*podState
	for _, p := range st.Pods {
		want := objs.Pod(p.Namespace, p.Name)
		have := l.objs.Pod(p.Namespace, p.Name)
		// A pod that never became ready (its CNI ADD or a container failed
		// in an earlier apply) is retried from scratch, as a kubelet would.
		if want == nil || have == nil || p.Phase != corev1.PodRunning || !equality.Semantic.DeepEqual(want.Spec, have.Spec) {
			remove = append(remove, p)
		}
	}

	// Dry run on a copy of the state: immutable fields, address space.
	trial, err := cloneState(st)
	if err != nil {
		return err
	}
	for _, p := range remove {
		trial.removePod(trial.pod(p.Namespace, p.Name))
	}
	trial.Services = keepServices(trial.Services, objs)
	if err := trial.allocate(objs); err != nil {
		return fmt.Errorf("lab %s: apply: %w", st.Name, err)
	}

	// Delete what is gone or changed.
	for _, p := range remove {
		l.log.Info("apply: pod removed or changed", "pod", p.Namespace+"/"+p.Name)
		if err := l.removePod(ctx, p); err != nil {
			return err
		}
	}
	st.Services = keepServices(st.Services, objs)

	// Allocate what is new, build new nodes.
	known := map[string]bool{}
	for _, n := range st.Nodes {
		known[n.Name] = true
	}
	if err := st.allocate(objs); err != nil {
		return fmt.Errorf("lab %s: apply: %w", st.Name, err)
	}
	prev := l.objs
	l.objs = objs
	if err := st.save(); err != nil {
		return err
	}
	var added []*nodeState
	for _, n := range st.Nodes {
		if known[n.Name] {
			continue
		}
		added = append(added, n)
		if err := l.createNode(ctx, n); err != nil {
			return err
		}
	}
	newNodes := len(added) > 0
	if newNodes {
		if err := syncRoutes(st.Nodes); err != nil {
			return err
		}
	}
	// Namespaces, Services, policies and pod label changes become visible.
	if err := st.writeClusterState(l.objs); err != nil {
		return err
	}
	if st.kube() {
		if err := l.kubeRegisterNodes(ctx, added); err != nil {
			return err
		}
		if err := l.kubeApplyObjects(ctx, prev, l.objs); err != nil {
			return err
		}
	}
	if err := l.syncServices(ctx); err != nil {
		return err
	}
	if newNodes && !st.NoPalisade {
		for _, n := range st.Nodes {
			if !known[n.Name] {
				if err := l.startPalisade(ctx, n); err != nil {
					return err
				}
			}
		}
	}
	var pods []*podState
	for _, p := range st.Pods {
		if p.Phase == "" {
			pods = append(pods, p)
		}
	}
	if err := l.createPods(ctx, pods); err != nil {
		return err
	}
	return st.save()
}

// keepServices drops the Services that objs no longer has.
func keepServices(svcs []*serviceState, objs *cluster.Snapshot) []*serviceState {
	var out []*serviceState
	for _, s := range svcs {
		for _, svc := range objs.Services {
			if svc.Namespace == s.Namespace && svc.Name == s.Name {
				out = append(out, s)
				break
			}
		}
	}
	return out
}

func cloneState(s *state) (*state, error) {
	data, err := json.Marshal(s)
	if err != nil {
		return nil, fmt.Errorf("copy state: %w", err)
	}
	var out state
	if err := json.Unmarshal(data, &out); err != nil {
		return nil, fmt.Errorf("copy state: %w", err)
	}
	out.StateRoot = s.StateRoot
	return &out, nil
}
