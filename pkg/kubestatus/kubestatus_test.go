package kubestatus

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/palisade-net/palisade/pkg/agent"
	"github.com/palisade-net/palisade/pkg/cluster"
	"github.com/palisade-net/palisade/pkg/policy"
)

func eventually(t *testing.T, what string, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out: %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Unit tests with client-go's fakes; the lab's Kubernetes end-to-end tests
// run the same code against a real API server.
func TestPodAnnotator(t *testing.T) {
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "shop", UID: "u1"}}
	client := fake.NewClientset(pod)
	a := NewPodAnnotator(client, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go a.Run(ctx)

	annotation := func() (string, bool) {
		p, err := client.CoreV1().Pods("shop").Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		v, ok := p.Annotations[agent.EnrollmentAnnotation]
		return v, ok
	}
	a.Update([]agent.PodStatus{{Namespace: "shop", Name: "web", UID: "u1", Status: "enrolled"}})
	eventually(t, "annotation enrolled", func() bool { v, _ := annotation(); return v == "enrolled" })
	a.Update([]agent.PodStatus{{Namespace: "shop", Name: "web", UID: "u1", Status: "failed: no netns", Current: "enrolled"}})
	eventually(t, "annotation failed", func() bool { v, _ := annotation(); return v == "failed: no netns" })
	a.Update([]agent.PodStatus{{Namespace: "shop", Name: "web", UID: "u1", Status: "", Current: "failed: no netns"}})
	eventually(t, "annotation removed", func() bool { _, ok := annotation(); return !ok })
	// A pod that is gone is dropped, not retried forever.
	a.Update([]agent.PodStatus{{Namespace: "shop", Name: "gone", UID: "u9", Status: "enrolled"}})
	eventually(t, "the gone pod forgotten", func() bool {
		a.mu.Lock()
		defer a.mu.Unlock()
		_, ok := a.want[nameOf("shop", "gone")]
		return !ok
	})
}

func TestPolicyStatusWriter(t *testing.T) {
	good := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "policy.palisade.dev/v1alpha1", "kind": "L7Policy",
		"metadata": map[string]any{"name": "good", "namespace": "shop", "generation": int64(1)},
		"spec":     map[string]any{"endpointSelector": map[string]any{}},
	}}
	bad := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "policy.palisade.dev/v1alpha1", "kind": "L7Policy",
		"metadata": map[string]any{"name": "bad", "namespace": "shop", "generation": int64(1)},
		"spec": map[string]any{"endpointSelector": map[string]any{}, "ingress": []any{map[string]any{
			"toPorts": []any{map[string]any{"ports": []any{map[string]any{"port": "80"}},
				"rules": map[string]any{"http": []any{map[string]any{"path": "/a(b"}}}}}}}},
	}}
	gvr := L7PolicyResource
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(),
		map[schema.GroupVersionResource]string{gvr: "L7PolicyList", ClusterL7PolicyResource: "ClusterL7PolicyList"}, good.DeepCopy(), bad.DeepCopy())
	w := NewPolicyStatusWriter(dyn, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go w.Run(ctx)

	accepted := func(name string) *metav1.Condition {
		u, err := dyn.Resource(gvr).Namespace("shop").Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return currentAccepted(u)
	}
	snap := cluster.NewSnapshot()
	snap.Other = []*unstructured.Unstructured{good, bad}
	w.OnSnapshot(snap)
	time.Sleep(100 * time.Millisecond)
	if accepted("good") != nil {
		t.Fatal("a writer that does not lead wrote status")
	}
	w.SetLeading(true)
	eventually(t, "good accepted", func() bool { c := accepted("good"); return c != nil && c.Status == metav1.ConditionTrue })
	eventually(t, "bad refused", func() bool { c := accepted("bad"); return c != nil && c.Status == metav1.ConditionFalse })
	c := accepted("bad")
	if c.Reason != "Invalid" || c.ObservedGeneration != 1 || !contains(c.Message, "spec.ingress[0].toPorts[0].rules.http[0].path") {
		t.Fatalf("bad's condition: %+v", c)
	}
	// Once the status is there, the next snapshot writes nothing.
	u, _ := dyn.Resource(gvr).Namespace("shop").Get(ctx, "good", metav1.GetOptions{})
	snap.Other = []*unstructured.Unstructured{u, bad}
	w.OnSnapshot(snap)
	w.mu.Lock()
	_, pending := w.want[refOf(u)]
	w.mu.Unlock()
	if pending {
		t.Fatal("an up-to-date status is queued again")
	}
	if got := meta.FindStatusCondition([]metav1.Condition{*accepted("good")}, "Accepted"); got == nil {
		t.Fatal("lost the condition")
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }

func nameOf(ns, name string) types.NamespacedName {
	return types.NamespacedName{Namespace: ns, Name: name}
}

func refOf(u *unstructured.Unstructured) policy.ObjectRef {
	r, _ := policy.RefOf(u)
	return r
}
