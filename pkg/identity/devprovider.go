package identity

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// DefaultDevSVIDTTL is the SVID lifetime NewDevProvider uses when given zero.
const DefaultDevSVIDTTL = 24 * time.Hour

// DevProvider is a Provider backed by a DevCA. It issues one P-256 key and
// leaf certificate per identity on first use, caches it, renews it at half of
// its remaining lifetime and keeps serving the previous SVID while renewal
// fails. It only knows its CA's trust domain.
type DevProvider struct {
	ca    *DevCA
	ttl   time.Duration
	cache *svidCache
}

var (
	_ Provider = (*DevProvider)(nil)
	_ Reporter = (*DevProvider)(nil)
)

// NewDevProvider returns a provider issuing SVIDs valid for ttl
// (DefaultDevSVIDTTL when ttl is zero) from ca. logger may be nil. Call Close
// to stop background renewals.
func NewDevProvider(ca *DevCA, ttl time.Duration, logger *slog.Logger) *DevProvider {
	if ttl <= 0 {
		ttl = DefaultDevSVIDTTL
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	p := &DevProvider{ca: ca, ttl: ttl}
	p.cache = newSVIDCache(p.issue, logger.With("provider", "dev-ca", "trust_domain", ca.td.Name()))
	return p
}

func (p *DevProvider) issue(_ context.Context, id spiffeid.ID) (*x509svid.SVID, error) {
	return p.ca.Issue(id, p.ttl)
}

// SVID returns the current SVID for id, issuing one on first use. It fails at
// once for identities outside the CA's trust domain.
func (p *DevProvider) SVID(ctx context.Context, id spiffeid.ID) (*x509svid.SVID, error) {
	if !id.MemberOf(p.ca.td) {
		return nil, fmt.Errorf("dev provider: %s is not in trust domain %s", id, p.ca.td)
	}
	return p.cache.get(ctx, id)
}

// GetX509BundleForTrustDomain returns the CA's bundle for its own trust
// domain and an error for any other.
func (p *DevProvider) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	if td != p.ca.td {
		return nil, fmt.Errorf("dev provider: no bundle for trust domain %q", td.Name())
	}
	return p.ca.bundle, nil
}

// Status reports the SVIDs issued and the CA's bundle.
func (p *DevProvider) Status() Status {
	return Status{
		Mode:      ModeDevCA,
		Source:    "development CA " + p.ca.Fingerprint(),
		Connected: true,
		SVIDs:     p.cache.status(),
		Bundles:   []BundleStatus{bundleStatus(p.ca.bundle, 1, p.ca.cert.NotBefore)},
	}
}

// Release forgets the SVID of id and stops renewing it.
func (p *DevProvider) Release(id spiffeid.ID) { p.cache.release(id) }

// Close stops all renewals; SVID fails with ErrClosed afterwards.
func (p *DevProvider) Close() error {
	p.cache.close()
	return nil
}
