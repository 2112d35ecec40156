package identity

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"golang.org/x/sys/unix"
)

// Files and lifetimes of the development CA.
const (
	// DevCACertFile is the CA certificate (PEM) inside the CA directory.
	DevCACertFile = "ca.pem"
	// DevCAKeyFile is the CA private key (PKCS#8 PEM, mode 0600).
	DevCAKeyFile = "ca-key.pem"
	// DevCALifetime is the validity of a newly created development CA.
	DevCALifetime = 10 * 365 * 24 * time.Hour

	lockFile = ".ca.lock"
	// clockSkew back-dates NotBefore so that peers with slightly slow clocks
	// accept fresh certificates.
	clockSkew = time.Minute
	// loserWait bounds how long a process that lost the creation race waits
	// for the winner's certificate when file locking is unavailable.
	loserWait = 10 * time.Second
)

// DevCA is the built-in development certificate authority: a self-signed
// P-256 root for one trust domain that issues X.509 SVIDs directly. It is the
// embedded default when no SPIRE is configured; it is not meant for
// production clusters (the key sits on the node's disk).
//
// A DevCA is immutable and safe for concurrent use.
type DevCA struct {
	td     spiffeid.TrustDomain
	cert   *x509.Certificate
	key    crypto.Signer
	bundle *x509bundle.Bundle
}

// LoadOrCreateDevCA loads the development CA for td from dir (DevCACertFile
// and DevCAKeyFile), creating dir and a new CA when neither file exists.
//
// Several processes may call it at once against the same dir: creation is
// serialised with an advisory lock on dir/.ca.lock, and the files are
// published by hard-linking fully written temporary files into place, which
// fails if the name already exists; a process that loses the race loads the
// winner's CA. Every caller therefore ends up with the same CA. An existing CA
// for another trust domain, a key that does not match the certificate, or a
// certificate that is not a CA is an error, never silently replaced.
func LoadOrCreateDevCA(dir string, td spiffeid.TrustDomain) (*DevCA, error) {
	if td.IsZero() {
		return nil, errors.New("dev CA: empty trust domain")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("dev CA: create directory: %w", err)
	}
	unlock, locked, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	defer unlock()

	certPath := filepath.Join(dir, DevCACertFile)
	keyPath := filepath.Join(dir, DevCAKeyFile)
	_, certErr := os.Stat(certPath)
	_, keyErr := os.Stat(keyPath)
	certMissing, keyMissing := errors.Is(certErr, fs.ErrNotExist), errors.Is(keyErr, fs.ErrNotExist)
	switch {
	case certErr != nil && !certMissing:
		return nil, fmt.Errorf("dev CA: %w", certErr)
	case keyErr != nil && !keyMissing:
		return nil, fmt.Errorf("dev CA: %w", keyErr)
	case !certMissing && !keyMissing:
		return loadDevCA(dir, td)
	case certMissing && keyMissing:
		return createDevCA(dir, td, nil)
	case certMissing && !locked:
		// Without file locks another process may be between its two
		// links: wait for its certificate.
		return waitForCert(dir, td)
	case certMissing:
		// We hold the lock, so a creator crashed between its two links.
		// Finish its work: certify the published key.
		keyPEM, err := os.ReadFile(keyPath)
		if err != nil {
			return nil, fmt.Errorf("dev CA: %w", err)
		}
		key, err := decodeKey(keyPEM)
		if err != nil {
			return nil, err
		}
		return createDevCA(dir, td, key)
	default:
		return nil, fmt.Errorf("dev CA: %s exists without %s in %s; move it away to create a new CA", DevCACertFile, DevCAKeyFile, dir)
	}
}

