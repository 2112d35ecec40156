package workload

import (
	"net/netip"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Index is a read-only, cluster-wide map from addresses to workloads and from
// Service addresses to their ready endpoints. The node proxy builds one per
// cluster snapshot and swaps it atomically.
type Index struct {
	byIP     map[netip.Addr]*Workload
	services map[netip.AddrPort]*ServicePort
}

// ServicePort is one port of one Service with its ready endpoints.
type ServicePort struct {
	Namespace, Name string
	// Key identifies the service port across snapshots ("ns/name:port").
	Key       string
	Endpoints []Endpoint
}

// Endpoint is a ready backend of a Service port.
type Endpoint struct {
	Addr     netip.AddrPort
	Workload *Workload
}

// Pod is the subset of a namespace/pod pair the index is built from.
type Pod struct {
	Namespace *corev1.Namespace
	Pod       *corev1.Pod
}

// NewIndex builds an index from pods (with their namespaces), services and
// EndpointSlices. Pods without an IP or using the host network are not
// indexed. A Service's endpoints come from its EndpointSlices when it has any
// (label kubernetes.io/service-name; this covers Services without selectors
// and endpoints that are not pods), and from its selector over the ready
// pods otherwise (standalone mode, or an API server without the
// EndpointSlice controller).
func NewIndex(pods []Pod, services []*corev1.Service, slices []*discoveryv1.EndpointSlice) *Index {
	ix := &Index{
		byIP:     map[netip.Addr]*Workload{},
		services: map[netip.AddrPort]*ServicePort{},
	}
	var all []*Workload
	var objs []*corev1.Pod
	for _, p := range pods {
		if p.Pod.Spec.HostNetwork {
			continue
		}
		w := FromPod(p.Namespace, p.Pod)
		if len(w.IPs) == 0 {
			continue
		}
		all = append(all, &w)
		objs = append(objs, p.Pod)
		for _, ip := range w.IPs {
			ix.byIP[ip] = &w
		}
	}
	slicesOf := map[string][]*discoveryv1.EndpointSlice{}
	for _, es := range slices {
		if name := es.Labels[discoveryv1.LabelServiceName]; name != "" {
			slicesOf[es.Namespace+"/"+name] = append(slicesOf[es.Namespace+"/"+name], es)
		}
	}
	for _, svc := range services {
		svcSlices := slicesOf[svc.Namespace+"/"+svc.Name]
		if svc.Spec.Selector == nil && len(svcSlices) == 0 {
			continue // no selector and no slices: no endpoints
		}
		sel := labels.SelectorFromSet(svc.Spec.Selector)
		vips := clusterIPs(svc)
		for _, sp := range svc.Spec.Ports {
			if sp.Protocol != "" && sp.Protocol != corev1.ProtocolTCP {
				continue
			}
			port := &ServicePort{
				Namespace: svc.Namespace,
				Name:      svc.Name,
				Key:       svc.Namespace + "/" + svc.Name + ":" + strconv.Itoa(int(sp.Port)),
			}
			if len(svcSlices) > 0 {
				port.Endpoints = ix.sliceEndpoints(svcSlices, sp)
				for _, vip := range vips {
					ix.services[netip.AddrPortFrom(vip, uint16(sp.Port))] = port
				}
				continue
			}
			for i, w := range all {
				pod := objs[i]
				if pod.Namespace != svc.Namespace || !sel.Matches(labels.Set(pod.Labels)) || !podReady(pod) {
					continue
				}
				target, ok := targetPort(pod, sp)
				if !ok {
					continue
				}
				for _, ip := range w.IPs {
					port.Endpoints = append(port.Endpoints, Endpoint{Addr: netip.AddrPortFrom(ip, target), Workload: w})
				}
			}
			for _, vip := range vips {
				ix.services[netip.AddrPortFrom(vip, uint16(sp.Port))] = port
			}
		}
	}
	return ix
}

// sliceEndpoints returns the ready endpoints of service port sp in slices:
// the slice port with sp's name, TCP, addresses of endpoints whose ready
// condition is not false. Endpoint.Workload is the pod owning the address,
// nil for endpoints outside the cluster's pods.
func (ix *Index) sliceEndpoints(slices []*discoveryv1.EndpointSlice, sp corev1.ServicePort) []Endpoint {
	var out []Endpoint
	for _, es := range slices {
		if es.AddressType != discoveryv1.AddressTypeIPv4 && es.AddressType != discoveryv1.AddressTypeIPv6 {
			continue
		}
		for _, p := range es.Ports {
			name := ""
			if p.Name != nil {
				name = *p.Name
			}
			if name != sp.Name || p.Port == nil || (p.Protocol != nil && *p.Protocol != corev1.ProtocolTCP) {
				continue
			}
			for _, ep := range es.Endpoints {
				if ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
					continue
				}
				for _, a := range ep.Addresses {
					ip, err := netip.ParseAddr(a)
					if err != nil {
						continue
					}
					out = append(out, Endpoint{Addr: netip.AddrPortFrom(ip, uint16(*p.Port)), Workload: ix.byIP[ip]})
				}
			}
		}
	}
	return out
}

// Workload returns the workload that owns ip, or nil.
func (ix *Index) Workload(ip netip.Addr) *Workload {
	if ix == nil {
		return nil
	}
	return ix.byIP[ip.Unmap()]
}

// Service returns the service port served at addr (a cluster IP and port), or
// nil when addr is not a Service address.
func (ix *Index) Service(addr netip.AddrPort) *ServicePort {
	if ix == nil {
		return nil
	}
	return ix.services[netip.AddrPortFrom(addr.Addr().Unmap(), addr.Port())]
}

// Workloads returns every indexed workload (each once).
func (ix *Index) Workloads() []*Workload {
	seen := map[*Workload]bool{}
	var out []*Workload
	for _, w := range ix.byIP {
		if !seen[w] {
			seen[w] = true
			out = append(out, w)
		}
	}
	return out
}

func clusterIPs(svc *corev1.Service) []netip.Addr {
	var out []netip.Addr
	seen := map[netip.Addr]bool{}
	for _, s := range append([]string{svc.Spec.ClusterIP}, svc.Spec.ClusterIPs...) {
		if a, err := netip.ParseAddr(s); err == nil && !seen[a] {
			seen[a] = true
			out = append(out, a)
		}
	}
	return out
}

func podReady(p *corev1.Pod) bool {
	if p.DeletionTimestamp != nil || p.Status.Phase != corev1.PodRunning {
		return false
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	// No conditions reported: treat a running pod as ready.
	return true
}

func targetPort(pod *corev1.Pod, sp corev1.ServicePort) (uint16, bool) {
	tp := sp.TargetPort
	switch {
	case tp.Type == intstr.Int && tp.IntVal == 0:
		return uint16(sp.Port), true
	case tp.Type == intstr.Int:
		return uint16(tp.IntVal), true
	default:
		for _, c := range pod.Spec.Containers {
			for _, cp := range c.Ports {
				if cp.Name == tp.StrVal && (cp.Protocol == "" || cp.Protocol == corev1.ProtocolTCP) {
					return uint16(cp.ContainerPort), true
				}
			}
		}
		return 0, false
	}
}
