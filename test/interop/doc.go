// Package interop holds interoperability tests between Palisade's HBONE
// implementation (pkg/hbone) and Istio's Go HBONE package
// (istio.io/istio/pkg/hbone), on loopback only.
//
// It is a module of its own so that Istio's dependency tree never enters the
// main module's go.mod. Run it with
//
//	cd test/interop && go test ./...
//
// See README.md for the Istio version used and why.
package interop
