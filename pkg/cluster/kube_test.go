package cluster

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynamicfake "k8s.io/client-go/dynamic/fake"
)

// TestKubeSource runs the informer plumbing against client-go's fake
// dynamic client (the lab end-to-end tests run it against a real API
// server, including policy kinds that are not served).
func TestKubeSource(t *testing.T) {
	toU := func(o runtime.Object, gvk schema.GroupVersionKind) *unstructured.Unstructured {
		return toUnstructured(t, o, gvk)
	}
	ns := toU(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop", Labels: map[string]string{"palisade.dev/mtls": "enabled"}}}, corev1.SchemeGroupVersion.WithKind("Namespace"))
	pod := toU(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "shop", UID: "u1"}, Spec: corev1.PodSpec{NodeName: "n1"}}, corev1.SchemeGroupVersion.WithKind("Pod"))
	svc := toU(&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "shop"}, Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.10"}}, corev1.SchemeGroupVersion.WithKind("Service"))
	l7 := schema.GroupVersionResource{Group: "policy.palisade.dev", Version: "v1alpha1", Resource: "l7policies"}
	policy := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "policy.palisade.dev/v1alpha1", "kind": "L7Policy",
		"metadata": map[string]any{"name": "p1", "namespace": "shop"},
		"spec":     map[string]any{"endpointSelector": map[string]any{}},
	}}
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(),
		map[schema.GroupVersionResource]string{
			gvrNamespaces: "NamespaceList", gvrPods: "PodList", gvrServices: "ServiceList",
			gvrEndpointSlices: "EndpointSliceList", l7: "L7PolicyList",
		}, ns, pod, svc, policy)

	src := &KubeSource{Dynamic: dyn, Resources: []schema.GroupVersionResource{l7}, Debounce: time.Millisecond}
	snaps := make(chan *Snapshot, 100)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, func(s *Snapshot) { snaps <- s }) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	waitSnap := func(what string, ok func(*Snapshot) bool) *Snapshot {
		t.Helper()
		timeout := time.After(10 * time.Second)
		for {
			select {
			case s := <-snaps:
				if ok(s) {
					return s
				}
			case <-timeout:
				t.Fatalf("no snapshot with %s", what)
			}
		}
	}
	first := waitSnap("the initial objects", func(s *Snapshot) bool { return true })
	if first.Namespace("shop") == nil || first.Pod("shop", "web") == nil || len(first.Services) != 1 || len(first.Other) != 1 {
		t.Fatalf("first snapshot incomplete (policies must be synced before it): ns %v pods %d services %d other %d",
			first.Namespace("shop") != nil, len(first.Pods), len(first.Services), len(first.Other))
	}
	if first.Other[0].GetKind() != "L7Policy" {
		t.Fatalf("other: %v", first.Other[0].GetKind())
	}

	// Changes arrive as new snapshots; snapshots are copies.
	first.Pods[0].Labels = map[string]string{"mutated": "by a consumer"}
	pod2 := toU(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "api", Namespace: "shop", UID: "u2"}, Spec: corev1.PodSpec{NodeName: "n2"}}, corev1.SchemeGroupVersion.WithKind("Pod"))
	if _, err := dyn.Resource(gvrPods).Namespace("shop").Create(ctx, pod2, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	s := waitSnap("the new pod", func(s *Snapshot) bool { return s.Pod("shop", "api") != nil })
	if s.Pod("shop", "web").Labels["mutated"] != "" {
		t.Fatal("a consumer's change to a snapshot leaked into the informer cache")
	}
	if err := dyn.Resource(l7).Namespace("shop").Delete(ctx, "p1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitSnap("the policy gone", func(s *Snapshot) bool { return len(s.Other) == 0 })
}

func TestOnlyBookkeeping(t *testing.T) {
	toU := func(p *corev1.Pod) *unstructured.Unstructured {
		return toUnstructured(t, p, corev1.SchemeGroupVersion.WithKind("Pod"))
	}
	base := func() *corev1.Pod {
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "shop", UID: "u1", ResourceVersion: "1",
				Labels: map[string]string{"app": "web"}, Annotations: map[string]string{"team": "a"}},
			Spec:   corev1.PodSpec{NodeName: "n1"},
			Status: corev1.PodStatus{PodIP: "10.0.0.1"},
		}
	}
	for _, tc := range []struct {
		name   string
		change func(p *corev1.Pod)
		want   bool
	}{
		{"resource version only", func(p *corev1.Pod) { p.ResourceVersion = "2" }, true},
		{"enrollment annotation added", func(p *corev1.Pod) { p.ResourceVersion = "2"; p.Annotations[EnrollmentAnnotation] = "enrolled" }, true},
		{"enrollment annotation replacing another", func(p *corev1.Pod) { p.Annotations = map[string]string{EnrollmentAnnotation: "pending: x"} }, false},
		{"other annotation", func(p *corev1.Pod) { p.Annotations["team"] = "b" }, false},
		{"label", func(p *corev1.Pod) { p.Labels["palisade.dev/mtls"] = "disabled" }, false},
		{"pod IP", func(p *corev1.Pod) { p.Status.PodIP = "10.0.0.2" }, false},
		{"deletion", func(p *corev1.Pod) { now := metav1.Now(); p.DeletionTimestamp = &now }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := base()
			tc.change(p)
			if got := onlyBookkeeping(toU(base()), toU(p)); got != tc.want {
				t.Fatalf("onlyBookkeeping = %v, want %v", got, tc.want)
			}
		})
	}
	// Without annotations before, the enrollment annotation alone is
	// bookkeeping too (no empty map left to tell them apart).
	a, b := base(), base()
	a.Annotations, b.Annotations = nil, map[string]string{EnrollmentAnnotation: "enrolled"}
	if !onlyBookkeeping(toU(a), toU(b)) {
		t.Fatal("adding the enrollment annotation to a pod without annotations is not bookkeeping")
	}
	if onlyBookkeeping("x", toU(b)) {
		t.Fatal("a non-object is bookkeeping")
	}
}

func toUnstructured(t *testing.T, o runtime.Object, gvk schema.GroupVersionKind) *unstructured.Unstructured {
	t.Helper()
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(o)
	if err != nil {
		t.Fatal(err)
	}
	u := &unstructured.Unstructured{Object: m}
	u.SetGroupVersionKind(gvk)
	return u
}
