package lab

import (
	"fmt"
	"net/netip"
	"sort"
	"strconv"

	"github.com/palisade-net/palisade/pkg/cluster"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// NodeInfo describes one node of the lab.
type NodeInfo struct {
	Name  string `json:"name"`
	Index int    `json:"index"`
	// Netns is the node's network namespace (ip netns list shows it).
	Netns string `json:"netns"`
	// UnderlayIP is the node's address on the underlay (10.88.0.(10+i)),
	// configured on Uplink.
	UnderlayIP netip.Addr `json:"underlayIP"`
	Uplink     string     `json:"uplink"`
	// UnderlayPort is the node's veth as seen in the underlay netns.
	UnderlayPort string       `json:"underlayPort"`
	PodCIDR      netip.Prefix `json:"podCIDR"`
	// Gateway is the pods' default gateway, configured on Bridge.
	Gateway netip.Addr `json:"gateway"`
	Bridge  string     `json:"bridge"`
	// AgentPID and NodeProxyPID are 0 when not started (or --no-palisade).
	AgentPID     int    `json:"agentPID,omitempty"`
	NodeProxyPID int    `json:"nodeProxyPID,omitempty"`
	AgentLog     string `json:"agentLog,omitempty"`
	NodeProxyLog string `json:"nodeProxyLog,omitempty"`
	// FlowLog is the file the node proxy writes its flow log to (its
	// --flow-log), "" when it is not started.
	FlowLog string `json:"flowLog,omitempty"`
	// BPFFS is the bpffs the lab mounted for the node's agent (its
	// --bpffs) with Config.EBPF, "" without.
	BPFFS string `json:"bpffs,omitempty"`
	// With IdentitySPIRE: the node's SPIRE agent (0 when not running), its
	// log, its Workload API and admin (Delegated Identity API) sockets.
	SPIREAgentPID       int    `json:"spireAgentPID,omitempty"`
	SPIREAgentLog       string `json:"spireAgentLog,omitempty"`
	SPIREWorkloadSocket string `json:"spireWorkloadSocket,omitempty"`
	SPIREAdminSocket    string `json:"spireAdminSocket,omitempty"`
}

// SPIREInfo describes the lab's SPIRE deployment (IdentitySPIRE).
type SPIREInfo struct {
	TrustDomain string `json:"trustDomain"`
	// Netns runs the server and every agent; the server listens on
	// ServerAddress there.
	Netns         string `json:"netns"`
	ServerAddress string `json:"serverAddress"`
	ServerSocket  string `json:"serverSocket"`
	// ServerPID is 0 when the server is not running.
	ServerPID int    `json:"serverPID,omitempty"`
	ServerLog string `json:"serverLog"`
	// Entries is SPIREEntriesManage or SPIREEntriesOff.
	Entries string `json:"entries"`
	// SVIDTTL is what the Palisade agents get as --spire-svid-ttl (empty:
	// their default).
	SVIDTTL string `json:"svidTTL,omitempty"`
	BinDir  string `json:"binDir"`
}

// KubeInfo describes the lab's Kubernetes control plane (Config.Kube).
type KubeInfo struct {
	// Netns runs etcd and the API server (the lab's underlay netns).
	Netns string `json:"netns"`
	// APIServer is the API server's URL in Netns and from the nodes
	// (https://<underlay bridge address>:6443), used by NodeKubeconfig.
	APIServer string `json:"apiServer"`
	// Forward is the forwarder's URL in the root netns
	// (https://127.0.0.1:<port>), used by Kubeconfig.
	Forward        string `json:"forward"`
	Kubeconfig     string `json:"kubeconfig"`
	NodeKubeconfig string `json:"nodeKubeconfig"`
	// Etcd is etcd's client address in Netns.
	Etcd string `json:"etcd"`
	// PIDs are 0 for a process that is not running.
	APIServerPID int    `json:"apiServerPID,omitempty"`
	EtcdPID      int    `json:"etcdPID,omitempty"`
	ForwarderPID int    `json:"forwarderPID,omitempty"`
	APIServerLog string `json:"apiServerLog"`
	EtcdLog      string `json:"etcdLog"`
	ForwarderLog string `json:"forwarderLog"`
	BinDir       string `json:"binDir"`
	Kubectl      string `json:"kubectl,omitempty"`
}

// PodInfo describes one pod of the lab.
type PodInfo struct {
	Namespace      string     `json:"namespace"`
	Name           string     `json:"name"`
	UID            string     `json:"uid"`
	Node           string     `json:"node"`
	ServiceAccount string     `json:"serviceAccount,omitempty"`
	IP             netip.Addr `json:"ip"`
	// Netns is the pod's network namespace; Interface (eth0) lives there.
	Netns     string `json:"netns"`
	Interface string `json:"interface"`
	// HostVeth is the pod's veth peer in the node's netns, attached to the
	// node bridge: capture there to see the pod's traffic.
	HostVeth string `json:"hostVeth"`
	Ready    bool   `json:"ready"`
	// PIDs of the pod's container processes (0 for one that exited).
	PIDs []int  `json:"pids,omitempty"`
	Log  string `json:"log,omitempty"`
}

// ServicePort is one port of a Service and where it leads.
type ServicePort struct {
	Name       string `json:"name,omitempty"`
	Protocol   string `json:"protocol"`
	Port       int32  `json:"port"`
	TargetPort string `json:"targetPort"`
	// Endpoints are the ready pods' addresses for this port.
	Endpoints []netip.AddrPort `json:"endpoints"`
}

// ServiceInfo describes one Service of the lab.
type ServiceInfo struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	// ClusterIP is invalid (zero) for a headless Service.
	ClusterIP netip.Addr    `json:"clusterIP"`
	Ports     []ServicePort `json:"ports"`
}