// lockDir takes an exclusive advisory lock on dir/.ca.lock. The kernel drops
// the lock when the process dies, so a crashed creator never blocks others.
// File systems without flock support fall back to the link-based exclusion
// alone.
func lockDir(dir string) (unlock func(), locked bool, err error) {
	f, err := os.OpenFile(filepath.Join(dir, lockFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, false, fmt.Errorf("dev CA: open lock file: %w", err)
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil && !errors.Is(err, unix.ENOLCK) && !errors.Is(err, unix.EOPNOTSUPP) {
		f.Close()
		return nil, false, fmt.Errorf("dev CA: lock %s: %w", f.Name(), err)
	}
	return func() { f.Close() }, err == nil, nil // closing releases the lock
}

// createDevCA creates and publishes a CA. With key == nil it generates and
// publishes a new key first; otherwise key is already published and only the
// certificate is missing.
func createDevCA(dir string, td spiffeid.TrustDomain, key crypto.Signer) (*DevCA, error) {
	newKey := key == nil
	if newKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("dev CA: generate key: %w", err)
		}
		key = k
	}
	now := time.Now()
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	ski, err := subjectKeyID(key.Public())
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"Palisade"}, CommonName: "Palisade development CA " + td.Name()},
		URIs:                  []*url.URL{td.ID().URL()},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(DevCALifetime),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		SubjectKeyId:          ski,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("dev CA: create certificate: %w", err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})

	// The key goes first: whoever links it wins; the certificate follows.
	// Readers only use the pair once both names exist.
	if newKey {
		keyDER, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return nil, fmt.Errorf("dev CA: marshal key: %w", err)
		}
		keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
		won, err := publish(dir, DevCAKeyFile, keyPEM, 0o600)
		if err != nil {
			return nil, err
		}
		if !won {
			return waitForCert(dir, td)
		}
	}
	won, err := publish(dir, DevCACertFile, certPEM, 0o644)
	if err != nil {
		return nil, err
	}
	if !won {
		// Only possible without file locks: another creator certified the
		// key first. Load whatever is there; loadDevCA checks the pair.
		return loadDevCA(dir, td)
	}
	syncDir(dir)
	return loadDevCA(dir, td)
}

