package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// L7Policy allows and denies traffic of the pods of its namespace that its
// endpointSelector selects. Selectors of peers without a namespace key are
// restricted to the policy's namespace, as in a CiliumNetworkPolicy.
//
// +genclient
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Namespaced,shortName=l7p,categories=palisade
// +kubebuilder:printcolumn:name="Accepted",type=string,JSONPath=`.status.conditions[?(@.type=="Accepted")].status`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.conditions[?(@.type=="Accepted")].reason`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type L7Policy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// Spec is the policy: which pods it selects and what traffic they
	// may send and receive.
	Spec L7PolicySpec `json:"spec"`
	// Status says whether the policy is enforced (the Accepted condition),
	// written by one elected Palisade agent.
	// +optional
	Status L7PolicyStatus `json:"status,omitempty"`
}

// L7PolicyList is a list of L7Policy.
//
// +kubebuilder:object:root=true
type L7PolicyList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	// Items are the policies.
	Items []L7Policy `json:"items"`
}

// ClusterL7Policy is the cluster-scoped L7Policy: its endpointSelector
// selects pods of every namespace (use the io.kubernetes.pod.namespace key
// to narrow it), and peer selectors without a namespace key match pods of
// every namespace.
//
// +genclient
// +genclient:nonNamespaced
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=cl7p,categories=palisade
// +kubebuilder:printcolumn:name="Accepted",type=string,JSONPath=`.status.conditions[?(@.type=="Accepted")].status`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.conditions[?(@.type=="Accepted")].reason`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:validation:XValidation:rule="!has(self.spec.ingress) || self.spec.ingress.all(r, !has(r.fromServiceAccounts) || r.fromServiceAccounts.all(a, has(a.__namespace__) && size(a.__namespace__) > 0))",message="fromServiceAccounts[].namespace is required in a ClusterL7Policy",fieldPath=".spec.ingress"
// +kubebuilder:validation:XValidation:rule="!has(self.spec.ingressDeny) || self.spec.ingressDeny.all(r, !has(r.fromServiceAccounts) || r.fromServiceAccounts.all(a, has(a.__namespace__) && size(a.__namespace__) > 0))",message="fromServiceAccounts[].namespace is required in a ClusterL7Policy",fieldPath=".spec.ingressDeny"
// +kubebuilder:validation:XValidation:rule="!has(self.spec.egress) || self.spec.egress.all(r, !has(r.toServiceAccounts) || r.toServiceAccounts.all(a, has(a.__namespace__) && size(a.__namespace__) > 0))",message="toServiceAccounts[].namespace is required in a ClusterL7Policy",fieldPath=".spec.egress"
// +kubebuilder:validation:XValidation:rule="!has(self.spec.egressDeny) || self.spec.egressDeny.all(r, !has(r.toServiceAccounts) || r.toServiceAccounts.all(a, has(a.__namespace__) && size(a.__namespace__) > 0))",message="toServiceAccounts[].namespace is required in a ClusterL7Policy",fieldPath=".spec.egressDeny"
type ClusterL7Policy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// Spec is the policy: which pods it selects, in any namespace, and
	// what traffic they may send and receive.
	Spec L7PolicySpec `json:"spec"`
	// Status says whether the policy is enforced (the Accepted condition),
	// written by one elected Palisade agent.
	// +optional
	Status L7PolicyStatus `json:"status,omitempty"`
}

// ClusterL7PolicyList is a list of ClusterL7Policy.
//
// +kubebuilder:object:root=true
type ClusterL7PolicyList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	// Items are the policies.
	Items []ClusterL7Policy `json:"items"`
}

// L7PolicySpec is the rule set of an L7Policy or ClusterL7Policy.
//
// Once any policy with rules in a direction selects a pod, that direction
// is default deny for the pod (unless enableDefaultDeny says otherwise for
// every such policy): only what some allow rule of some policy allows
// passes, and deny rules win over every allow.
type L7PolicySpec struct {
	// Description is free text for humans.
	// +optional
	// +kubebuilder:validation:MaxLength=4096
	Description string `json:"description,omitempty"`

	// EndpointSelector selects the pods the policy applies to. An empty
	// selector ({}) selects every pod in scope (the policy's namespace for
	// an L7Policy, the cluster for a ClusterL7Policy).
	// +required
	EndpointSelector *metav1.LabelSelector `json:"endpointSelector"`

	// Ingress rules allow traffic into the selected pods.
	// +optional
	// +kubebuilder:validation:MaxItems=32
	Ingress []IngressRule `json:"ingress,omitempty"`

	// IngressDeny rules deny traffic into the selected pods, whatever any
	// allow rule says. A deny rule without L7 rules denies the connection;
	// one with L7 rules denies the requests its L7 rules match.
	// +optional
	// +kubebuilder:validation:MaxItems=32
	IngressDeny []IngressRule `json:"ingressDeny,omitempty"`

	// Egress rules allow traffic out of the selected pods.
	// +optional
	// +kubebuilder:validation:MaxItems=32
	Egress []EgressRule `json:"egress,omitempty"`

	// EgressDeny rules deny traffic out of the selected pods, whatever any
	// allow rule says (see ingressDeny).
	// +optional
	// +kubebuilder:validation:MaxItems=32
	EgressDeny []EgressRule `json:"egressDeny,omitempty"`

	// EnableDefaultDeny says whether this policy turns on default deny for
	// the selected pods, per direction. Unset, a direction is default deny
	// when the policy has allow or deny rules for it (as in Cilium).
	// +optional
	EnableDefaultDeny *DefaultDenyConfig `json:"enableDefaultDeny,omitempty"`
}

// DefaultDenyConfig turns default deny on or off per direction.
type DefaultDenyConfig struct {
	// Ingress: true makes incoming traffic of the selected pods default
	// deny, false leaves it open unless another policy closes it.
	// +optional
	Ingress *bool `json:"ingress,omitempty"`
	// Egress: true makes outgoing traffic of the selected pods default
	// deny, false leaves it open unless another policy closes it.
	// +optional
	Egress *bool `json:"egress,omitempty"`
}

// L7PolicyStatus is what the controller reports about a policy.
type L7PolicyStatus struct {
	// ObservedGeneration is the generation the conditions describe.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// Conditions: "Accepted" is True when the policy is valid and
	// enforced in full, False (reason Invalid) when it is rejected, and
	// True with reason PartiallySupported when parts of it cannot be
	// honoured (the message names them; such parts never allow anything).
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// Condition types and reasons of L7PolicyStatus.
const (
	ConditionAccepted = "Accepted"

	ReasonAccepted           = "Accepted"
	ReasonInvalid            = "Invalid"
	ReasonPartiallySupported = "PartiallySupported"
)