// DNSNames returns the names the lab's hosts files give the Service:
// name, name.ns, name.ns.svc and name.ns.svc.cluster.local.
func (s ServiceInfo) DNSNames() []string {
	return []string{s.Name, s.Name + "." + s.Namespace, s.Name + "." + s.Namespace + ".svc", s.Name + "." + s.Namespace + ".svc.cluster.local"}
}

// topology reports the state for objs.
func (s *state) topology(objs *cluster.Snapshot) *Topology {
	t := &Topology{Name: s.Name, Underlay: s.Underlay, Bridge: UnderlayBridge, Identity: s.Identity}
	if t.Identity == "" {
		t.Identity = IdentityDev
	}
	if s.spire() {
		t.SPIRE = &SPIREInfo{
			TrustDomain: s.TrustDomain, Netns: s.Underlay,
			ServerAddress: fmt.Sprintf("%s:%d", SPIREServerAddress, SPIREServerPort),
			ServerSocket:  s.spireServerSocket(), ServerLog: s.spireServerLog(),
			Entries: s.SPIRE.Entries, BinDir: s.SPIRE.BinDir,
		}
		if s.SPIRE.Server != nil {
			t.SPIRE.ServerPID = s.SPIRE.Server.PID
		}
		if s.SPIRE.SVIDTTL > 0 {
			t.SPIRE.SVIDTTL = s.SPIRE.SVIDTTL.String()
		}
	}
	if s.kube() {
		k := s.Kube
		t.Kube = &KubeInfo{
			Netns: s.Underlay, APIServer: "https://" + s.kubeAPIServerAddr(),
			Kubeconfig: s.kubeconfigPath(), NodeKubeconfig: s.nodeKubeconfigPath(),
			Etcd:         fmt.Sprintf("127.0.0.1:%d", EtcdClientPort),
			APIServerLog: s.kubeAPIServerLog(), EtcdLog: s.etcdLog(), ForwarderLog: s.kubeForwarderLog(),
			BinDir: k.BinDir, Kubectl: k.Kubectl,
		}
		if k.ForwardPort != 0 {
			t.Kube.Forward = "https://" + s.kubeForwardAddr()
		}
		if k.APIServer != nil {
			t.Kube.APIServerPID = k.APIServer.PID
		}
		if k.Etcd != nil {
			t.Kube.EtcdPID = k.Etcd.PID
		}
		if k.Forwarder != nil {
			t.Kube.ForwarderPID = k.Forwarder.PID
		}
	}
	for _, n := range s.Nodes {
		ni := NodeInfo{
			Name: n.Name, Index: n.Index, Netns: n.Netns,
			UnderlayIP: n.UnderlayIP, Uplink: NodeUplink, UnderlayPort: n.UnderlayPort,
			PodCIDR: n.PodCIDR, Gateway: n.Gateway, Bridge: NodeBridge,
		}
		if n.Agent != nil {
			ni.AgentPID, ni.AgentLog = n.Agent.PID, n.Agent.Log
		}
		if n.NodeProxy != nil {
			ni.NodeProxyPID, ni.NodeProxyLog = n.NodeProxy.PID, n.NodeProxy.Log
			ni.FlowLog = s.flowLogPath(n.Name)
		}
		if s.EBPF && !s.NoPalisade {
			ni.BPFFS = s.bpffsDir(n.Name)
		}
		if s.spire() {
			ni.SPIREAgentLog = s.spireAgentLog(n.Name)
			ni.SPIREWorkloadSocket, ni.SPIREAdminSocket = s.spireWorkloadSocket(n.Name), s.spireAdminSocket(n.Name)
			if n.SPIREAgent != nil {
				ni.SPIREAgentPID = n.SPIREAgent.PID
			}
		}
		t.Nodes = append(t.Nodes, ni)
	}
	sort.Slice(t.Nodes, func(i, j int) bool { return t.Nodes[i].Index < t.Nodes[j].Index })
	for _, p := range s.Pods {
		t.Pods = append(t.Pods, s.podInfo(objs, p))
	}
	sort.Slice(t.Pods, func(i, j int) bool {
		return t.Pods[i].Namespace+"/"+t.Pods[i].Name < t.Pods[j].Namespace+"/"+t.Pods[j].Name
	})
	for _, svc := range objs.Services {
		if ss := s.service(svc.Namespace, svc.Name); ss != nil {
			t.Services = append(t.Services, s.serviceInfo(objs, svc, ss))
		}
	}
	return t
}

