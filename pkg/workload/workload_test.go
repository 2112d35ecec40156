package workload

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
)

func ns(name string, labels map[string]string) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
}

func pod(namespace, name, ip string, labels map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name, UID: types.UID("uid-" + name), Labels: labels},
		Spec:       corev1.PodSpec{NodeName: "n1", ServiceAccountName: "sa-" + name},
		Status:     corev1.PodStatus{PodIP: ip, Phase: corev1.PodRunning},
	}
}

func TestPodEnrolled(t *testing.T) {
	now := metav1.Now()
	tests := []struct {
		name string
		ns   *corev1.Namespace
		pod  func() *corev1.Pod
		want bool
		mode Mode
	}{
		{"labelled namespace", ns("a", map[string]string{LabelMTLS: "enabled"}), func() *corev1.Pod { return pod("a", "p", "10.0.0.1", nil) }, true, Permissive},
		{"cilium label", ns("a", map[string]string{LabelCiliumMTLS: "true"}), func() *corev1.Pod { return pod("a", "p", "10.0.0.1", nil) }, true, Permissive},
		{"strict mode", ns("a", map[string]string{LabelMTLS: "enabled", LabelMode: "strict"}), func() *corev1.Pod { return pod("a", "p", "10.0.0.1", nil) }, true, Strict},
		{"unknown mode is permissive", ns("a", map[string]string{LabelMTLS: "enabled", LabelMode: "bogus"}), func() *corev1.Pod { return pod("a", "p", "10.0.0.1", nil) }, true, Permissive},
		{"plain namespace", ns("a", nil), func() *corev1.Pod { return pod("a", "p", "10.0.0.1", nil) }, false, Permissive},
		{"label with other value", ns("a", map[string]string{LabelMTLS: "yes"}), func() *corev1.Pod { return pod("a", "p", "10.0.0.1", nil) }, false, Permissive},
		{"missing namespace", nil, func() *corev1.Pod { return pod("a", "p", "10.0.0.1", nil) }, false, Permissive},
		{"pod opt-out", ns("a", map[string]string{LabelMTLS: "enabled"}), func() *corev1.Pod { return pod("a", "p", "10.0.0.1", map[string]string{LabelMTLS: "disabled"}) }, false, Permissive},
		{"host network", ns("a", map[string]string{LabelMTLS: "enabled"}), func() *corev1.Pod {
			p := pod("a", "p", "10.0.0.1", nil)
			p.Spec.HostNetwork = true
			return p
		}, false, Permissive},
		{"terminating", ns("a", map[string]string{LabelMTLS: "enabled"}), func() *corev1.Pod {
			p := pod("a", "p", "10.0.0.1", nil)
			p.DeletionTimestamp = &now
			return p
		}, false, Permissive},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := tt.pod()
			if got := PodEnrolled(tt.ns, p); got != tt.want {
				t.Errorf("PodEnrolled = %v, want %v", got, tt.want)
			}
			w := FromPod(tt.ns, p)
			if w.Enrolled != tt.want || w.Mode != tt.mode {
				t.Errorf("FromPod: enrolled=%v mode=%v, want %v %v", w.Enrolled, w.Mode, tt.want, tt.mode)
			}
		})
	}
}

func TestIdentity(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	w := Workload{Namespace: "shop", ServiceAccount: "web"}
	id, err := w.Identity(td)
	if err != nil || id.String() != "spiffe://cluster.local/ns/shop/sa/web" {
		t.Fatalf("Identity = %v, %v", id, err)
	}
	w.ServiceAccount = ""
	if id, _ := w.Identity(td); id.String() != "spiffe://cluster.local/ns/shop/sa/default" {
		t.Fatalf("default service account: %v", id)
	}
	if _, err := IdentityFor(td, "bad/ns", "x"); err == nil {
		t.Fatal("a namespace with a slash must not make an identity")
	}
}

func TestPodIPs(t *testing.T) {
	p := pod("a", "p", "10.0.0.2", nil)
	p.Status.PodIPs = []corev1.PodIP{{IP: "fd00::2"}, {IP: "10.0.0.2"}, {IP: "garbage"}}
	got := PodIPs(p)
	want := []netip.Addr{netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("fd00::2")}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("PodIPs = %v, want %v", got, want)
	}
}

