package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// IngressRule names peers (sources) and the ports of the selected pods
// they may reach (or, in ingressDeny, may not reach).
//
// Peers: a rule without any from* field applies to every source. Within
// one rule only one kind of peer field may be used (fromCIDR and
// fromCIDRSet count as one kind), as Cilium requires; the entries of that
// field are alternatives (ORed). Write one rule per kind of peer.
//
// Ports: a rule without toPorts applies to every port, without L7 rules.
// +kubebuilder:validation:XValidation:rule="[has(self.fromEndpoints), has(self.fromPrincipals), has(self.fromServiceAccounts), has(self.fromNamespaces), has(self.fromCIDR) || has(self.fromCIDRSet), has(self.fromEntities)].filter(x, x).size() <= 1",message="use one kind of peer (fromEndpoints, fromPrincipals, fromServiceAccounts, fromNamespaces, fromCIDR/fromCIDRSet, fromEntities) per rule"
type IngressRule struct {
	// FromEndpoints selects source pods by label. Keys may carry Cilium's
	// "k8s:" or "any:" source prefix. In an L7Policy a selector without
	// the io.kubernetes.pod.namespace key (and without
	// io.cilium.k8s.namespace.labels.* keys) only matches pods of the
	// policy's namespace. io.cilium.k8s.namespace.labels.<key> matches
	// the labels of the pod's namespace, and
	// io.cilium.k8s.policy.serviceaccount its service account.
	// +optional
	FromEndpoints []metav1.LabelSelector `json:"fromEndpoints,omitempty"`

	// FromPrincipals matches authenticated (mTLS) sources by SPIFFE ID:
	// "spiffe://<td>/<path>" exactly, "spiffe://<td>/<path prefix>/*" any
	// ID below that path, "spiffe://<td>/*" any ID of the trust domain,
	// and "*" any authenticated source. Plaintext sources never match.
	// +optional
	FromPrincipals []string `json:"fromPrincipals,omitempty"`

	// FromServiceAccounts matches source pods running as one of these
	// service accounts. An empty namespace means the policy's namespace
	// (required in a ClusterL7Policy).
	// +optional
	FromServiceAccounts []ServiceAccountRef `json:"fromServiceAccounts,omitempty"`

	// FromNamespaces matches source pods of these namespaces.
	// +optional
	FromNamespaces []string `json:"fromNamespaces,omitempty"`

	// FromCIDR matches sources outside the cluster (not pods) by IP
	// address or prefix ("10.0.0.0/8", "192.0.2.1").
	// +optional
	FromCIDR []string `json:"fromCIDR,omitempty"`

	// FromCIDRSet matches sources outside the cluster by prefix, with
	// exceptions.
	// +optional
	FromCIDRSet []CIDRRule `json:"fromCIDRSet,omitempty"`

	// FromEntities matches classes of sources: all, world (outside the
	// cluster), world-ipv4, world-ipv6, cluster (any pod), none.
	// +optional
	FromEntities []Entity `json:"fromEntities,omitempty"`

	// ToPorts restricts the rule to these ports of the selected pods and,
	// with rules, to these requests.
	// +optional
	ToPorts []PortRule `json:"toPorts,omitempty"`
}

// EgressRule names peers (destinations) and their ports that the selected
// pods may reach (or, in egressDeny, may not reach). Peer fields mirror
// IngressRule's, with "to" for "from"; toPrincipals match the identity the
// destination proves (enrolled destinations only).
// +kubebuilder:validation:XValidation:rule="[has(self.toEndpoints), has(self.toPrincipals), has(self.toServiceAccounts), has(self.toNamespaces), has(self.toCIDR) || has(self.toCIDRSet), has(self.toEntities)].filter(x, x).size() <= 1",message="use one kind of peer (toEndpoints, toPrincipals, toServiceAccounts, toNamespaces, toCIDR/toCIDRSet, toEntities) per rule"
type EgressRule struct {
	// +optional
	ToEndpoints []metav1.LabelSelector `json:"toEndpoints,omitempty"`
	// +optional
	ToPrincipals []string `json:"toPrincipals,omitempty"`
	// +optional
	ToServiceAccounts []ServiceAccountRef `json:"toServiceAccounts,omitempty"`
	// +optional
	ToNamespaces []string `json:"toNamespaces,omitempty"`
	// +optional
	ToCIDR []string `json:"toCIDR,omitempty"`
	// +optional
	ToCIDRSet []CIDRRule `json:"toCIDRSet,omitempty"`
	// +optional
	ToEntities []Entity `json:"toEntities,omitempty"`
	// +optional
	ToPorts []PortRule `json:"toPorts,omitempty"`
}

// ServiceAccountRef names a service account.
type ServiceAccountRef struct {
	// Namespace of the service account; empty means the policy's.
	// +optional
	Namespace string `json:"namespace,omitempty"`
	// Name of the service account.
	// +kubebuilder:validation:MinLength=1
	Name string `json:"name"`
}

// CIDRRule is a prefix with exceptions.
type CIDRRule struct {
	// CIDR is the prefix, e.g. "10.0.0.0/8".
	// +kubebuilder:validation:MinLength=1
	CIDR string `json:"cidr"`
	// Except lists prefixes inside CIDR that do not match.
	// +optional
	Except []string `json:"except,omitempty"`
}

// Entity is a class of peers.
// +kubebuilder:validation:Enum=all;world;world-ipv4;world-ipv6;cluster;none
type Entity string

// Entities Palisade understands.
const (
	EntityAll       Entity = "all"
	EntityWorld     Entity = "world"
	EntityWorldIPv4 Entity = "world-ipv4"
	EntityWorldIPv6 Entity = "world-ipv6"
	EntityCluster   Entity = "cluster"
	EntityNone      Entity = "none"
)