// publish writes data to a temporary file in dir and hard-links it to name.
// It reports false, without error, when name already exists (another process
// won the race).
func publish(dir, name string, data []byte, mode os.FileMode) (bool, error) {
	tmp, err := os.CreateTemp(dir, "."+name+".tmp-*")
	if err != nil {
		return false, fmt.Errorf("dev CA: temp file for %s: %w", name, err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return false, fmt.Errorf("dev CA: chmod %s: %w", tmp.Name(), err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return false, fmt.Errorf("dev CA: write %s: %w", tmp.Name(), err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return false, fmt.Errorf("dev CA: sync %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return false, fmt.Errorf("dev CA: close %s: %w", tmp.Name(), err)
	}
	if err := os.Link(tmp.Name(), filepath.Join(dir, name)); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return false, nil
		}
		return false, fmt.Errorf("dev CA: publish %s: %w", name, err)
	}
	return true, nil
}

func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
}

// waitForCert waits for the winner of a creation race to publish its
// certificate, then loads the CA.
func waitForCert(dir string, td spiffeid.TrustDomain) (*DevCA, error) {
	deadline := time.Now().Add(loserWait)
	for {
		if _, err := os.Stat(filepath.Join(dir, DevCACertFile)); err == nil {
			return loadDevCA(dir, td)
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("dev CA: timed out waiting for %s in %s", DevCACertFile, dir)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func loadDevCA(dir string, td spiffeid.TrustDomain) (*DevCA, error) {
	certPEM, err := os.ReadFile(filepath.Join(dir, DevCACertFile))
	if err != nil {
		return nil, fmt.Errorf("dev CA: %w", err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, DevCAKeyFile))
	if err != nil {
		return nil, fmt.Errorf("dev CA: %w", err)
	}
	return ParseDevCA(certPEM, keyPEM, td)
}

// ParseDevCA builds a DevCA from a PEM certificate and a PEM private key
// (PKCS#8, SEC 1 "EC PRIVATE KEY" or PKCS#1). The certificate must be a CA
// certificate, match the key, and, if it carries a SPIFFE URI SAN, belong to
// td.
func ParseDevCA(certPEM, keyPEM []byte, td spiffeid.TrustDomain) (*DevCA, error) {
	certBlock, _ := pem.Decode(certPEM)
	if certBlock == nil || certBlock.Type != "CERTIFICATE" {
		return nil, errors.New("dev CA: no PEM certificate found")
	}
	cert, err := x509.ParseCertificate(certBlock.Bytes)
	if err != nil {
		return nil, fmt.Errorf("dev CA: parse certificate: %w", err)
	}
	key, err := decodeKey(keyPEM)
	if err != nil {
		return nil, err
	}
	if !cert.IsCA || cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, errors.New("dev CA: certificate is not a signing CA")
	}
	if pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(cert.PublicKey) {
		return nil, errors.New("dev CA: private key does not match certificate")
	}
	for _, u := range cert.URIs {
		if u.Scheme != "spiffe" {
			continue
		}
		got, err := spiffeid.TrustDomainFromURI(u)
		if err != nil {
			return nil, fmt.Errorf("dev CA: certificate URI SAN: %w", err)
		}
		if got != td {
			return nil, fmt.Errorf("dev CA: certificate is for trust domain %q, not %q", got.Name(), td.Name())
		}
	}
	if time.Now().After(cert.NotAfter) {
		return nil, fmt.Errorf("dev CA: certificate expired at %s", cert.NotAfter.Format(time.RFC3339))
	}
	return &DevCA{
		td:     td,
		cert:   cert,
		key:    key,
		bundle: x509bundle.FromX509Authorities(td, []*x509.Certificate{cert}),
	}, nil
}

func decodeKey(keyPEM []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(keyPEM)
	if block == nil {
		return nil, errors.New("dev CA: no PEM private key found")
	}
	der := block.Bytes
	if k, err := x509.ParsePKCS8PrivateKey(der); err == nil {
		s, ok := k.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("dev CA: unsupported key type %T", k)
		}
		return s, nil
	}
	if k, err := x509.ParseECPrivateKey(der); err == nil {
		return k, nil
	}
	if k, err := x509.ParsePKCS1PrivateKey(der); err == nil {
		return k, nil
	}
	return nil, errors.New("dev CA: unparsable private key")
}

// TrustDomain returns the trust domain the CA issues for.
func (ca *DevCA) TrustDomain() spiffeid.TrustDomain { return ca.td }

// Certificate returns the CA certificate. The caller must not modify it.
func (ca *DevCA) Certificate() *x509.Certificate { return ca.cert }

// Bundle returns a copy of the trust bundle holding the CA certificate.
func (ca *DevCA) Bundle() *x509bundle.Bundle { return ca.bundle.Clone() }

// Fingerprint returns the hex SHA-256 of the CA certificate, for logs.
func (ca *DevCA) Fingerprint() string {
	sum := sha256.Sum256(ca.cert.Raw)
	return hex.EncodeToString(sum[:])
}

// Issue creates a fresh P-256 key and a leaf certificate for id valid for
// ttl (capped at the CA's own expiry). The leaf carries id as its only URI
// SAN, digitalSignature key usage, and both serverAuth and clientAuth extended
// key usages, so one SVID serves both ends of an HBONE tunnel.
func (ca *DevCA) Issue(id spiffeid.ID, ttl time.Duration) (*x509svid.SVID, error) {
	if !id.MemberOf(ca.td) {
		return nil, fmt.Errorf("dev CA: %s is not in trust domain %s", id, ca.td)
	}
	if id.Path() == "" {
		return nil, fmt.Errorf("dev CA: %s has no path", id)
	}
	if ttl <= 0 {
		return nil, fmt.Errorf("dev CA: invalid TTL %s", ttl)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("dev CA: generate key for %s: %w", id, err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	notAfter := now.Add(ttl)
	if notAfter.After(ca.cert.NotAfter) {
		notAfter = ca.cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"Palisade"}},
		URIs:                  []*url.URL{id.URL()},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              notAfter,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		AuthorityKeyId:        ca.cert.SubjectKeyId,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return nil, fmt.Errorf("dev CA: sign certificate for %s: %w", id, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("dev CA: parse certificate for %s: %w", id, err)
	}
	return &x509svid.SVID{ID: id, Certificates: []*x509.Certificate{leaf}, PrivateKey: key}, nil
}

func randomSerial() (*big.Int, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("dev CA: serial number: %w", err)
	}
	return serial, nil
}

func subjectKeyID(pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("dev CA: marshal public key: %w", err)
	}
	sum := sha256.Sum256(der)
	return sum[:20], nil
}
