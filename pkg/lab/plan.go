package lab

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"

	"github.com/palisade-net/palisade/pkg/cluster"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/validation"
)

// Interface names. Every name is at most 15 characters (IFNAMSIZ-1).
const (
	// UnderlayBridge is the bridge in the underlay netns that joins the nodes.
	UnderlayBridge = "br-underlay"
	// NodeUplink is the node's interface on the underlay, in the node netns.
	NodeUplink = "eth0"
	// NodeBridge is the bridge in each node netns that the pods hang off; it
	// carries the pod CIDR's gateway address.
	NodeBridge = "br-pods"
	// PodInterface is the pod's interface, in the pod netns.
	PodInterface = "eth0"
)

// Address plan limits.
const (
	// MaxNodes is the number of nodes the 10.88.0.0/24 underlay can hold
	// (node i gets 10.88.0.(10+i)).
	MaxNodes = 244
	// MaxPodsPerNode is the number of pod IPs in a node's /24 (.2 to .254).
	MaxPodsPerNode = 253
	// MaxNameLen limits lab names so that netns names stay readable.
	MaxNameLen = 32
)

// ValidateName checks a lab name: a DNS label of at most MaxNameLen
// characters. The name prefixes every netns of the lab.
func ValidateName(name string) error {
	if len(name) > MaxNameLen || len(validation.IsDNS1123Label(name)) > 0 {
		return fmt.Errorf("lab name %q: want lower-case letters, digits and '-', at most %d characters, starting and ending alphanumeric", name, MaxNameLen)
	}
	return nil
}

// maxNetnsName keeps netns names (also directory names under /etc/netns)
// well below NAME_MAX.
const maxNetnsName = 200

// shortenNetns truncates a long netns name, keeping it unique with a hash.
func shortenNetns(name string) string {
	if len(name) <= maxNetnsName {
		return name
	}
	sum := sha256.Sum256([]byte(name))
	return name[:maxNetnsName-9] + "-" + hex.EncodeToString(sum[:4])
}

// underlayIP returns node i's underlay address, 10.88.0.(10+i).
func underlayIP(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 88, 0, byte(10 + i)}) }

// podCIDR returns node i's pod CIDR, 10.244.i.0/24.
func podCIDR(i int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(i), 0}), 24)
}

// gatewayIP returns node i's pod gateway, 10.244.i.1.
func gatewayIP(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 244, byte(i), 1}) }

// serviceCIDR is where cluster IPs come from.
func serviceCIDR() netip.Prefix { return netip.MustParsePrefix("10.96.0.0/16") }

// firstServiceIP is the first cluster IP handed out (10.96.0.1 is left for
// the "kubernetes" Service by convention).
func firstServiceIP() netip.Addr { return netip.AddrFrom4([4]byte{10, 96, 0, 10}) }

// sanitize turns a Kubernetes name into something safe inside a netns name
// and a file name.
func sanitize(s string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(s) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '-', r == '.', r == '_':
			b.WriteRune(r)
		default:
			b.WriteByte('-')
		}
	}
	out := strings.Trim(b.String(), "-.")
	if out == "" {
		out = "x"
	}
	return out
}

// uniqueNetns returns base, or base-2, base-3, ... if the lab already uses it.
func (s *state) uniqueNetns(base string) string {
	base = shortenNetns(base)
	used := map[string]bool{s.Underlay: true}
	for _, n := range s.Netns {
		used[n] = true
	}
	for _, n := range s.Nodes {
		used[n.Netns] = true
	}
	for _, p := range s.Pods {
		used[p.Netns] = true
	}
	name := base
	for i := 2; used[name]; i++ {
		name = fmt.Sprintf("%s-%d", base, i)
	}
	return name
}

// ensureNode returns the named node, allocating an index, addresses and a
// netns name when it is new.
func (s *state) ensureNode(name string) (*nodeState, bool, error) {
	if n := s.node(name); n != nil {
		return n, false, nil
	}
	used := map[int]bool{}
	for _, n := range s.Nodes {
		used[n.Index] = true
	}
	idx := 1
	for used[idx] {
		idx++
	}
	if idx > MaxNodes {
		return nil, false, fmt.Errorf("node %q: the lab holds at most %d nodes", name, MaxNodes)
	}
	n := &nodeState{
		Name:         name,
		Index:        idx,
		Netns:        s.uniqueNetns(s.Name + "-node-" + sanitize(name)),
		UnderlayIP:   underlayIP(idx),
		PodCIDR:      podCIDR(idx),
		Gateway:      gatewayIP(idx),
		UnderlayPort: fmt.Sprintf("veth-n%d", idx),
		NextHost:     2,
	}
	s.Nodes = append(s.Nodes, n)
	return n, true, nil
}

