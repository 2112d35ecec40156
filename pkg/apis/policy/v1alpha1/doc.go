// Package v1alpha1 holds the policy.palisade.dev/v1alpha1 API: L7Policy
// (namespaced) and ClusterL7Policy (cluster-scoped).
//
// The types are shaped like cilium.io/v2 CiliumNetworkPolicy so that its
// users feel at home: an endpointSelector picks the pods a policy applies
// to; ingress/egress rules allow peers on ports, optionally restricted by
// L7 rules (http, grpc, kafka); ingressDeny/egressDeny rules deny, and
// unlike Cilium they may carry L7 rules too. Beyond Cilium, peers can be
// named by SPIFFE principal, service account and namespace.
//
// The evaluation semantics are documented in package
// github.com/palisade-net/palisade/pkg/policy, which also validates these
// objects (Validate) with messages that name the offending field.
//
// DeepCopy methods are hand-written in deepcopy.go; the kubebuilder
// markers let controller-gen produce the CRD manifests:
//
//	controller-gen crd paths=./pkg/apis/policy/v1alpha1/... output:crd:dir=manifests/crds
//
// +kubebuilder:object:generate=true
// +groupName=policy.palisade.dev
package v1alpha1