// PortRule is a set of ports and, optionally, the L7 rules requests on
// them must match.
type PortRule struct {
	// Ports lists the ports (at least one).
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=40
	Ports []PortProtocol `json:"ports"`
	// Rules are the L7 rules for these ports: http, grpc or kafka, one
	// kind per port rule.
	// +optional
	Rules *L7Rules `json:"rules,omitempty"`
}

// PortProtocol is a port or port range.
type PortProtocol struct {
	// Port is a number 1-65535, written as a number or a string ("80").
	// +kubebuilder:validation:XIntOrString
	Port intstr.IntOrString `json:"port"`
	// EndPort, when set, makes this the range port..endPort.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	// +optional
	EndPort int32 `json:"endPort,omitempty"`
	// Protocol is TCP or ANY (the default; Palisade only carries TCP).
	// +kubebuilder:validation:Enum=TCP;ANY
	// +optional
	Protocol Protocol `json:"protocol,omitempty"`
}

// Protocol is an L4 protocol.
type Protocol string

// L4 protocols.
const (
	ProtocolTCP Protocol = "TCP"
	ProtocolAny Protocol = "ANY"
)

// L7Rules are the request rules of a port rule; a request is allowed
// (or, in a deny rule, denied) when any one rule matches it.
// +kubebuilder:validation:XValidation:rule="[has(self.http), has(self.grpc), has(self.kafka)].filter(x, x).size() <= 1",message="use one of http, grpc, kafka per port rule"
type L7Rules struct {
	// +optional
	HTTP []HTTPRule `json:"http,omitempty"`
	// +optional
	GRPC []GRPCRule `json:"grpc,omitempty"`
	// +optional
	Kafka []KafkaRule `json:"kafka,omitempty"`
}

// HTTPRule matches HTTP/1.1 and HTTP/2 requests (gRPC included). All set
// fields must match; empty fields match anything.
type HTTPRule struct {
	// Method is an RE2 regular expression matched against the whole
	// method ("GET", "GET|HEAD").
	// +optional
	Method string `json:"method,omitempty"`
	// Path is an RE2 regular expression matched against the whole request
	// target, query included ("/api/v1/.*").
	// +optional
	Path string `json:"path,omitempty"`
	// Host is an RE2 regular expression matched against the whole Host
	// header or :authority (port included when the client sent one).
	// +optional
	Host string `json:"host,omitempty"`
	// Headers are "Name value" (the header has exactly this value) or
	// "Name" (the header is present).
	// +optional
	Headers []string `json:"headers,omitempty"`
	// HeaderMatches are header checks with an action on mismatch.
	// +optional
	HeaderMatches []HeaderMatch `json:"headerMatches,omitempty"`
}

// HeaderMatch checks one header. With an empty value it checks presence.
// Without a mismatch action a mismatch fails the rule; with one the rule
// still matches and the action is applied to the allowed request.
type HeaderMatch struct {
	// +kubebuilder:validation:MinLength=1
	Name string `json:"name"`
	// +optional
	Value string `json:"value,omitempty"`
	// Mismatch: LOG (log and allow), ADD (add value), DELETE (remove the
	// header), REPLACE (set the header to value). Not allowed in deny rules.
	// +optional
	Mismatch MismatchAction `json:"mismatch,omitempty"`
}

// MismatchAction is what a HeaderMatch does when the header does not match.
// +kubebuilder:validation:Enum=LOG;ADD;DELETE;REPLACE
type MismatchAction string

// Mismatch actions.
const (
	MismatchLog     MismatchAction = "LOG"
	MismatchAdd     MismatchAction = "ADD"
	MismatchDelete  MismatchAction = "DELETE"
	MismatchReplace MismatchAction = "REPLACE"
)

// GRPCRule matches gRPC calls (POST, content-type application/grpc, path
// /<service>/<method>). Empty fields match any.
type GRPCRule struct {
	// Service is the fully qualified service name ("shop.v1.Cart").
	// +kubebuilder:validation:Pattern=`^[A-Za-z_][A-Za-z0-9_.]*$`
	// +optional
	Service string `json:"service,omitempty"`
	// Method is the method name ("Checkout").
	// +kubebuilder:validation:Pattern=`^[A-Za-z_][A-Za-z0-9_]*$`
	// +optional
	Method string `json:"method,omitempty"`
}

// KafkaRule matches Kafka requests. All set fields must match. A request
// naming several topics is allowed only when every topic is covered by
// some matching rule.
type KafkaRule struct {
	// Role is "produce" (Produce, Metadata, ApiVersions) or "consume"
	// (Fetch, ListOffsets, Metadata, OffsetCommit, OffsetFetch,
	// FindCoordinator, JoinGroup, Heartbeat, LeaveGroup, SyncGroup,
	// ApiVersions). Exclusive with apiKey.
	// +optional
	Role string `json:"role,omitempty"`
	// APIKey is one request key, by name ("produce", "fetch",
	// "metadata", ...) or number.
	// +kubebuilder:validation:XIntOrString
	// +optional
	APIKey *intstr.IntOrString `json:"apiKey,omitempty"`
	// APIVersion is the exact request version.
	// +kubebuilder:validation:XIntOrString
	// +optional
	APIVersion *intstr.IntOrString `json:"apiVersion,omitempty"`
	// ClientID is the exact client id.
	// +optional
	ClientID string `json:"clientID,omitempty"`
	// Topic is the exact topic name. It constrains only the topics a
	// request names; a request for all topics (Metadata with null topics)
	// needs a rule without topic.
	// +kubebuilder:validation:MaxLength=255
	// +kubebuilder:validation:Pattern=`^[a-zA-Z0-9._-]+$`
	// +optional
	Topic string `json:"topic,omitempty"`
}
