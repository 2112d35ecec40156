// Package manifests holds Palisade's Kubernetes manifests, applied with
// kustomize ("kubectl apply -k manifests/"; see README.md), and the tests
// that check them without an API server: strict decoding into the API
// types, least-privilege RBAC (testdata/rbac.golden), capabilities,
// probes and resources of every container, the flags given to the
// binaries, the paths and trust domain the agent, node proxy and SPIRE
// must agree on, the CNI install script, and that the generated CRDs in
// crds/ are those controller-gen makes from pkg/apis/policy/v1alpha1
// ("make crds").
package manifests

import "embed"

// CRDs holds the policy CRDs (crds/*.yaml), for programs that install them.
//
//go:embed crds/*.yaml
var CRDs embed.FS
