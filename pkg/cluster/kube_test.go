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
	"k8s.io/client-go/kubernetes/fake"
)

// TestKubeSource runs the informer plumbing against client-go's fake
// clients (the lab end-to-end tests run it against a real API server).
func TestKubeSource(t *testing.T) {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop", Labels: map[string]string{"palisade.dev/mtls": "enabled"}}}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "shop", UID: "u1"}, Spec: corev1.PodSpec{NodeName: "n1"}}
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "shop"}, Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.10"}}
	client := fake.NewClientset(ns, pod, svc)
	l7 := schema.GroupVersionResource{Group: "policy.palisade.dev", Version: "v1alpha1", Resource: "l7policies"}
	cnp := schema.GroupVersionResource{Group: "cilium.io", Version: "v2", Resource: "ciliumnetworkpolicies"}
	client.Resources = []*metav1.APIResourceList{{
		GroupVersion: "policy.palisade.dev/v1alpha1",
		APIResources: []metav1.APIResource{{Name: "l7policies", Namespaced: true, Kind: "L7Policy"}},
	}} // cilium.io is not served: its informer must not start
	policy := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "policy.palisade.dev/v1alpha1", "kind": "L7Policy",
		"metadata": map[string]any{"name": "p1", "namespace": "shop"},
		"spec":     map[string]any{"endpointSelector": map[string]any{}},
	}}
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(),
		map[schema.GroupVersionResource]string{l7: "L7PolicyList", cnp: "CiliumNetworkPolicyList"}, policy)

	src := &KubeSource{Client: client, Dynamic: dyn, Resources: []schema.GroupVersionResource{l7, cnp}, Debounce: time.Millisecond}
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
	pod2 := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "api", Namespace: "shop", UID: "u2"}, Spec: corev1.PodSpec{NodeName: "n2"}}
	if _, err := client.CoreV1().Pods("shop").Create(ctx, pod2, metav1.CreateOptions{}); err != nil {
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
