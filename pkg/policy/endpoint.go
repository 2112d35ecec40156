package policy

import (
	"net/netip"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Endpoint is one side of a connection as the proxy knows it.
type Endpoint struct {
	// Namespace and ServiceAccount of the pod (empty outside the cluster).
	Namespace, ServiceAccount string
	// Labels are the pod's labels; NamespaceLabels its namespace's.
	Labels, NamespaceLabels map[string]string
	// Identity is the peer's authenticated SPIFFE ID (mTLS); zero when
	// the connection is plaintext. For the local side it is the pod's own.
	Identity spiffeid.ID
	// IP is the endpoint's address.
	IP netip.Addr
	// InCluster is true for a known pod, false for anything outside the
	// cluster ("world").
	InCluster bool
}

// Label keys with a meaning beyond the pod's own labels, as in Cilium.
const (
	// LabelNamespace holds the pod's namespace.
	LabelNamespace = "io.kubernetes.pod.namespace"
	// LabelNamespaceLabelsPrefix prefixes the labels of the pod's namespace.
	LabelNamespaceLabelsPrefix = "io.cilium.k8s.namespace.labels."
	// LabelServiceAccount holds the pod's service account.
	LabelServiceAccount = "io.cilium.k8s.policy.serviceaccount"
	// ciliumPolicyPrefix prefixes Cilium's other policy labels (cluster
	// name, ...), which Palisade does not know.
	ciliumPolicyPrefix = "io.cilium.k8s.policy."
)

// endpointLabels is the label view of an endpoint that selectors match:
// its pod labels plus the namespace, the namespace's labels and the
// service account under Cilium's keys. It implements labels.Labels
// without allocating.
type endpointLabels struct{ ep *Endpoint }

func (l endpointLabels) Lookup(key string) (string, bool) {
	switch key {
	case LabelNamespace:
		return l.ep.Namespace, l.ep.Namespace != ""
	case LabelServiceAccount:
		return l.ep.ServiceAccount, l.ep.ServiceAccount != ""
	}
	if k, ok := strings.CutPrefix(key, LabelNamespaceLabelsPrefix); ok {
		v, found := l.ep.NamespaceLabels[k]
		return v, found
	}
	v, found := l.ep.Labels[key]
	return v, found
}

func (l endpointLabels) Has(key string) bool {
	_, ok := l.Lookup(key)
	return ok
}

func (l endpointLabels) Get(key string) string {
	v, _ := l.Lookup(key)
	return v
}

// describe names an endpoint for reasons: its SPIFFE ID when it has one,
// else its address and what is known of it.
func (e *Endpoint) describe() string {
	if !e.Identity.IsZero() {
		return e.Identity.String()
	}
	var b strings.Builder
	if e.IP.IsValid() {
		b.WriteString(e.IP.String())
	} else {
		b.WriteString("unknown address")
	}
	switch {
	case e.InCluster && e.ServiceAccount != "":
		b.WriteString(" (pod of " + e.Namespace + ", service account " + e.ServiceAccount + ", unauthenticated)")
	case e.InCluster:
		b.WriteString(" (pod of " + e.Namespace + ", unauthenticated)")
	default:
		b.WriteString(" (outside the cluster)")
	}
	return b.String()
}