func (s *state) podInfo(objs *cluster.Snapshot, p *podState) PodInfo {
	pi := PodInfo{
		Namespace: p.Namespace, Name: p.Name, UID: p.UID, Node: p.Node, IP: p.IP,
		Netns: p.Netns, Interface: PodInterface, HostVeth: p.HostVeth, Ready: p.ready(),
	}
	if pod := objs.Pod(p.Namespace, p.Name); pod != nil {
		pi.ServiceAccount = pod.Spec.ServiceAccountName
	}
	for i, pr := range p.Procs {
		pi.PIDs = append(pi.PIDs, pr.PID)
		if i == 0 {
			pi.Log = pr.Log
		}
	}
	return pi
}

// serviceInfo resolves the Service's ports to the ready endpoints.
func (s *state) serviceInfo(objs *cluster.Snapshot, svc *corev1.Service, ss *serviceState) ServiceInfo {
	si := ServiceInfo{Namespace: svc.Namespace, Name: svc.Name, ClusterIP: ss.ClusterIP}
	var members []*corev1.Pod
	if len(svc.Spec.Selector) > 0 {
		sel := labels.SelectorFromSet(svc.Spec.Selector)
		for _, pod := range objs.Pods {
			ps := s.pod(pod.Namespace, pod.Name)
			if pod.Namespace == svc.Namespace && ps != nil && ps.ready() && sel.Matches(labels.Set(pod.Labels)) {
				members = append(members, pod)
			}
		}
	}
	for _, sp := range svc.Spec.Ports {
		proto := string(sp.Protocol)
		if proto == "" {
			proto = string(corev1.ProtocolTCP)
		}
		tp := sp.TargetPort
		if tp.Type == intstr.Int && tp.IntVal == 0 && tp.StrVal == "" {
			tp = intstr.FromInt32(sp.Port)
		}
		port := ServicePort{Name: sp.Name, Protocol: proto, Port: sp.Port, TargetPort: tp.String(), Endpoints: []netip.AddrPort{}}
		for _, pod := range members {
			n, ok := resolveTargetPort(pod, tp, corev1.Protocol(proto))
			if !ok {
				continue
			}
			port.Endpoints = append(port.Endpoints, netip.AddrPortFrom(s.pod(pod.Namespace, pod.Name).IP, uint16(n)))
		}
		sort.Slice(port.Endpoints, func(i, j int) bool { return port.Endpoints[i].Compare(port.Endpoints[j]) < 0 })
		si.Ports = append(si.Ports, port)
	}
	return si
}

// resolveTargetPort maps a Service targetPort (number or container port
// name) to a port number of pod.
func resolveTargetPort(pod *corev1.Pod, tp intstr.IntOrString, proto corev1.Protocol) (int32, bool) {
	if tp.Type == intstr.Int {
		return tp.IntVal, tp.IntVal > 0
	}
	if n, err := strconv.Atoi(tp.StrVal); err == nil {
		return int32(n), n > 0
	}
	for _, c := range pod.Spec.Containers {
		for _, cp := range c.Ports {
			p := cp.Protocol
			if p == "" {
				p = corev1.ProtocolTCP
			}
			if cp.Name == tp.StrVal && p == proto {
				return cp.ContainerPort, true
			}
		}
	}
	return 0, false
}
