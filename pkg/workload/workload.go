// Package workload turns Kubernetes objects into the facts Palisade acts on:
// whether a pod is enrolled, in which mode, and with which SPIFFE identity.
//
// The agent and the node proxy both use these rules, so that both sides agree
// on enrollment without talking to each other about it.
package workload

import (
	"fmt"
	"net/netip"
	"sort"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
)

// Labels and values that drive enrollment (see DESIGN.md).
const (
	// LabelMTLS enrolls a namespace (value "enabled") or opts a pod out
	// (value "disabled").
	LabelMTLS = "palisade.dev/mtls"
	// LabelCiliumMTLS is Cilium's enrollment label, honoured for migration.
	LabelCiliumMTLS = "io.cilium/mtls-enabled"
	// LabelMode selects permissive (default) or strict mode on a namespace.
	LabelMode = "palisade.dev/mtls-mode"
)

// Mode says whether an enrolled workload accepts plaintext inbound traffic.
type Mode string

// Modes.
const (
	Permissive Mode = "permissive"
	Strict     Mode = "strict"
)

// DefaultTrustDomain is used when none is configured.
const DefaultTrustDomain = "cluster.local"

// NamespaceEnrolled reports whether the namespace carries an enrollment label.
func NamespaceEnrolled(ns *corev1.Namespace) bool {
	if ns == nil {
		return false
	}
	return ns.Labels[LabelMTLS] == "enabled" || ns.Labels[LabelCiliumMTLS] == "true"
}

// NamespaceMode returns the namespace's mode; anything but "strict" is
// permissive.
func NamespaceMode(ns *corev1.Namespace) Mode {
	if ns != nil && ns.Labels[LabelMode] == string(Strict) {
		return Strict
	}
	return Permissive
}

// PodEnrolled reports whether pod, living in namespace ns, is enrolled: its
// namespace is enrolled, it has not opted out, and it does not use the host
// network (those share the node's namespace and are never captured).
func PodEnrolled(ns *corev1.Namespace, pod *corev1.Pod) bool {
	if pod == nil || !NamespaceEnrolled(ns) {
		return false
	}
	if pod.Spec.HostNetwork {
		return false
	}
	if pod.Labels[LabelMTLS] == "disabled" {
		return false
	}
	return pod.DeletionTimestamp == nil
}

// Workload is what the node proxy needs to know about one pod.
type Workload struct {
	UID            string            `json:"uid"`
	Name           string            `json:"name"`
	Namespace      string            `json:"namespace"`
	ServiceAccount string            `json:"serviceAccount"`
	Node           string            `json:"node"`
	IPs            []netip.Addr      `json:"ips"`
	Labels         map[string]string `json:"labels,omitempty"`
	// NamespaceLabels are the labels of the pod's namespace (policies
	// select peers by them).
	NamespaceLabels map[string]string `json:"namespaceLabels,omitempty"`
	Mode            Mode              `json:"mode"`
	// Enrolled is false for pods known only as traffic destinations.
	Enrolled bool `json:"enrolled"`
}

// Key returns "namespace/name", used in logs.
func (w *Workload) Key() string { return w.Namespace + "/" + w.Name }

// ServiceAccountOrDefault returns the service account, "default" when unset.
func (w *Workload) ServiceAccountOrDefault() string {
	if w.ServiceAccount == "" {
		return "default"
	}
	return w.ServiceAccount
}

// Identity returns the workload's SPIFFE ID in trust domain td:
// spiffe://<td>/ns/<namespace>/sa/<serviceaccount>.
func (w *Workload) Identity(td spiffeid.TrustDomain) (spiffeid.ID, error) {
	return IdentityFor(td, w.Namespace, w.ServiceAccountOrDefault())
}

// IdentityFor builds spiffe://<td>/ns/<ns>/sa/<sa>.
func IdentityFor(td spiffeid.TrustDomain, ns, sa string) (spiffeid.ID, error) {
	id, err := spiffeid.FromSegments(td, "ns", ns, "sa", sa)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("identity for %s/%s: %w", ns, sa, err)
	}
	return id, nil
}

// FromPod builds a Workload from a pod and its namespace. IPs come from the
// pod status; pods without an IP have none.
func FromPod(ns *corev1.Namespace, pod *corev1.Pod) Workload {
	w := Workload{
		UID:            string(pod.UID),
		Name:           pod.Name,
		Namespace:      pod.Namespace,
		ServiceAccount: pod.Spec.ServiceAccountName,
		Node:           pod.Spec.NodeName,
		Labels:         pod.Labels,
		Mode:           NamespaceMode(ns),
		Enrolled:       PodEnrolled(ns, pod),
	}
	if ns != nil {
		w.NamespaceLabels = ns.Labels
	}
	w.IPs = PodIPs(pod)
	return w
}

// PodIPs returns the pod's IPs from status.podIPs (or status.podIP), parsed
// and de-duplicated, in a stable order.
func PodIPs(pod *corev1.Pod) []netip.Addr {
	seen := map[netip.Addr]bool{}
	var out []netip.Addr
	add := func(s string) {
		a, err := netip.ParseAddr(s)
		if err != nil || seen[a] {
			return
		}
		seen[a] = true
		out = append(out, a)
	}
	add(pod.Status.PodIP)
	for _, p := range pod.Status.PodIPs {
		add(p.IP)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Less(out[j]) })
	return out
}
