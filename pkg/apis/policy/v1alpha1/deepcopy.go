package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Hand-written deep copies, in the shape deepcopy-gen produces. The test
// deepcopy_test.go fills every field and checks that copies share nothing.

// DeepCopyInto copies the receiver into out.
func (in *L7Policy) DeepCopyInto(out *L7Policy) {
	*out = *in
	out.TypeMeta = in.TypeMeta
	in.ObjectMeta.DeepCopyInto(&out.ObjectMeta)
	in.Spec.DeepCopyInto(&out.Spec)
	in.Status.DeepCopyInto(&out.Status)
}

// DeepCopy returns a deep copy of the receiver.
func (in *L7Policy) DeepCopy() *L7Policy {
	if in == nil {
		return nil
	}
	out := new(L7Policy)
	in.DeepCopyInto(out)
	return out
}

// DeepCopyObject implements runtime.Object.
func (in *L7Policy) DeepCopyObject() runtime.Object {
	if c := in.DeepCopy(); c != nil {
		return c
	}
	return nil
}

// DeepCopyInto copies the receiver into out.
func (in *L7PolicyList) DeepCopyInto(out *L7PolicyList) {
	*out = *in
	out.TypeMeta = in.TypeMeta
	in.ListMeta.DeepCopyInto(&out.ListMeta)
	if in.Items != nil {
		out.Items = make([]L7Policy, len(in.Items))
		for i := range in.Items {
			in.Items[i].DeepCopyInto(&out.Items[i])
		}
	}
}

// DeepCopy returns a deep copy of the receiver.
func (in *L7PolicyList) DeepCopy() *L7PolicyList {
	if in == nil {
		return nil
	}
	out := new(L7PolicyList)
	in.DeepCopyInto(out)
	return out
}

// DeepCopyObject implements runtime.Object.
func (in *L7PolicyList) DeepCopyObject() runtime.Object {
	if c := in.DeepCopy(); c != nil {
		return c
	}
	return nil
}

// DeepCopyInto copies the receiver into out.
func (in *ClusterL7Policy) DeepCopyInto(out *ClusterL7Policy) {
	*out = *in
	out.TypeMeta = in.TypeMeta
	in.ObjectMeta.DeepCopyInto(&out.ObjectMeta)
	in.Spec.DeepCopyInto(&out.Spec)
	in.Status.DeepCopyInto(&out.Status)
}

// DeepCopy returns a deep copy of the receiver.
func (in *ClusterL7Policy) DeepCopy() *ClusterL7Policy {
	if in == nil {
		return nil
	}
	out := new(ClusterL7Policy)
	in.DeepCopyInto(out)
	return out
}

// DeepCopyObject implements runtime.Object.
func (in *ClusterL7Policy) DeepCopyObject() runtime.Object {
	if c := in.DeepCopy(); c != nil {
		return c
	}
	return nil
}

// DeepCopyInto copies the receiver into out.
func (in *ClusterL7PolicyList) DeepCopyInto(out *ClusterL7PolicyList) {
	*out = *in
	out.TypeMeta = in.TypeMeta
	in.ListMeta.DeepCopyInto(&out.ListMeta)
	if in.Items != nil {
		out.Items = make([]ClusterL7Policy, len(in.Items))
		for i := range in.Items {
			in.Items[i].DeepCopyInto(&out.Items[i])
		}
	}
}

// DeepCopy returns a deep copy of the receiver.
func (in *ClusterL7PolicyList) DeepCopy() *ClusterL7PolicyList {
	if in == nil {
		return nil
	}
	out := new(ClusterL7PolicyList)
	in.DeepCopyInto(out)
	return out
}

// DeepCopyObject implements runtime.Object.
func (in *ClusterL7PolicyList) DeepCopyObject() runtime.Object {
	if c := in.DeepCopy(); c != nil {
		return c
	}
	return nil
}

// DeepCopyInto copies the receiver into out.
func (in *L7PolicySpec) DeepCopyInto(out *L7PolicySpec) {
	*out = *in
	if in.EndpointSelector != nil {
		out.EndpointSelector = in.EndpointSelector.DeepCopy()
	}
	out.Ingress = copyIngressRules(in.Ingress)
	out.IngressDeny = copyIngressRules(in.IngressDeny)
	out.Egress = copyEgressRules(in.Egress)
	out.EgressDeny = copyEgressRules(in.EgressDeny)
	if in.EnableDefaultDeny != nil {
		out.EnableDefaultDeny = in.EnableDefaultDeny.DeepCopy()
	}
}

// DeepCopy returns a deep copy of the receiver.
func (in *L7PolicySpec) DeepCopy() *L7PolicySpec {
	if in == nil {
		return nil
	}
	out := new(L7PolicySpec)
	in.DeepCopyInto(out)
	return out
}

