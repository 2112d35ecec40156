package workload

import (
	"net/netip"
	"strconv"

	corev1 "k8s.io/api/core/v1"
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

// NewIndex builds an index from pods (with their namespaces) and services.
// Pods without an IP or using the host network are not indexed.
func NewIndex(pods []Pod, services []*corev1.Service) *Index {
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
	for _, svc := range services {
		if svc.Spec.Selector == nil {
			continue // Services without selectors have no endpoints we manage
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
