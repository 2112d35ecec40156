package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Validation at admission. The kubebuilder markers below become the CRD's
// OpenAPI schema and CEL rules (manifests/crds, "make crds"), so that the
// API server refuses a malformed policy naming the field. They mirror
// what package policy's Validate checks, never more, except for the size
// limits (maxItems, maxLength) that CEL's cost budget requires and the
// canonical spelling of enums (TCP, LOG). The manifests tests check the
// patterns and the Kafka key names against Validate. What a
// CRD cannot check affordably (label selector syntax, mismatch actions in
// deny rules, an L7Policy's endpointSelector naming another namespace) is
// reported by the agent in the Accepted condition.
//
// Regular expressions are checked by compiling them: "".matches(self)
// evaluates to a bool for a valid RE2 expression and fails with the
// compile error for an invalid one, which the API server reports for the
// field ("error parsing regexp: ... evaluating rule: ...").

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
	// +kubebuilder:validation:MaxItems=256
	FromEndpoints []metav1.LabelSelector `json:"fromEndpoints,omitempty"`

	// FromPrincipals matches authenticated (mTLS) sources by SPIFFE ID:
	// "spiffe://<td>/<path>" exactly, "spiffe://<td>/<path prefix>/*" any
	// ID below that path, "spiffe://<td>/*" any ID of the trust domain,
	// and "*" any authenticated source. Plaintext sources never match.
	// +optional
	// +kubebuilder:validation:MaxItems=256
	// +kubebuilder:validation:items:MaxLength=2048
	// +kubebuilder:validation:items:Pattern=`^(\*|spiffe://[a-z0-9._-]+((/([A-Za-z0-9_-][A-Za-z0-9._-]*|\.[A-Za-z0-9_-][A-Za-z0-9._-]*|\.\.[A-Za-z0-9._-]+))+|(/([A-Za-z0-9_-][A-Za-z0-9._-]*|\.[A-Za-z0-9_-][A-Za-z0-9._-]*|\.\.[A-Za-z0-9._-]+))*/\*))$`
	FromPrincipals []string `json:"fromPrincipals,omitempty"`

	// FromServiceAccounts matches source pods running as one of these
	// service accounts. An empty namespace means the policy's namespace
	// (required in a ClusterL7Policy).
	// +optional
	// +kubebuilder:validation:MaxItems=256
	FromServiceAccounts []ServiceAccountRef `json:"fromServiceAccounts,omitempty"`

	// FromNamespaces matches source pods of these namespaces.
	// +optional
	// +kubebuilder:validation:MaxItems=256
	// +kubebuilder:validation:items:MaxLength=63
	// +kubebuilder:validation:items:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	FromNamespaces []string `json:"fromNamespaces,omitempty"`

	// FromCIDR matches sources outside the cluster (not pods) by IP
	// address or prefix ("10.0.0.0/8", "192.0.2.1").
	// +optional
	// +kubebuilder:validation:MaxItems=256
	// +kubebuilder:validation:items:MaxLength=64
	// +kubebuilder:validation:items:XValidation:rule="isCIDR(self) || isIP(self)",message="must be an IP address or a CIDR prefix such as 10.0.0.0/8"
	FromCIDR []string `json:"fromCIDR,omitempty"`

	// FromCIDRSet matches sources outside the cluster by prefix, with
	// exceptions.
	// +optional
	// +kubebuilder:validation:MaxItems=32
	FromCIDRSet []CIDRRule `json:"fromCIDRSet,omitempty"`

	// FromEntities matches classes of sources: all, world (outside the
	// cluster), world-ipv4, world-ipv6, cluster (any pod), none.
	// +optional
	// +kubebuilder:validation:MaxItems=8
	FromEntities []Entity `json:"fromEntities,omitempty"`

	// ToPorts restricts the rule to these ports of the selected pods and,
	// with rules, to these requests.
	// +optional
	// +kubebuilder:validation:MaxItems=8
	ToPorts []PortRule `json:"toPorts,omitempty"`
}