// allocPodIP hands out the next free address of the node's pod CIDR. It
// moves on round robin rather than reusing the lowest free address, so that a
// recreated pod does not inherit a deleted pod's IP (and its conntrack
// entries) right away.
func (s *state) allocPodIP(n *nodeState) (netip.Addr, error) {
	used := map[netip.Addr]bool{}
	for _, p := range s.Pods {
		used[p.IP] = true
	}
	base := n.PodCIDR.Addr().As4()
	for i := 0; i < MaxPodsPerNode; i++ {
		host := n.NextHost
		if host < 2 || host > 254 {
			host = 2
		}
		n.NextHost = host + 1
		b := base
		b[3] = byte(host)
		a := netip.AddrFrom4(b)
		if !used[a] {
			return a, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("node %q: all %d pod addresses of %s are in use", n.Name, MaxPodsPerNode, n.PodCIDR)
}

// addPod allocates a pod's netns name, interface names, IP and UID.
func (s *state) addPod(pod *corev1.Pod) (*podState, error) {
	if p := s.pod(pod.Namespace, pod.Name); p != nil {
		return nil, fmt.Errorf("pod %s/%s exists already", pod.Namespace, pod.Name)
	}
	n := s.node(pod.Spec.NodeName)
	if n == nil {
		return nil, fmt.Errorf("pod %s/%s: node %q unknown", pod.Namespace, pod.Name, pod.Spec.NodeName)
	}
	ip, err := s.allocPodIP(n)
	if err != nil {
		return nil, fmt.Errorf("pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	uid := string(pod.UID)
	if uid == "" {
		if uid, err = newUID(); err != nil {
			return nil, err
		}
	}
	s.NextPodIndex++
	p := &podState{
		Namespace: pod.Namespace,
		Name:      pod.Name,
		UID:       uid,
		Node:      n.Name,
		Netns:     s.uniqueNetns(s.Name + "-" + sanitize(pod.Namespace) + "-" + sanitize(pod.Name)),
		IP:        ip,
		Index:     s.NextPodIndex,
		HostVeth:  fmt.Sprintf("veth-p%d", s.NextPodIndex),
	}
	s.Pods = append(s.Pods, p)
	return p, nil
}

// ensureService returns the Service's state, keeping an existing cluster IP,
// else honouring spec.clusterIP, else allocating one from 10.96.0.0/16.
func (s *state) ensureService(svc *corev1.Service) (*serviceState, error) {
	want, headless, err := requestedClusterIP(svc)
	if err != nil {
		return nil, err
	}
	if cur := s.service(svc.Namespace, svc.Name); cur != nil {
		if headless && cur.ClusterIP.IsValid() || !headless && !cur.ClusterIP.IsValid() ||
			want.IsValid() && want != cur.ClusterIP {
			return nil, fmt.Errorf("service %s/%s: spec.clusterIP is immutable (is %s); delete the Service first", svc.Namespace, svc.Name, displayIP(cur.ClusterIP))
		}
		return cur, nil
	}
	used := map[netip.Addr]string{}
	for _, o := range s.Services {
		if o.ClusterIP.IsValid() {
			used[o.ClusterIP] = o.Namespace + "/" + o.Name
		}
	}
	ss := &serviceState{Namespace: svc.Namespace, Name: svc.Name}
	switch {
	case headless:
	case want.IsValid():
		if other, ok := used[want]; ok {
			return nil, fmt.Errorf("service %s/%s: clusterIP %s is already used by %s", svc.Namespace, svc.Name, want, other)
		}
		ss.ClusterIP = want
	default:
		for a := firstServiceIP(); serviceCIDR().Contains(a); a = a.Next() {
			if _, taken := used[a]; !taken && a.As4()[3] != 0 && a.As4()[3] != 255 {
				ss.ClusterIP = a
				break
			}
		}
		if !ss.ClusterIP.IsValid() {
			return nil, fmt.Errorf("service %s/%s: no free cluster IP in %s", svc.Namespace, svc.Name, serviceCIDR())
		}
	}
	s.Services = append(s.Services, ss)
	return ss, nil
}

func displayIP(a netip.Addr) string {
	if !a.IsValid() {
		return "None"
	}
	return a.String()
}

// requestedClusterIP parses spec.clusterIP: ("", false) when unset,
// headless for "None".
func requestedClusterIP(svc *corev1.Service) (netip.Addr, bool, error) {
	switch svc.Spec.ClusterIP {
	case "":
		return netip.Addr{}, false, nil
	case corev1.ClusterIPNone:
		return netip.Addr{}, true, nil
	}
	a, err := netip.ParseAddr(svc.Spec.ClusterIP)
	if err != nil || !a.Is4() {
		return netip.Addr{}, false, fmt.Errorf("service %s/%s: spec.clusterIP %q is not an IPv4 address", svc.Namespace, svc.Name, svc.Spec.ClusterIP)
	}
	return a, false, nil
}

// newUID returns a random (version 4) UUID, as the API server assigns.
func newUID() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("uid: %w", err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16]), nil
}

// normalize validates the objects the lab is given and returns a deep copy
// with defaults applied: a Namespace object for every namespace that pods or
// Services use without declaring it, and objects sorted by namespace and
// name. Every problem is reported, not just the first.
func normalize(in *cluster.Snapshot) (*cluster.Snapshot, error) {
	out := cluster.NewSnapshot()
	if in == nil {
		return out, nil
	}
	var errs []error
	for name, ns := range in.Namespaces {
		if verrs := validation.IsDNS1123Label(name); len(verrs) > 0 {
			errs = append(errs, fmt.Errorf("namespace %q: invalid name: %s", name, strings.Join(verrs, "; ")))
			continue
		}
		out.Namespaces[name] = ns.DeepCopy()
	}
	seenPod := map[string]bool{}
	for _, p := range in.Pods {
		p = p.DeepCopy()
		key := p.Namespace + "/" + p.Name
		if seenPod[key] {
			errs = append(errs, fmt.Errorf("pod %s: defined more than once", key))
			continue
		}
		seenPod[key] = true
		if err := validatePod(p); err != nil {
			errs = append(errs, err)
			continue
		}
		out.Pods = append(out.Pods, p)
	}
	seenSvc := map[string]bool{}
	for _, svc := range in.Services {
		svc = svc.DeepCopy()
		key := svc.Namespace + "/" + svc.Name
		if seenSvc[key] {
			errs = append(errs, fmt.Errorf("service %s: defined more than once", key))
			continue
		}
		seenSvc[key] = true
		if verrs := append(validation.IsDNS1123Label(svc.Namespace), validation.IsDNS1035Label(svc.Name)...); len(verrs) > 0 {
			errs = append(errs, fmt.Errorf("service %s: invalid name: %s", key, strings.Join(verrs, "; ")))
			continue
		}
		if _, _, err := requestedClusterIP(svc); err != nil {
			errs = append(errs, err)
			continue
		}
		if t := svc.Spec.Type; t != "" && t != corev1.ServiceTypeClusterIP {
			errs = append(errs, fmt.Errorf("service %s: type %s is not supported by the lab (ClusterIP only)", key, t))
			continue
		}
		out.Services = append(out.Services, svc)
	}
	for _, u := range in.Other {
		out.Other = append(out.Other, &unstructured.Unstructured{Object: u.DeepCopy().Object})
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	addNS := func(name string) {
		if _, ok := out.Namespaces[name]; !ok {
			ns := &corev1.Namespace{}
			ns.APIVersion, ns.Kind, ns.Name = "v1", "Namespace", name
			out.Namespaces[name] = ns
		}
	}
	for _, p := range out.Pods {
		addNS(p.Namespace)
	}
	for _, svc := range out.Services {
		addNS(svc.Namespace)
	}
	out.Sort()
	return out, nil
}

// validatePod checks what the lab needs from a pod.
func validatePod(p *corev1.Pod) error {
	key := p.Namespace + "/" + p.Name
	if errs := validation.IsDNS1123Label(p.Namespace); len(errs) > 0 {
		return fmt.Errorf("pod %s: invalid namespace %q: %s", key, p.Namespace, strings.Join(errs, "; "))
	}
	if errs := validation.IsDNS1123Subdomain(p.Name); len(errs) > 0 {
		return fmt.Errorf("pod %s: invalid name %q: %s", key, p.Name, strings.Join(errs, "; "))
	}
	if p.Spec.NodeName == "" {
		return fmt.Errorf("pod %s: spec.nodeName is empty; the lab does not schedule, so every pod must name its node (nodes are the distinct spec.nodeName values)", key)
	}
	if errs := validation.IsDNS1123Subdomain(p.Spec.NodeName); len(errs) > 0 {
		return fmt.Errorf("pod %s: invalid spec.nodeName %q: %s", key, p.Spec.NodeName, strings.Join(errs, "; "))
	}
	if p.Spec.HostNetwork {
		return fmt.Errorf("pod %s: spec.hostNetwork is not supported by the lab", key)
	}
	if len(p.Spec.Containers) == 0 {
		return fmt.Errorf("pod %s: spec.containers is empty", key)
	}
	var errs []error
	check := func(kind string, cs []corev1.Container) {
		for _, c := range cs {
			for _, e := range c.Env {
				if e.ValueFrom == nil {
					continue
				}
				if e.ValueFrom.FieldRef == nil {
					errs = append(errs, fmt.Errorf("pod %s: %s %q: env %s: only valueFrom.fieldRef is supported by the lab", key, kind, c.Name, e.Name))
					continue
				}
				if _, err := fieldRefValue(p, nil, e.ValueFrom.FieldRef.FieldPath); err != nil {
					errs = append(errs, fmt.Errorf("pod %s: %s %q: env %s: %w", key, kind, c.Name, e.Name, err))
				}
			}
		}
	}
	check("initContainer", p.Spec.InitContainers)
	check("container", p.Spec.Containers)
	return errors.Join(errs...)
}

// fieldRefValue resolves the downward API fields the lab supports. ps may be
// nil while validating.
func fieldRefValue(p *corev1.Pod, ps *podState, path string) (string, error) {
	switch path {
	case "metadata.name":
		return p.Name, nil
	case "metadata.namespace":
		return p.Namespace, nil
	case "spec.nodeName":
		return p.Spec.NodeName, nil
	case "spec.serviceAccountName":
		return p.Spec.ServiceAccountName, nil
	case "metadata.uid":
		if ps != nil {
			return ps.UID, nil
		}
		return string(p.UID), nil
	case "status.podIP", "status.podIPs":
		if ps != nil {
			return ps.IP.String(), nil
		}
		return "", nil
	}
	if strings.HasPrefix(path, "metadata.labels['") && strings.HasSuffix(path, "']") {
		return p.Labels[strings.TrimSuffix(strings.TrimPrefix(path, "metadata.labels['"), "']")], nil
	}
	if strings.HasPrefix(path, "metadata.annotations['") && strings.HasSuffix(path, "']") {
		return p.Annotations[strings.TrimSuffix(strings.TrimPrefix(path, "metadata.annotations['"), "']")], nil
	}
	return "", fmt.Errorf("fieldRef %q is not supported by the lab", path)
}

// Topology is the lab's plan for a set of objects: which netns, interfaces
// and addresses every node, pod and Service gets. Plan computes it without
// touching the system; a running lab reports the same shape in Status.
type Topology struct {
	// Name is the lab's name, the prefix of all its netns.
	Name string `json:"name"`
	// Underlay is the netns holding Bridge, which joins the nodes.
	Underlay string `json:"underlay"`
	Bridge   string `json:"bridge"`
	// Nodes are in index order, Pods and Services in namespace/name order.
	Nodes    []NodeInfo    `json:"nodes"`
	Pods     []PodInfo     `json:"pods"`
	Services []ServiceInfo `json:"services"`
	// Identity is IdentityDev or IdentitySPIRE (empty in a plan); SPIRE is
	// set for IdentitySPIRE.
	Identity string     `json:"identity,omitempty"`
	SPIRE    *SPIREInfo `json:"spire,omitempty"`
	// Kube is set for a lab with a Kubernetes API server (Config.Kube).
	Kube *KubeInfo `json:"kube,omitempty"`
}

// Plan validates objects and computes the topology a lab called name would
// build for them. It needs no privileges and changes nothing. UIDs are
// random unless the pods carry metadata.uid.
func Plan(name string, objects *cluster.Snapshot) (*Topology, error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	s := &state{Version: stateVersion, Name: name, Underlay: name + "-underlay"}
	objs, err := normalize(objects)
	if err != nil {
		return nil, err
	}
	if err := s.allocate(objs); err != nil {
		return nil, err
	}
	return s.topology(objs), nil
}

// allocate assigns nodes (in name order), Service cluster IPs (explicit
// ones first) and pods (in namespace/name order) for objects that the state
// does not know yet.
func (s *state) allocate(objs *cluster.Snapshot) error {
	var nodes []string
	seen := map[string]bool{}
	for _, p := range objs.Pods {
		if !seen[p.Spec.NodeName] {
			seen[p.Spec.NodeName] = true
			nodes = append(nodes, p.Spec.NodeName)
		}
	}
	sort.Strings(nodes)
	for _, n := range nodes {
		if _, _, err := s.ensureNode(n); err != nil {
			return err
		}
	}
	// Explicit cluster IPs first, so that allocation never steals one.
	svcs := append([]*corev1.Service(nil), objs.Services...)
	sort.SliceStable(svcs, func(i, j int) bool {
		return svcs[i].Spec.ClusterIP != "" && svcs[j].Spec.ClusterIP == ""
	})
	for _, svc := range svcs {
		if _, err := s.ensureService(svc); err != nil {
			return err
		}
	}
	for _, p := range objs.Pods {
		if s.pod(p.Namespace, p.Name) != nil {
			continue
		}
		if _, err := s.addPod(p); err != nil {
			return err
		}
	}
	return nil
}
