package identity

import (
	"crypto/x509"
	"encoding/hex"
	"sort"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Mode names reported by providers.
const (
	ModeDevCA = "dev-ca"
	ModeSPIRE = "spire"
)

// Status is what a provider reports about itself for the admin endpoint and
// metrics: never private keys, only certificate facts.
type Status struct {
	// Mode is ModeDevCA or ModeSPIRE.
	Mode string `json:"mode"`
	// Source describes where identities come from (CA directory, SPIRE
	// agent socket).
	Source string `json:"source"`
	// Connected reports whether the identity source is reachable right now
	// (always true for the development CA).
	Connected bool `json:"connected"`
	// LastError is the most recent problem talking to the source.
	LastError string `json:"lastError,omitempty"`
	// Self is the node proxy's own SVID, when the mode has one.
	Self *SVIDStatus `json:"self,omitempty"`
	// SVIDs are the workload identities in use, sorted by ID.
	SVIDs []SVIDStatus `json:"svids"`
	// Bundles are the trust bundles peers are verified against.
	Bundles []BundleStatus `json:"bundles"`
}

// SVIDStatus describes the current SVID of one identity.
type SVIDStatus struct {
	ID string `json:"id"`
	// Ready is true while a valid SVID is held.
	Ready bool `json:"ready"`
	// Serial, Issuer, URIs, NotBefore and NotAfter describe the leaf
	// certificate (empty when no SVID is held).
	Serial    string    `json:"serial,omitempty"`
	Issuer    string    `json:"issuer,omitempty"`
	URIs      []string  `json:"uris,omitempty"`
	NotBefore time.Time `json:"notBefore,omitzero"`
	NotAfter  time.Time `json:"notAfter,omitzero"`
	// Updates counts the SVIDs received or issued for this identity since
	// it came into use (the first one included); Updates-1 rotations.
	Updates uint64 `json:"updates"`
	// Reason says why no SVID is held, or the last renewal problem.
	Reason string `json:"reason,omitempty"`
}

// BundleStatus describes the trust bundle of one trust domain.
type BundleStatus struct {
	TrustDomain string `json:"trustDomain"`
	// Authorities lists the CA certificates as "subject (serial, not after)".
	Authorities []string `json:"authorities"`
	// Updates counts how often the bundle changed since start-up.
	Updates uint64 `json:"updates"`
	// UpdatedAt is when it last changed.
	UpdatedAt time.Time `json:"updatedAt"`
}

// Reporter is implemented by providers that can describe their state.
type Reporter interface {
	Status() Status
}

// Readiness is implemented by providers that need time (or a reachable
// source) before they can serve: Ready returns nil once they can.
type Readiness interface {
	Ready() error
}

func svidStatus(id string, s *x509svid.SVID, now time.Time) SVIDStatus {
	st := SVIDStatus{ID: id}
	if s == nil || len(s.Certificates) == 0 {
		return st
	}
	leaf := s.Certificates[0]
	st.Ready = now.Before(leaf.NotAfter)
	st.Serial = hex.EncodeToString(leaf.SerialNumber.Bytes())
	st.Issuer = leaf.Issuer.String()
	for _, u := range leaf.URIs {
		st.URIs = append(st.URIs, u.String())
	}
	st.NotBefore, st.NotAfter = leaf.NotBefore, leaf.NotAfter
	return st
}

func bundleStatus(b *x509bundle.Bundle, updates uint64, at time.Time) BundleStatus {
	st := BundleStatus{TrustDomain: b.TrustDomain().Name(), Updates: updates, UpdatedAt: at}
	for _, c := range b.X509Authorities() {
		st.Authorities = append(st.Authorities, describeCA(c))
	}
	return st
}

func describeCA(c *x509.Certificate) string {
	return c.Subject.String() + " (serial " + hex.EncodeToString(c.SerialNumber.Bytes()) + ", not after " + c.NotAfter.UTC().Format(time.RFC3339) + ")"
}

func sortSVIDs(s []SVIDStatus) {
	sort.Slice(s, func(i, j int) bool { return s[i].ID < s[j].ID })
}