// EgressRule names peers (destinations) and their ports that the selected
// pods may reach (or, in egressDeny, may not reach). Peer fields mirror
// IngressRule's, with "to" for "from"; toPrincipals match the identity the
// destination proves (enrolled destinations only).
// +kubebuilder:validation:XValidation:rule="[has(self.toEndpoints), has(self.toPrincipals), has(self.toServiceAccounts), has(self.toNamespaces), has(self.toCIDR) || has(self.toCIDRSet), has(self.toEntities)].filter(x, x).size() <= 1",message="use one kind of peer (toEndpoints, toPrincipals, toServiceAccounts, toNamespaces, toCIDR/toCIDRSet, toEntities) per rule"
type EgressRule struct {
	// ToEndpoints selects destination pods by label, as fromEndpoints
	// selects sources: in an L7Policy a selector without a namespace key
	// only matches pods of the policy's namespace.
	// +optional
	// +kubebuilder:validation:MaxItems=256
	ToEndpoints []metav1.LabelSelector `json:"toEndpoints,omitempty"`

	// ToPrincipals matches destinations by the SPIFFE ID they prove in the
	// mutual TLS handshake (enrolled destinations only), in the syntax of
	// fromPrincipals: "spiffe://<td>/<path>", "spiffe://<td>/<prefix>/*",
	// "spiffe://<td>/*" or "*".
	// +optional
	// +kubebuilder:validation:MaxItems=256
	// +kubebuilder:validation:items:MaxLength=2048
	// +kubebuilder:validation:items:Pattern=`^(\*|spiffe://[a-z0-9._-]+((/([A-Za-z0-9_-][A-Za-z0-9._-]*|\.[A-Za-z0-9_-][A-Za-z0-9._-]*|\.\.[A-Za-z0-9._-]+))+|(/([A-Za-z0-9_-][A-Za-z0-9._-]*|\.[A-Za-z0-9_-][A-Za-z0-9._-]*|\.\.[A-Za-z0-9._-]+))*/\*))$`
	ToPrincipals []string `json:"toPrincipals,omitempty"`

	// ToServiceAccounts matches destination pods running as one of these
	// service accounts. An empty namespace means the policy's namespace
	// (required in a ClusterL7Policy).
	// +optional
	// +kubebuilder:validation:MaxItems=256
	ToServiceAccounts []ServiceAccountRef `json:"toServiceAccounts,omitempty"`

	// ToNamespaces matches destination pods of these namespaces.
	// +optional
	// +kubebuilder:validation:MaxItems=256
	// +kubebuilder:validation:items:MaxLength=63
	// +kubebuilder:validation:items:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	ToNamespaces []string `json:"toNamespaces,omitempty"`

	// ToCIDR matches destinations outside the cluster (not pods) by IP
	// address or prefix ("10.0.0.0/8", "192.0.2.1").
	// +optional
	// +kubebuilder:validation:MaxItems=256
	// +kubebuilder:validation:items:MaxLength=64
	// +kubebuilder:validation:items:XValidation:rule="isCIDR(self) || isIP(self)",message="must be an IP address or a CIDR prefix such as 10.0.0.0/8"
	ToCIDR []string `json:"toCIDR,omitempty"`

	// ToCIDRSet matches destinations outside the cluster by prefix, with
	// exceptions.
	// +optional
	// +kubebuilder:validation:MaxItems=32
	ToCIDRSet []CIDRRule `json:"toCIDRSet,omitempty"`

	// ToEntities matches classes of destinations: all, world (outside the
	// cluster), world-ipv4, world-ipv6, cluster (any pod), none.
	// +optional
	// +kubebuilder:validation:MaxItems=8
	ToEntities []Entity `json:"toEntities,omitempty"`

	// ToPorts restricts the rule to these ports of the destinations and,
	// with rules, to these requests.
	// +optional
	// +kubebuilder:validation:MaxItems=8
	ToPorts []PortRule `json:"toPorts,omitempty"`
}