func TestIndex(t *testing.T) {
	enrolled := ns("shop", map[string]string{LabelMTLS: "enabled"})
	web1 := pod("shop", "web1", "10.244.1.5", map[string]string{"app": "web"})
	web1.Spec.Containers = []corev1.Container{{Name: "c", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}}}
	web2 := pod("shop", "web2", "10.244.2.5", map[string]string{"app": "web"})
	web2.Spec.Containers = web1.Spec.Containers
	notReady := pod("shop", "web3", "10.244.2.6", map[string]string{"app": "web"})
	notReady.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionFalse}}
	other := pod("other", "web", "10.244.2.7", map[string]string{"app": "web"})
	hostNet := pod("shop", "hn", "10.88.0.1", nil)
	hostNet.Spec.HostNetwork = true
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web"},
		Spec: corev1.ServiceSpec{
			ClusterIP: "10.96.0.10",
			Selector:  map[string]string{"app": "web"},
			Ports: []corev1.ServicePort{
				{Port: 80, TargetPort: intstr.FromString("http")},
				{Port: 81, TargetPort: intstr.FromInt32(9000)},
				{Port: 82},
			},
		},
	}
	ix := NewIndex([]Pod{{enrolled, web1}, {enrolled, web2}, {enrolled, notReady}, {ns("other", nil), other}, {enrolled, hostNet}}, []*corev1.Service{svc}, nil)

	if w := ix.Workload(netip.MustParseAddr("10.244.2.5")); w == nil || w.Name != "web2" || !w.Enrolled {
		t.Fatalf("Workload(10.244.2.5) = %+v", w)
	}
	if w := ix.Workload(netip.MustParseAddr("::ffff:10.244.2.5")); w == nil || w.Name != "web2" {
		t.Fatalf("v4-mapped lookup = %+v", w)
	}
	if w := ix.Workload(netip.MustParseAddr("10.244.2.7")); w == nil || w.Enrolled {
		t.Fatalf("pod of plain namespace: %+v", w)
	}
	if w := ix.Workload(netip.MustParseAddr("10.88.0.1")); w != nil {
		t.Fatalf("host-network pod must not be indexed: %+v", w)
	}
	tests := []struct {
		addr string
		want []string
	}{
		{"10.96.0.10:80", []string{"10.244.1.5:8080", "10.244.2.5:8080"}},
		{"10.96.0.10:81", []string{"10.244.1.5:9000", "10.244.2.5:9000"}},
		{"10.96.0.10:82", []string{"10.244.1.5:82", "10.244.2.5:82"}},
	}
	for _, tt := range tests {
		sp := ix.Service(netip.MustParseAddrPort(tt.addr))
		if sp == nil {
			t.Fatalf("Service(%s) = nil", tt.addr)
		}
		var got []string
		for _, ep := range sp.Endpoints {
			got = append(got, ep.Addr.String())
		}
		if len(got) != len(tt.want) || got[0] != tt.want[0] || got[1] != tt.want[1] {
			t.Errorf("Service(%s) endpoints = %v, want %v", tt.addr, got, tt.want)
		}
	}
	if ix.Service(netip.MustParseAddrPort("10.96.0.10:83")) != nil {
		t.Error("unknown service port resolved")
	}
}

func TestIndexEndpointSlices(t *testing.T) {
	enrolled := ns("shop", map[string]string{LabelMTLS: "enabled"})
	web1 := pod("shop", "web1", "10.244.1.5", map[string]string{"app": "web"})
	// The selector would pick web1; the slices are authoritative.
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web"},
		Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.10", Selector: map[string]string{"app": "web"},
			Ports: []corev1.ServicePort{{Name: "http", Port: 80}, {Name: "grpc", Port: 81}}},
	}
	external := &corev1.Service{ // no selector: endpoints only from slices
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "db"},
		Spec:       corev1.ServiceSpec{ClusterIP: "10.96.0.11", Ports: []corev1.ServicePort{{Port: 5432}}},
	}
	str := func(s string) *string { return &s }
	i32 := func(v int32) *int32 { return &v }
	yes, no := true, false
	tcp := corev1.ProtocolTCP
	slices := []*discoveryv1.EndpointSlice{
		{
			ObjectMeta:  metav1.ObjectMeta{Namespace: "shop", Name: "web-a", Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports:       []discoveryv1.EndpointPort{{Name: str("http"), Port: i32(8080), Protocol: &tcp}},
			Endpoints: []discoveryv1.Endpoint{
				{Addresses: []string{"10.244.1.5"}, Conditions: discoveryv1.EndpointConditions{Ready: &yes}},
				{Addresses: []string{"10.244.9.9"}, Conditions: discoveryv1.EndpointConditions{Ready: &no}},
				{Addresses: []string{"192.0.2.10"}}, // ready unknown counts as ready
			},
		},
		{
			ObjectMeta:  metav1.ObjectMeta{Namespace: "shop", Name: "db-1", Labels: map[string]string{discoveryv1.LabelServiceName: "db"}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports:       []discoveryv1.EndpointPort{{Name: str(""), Port: i32(5432)}},
			Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"192.0.2.20"}}},
		},
		{ // another namespace's service of the same name
			ObjectMeta:  metav1.ObjectMeta{Namespace: "other", Name: "web-x", Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports:       []discoveryv1.EndpointPort{{Name: str("http"), Port: i32(1)}},
			Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.9.9.9"}}},
		},
	}
	ix := NewIndex([]Pod{{enrolled, web1}}, []*corev1.Service{svc, external}, slices)
	for _, tt := range []struct {
		addr string
		want []string
		pods []string
	}{
		{"10.96.0.10:80", []string{"10.244.1.5:8080", "192.0.2.10:8080"}, []string{"web1", ""}},
		{"10.96.0.10:81", nil, nil}, // no slice port named grpc
		{"10.96.0.11:5432", []string{"192.0.2.20:5432"}, []string{""}},
	} {
		sp := ix.Service(netip.MustParseAddrPort(tt.addr))
		if sp == nil {
			t.Fatalf("Service(%s) = nil", tt.addr)
		}
		var got, pods []string
		for _, ep := range sp.Endpoints {
			got = append(got, ep.Addr.String())
			name := ""
			if ep.Workload != nil {
				name = ep.Workload.Name
			}
			pods = append(pods, name)
		}
		if fmt.Sprint(got) != fmt.Sprint(tt.want) || fmt.Sprint(pods) != fmt.Sprint(tt.pods) {
			t.Errorf("Service(%s) = %v (pods %v), want %v (pods %v)", tt.addr, got, pods, tt.want, tt.pods)
		}
	}
}
