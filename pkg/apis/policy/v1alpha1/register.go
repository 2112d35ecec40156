package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// Group and version of this API.
const (
	Group   = "policy.palisade.dev"
	Version = "v1alpha1"
)

// Kinds of this API.
const (
	KindL7Policy            = "L7Policy"
	KindL7PolicyList        = "L7PolicyList"
	KindClusterL7Policy     = "ClusterL7Policy"
	KindClusterL7PolicyList = "ClusterL7PolicyList"
	KindFlowLog             = "FlowLog"
	KindFlowLogList         = "FlowLogList"
)

// GroupVersion returns policy.palisade.dev/v1alpha1.
func GroupVersion() schema.GroupVersion {
	return schema.GroupVersion{Group: Group, Version: Version}
}

// AddToScheme registers the kinds of this API with s.
func AddToScheme(s *runtime.Scheme) error {
	gv := GroupVersion()
	s.AddKnownTypes(gv,
		&L7Policy{}, &L7PolicyList{},
		&ClusterL7Policy{}, &ClusterL7PolicyList{},
		&FlowLog{}, &FlowLogList{},
	)
	metav1.AddToGroupVersion(s, gv)
	return nil
}