func copyIngressRules(in []IngressRule) []IngressRule {
	if in == nil {
		return nil
	}
	out := make([]IngressRule, len(in))
	for i := range in {
		in[i].DeepCopyInto(&out[i])
	}
	return out
}

func copyEgressRules(in []EgressRule) []EgressRule {
	if in == nil {
		return nil
	}
	out := make([]EgressRule, len(in))
	for i := range in {
		in[i].DeepCopyInto(&out[i])
	}
	return out
}

// DeepCopyInto copies the receiver into out.
func (in *DefaultDenyConfig) DeepCopyInto(out *DefaultDenyConfig) {
	*out = *in
	if in.Ingress != nil {
		v := *in.Ingress
		out.Ingress = &v
	}
	if in.Egress != nil {
		v := *in.Egress
		out.Egress = &v
	}
}

// DeepCopy returns a deep copy of the receiver.
func (in *DefaultDenyConfig) DeepCopy() *DefaultDenyConfig {
	if in == nil {
		return nil
	}
	out := new(DefaultDenyConfig)
	in.DeepCopyInto(out)
	return out
}

// DeepCopyInto copies the receiver into out.
func (in *L7PolicyStatus) DeepCopyInto(out *L7PolicyStatus) {
	*out = *in
	if in.Conditions != nil {
		out.Conditions = make([]metav1.Condition, len(in.Conditions))
		for i := range in.Conditions {
			in.Conditions[i].DeepCopyInto(&out.Conditions[i])
		}
	}
}

// DeepCopy returns a deep copy of the receiver.
func (in *L7PolicyStatus) DeepCopy() *L7PolicyStatus {
	if in == nil {
		return nil
	}
	out := new(L7PolicyStatus)
	in.DeepCopyInto(out)
	return out
}

// DeepCopyInto copies the receiver into out.
func (in *IngressRule) DeepCopyInto(out *IngressRule) {
	*out = *in
	out.FromEndpoints = copySelectors(in.FromEndpoints)
	out.FromPrincipals = copyStrings(in.FromPrincipals)
	out.FromServiceAccounts = copySARefs(in.FromServiceAccounts)
	out.FromNamespaces = copyStrings(in.FromNamespaces)
	out.FromCIDR = copyStrings(in.FromCIDR)
	out.FromCIDRSet = copyCIDRRules(in.FromCIDRSet)
	out.FromEntities = copyEntities(in.FromEntities)
	out.ToPorts = copyPortRules(in.ToPorts)
}

// DeepCopy returns a deep copy of the receiver.
func (in *IngressRule) DeepCopy() *IngressRule {
	if in == nil {
		return nil
	}
	out := new(IngressRule)
	in.DeepCopyInto(out)
	return out
}

// DeepCopyInto copies the receiver into out.
func (in *EgressRule) DeepCopyInto(out *EgressRule) {
	*out = *in
	out.ToEndpoints = copySelectors(in.ToEndpoints)
	out.ToPrincipals = copyStrings(in.ToPrincipals)
	out.ToServiceAccounts = copySARefs(in.ToServiceAccounts)
	out.ToNamespaces = copyStrings(in.ToNamespaces)
	out.ToCIDR = copyStrings(in.ToCIDR)
	out.ToCIDRSet = copyCIDRRules(in.ToCIDRSet)
	out.ToEntities = copyEntities(in.ToEntities)
	out.ToPorts = copyPortRules(in.ToPorts)
}

// DeepCopy returns a deep copy of the receiver.
func (in *EgressRule) DeepCopy() *EgressRule {
	if in == nil {
		return nil
	}
	out := new(EgressRule)
	in.DeepCopyInto(out)
	return out
}

func copySelectors(in []metav1.LabelSelector) []metav1.LabelSelector {
	if in == nil {
		return nil
	}
	out := make([]metav1.LabelSelector, len(in))
	for i := range in {
		in[i].DeepCopyInto(&out[i])
	}
	return out
}

func copyStrings(in []string) []string {
	if in == nil {
		return nil
	}
	return append(make([]string, 0, len(in)), in...)
}

func copyEntities(in []Entity) []Entity {
	if in == nil {
		return nil
	}
	return append(make([]Entity, 0, len(in)), in...)
}

func copySARefs(in []ServiceAccountRef) []ServiceAccountRef {
	if in == nil {
		return nil
	}
	return append(make([]ServiceAccountRef, 0, len(in)), in...)
}

func copyCIDRRules(in []CIDRRule) []CIDRRule {
	if in == nil {
		return nil
	}
	out := make([]CIDRRule, len(in))
	for i := range in {
		in[i].DeepCopyInto(&out[i])
	}
	return out
}

func copyPortRules(in []PortRule) []PortRule {
	if in == nil {
		return nil
	}
	out := make([]PortRule, len(in))
	for i := range in {
		in[i].DeepCopyInto(&out[i])
	}
	return out
}

