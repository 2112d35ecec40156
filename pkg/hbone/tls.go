package hbone

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/palisade-net/palisade/pkg/identity"
)

// staticSVID adapts one SVID to x509svid.Source.
type staticSVID struct{ svid *x509svid.SVID }

func (s staticSVID) GetX509SVID() (*x509svid.SVID, error) { return s.svid, nil }

// authorizeExactly requires the peer's SPIFFE ID to be want, with a typed
// error otherwise.
func authorizeExactly(want spiffeid.ID) tlsconfig.Authorizer {
	return func(got spiffeid.ID, _ [][]*x509.Certificate) error {
		if got != want {
			return &PeerIdentityError{Want: want, Got: got}
		}
		return nil
	}
}

// clientTLSConfig returns the client side of HBONE mTLS: TLS 1.3 only, ALPN
// h2, svid presented as client certificate, the server chain verified
// against bundles and the server's SPIFFE ID required to equal dst.
func clientTLSConfig(svid *x509svid.SVID, bundles x509bundle.Source, dst spiffeid.ID) *tls.Config {
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: []string{alpnH2},
	}
	// Sets InsecureSkipVerify: X.509 name checks do not apply, the SPIFFE
	// verification below replaces them.
	tlsconfig.HookMTLSClientConfig(cfg, staticSVID{svid}, bundles, authorizeExactly(dst))
	cfg.MinVersion = tls.VersionTLS13
	// Full-size records from the first byte: dynamic sizing helps a
	// browser render early bytes, while a pooled tunnel only pays for the
	// extra records and syscalls.
	cfg.DynamicRecordSizingDisabled = true
	// No ClientSessionCache: no resumption, which would skip the SPIFFE
	// verification above.
	return cfg
}

// authorizeTrusted accepts clients of the local trust domain td and of any
// trust domain the provider holds a bundle for (federation); the chain was
// verified against that bundle before the authorizer runs. Which of them may
// reach a workload is policy's decision.
func authorizeTrusted(p x509bundle.Source, td spiffeid.TrustDomain) tlsconfig.Authorizer {
	return func(got spiffeid.ID, _ [][]*x509.Certificate) error {
		if got.MemberOf(td) {
			return nil
		}
		if _, err := p.GetX509BundleForTrustDomain(got.TrustDomain()); err != nil {
			return fmt.Errorf("hbone: client %s is not of trust domain %s nor of a federated one", got, td)
		}
		return nil
	}
}

// serverTLSConfig returns the server side of HBONE mTLS for the local
// identity id: TLS 1.3 only, ALPN h2, the current SVID of id fetched from the
// provider at each handshake, client certificates required, verified against
// the provider's bundles, and the client required to be a member of td or
// of a federated trust domain.
func serverTLSConfig(p identity.Provider, id spiffeid.ID, td spiffeid.TrustDomain) *tls.Config {
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: []string{alpnH2},
	}
	tlsconfig.HookMTLSServerConfig(cfg, nil, p, authorizeTrusted(p, td))
	cfg.MinVersion = tls.VersionTLS13
	// VerifyPeerCertificate is skipped on resumed sessions: without tickets
	// every connection is verified against the current bundle.
	cfg.SessionTicketsDisabled = true
	cfg.DynamicRecordSizingDisabled = true
	cfg.GetCertificate = func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
		ctx := hello.Context()
		if ctx == nil {
			ctx = context.Background()
		}
		svid, err := p.SVID(ctx, id)
		if err != nil {
			return nil, fmt.Errorf("hbone: SVID for %s: %w", id, err)
		}
		return tlsCertificate(svid)
	}
	return cfg
}

func tlsCertificate(svid *x509svid.SVID) (*tls.Certificate, error) {
	if svid == nil || len(svid.Certificates) == 0 {
		return nil, errors.New("hbone: empty SVID")
	}
	cert := &tls.Certificate{
		Certificate: make([][]byte, len(svid.Certificates)),
		PrivateKey:  svid.PrivateKey,
		Leaf:        svid.Certificates[0],
	}
	for i, c := range svid.Certificates {
		cert.Certificate[i] = c.Raw
	}
	return cert, nil
}

// peerID returns the SPIFFE ID of a verified TLS peer.
func peerID(cs tls.ConnectionState) (spiffeid.ID, error) {
	if len(cs.PeerCertificates) == 0 {
		return spiffeid.ID{}, errors.New("hbone: peer presented no certificate")
	}
	return x509svid.IDFromCert(cs.PeerCertificates[0])
}
