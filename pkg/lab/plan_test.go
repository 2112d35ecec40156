package lab

import (
	"net/netip"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

const planYAML = `
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {palisade.dev/mtls: enabled}}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: shop, labels: {app: server}}
spec:
  nodeName: node2
  serviceAccountName: server
  containers: [{name: c, command: ["$(LAB_BIN)", "serve-http"], ports: [{name: http, containerPort: 8080}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: shop, uid: 11111111-2222-4333-8444-555555555555}
spec:
  nodeName: node1
  containers: [{name: c, command: [sleep, infinity]}]
---
apiVersion: v1
kind: Pod
metadata: {name: visitor, namespace: plain}
spec:
  nodeName: node1
  containers: [{name: c, command: [sleep, infinity]}]
---
apiVersion: v1
kind: Pod
metadata: {name: x, namespace: node}
spec:
  nodeName: a
  containers: [{name: c}]
---
apiVersion: v1
kind: Service
metadata: {name: server, namespace: shop}
spec:
  selector: {app: server}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: fixed, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  ports: [{port: 53, protocol: UDP}]
---
apiVersion: v1
kind: Service
metadata: {name: headless, namespace: shop}
spec:
  clusterIP: None
  ports: [{port: 1}]
---
apiVersion: policy.palisade.dev/v1alpha1
kind: L7Policy
metadata: {name: p, namespace: shop}
spec: {}
`

func TestPlanAssignsNamesAndAddresses(t *testing.T) {
	objs, err := Decode(planYAML)
	if err != nil {
		t.Fatal(err)
	}
	topo, err := Plan("demo", objs)
	if err != nil {
		t.Fatal(err)
	}
	if topo.Underlay != "demo-underlay" || topo.Bridge != UnderlayBridge {
		t.Errorf("underlay = %s/%s", topo.Underlay, topo.Bridge)
	}
	// Nodes in name order: a, node1, node2.
	wantNodes := []struct {
		name, netns, ip, cidr, gw, port string
	}{
		{"a", "demo-node-a", "10.88.0.11", "10.244.1.0/24", "10.244.1.1", "veth-n1"},
		{"node1", "demo-node-node1", "10.88.0.12", "10.244.2.0/24", "10.244.2.1", "veth-n2"},
		{"node2", "demo-node-node2", "10.88.0.13", "10.244.3.0/24", "10.244.3.1", "veth-n3"},
	}
	if len(topo.Nodes) != len(wantNodes) {
		t.Fatalf("nodes = %+v", topo.Nodes)
	}
	for i, w := range wantNodes {
		n := topo.Nodes[i]
		if n.Name != w.name || n.Netns != w.netns || n.UnderlayIP.String() != w.ip || n.PodCIDR.String() != w.cidr ||
			n.Gateway.String() != w.gw || n.UnderlayPort != w.port || n.Index != i+1 || n.Bridge != NodeBridge || n.Uplink != NodeUplink {
			t.Errorf("node %d = %+v, want %+v", i, n, w)
		}
	}
	// Pods in namespace/name order, IPs from .2 per node.
	wantPods := []struct {
		key, node, ip, netns, veth string
	}{
		{"node/x", "a", "10.244.1.2", "demo-node-x", "veth-p1"},
		{"plain/visitor", "node1", "10.244.2.2", "demo-plain-visitor", "veth-p2"},
		{"shop/client", "node1", "10.244.2.3", "demo-shop-client", "veth-p3"},
		{"shop/server", "node2", "10.244.3.2", "demo-shop-server", "veth-p4"},
	}
	if len(topo.Pods) != len(wantPods) {
		t.Fatalf("pods = %+v", topo.Pods)
	}
	for i, w := range wantPods {
		p := topo.Pods[i]
		if p.Namespace+"/"+p.Name != w.key || p.Node != w.node || p.IP.String() != w.ip || p.Netns != w.netns ||
			p.HostVeth != w.veth || p.Interface != PodInterface || len(p.UID) != 36 {
			t.Errorf("pod %d = %+v, want %+v", i, p, w)
		}
		if len(p.HostVeth) > 15 {
			t.Errorf("interface name %q longer than 15", p.HostVeth)
		}
	}
	if topo.Pods[2].UID != "11111111-2222-4333-8444-555555555555" {
		t.Errorf("given uid not kept: %s", topo.Pods[2].UID)
	}
	if topo.Pods[0].UID == topo.Pods[1].UID {
		t.Error("uids not unique")
	}
	// Services: the explicit IP is kept and never handed out again.
	ips := map[string]string{}
	for _, s := range topo.Services {
		ips[s.Namespace+"/"+s.Name] = displayIP(s.ClusterIP)
	}
	if ips["shop/fixed"] != "10.96.0.10" || ips["shop/server"] != "10.96.0.11" || ips["shop/headless"] != "None" {
		t.Errorf("cluster IPs = %v", ips)
	}
}

func TestPlanNetnsNamesNeverCollide(t *testing.T) {
	// Pod "node/node1" would be "l-node-node1", the name of node node1's netns;
	// pods "a-b/c" and "a/b-c" would both be "l-a-b-c".
	objs, err := Decode(`
apiVersion: v1
kind: Pod
metadata: {name: node1, namespace: node}
spec: {nodeName: node1, containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: a-b}
spec: {nodeName: node1, containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b-c, namespace: a}
spec: {nodeName: node1, containers: [{name: c}]}
`)
	if err != nil {
		t.Fatal(err)
	}
	topo, err := Plan("l", objs)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{topo.Underlay: true}
	for _, n := range topo.Nodes {
		seen[n.Netns] = true
	}
	for _, p := range topo.Pods {
		if seen[p.Netns] {
			t.Errorf("netns %s used twice", p.Netns)
		}
		seen[p.Netns] = true
	}
}

func TestPlanRejectsBadInput(t *testing.T) {
	for _, tc := range []struct{ name, yaml, want string }{
		{"no node", `
apiVersion: v1
kind: Pod
metadata: {name: p, namespace: ns}
spec: {containers: [{name: c}]}`, "pod ns/p: spec.nodeName is empty"},
		{"host network", `
apiVersion: v1
kind: Pod
metadata: {name: p}
spec: {nodeName: nd, hostNetwork: true, containers: [{name: c}]}`, "hostNetwork is not supported"},
		{"duplicate", `
apiVersion: v1
kind: Pod
metadata: {name: p}
spec: {nodeName: nd, containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata: {name: p}
spec: {nodeName: nd, containers: [{name: c}]}`, "default/p: defined more than once"},
		{"bad cluster IP", `
apiVersion: v1
kind: Service
metadata: {name: s}
spec: {clusterIP: banana, ports: [{port: 1}]}`, `spec.clusterIP "banana"`},
		{"cluster IP clash", `
apiVersion: v1
kind: Service
metadata: {name: s1}
spec: {clusterIP: 10.96.1.1, ports: [{port: 1}]}
---
apiVersion: v1
kind: Service
metadata: {name: s2}
spec: {clusterIP: 10.96.1.1, ports: [{port: 1}]}`, "already used by"},
		{"secret env", `
apiVersion: v1
kind: Pod
metadata: {name: p}
spec:
  nodeName: nd
  containers: [{name: c, env: [{name: X, valueFrom: {secretKeyRef: {name: s, key: k}}}]}]`, "only valueFrom.fieldRef"},
		{"bad name", "", "lab name"},
		{"node name escapes", `
apiVersion: v1
kind: Pod
metadata: {name: p}
spec: {nodeName: ../../etc, containers: [{name: c}]}`, `invalid spec.nodeName "../../etc"`},
		{"service name", `
apiVersion: v1
kind: Service
metadata: {name: 1bad}
spec: {ports: [{port: 1}]}`, "service default/1bad: invalid name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			objs, err := Decode(tc.yaml)
			if err != nil {
				t.Fatal(err)
			}
			name := "lab"
			if tc.name == "bad name" {
				name = "Bad_Name"
			}
			_, err = Plan(name, objs)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestPlanAddsUndeclaredNamespaces(t *testing.T) {
	objs, err := Decode(`
apiVersion: v1
kind: Pod
metadata: {name: p, namespace: ghost}
spec: {nodeName: nd, containers: [{name: c}]}`)
	if err != nil {
		t.Fatal(err)
	}
	norm, err := normalize(objs)
	if err != nil {
		t.Fatal(err)
	}
	if norm.Namespace("ghost") == nil {
		t.Fatal("namespace ghost not added")
	}
	if len(objs.Namespaces) != 0 {
		t.Fatal("input modified")
	}
}

func TestAllocationAfterDeletesMovesOn(t *testing.T) {
	s := &state{Name: "l", Underlay: "l-underlay"}
	n, _, err := s.ensureNode("nd")
	if err != nil {
		t.Fatal(err)
	}
	pod := func(name string) *corev1.Pod {
		p := &corev1.Pod{}
		p.Namespace, p.Name, p.Spec.NodeName = "ns", name, "nd"
		return p
	}
	a, _ := s.addPod(pod("a"))
	b, _ := s.addPod(pod("b"))
	s.removePod(a)
	c, err := s.addPod(pod("c"))
	if err != nil {
		t.Fatal(err)
	}
	if a.IP.String() != "10.244.1.2" || b.IP.String() != "10.244.1.3" || c.IP.String() != "10.244.1.4" {
		t.Errorf("ips a=%s b=%s c=%s", a.IP, b.IP, c.IP)
	}
	if c.HostVeth != "veth-p3" {
		t.Errorf("veth = %s", c.HostVeth)
	}
	// Exhaust the node: the freed .2 is reused only after wrapping.
	for i := 0; i < MaxPodsPerNode-2; i++ {
		if _, err := s.addPod(pod("x" + string(rune('a'+i%26)) + string(rune('a'+i/26)))); err != nil {
			t.Fatalf("pod %d: %v", i, err)
		}
	}
	if _, err := s.addPod(pod("full")); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("err = %v", err)
	}
	_ = n
}

func TestLongNetnsNamesAreShortened(t *testing.T) {
	long := strings.Repeat("a", 63)
	pod := &corev1.Pod{}
	pod.Namespace, pod.Name, pod.Spec.NodeName = long, strings.Repeat("b", 250), "nd"
	pod2 := pod.DeepCopy()
	pod2.Name = strings.Repeat("b", 249) + "c"
	s := &state{Name: "l", Underlay: "l-underlay"}
	if _, _, err := s.ensureNode("nd"); err != nil {
		t.Fatal(err)
	}
	a, err := s.addPod(pod)
	if err != nil {
		t.Fatal(err)
	}
	b, err := s.addPod(pod2)
	if err != nil {
		t.Fatal(err)
	}
	if len(a.Netns) > maxNetnsName || len(b.Netns) > maxNetnsName || a.Netns == b.Netns || !strings.HasPrefix(a.Netns, "l-aaa") {
		t.Errorf("netns names %q (%d), %q (%d)", a.Netns, len(a.Netns), b.Netns, len(b.Netns))
	}
}

func TestExpand(t *testing.T) {
	vars := map[string]string{"LAB_BIN": "/bin/lab", "A": "x"}
	lookup := func(k string) (string, bool) { v, ok := vars[k]; return v, ok }
	for in, want := range map[string]string{
		"$(LAB_BIN)":       "/bin/lab",
		"pre-$(A)-post":    "pre-x-post",
		"$(UNKNOWN)":       "$(UNKNOWN)",
		"$$(A)":            "$(A)",
		"$$":               "$",
		"a$b":              "a$b",
		"$(A":              "$(A",
		"$(A)$(A)":         "xx",
		"cost: 5$":         "cost: 5$",
		"$(LAB_BIN) serve": "/bin/lab serve",
	} {
		if got := expand(in, lookup); got != want {
			t.Errorf("expand(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestHostsFileOwnNamespaceFirst(t *testing.T) {
	p := &podState{Namespace: "b", Name: "me", IP: netip.MustParseAddr("10.244.1.2")}
	svcs := []ServiceInfo{
		{Namespace: "a", Name: "web", ClusterIP: netip.MustParseAddr("10.96.0.10")},
		{Namespace: "b", Name: "web", ClusterIP: netip.MustParseAddr("10.96.0.11")},
		{Namespace: "b", Name: "none"},
	}
	got := string(hostsFile(p, svcs))
	for _, want := range []string{
		"127.0.0.1\tlocalhost\n",
		"10.244.1.2\tme\n",
		"10.96.0.11\tweb web.b web.b.svc web.b.svc.cluster.local\n",
		"10.96.0.10\tweb web.a web.a.svc web.a.svc.cluster.local\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("hosts file lacks %q:\n%s", want, got)
		}
	}
	if strings.Index(got, "web.b ") > strings.Index(got, "web.a ") {
		t.Errorf("own namespace not first:\n%s", got)
	}
	if strings.Contains(got, "none") {
		t.Errorf("headless service listed:\n%s", got)
	}
}

func TestProxyRules(t *testing.T) {
	svc := ServiceInfo{Namespace: "shop", Name: "web", ClusterIP: netip.MustParseAddr("10.96.0.10"), Ports: []ServicePort{{
		Name: "http", Protocol: "TCP", Port: 80, TargetPort: "8080",
		Endpoints: []netip.AddrPort{netip.MustParseAddrPort("10.244.1.2:8080"), netip.MustParseAddrPort("10.244.1.3:8080"), netip.MustParseAddrPort("10.244.2.2:8080")},
	}}}
	empty := ServiceInfo{Namespace: "shop", Name: "empty", ClusterIP: netip.MustParseAddr("10.96.0.11"), Ports: []ServicePort{{Protocol: "UDP", Port: 53}}}
	rules := proxyRules([]ServiceInfo{svc, empty}, []string{"PLAB-SVC-OLDOLDOLDOLDOLDO"})
	for _, want := range []string{
		"-d 10.96.0.10/32 -p tcp -m tcp --dport 80",
		"--probability 0.3333333333",
		"--probability 0.5000000000",
		"-j DNAT --to-destination 10.244.2.2:8080",
		"-s 10.244.1.2/32 -j MARK --set-xmark 0x4000/0x4000",
		":PLAB-SVC-OLDOLDOLDOLDOLDO - [0:0]\n",
		"-X PLAB-SVC-OLDOLDOLDOLDOLDO\n",
		"-m mark --mark 0x4000/0x4000 -j MASQUERADE",
	} {
		if !strings.Contains(rules, want) {
			t.Errorf("rules lack %q:\n%s", want, rules)
		}
	}
	if strings.Contains(rules, "10.96.0.11") {
		t.Errorf("service without endpoints has rules:\n%s", rules)
	}
	if strings.Count(rules, "-j DNAT") != 3 || strings.Count(rules, "statistic") != 2 {
		t.Errorf("want 3 DNATs, 2 of them random:\n%s", rules)
	}
	for _, line := range strings.Split(rules, "\n") {
		if strings.HasPrefix(line, ":") {
			if name := strings.Fields(line[1:])[0]; len(name) > 28 {
				t.Errorf("chain name %q longer than 28", name)
			}
		}
	}
}
