package identity

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

var (
	testTD  = spiffeid.RequireTrustDomainFromString("cluster.local")
	otherTD = spiffeid.RequireTrustDomainFromString("other.example")
)

func TestLoadOrCreateDevCA_CreatesThenLoads(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca") // does not exist yet
	ca1, err := LoadOrCreateDevCA(dir, testTD)
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]os.FileMode{DevCAKeyFile: 0o600, DevCACertFile: 0o644} {
		st, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != want {
			t.Errorf("%s mode = %v, want %v", name, st.Mode().Perm(), want)
		}
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.Contains(e.Name(), ".tmp-") {
			t.Errorf("temporary file left behind: %s", e.Name())
		}
	}
	cert := ca1.Certificate()
	if !cert.IsCA || cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Errorf("CA certificate lacks CA flags")
	}
	if len(cert.URIs) != 1 || cert.URIs[0].String() != "spiffe://cluster.local" {
		t.Errorf("CA URI SANs = %v", cert.URIs)
	}
	if pub, ok := cert.PublicKey.(*ecdsa.PublicKey); !ok || pub.Curve != elliptic.P256() {
		t.Errorf("CA key is not P-256: %T", cert.PublicKey)
	}

	ca2, err := LoadOrCreateDevCA(dir, testTD)
	if err != nil {
		t.Fatal(err)
	}
	if ca1.Fingerprint() != ca2.Fingerprint() {
		t.Fatal("second load returned a different CA")
	}
}

func TestLoadOrCreateDevCA_Errors(t *testing.T) {
	base := t.TempDir()
	good := filepath.Join(base, "good")
	if _, err := LoadOrCreateDevCA(good, testTD); err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(base, "other")
	if _, err := LoadOrCreateDevCA(other, testTD); err != nil {
		t.Fatal(err)
	}
	copyFile := func(t *testing.T, from, to string) {
		b, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(to, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}

	tests := []struct {
		name    string
		setup   func(t *testing.T, dir string)
		td      spiffeid.TrustDomain
		wantErr string
	}{
		{
			name: "other trust domain",
			setup: func(t *testing.T, dir string) {
				copyFile(t, filepath.Join(good, DevCACertFile), filepath.Join(dir, DevCACertFile))
				copyFile(t, filepath.Join(good, DevCAKeyFile), filepath.Join(dir, DevCAKeyFile))
			},
			td:      otherTD,
			wantErr: "trust domain",
		},
		{
			name: "key does not match certificate",
			setup: func(t *testing.T, dir string) {
				copyFile(t, filepath.Join(good, DevCACertFile), filepath.Join(dir, DevCACertFile))
				copyFile(t, filepath.Join(other, DevCAKeyFile), filepath.Join(dir, DevCAKeyFile))
			},
			td:      testTD,
			wantErr: "does not match",
		},
		{
			name: "certificate without key",
			setup: func(t *testing.T, dir string) {
				copyFile(t, filepath.Join(good, DevCACertFile), filepath.Join(dir, DevCACertFile))
			},
			td:      testTD,
			wantErr: "without",
		},
		{
			name: "garbage certificate",
			setup: func(t *testing.T, dir string) {
				os.WriteFile(filepath.Join(dir, DevCACertFile), []byte("junk"), 0o600)
				copyFile(t, filepath.Join(good, DevCAKeyFile), filepath.Join(dir, DevCAKeyFile))
			},
			td:      testTD,
			wantErr: "no PEM certificate",
		},
		{
			name:    "empty trust domain",
			setup:   func(t *testing.T, dir string) {},
			wantErr: "empty trust domain",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			tc.setup(t, dir)
			_, err := LoadOrCreateDevCA(dir, tc.td)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
}

// A creator that crashed between publishing the key and the certificate
// leaves only the key; the next caller certifies that key.
func TestLoadOrCreateDevCA_RecoversKeyWithoutCert(t *testing.T) {
	dir := t.TempDir()
	ca1, err := LoadOrCreateDevCA(dir, testTD)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, DevCACertFile)); err != nil {
		t.Fatal(err)
	}
	ca2, err := LoadOrCreateDevCA(dir, testTD)
	if err != nil {
		t.Fatal(err)
	}
	if !ca1.Certificate().PublicKey.(*ecdsa.PublicKey).Equal(ca2.Certificate().PublicKey) {
		t.Fatal("recovered CA uses a different key")
	}
}

func TestLoadOrCreateDevCA_ConcurrentGoroutines(t *testing.T) {
	dir := t.TempDir()
	const n = 16
	fps := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ca, err := LoadOrCreateDevCA(dir, testTD)
			if err == nil {
				fps[i] = ca.Fingerprint()
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("caller %d: %v", i, errs[i])
		}
		if fps[i] != fps[0] {
			t.Fatalf("caller %d got CA %s, caller 0 got %s", i, fps[i], fps[0])
		}
	}
}