// DeepCopyInto copies the receiver into out.
func (in *ServiceAccountRef) DeepCopyInto(out *ServiceAccountRef) { *out = *in }

// DeepCopy returns a deep copy of the receiver.
func (in *ServiceAccountRef) DeepCopy() *ServiceAccountRef {
	if in == nil {
		return nil
	}
	out := new(ServiceAccountRef)
	in.DeepCopyInto(out)
	return out
}

// DeepCopyInto copies the receiver into out.
func (in *CIDRRule) DeepCopyInto(out *CIDRRule) {
	*out = *in
	out.Except = copyStrings(in.Except)
}

// DeepCopy returns a deep copy of the receiver.
func (in *CIDRRule) DeepCopy() *CIDRRule {
	if in == nil {
		return nil
	}
	out := new(CIDRRule)
	in.DeepCopyInto(out)
	return out
}

// DeepCopyInto copies the receiver into out.
func (in *PortRule) DeepCopyInto(out *PortRule) {
	*out = *in
	if in.Ports != nil {
		out.Ports = append(make([]PortProtocol, 0, len(in.Ports)), in.Ports...)
	}
	if in.Rules != nil {
		out.Rules = in.Rules.DeepCopy()
	}
}

// DeepCopy returns a deep copy of the receiver.
func (in *PortRule) DeepCopy() *PortRule {
	if in == nil {
		return nil
	}
	out := new(PortRule)
	in.DeepCopyInto(out)
	return out
}

// DeepCopyInto copies the receiver into out.
func (in *PortProtocol) DeepCopyInto(out *PortProtocol) { *out = *in }

// DeepCopy returns a deep copy of the receiver.
func (in *PortProtocol) DeepCopy() *PortProtocol {
	if in == nil {
		return nil
	}
	out := new(PortProtocol)
	in.DeepCopyInto(out)
	return out
}

// DeepCopyInto copies the receiver into out.
func (in *L7Rules) DeepCopyInto(out *L7Rules) {
	*out = *in
	if in.HTTP != nil {
		out.HTTP = make([]HTTPRule, len(in.HTTP))
		for i := range in.HTTP {
			in.HTTP[i].DeepCopyInto(&out.HTTP[i])
		}
	}
	if in.GRPC != nil {
		out.GRPC = append(make([]GRPCRule, 0, len(in.GRPC)), in.GRPC...)
	}
	if in.Kafka != nil {
		out.Kafka = make([]KafkaRule, len(in.Kafka))
		for i := range in.Kafka {
			in.Kafka[i].DeepCopyInto(&out.Kafka[i])
		}
	}
}

// DeepCopy returns a deep copy of the receiver.
func (in *L7Rules) DeepCopy() *L7Rules {
	if in == nil {
		return nil
	}
	out := new(L7Rules)
	in.DeepCopyInto(out)
	return out
}

// DeepCopyInto copies the receiver into out.
func (in *HTTPRule) DeepCopyInto(out *HTTPRule) {
	*out = *in
	out.Headers = copyStrings(in.Headers)
	if in.HeaderMatches != nil {
		out.HeaderMatches = append(make([]HeaderMatch, 0, len(in.HeaderMatches)), in.HeaderMatches...)
	}
}

// DeepCopy returns a deep copy of the receiver.
func (in *HTTPRule) DeepCopy() *HTTPRule {
	if in == nil {
		return nil
	}
	out := new(HTTPRule)
	in.DeepCopyInto(out)
	return out
}

// DeepCopyInto copies the receiver into out.
func (in *HeaderMatch) DeepCopyInto(out *HeaderMatch) { *out = *in }

// DeepCopy returns a deep copy of the receiver.
func (in *HeaderMatch) DeepCopy() *HeaderMatch {
	if in == nil {
		return nil
	}
	out := new(HeaderMatch)
	in.DeepCopyInto(out)
	return out
}

// DeepCopyInto copies the receiver into out.
func (in *GRPCRule) DeepCopyInto(out *GRPCRule) { *out = *in }

// DeepCopy returns a deep copy of the receiver.
func (in *GRPCRule) DeepCopy() *GRPCRule {
	if in == nil {
		return nil
	}
	out := new(GRPCRule)
	in.DeepCopyInto(out)
	return out
}

// DeepCopyInto copies the receiver into out.
func (in *KafkaRule) DeepCopyInto(out *KafkaRule) {
	*out = *in
	out.APIKey = copyIntOrString(in.APIKey)
	out.APIVersion = copyIntOrString(in.APIVersion)
}

// DeepCopy returns a deep copy of the receiver.
func (in *KafkaRule) DeepCopy() *KafkaRule {
	if in == nil {
		return nil
	}
	out := new(KafkaRule)
	in.DeepCopyInto(out)
	return out
}

func copyIntOrString(in *intstr.IntOrString) *intstr.IntOrString {
	if in == nil {
		return nil
	}
	v := *in
	return &v
}
