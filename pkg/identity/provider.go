// Package identity supplies the node proxy with X.509 SVIDs for the workloads
// it serves and with the trust bundles it verifies peers against.
//
// A Provider hides where identities come from. This package ships the
// built-in development CA (DevCA, DevProvider), the embedded default when no
// SPIRE is configured. A SPIRE-backed provider (Delegated Identity API) plugs
// into the same interface and reuses the same cache: it pushes SVIDs into it
// instead of issuing them, and Release drops its subscription.
//
// All providers follow the same rules for certificates: one P-256 key per
// identity, renewed at half of its remaining lifetime, the old SVID kept and
// served while renewal fails (retried with exponential back-off from 0.5 s to
// 150 s), and at most eight fetches in flight at once.
package identity

import (
	"context"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Provider hands out SVIDs for local workloads and trust bundles to verify
// peers. Implementations are safe for concurrent use.
type Provider interface {
	// SVID returns a current X.509 SVID for id, fetching or issuing it if
	// needed; it may block until one is available or ctx ends.
	SVID(ctx context.Context, id spiffeid.ID) (*x509svid.SVID, error)

	// GetX509BundleForTrustDomain implements x509bundle.Source: the trust
	// bundle(s) used to verify peers.
	GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error)

	// Release says id is no longer used by any local workload (a SPIRE
	// provider will drop its subscription). Callers count references
	// themselves; a later SVID call for id starts afresh.
	Release(id spiffeid.ID)
}

// Compile-time check that a Provider is usable as a bundle source by
// go-spiffe's tlsconfig helpers.
var _ x509bundle.Source = Provider(nil)
