package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// FlowLog selects the flows every node proxy writes to its flow log file
// (--flow-log): a flow is written when at least one FlowLog selects it.
// Without any FlowLog nothing is written to the file; the live stream of
// the admin API (kubectl palisade observe) is not affected.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=pfl,categories=palisade
// +kubebuilder:printcolumn:name="Accepted",type=string,JSONPath=`.status.conditions[?(@.type=="Accepted")].status`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.conditions[?(@.type=="Accepted")].reason`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type FlowLog struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// Spec says which flows are recorded.
	Spec FlowLogSpec `json:"spec"`
	// Status says whether the node proxies use it (the Accepted
	// condition), written by one elected Palisade agent.
	// +optional
	Status L7PolicyStatus `json:"status,omitempty"`
}

// FlowLogSpec selects flows. Every field narrows the selection; an empty
// field selects everything.
type FlowLogSpec struct {
	// Namespaces selects flows whose source or destination pod is in one
	// of these namespaces.
	// +optional
	// +listType=set
	// +kubebuilder:validation:items:MinLength=1
	Namespaces []string `json:"namespaces,omitempty"`
	// PodSelector selects flows whose source or destination pod has
	// matching labels.
	// +optional
	PodSelector *metav1.LabelSelector `json:"podSelector,omitempty"`
	// Protocols selects records by protocol: tcp for connection records,
	// http, grpc and kafka for request records, the IP protocol (tcp, udp,
	// icmp, icmpv6) for packets the eBPF datapath dropped.
	// +optional
	// +listType=set
	Protocols []FlowProtocol `json:"protocols,omitempty"`
	// Verdicts selects records by verdict.
	// +optional
	// +listType=set
	Verdicts []FlowVerdict `json:"verdicts,omitempty"`
}

// FlowProtocol is a record protocol.
// +kubebuilder:validation:Enum=tcp;http;grpc;kafka;udp;icmp;icmpv6
type FlowProtocol string

// FlowVerdict is a record verdict: revoked connections were closed by a
// policy change, failed ones could not be carried (no endpoint, dial or
// identity failure, malformed traffic), dropped packets were dropped by
// the node's eBPF datapath (plaintext where the mesh requires HBONE).
// +kubebuilder:validation:Enum=allowed;denied;failed;revoked;dropped
type FlowVerdict string

// FlowLogList is a list of FlowLog.
//
// +kubebuilder:object:root=true
type FlowLogList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	// Items are the flow logs.
	Items []FlowLog `json:"items"`
}

// DeepCopyInto copies in into out.
func (in *FlowLogSpec) DeepCopyInto(out *FlowLogSpec) {
	*out = *in
	out.Namespaces = append([]string(nil), in.Namespaces...)
	out.Protocols = append([]FlowProtocol(nil), in.Protocols...)
	out.Verdicts = append([]FlowVerdict(nil), in.Verdicts...)
	if in.PodSelector != nil {
		out.PodSelector = in.PodSelector.DeepCopy()
	}
}

// DeepCopyInto copies in into out.
func (in *FlowLog) DeepCopyInto(out *FlowLog) {
	*out = *in
	out.TypeMeta = in.TypeMeta
	in.ObjectMeta.DeepCopyInto(&out.ObjectMeta)
	in.Spec.DeepCopyInto(&out.Spec)
	in.Status.DeepCopyInto(&out.Status)
}

// DeepCopy returns a copy of in.
func (in *FlowLog) DeepCopy() *FlowLog {
	if in == nil {
		return nil
	}
	out := new(FlowLog)
	in.DeepCopyInto(out)
	return out
}

// DeepCopyObject implements runtime.Object.
func (in *FlowLog) DeepCopyObject() runtime.Object { return in.DeepCopy() }

// DeepCopyInto copies in into out.
func (in *FlowLogList) DeepCopyInto(out *FlowLogList) {
	*out = *in
	out.TypeMeta = in.TypeMeta
	in.ListMeta.DeepCopyInto(&out.ListMeta)
	if in.Items != nil {
		out.Items = make([]FlowLog, len(in.Items))
		for i := range in.Items {
			in.Items[i].DeepCopyInto(&out.Items[i])
		}
	}
}

// DeepCopy returns a copy of in.
func (in *FlowLogList) DeepCopy() *FlowLogList {
	if in == nil {
		return nil
	}
	out := new(FlowLogList)
	in.DeepCopyInto(out)
	return out
}

// DeepCopyObject implements runtime.Object.
func (in *FlowLogList) DeepCopyObject() runtime.Object { return in.DeepCopy() }