// Several node-proxy processes starting at once must agree on one CA. The
// test binary re-executes itself as the helper processes.
func TestLoadOrCreateDevCA_ConcurrentProcesses(t *testing.T) {
	if dir := os.Getenv("PALISADE_DEVCA_HELPER_DIR"); dir != "" {
		ca, err := LoadOrCreateDevCA(dir, testTD)
		if err != nil {
			fmt.Println("ERROR", err)
			os.Exit(1)
		}
		fmt.Println("FP", ca.Fingerprint())
		os.Exit(0)
	}
	if testing.Short() {
		t.Skip("spawns processes")
	}
	dir := t.TempDir()
	const n = 6
	cmds := make([]*exec.Cmd, n)
	outs := make([]*strings.Builder, n)
	for i := range n {
		cmds[i] = exec.Command(os.Args[0], "-test.run=^TestLoadOrCreateDevCA_ConcurrentProcesses$")
		cmds[i].Env = append(os.Environ(), "PALISADE_DEVCA_HELPER_DIR="+dir)
		outs[i] = &strings.Builder{}
		cmds[i].Stdout = outs[i]
		cmds[i].Stderr = outs[i]
	}
	for _, c := range cmds {
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
	}
	var first string
	for i, c := range cmds {
		if err := c.Wait(); err != nil {
			t.Fatalf("helper %d: %v: %s", i, err, outs[i])
		}
		var fp string
		for _, line := range strings.Split(outs[i].String(), "\n") {
			if rest, ok := strings.CutPrefix(line, "FP "); ok {
				fp = rest
			}
		}
		if fp == "" {
			t.Fatalf("helper %d printed no fingerprint: %s", i, outs[i])
		}
		if first == "" {
			first = fp
		} else if fp != first {
			t.Fatalf("helper %d got CA %s, helper 0 got %s", i, fp, first)
		}
	}
	ca, err := LoadOrCreateDevCA(dir, testTD)
	if err != nil {
		t.Fatal(err)
	}
	if ca.Fingerprint() != first {
		t.Fatal("CA on disk differs from the one the helpers loaded")
	}
}

func TestDevCAIssue(t *testing.T) {
	ca, err := LoadOrCreateDevCA(t.TempDir(), testTD)
	if err != nil {
		t.Fatal(err)
	}
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/web")

	t.Run("valid leaf", func(t *testing.T) {
		svid, err := ca.Issue(id, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		leaf := svid.Certificates[0]
		if len(leaf.URIs) != 1 || leaf.URIs[0].String() != id.String() {
			t.Errorf("URI SANs = %v", leaf.URIs)
		}
		if leaf.IsCA {
			t.Error("leaf is a CA")
		}
		if leaf.KeyUsage != x509.KeyUsageDigitalSignature {
			t.Errorf("key usage = %v", leaf.KeyUsage)
		}
		eku := map[x509.ExtKeyUsage]bool{}
		for _, u := range leaf.ExtKeyUsage {
			eku[u] = true
		}
		if !eku[x509.ExtKeyUsageServerAuth] || !eku[x509.ExtKeyUsageClientAuth] {
			t.Errorf("extended key usage = %v", leaf.ExtKeyUsage)
		}
		if k, ok := svid.PrivateKey.(*ecdsa.PrivateKey); !ok || k.Curve != elliptic.P256() {
			t.Errorf("key is not P-256: %T", svid.PrivateKey)
		}
		if got := time.Until(leaf.NotAfter); got < 59*time.Minute || got > time.Hour {
			t.Errorf("lifetime left = %v", got)
		}
		// The SVID must verify against the CA's bundle with go-spiffe.
		gotID, _, err := x509svid.Verify(svid.Certificates, ca.Bundle())
		if err != nil {
			t.Fatalf("verify: %v", err)
		}
		if gotID != id {
			t.Errorf("verified ID = %s", gotID)
		}
		// And round-trip through go-spiffe's own validation.
		certPEM, keyPEM, err := svid.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := x509svid.Parse(certPEM, keyPEM); err != nil {
			t.Fatalf("go-spiffe rejects the SVID: %v", err)
		}
	})

	t.Run("ttl capped at CA expiry", func(t *testing.T) {
		svid, err := ca.Issue(id, 100*365*24*time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if svid.Certificates[0].NotAfter.After(ca.Certificate().NotAfter) {
			t.Error("leaf outlives its CA")
		}
	})

	for _, tc := range []struct {
		name string
		id   spiffeid.ID
		ttl  time.Duration
	}{
		{"other trust domain", spiffeid.RequireFromString("spiffe://other.example/ns/a/sa/b"), time.Hour},
		{"no path", testTD.ID(), time.Hour},
		{"zero ttl", id, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := ca.Issue(tc.id, tc.ttl); err == nil {
				t.Fatal("expected an error")
			}
		})
	}
}
