// Package cilium mirrors the subset of the cilium.io/v2 API that Palisade
// reads: CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy, field for
// field as Cilium spells them, so that strict decoding accepts every valid
// Cilium policy and names the path of every unknown field.
//
// Parts Palisade does not interpret (toFQDNs, toServices, groups, ICMP,
// TLS, listeners, DNS and generic L7 rules, ...) are kept as raw JSON; the
// translation in package policy reports each one it cannot honour.
//
// These types are decode-only: they are not registered with a scheme and
// have no deep copies.
package cilium

import (
	"encoding/json"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Group, version and kinds of the Cilium policies.
const (
	Group                              = "cilium.io"
	Version                            = "v2"
	KindCiliumNetworkPolicy            = "CiliumNetworkPolicy"
	KindCiliumClusterwideNetworkPolicy = "CiliumClusterwideNetworkPolicy"
)

// CiliumNetworkPolicy is a namespaced Cilium policy: spec and/or specs.
type CiliumNetworkPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              *Rule           `json:"spec,omitempty"`
	Specs             []Rule          `json:"specs,omitempty"`
	Status            json.RawMessage `json:"status,omitempty"`
}

// CiliumClusterwideNetworkPolicy is the cluster-wide variant.
type CiliumClusterwideNetworkPolicy = CiliumNetworkPolicy

// Rule is Cilium's api.Rule.
type Rule struct {
	EndpointSelector  *metav1.LabelSelector `json:"endpointSelector,omitempty"`
	NodeSelector      *metav1.LabelSelector `json:"nodeSelector,omitempty"`
	Ingress           []IngressRule         `json:"ingress,omitempty"`
	IngressDeny       []IngressDenyRule     `json:"ingressDeny,omitempty"`
	Egress            []EgressRule          `json:"egress,omitempty"`
	EgressDeny        []EgressDenyRule      `json:"egressDeny,omitempty"`
	Labels            json.RawMessage       `json:"labels,omitempty"`
	EnableDefaultDeny *DefaultDenyConfig    `json:"enableDefaultDeny,omitempty"`
	Description       string                `json:"description,omitempty"`
	Log               json.RawMessage       `json:"log,omitempty"`
}

// DefaultDenyConfig is Cilium's enableDefaultDeny.
type DefaultDenyConfig struct {
	Ingress *bool `json:"ingress,omitempty"`
	Egress  *bool `json:"egress,omitempty"`
}

// IngressCommonRule holds the peer fields of ingress allow and deny rules.
type IngressCommonRule struct {
	FromEndpoints []metav1.LabelSelector `json:"fromEndpoints,omitempty"`
	FromRequires  []metav1.LabelSelector `json:"fromRequires,omitempty"`
	FromCIDR      []string               `json:"fromCIDR,omitempty"`
	FromCIDRSet   []CIDRRule             `json:"fromCIDRSet,omitempty"`
	FromEntities  []string               `json:"fromEntities,omitempty"`
	FromGroups    []json.RawMessage      `json:"fromGroups,omitempty"`
	FromNodes     []metav1.LabelSelector `json:"fromNodes,omitempty"`
}

// IngressRule is Cilium's api.IngressRule.
type IngressRule struct {
	IngressCommonRule `json:",inline"`
	ToPorts           []PortRule        `json:"toPorts,omitempty"`
	ICMPs             []json.RawMessage `json:"icmps,omitempty"`
	Authentication    *Authentication   `json:"authentication,omitempty"`
}

// IngressDenyRule is Cilium's api.IngressDenyRule (no L7 rules).
type IngressDenyRule struct {
	IngressCommonRule `json:",inline"`
	ToPorts           []PortDenyRule    `json:"toPorts,omitempty"`
	ICMPs             []json.RawMessage `json:"icmps,omitempty"`
}

// EgressCommonRule holds the peer fields of egress allow and deny rules.
type EgressCommonRule struct {
	ToEndpoints []metav1.LabelSelector `json:"toEndpoints,omitempty"`
	ToRequires  []metav1.LabelSelector `json:"toRequires,omitempty"`
	ToCIDR      []string               `json:"toCIDR,omitempty"`
	ToCIDRSet   []CIDRRule             `json:"toCIDRSet,omitempty"`
	ToEntities  []string               `json:"toEntities,omitempty"`
	ToServices  []json.RawMessage      `json:"toServices,omitempty"`
	ToGroups    []json.RawMessage      `json:"toGroups,omitempty"`
	ToNodes     []metav1.LabelSelector `json:"toNodes,omitempty"`
}