// ServiceAccountRef names a service account.
type ServiceAccountRef struct {
	// Namespace of the service account; empty means the policy's (and is
	// not allowed in a ClusterL7Policy).
	// +optional
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^([a-z0-9]([-a-z0-9]*[a-z0-9])?)?$`
	Namespace string `json:"namespace,omitempty"`
	// Name of the service account.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	Name string `json:"name"`
}

// CIDRRule is a prefix with exceptions.
// +kubebuilder:validation:XValidation:rule="!has(self.except) || !isCIDR(self.cidr) || self.except.all(e, !isCIDR(e) || cidr(self.cidr).containsCIDR(e))",message="every except prefix must lie inside cidr",fieldPath=".except"
type CIDRRule struct {
	// CIDR is the prefix, e.g. "10.0.0.0/8".
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=64
	// +kubebuilder:validation:XValidation:rule="isCIDR(self)",message="must be a CIDR prefix such as 10.0.0.0/8"
	CIDR string `json:"cidr"`
	// Except lists prefixes inside CIDR that do not match.
	// +optional
	// +kubebuilder:validation:MaxItems=16
	// +kubebuilder:validation:items:MaxLength=64
	// +kubebuilder:validation:items:XValidation:rule="isCIDR(self)",message="must be a CIDR prefix such as 10.1.0.0/16"
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
// +kubebuilder:validation:XValidation:rule="!has(self.endPort) || self.endPort == 0 || (type(self.port) == int ? self.endPort >= self.port : self.endPort >= int(self.port))",message="endPort must not be below port",fieldPath=".endPort"
type PortProtocol struct {
	// Port is a number 1-65535, written as a number or a string ("80").
	// +kubebuilder:validation:XIntOrString
	// +kubebuilder:validation:MaxLength=5
	// +kubebuilder:validation:XValidation:rule="type(self) == int ? self >= 1 && self <= 65535 : int(self) >= 1 && int(self) <= 65535",message="want a port number 1-65535 (named ports are not supported; omit toPorts for every port)"
	Port intstr.IntOrString `json:"port"`
	// EndPort, when set, makes this the range port..endPort.
	// +kubebuilder:validation:Minimum=0
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
// +kubebuilder:validation:XValidation:rule="[has(self.http) && size(self.http) > 0, has(self.grpc) && size(self.grpc) > 0, has(self.kafka) && size(self.kafka) > 0].filter(x, x).size() <= 1",message="use one of http, grpc, kafka per port rule"
type L7Rules struct {
	// HTTP rules match HTTP/1.1 and HTTP/2 requests (gRPC included) by
	// method, path, host and headers.
	// +optional
	// +kubebuilder:validation:MaxItems=128
	HTTP []HTTPRule `json:"http,omitempty"`
	// GRPC rules match gRPC calls by service and method.
	// +optional
	// +kubebuilder:validation:MaxItems=128
	GRPC []GRPCRule `json:"grpc,omitempty"`
	// Kafka rules match Kafka requests by role or API key, version,
	// client id and topic.
	// +optional
	// +kubebuilder:validation:MaxItems=64
	Kafka []KafkaRule `json:"kafka,omitempty"`
}

// HTTPRule matches HTTP/1.1 and HTTP/2 requests (gRPC included). All set
// fields must match; empty fields match anything.
type HTTPRule struct {
	// Method is an RE2 regular expression matched against the whole
	// method ("GET", "GET|HEAD").
	// +optional
	// +kubebuilder:validation:MaxLength=64
	// +kubebuilder:validation:XValidation:rule=`"".matches(self) in [true, false]`,message="must be an RE2 regular expression"
	Method string `json:"method,omitempty"`
	// Path is an RE2 regular expression matched against the whole request
	// target, query included ("/api/v1/.*").
	// +optional
	// +kubebuilder:validation:MaxLength=256
	// +kubebuilder:validation:XValidation:rule=`"".matches(self) in [true, false]`,message="must be an RE2 regular expression"
	Path string `json:"path,omitempty"`
	// Host is an RE2 regular expression matched against the whole Host
	// header or :authority (port included when the client sent one).
	// +optional
	// +kubebuilder:validation:MaxLength=128
	// +kubebuilder:validation:XValidation:rule=`"".matches(self) in [true, false]`,message="must be an RE2 regular expression"
	Host string `json:"host,omitempty"`
	// Headers are "Name value" (the header has exactly this value) or
	// "Name" (the header is present).
	// +optional
	// +kubebuilder:validation:MaxItems=32
	// +kubebuilder:validation:items:MaxLength=8192
	// +kubebuilder:validation:items:Pattern="^[!#$%&'*+.^_\x60|~0-9A-Za-z-]+( .*)?$"
	Headers []string `json:"headers,omitempty"`
	// HeaderMatches are header checks with an action on mismatch.
	// +optional
	// +kubebuilder:validation:MaxItems=32
	HeaderMatches []HeaderMatch `json:"headerMatches,omitempty"`
}

// HeaderMatch checks one header. With an empty value it checks presence.
// Without a mismatch action a mismatch fails the rule; with one the rule
// still matches and the action is applied to the allowed request.
type HeaderMatch struct {
	// Name of the header (case-insensitive).
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=256
	// +kubebuilder:validation:Pattern="^[!#$%&'*+.^_\x60|~0-9A-Za-z-]+$"
	Name string `json:"name"`
	// Value the header must have; empty checks that it is present.
	// +optional
	// +kubebuilder:validation:MaxLength=8192
	Value string `json:"value,omitempty"`
	// Mismatch: LOG (log and allow), ADD (add value), DELETE (remove the
	// header), REPLACE (set the header to value). Not allowed in deny
	// rules (reported in the Accepted condition).
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
	// +kubebuilder:validation:MaxLength=1024
	// +kubebuilder:validation:Pattern=`^[A-Za-z_][A-Za-z0-9_.]*$`
	// +optional
	Service string `json:"service,omitempty"`
	// Method is the method name ("Checkout").
	// +kubebuilder:validation:MaxLength=1024
	// +kubebuilder:validation:Pattern=`^[A-Za-z_][A-Za-z0-9_]*$`
	// +optional
	Method string `json:"method,omitempty"`
}

// KafkaRule matches Kafka requests. All set fields must match. A request
// naming several topics is allowed only when every topic is covered by
// some matching rule.
// +kubebuilder:validation:XValidation:rule="!(has(self.role) && size(self.role) > 0 && has(self.apiKey))",message="role and apiKey are exclusive: set one of them"
type KafkaRule struct {
	// Role is "produce" (Produce, Metadata, ApiVersions) or "consume"
	// (Fetch, ListOffsets, Metadata, OffsetCommit, OffsetFetch,
	// FindCoordinator, JoinGroup, Heartbeat, LeaveGroup, SyncGroup,
	// ApiVersions), in any case. Exclusive with apiKey.
	// +optional
	// +kubebuilder:validation:MaxLength=16
	// +kubebuilder:validation:XValidation:rule="size(self) == 0 || self.lowerAscii() in ['produce', 'consume']",message="want produce or consume"
	Role string `json:"role,omitempty"`
	// APIKey is one request key, by name as the Kafka protocol spells it,
	// in any case ("Produce", "fetch", "ListOffsets"; Cilium's "offsets"
	// too) or by number.
	// +kubebuilder:validation:XIntOrString
	// +kubebuilder:validation:MaxLength=64
	// +kubebuilder:validation:XValidation:rule="type(self) == int ? self >= 0 && self <= 32767 : (self.lowerAscii() in ['produce', 'fetch', 'listoffsets', 'metadata', 'leaderandisr', 'stopreplica', 'updatemetadata', 'controlledshutdown', 'offsetcommit', 'offsetfetch', 'findcoordinator', 'joingroup', 'heartbeat', 'leavegroup', 'syncgroup', 'describegroups', 'listgroups', 'saslhandshake', 'apiversions', 'createtopics', 'deletetopics', 'deleterecords', 'initproducerid', 'offsetforleaderepoch', 'addpartitionstotxn', 'addoffsetstotxn', 'endtxn', 'writetxnmarkers', 'txnoffsetcommit', 'describeacls', 'createacls', 'deleteacls', 'describeconfigs', 'alterconfigs', 'alterreplicalogdirs', 'describelogdirs', 'saslauthenticate', 'createpartitions', 'createdelegationtoken', 'renewdelegationtoken', 'expiredelegationtoken', 'describedelegationtoken', 'deletegroups', 'electleaders', 'incrementalalterconfigs', 'alterpartitionreassignments', 'listpartitionreassignments', 'offsetdelete', 'describeclientquotas', 'alterclientquotas', 'describeuserscramcredentials', 'alteruserscramcredentials', 'vote', 'beginquorumepoch', 'endquorumepoch', 'describequorum', 'alterpartition', 'updatefeatures', 'envelope', 'fetchsnapshot', 'describecluster', 'describeproducers', 'brokerregistration', 'brokerheartbeat', 'unregisterbroker', 'describetransactions', 'listtransactions', 'allocateproducerids', 'consumergroupheartbeat', 'consumergroupdescribe', 'controllerregistration', 'gettelemetrysubscriptions', 'pushtelemetry', 'assignreplicastodirs', 'listclientmetricsresources', 'describetopicpartitions', 'offsets'] || int(self) >= 0 && int(self) <= 32767)",message="not a Kafka API key name (produce, fetch, metadata, ...) or number 0-32767"
	// +optional
	APIKey *intstr.IntOrString `json:"apiKey,omitempty"`
	// APIVersion is the exact request version, 0-32767.
	// +kubebuilder:validation:XIntOrString
	// +kubebuilder:validation:MaxLength=5
	// +kubebuilder:validation:XValidation:rule="type(self) == int ? self >= 0 && self <= 32767 : int(self) >= 0 && int(self) <= 32767",message="want a version number 0-32767"
	// +optional
	APIVersion *intstr.IntOrString `json:"apiVersion,omitempty"`
	// ClientID is the exact client id.
	// +optional
	// +kubebuilder:validation:MaxLength=1024
	ClientID string `json:"clientID,omitempty"`
	// Topic is the exact topic name. It constrains only the topics a
	// request names; a request for all topics (Metadata with null topics)
	// needs a rule without topic.
	// +kubebuilder:validation:MaxLength=255
	// +kubebuilder:validation:Pattern=`^[a-zA-Z0-9._-]+$`
	// +optional
	Topic string `json:"topic,omitempty"`
}