// EgressRule is Cilium's api.EgressRule.
type EgressRule struct {
	EgressCommonRule `json:",inline"`
	ToPorts          []PortRule        `json:"toPorts,omitempty"`
	ToFQDNs          []json.RawMessage `json:"toFQDNs,omitempty"`
	ICMPs            []json.RawMessage `json:"icmps,omitempty"`
	Authentication   *Authentication   `json:"authentication,omitempty"`
}

// EgressDenyRule is Cilium's api.EgressDenyRule (no L7 rules).
type EgressDenyRule struct {
	EgressCommonRule `json:",inline"`
	ToPorts          []PortDenyRule    `json:"toPorts,omitempty"`
	ICMPs            []json.RawMessage `json:"icmps,omitempty"`
}

// Authentication is Cilium's mutual-authentication requirement.
type Authentication struct {
	Mode string `json:"mode"`
}

// CIDRRule is Cilium's api.CIDRRule.
type CIDRRule struct {
	CIDR              string                `json:"cidr,omitempty"`
	CIDRGroupRef      string                `json:"cidrGroupRef,omitempty"`
	CIDRGroupSelector *metav1.LabelSelector `json:"cidrGroupSelector,omitempty"`
	ExceptCIDRs       []string              `json:"except,omitempty"`
}

// PortRule is Cilium's api.PortRule.
type PortRule struct {
	Ports          []PortProtocol  `json:"ports,omitempty"`
	TerminatingTLS json.RawMessage `json:"terminatingTLS,omitempty"`
	OriginatingTLS json.RawMessage `json:"originatingTLS,omitempty"`
	ServerNames    []string        `json:"serverNames,omitempty"`
	Listener       json.RawMessage `json:"listener,omitempty"`
	Rules          *L7Rules        `json:"rules,omitempty"`
}

// PortDenyRule is Cilium's api.PortDenyRule.
type PortDenyRule struct {
	Ports []PortProtocol `json:"ports,omitempty"`
}

// PortProtocol is Cilium's api.PortProtocol. Port is a string in Cilium
// (a number or an IANA service name); a YAML number is accepted too.
type PortProtocol struct {
	Port     intstr.IntOrString `json:"port"`
	EndPort  int32              `json:"endPort,omitempty"`
	Protocol string             `json:"protocol,omitempty"`
}

// L7Rules is Cilium's api.L7Rules.
type L7Rules struct {
	HTTP    []PortRuleHTTP    `json:"http,omitempty"`
	Kafka   []KafkaRule       `json:"kafka,omitempty"`
	DNS     []json.RawMessage `json:"dns,omitempty"`
	L7Proto string            `json:"l7proto,omitempty"`
	L7      []json.RawMessage `json:"l7,omitempty"`
}

// PortRuleHTTP is Cilium's api.PortRuleHTTP.
type PortRuleHTTP struct {
	Path          string         `json:"path,omitempty"`
	Method        string         `json:"method,omitempty"`
	Host          string         `json:"host,omitempty"`
	Headers       []string       `json:"headers,omitempty"`
	HeaderMatches []*HeaderMatch `json:"headerMatches,omitempty"`
}

// HeaderMatch is Cilium's api.HeaderMatch.
type HeaderMatch struct {
	Mismatch string  `json:"mismatch,omitempty"`
	Name     string  `json:"name"`
	Secret   *Secret `json:"secret,omitempty"`
	Value    string  `json:"value,omitempty"`
}

// Secret names a Kubernetes secret.
type Secret struct {
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name"`
}

// KafkaRule is Cilium's kafka.PortRule (all strings, as in Cilium).
type KafkaRule struct {
	Role       string `json:"role,omitempty"`
	APIKey     string `json:"apiKey,omitempty"`
	APIVersion string `json:"apiVersion,omitempty"`
	ClientID   string `json:"clientID,omitempty"`
	Topic      string `json:"topic,omitempty"`
}
