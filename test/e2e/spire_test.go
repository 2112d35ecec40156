package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/palisade-net/palisade/pkg/hbone"
	"github.com/palisade-net/palisade/pkg/identity"
	"github.com/palisade-net/palisade/pkg/lab"
	"github.com/palisade-net/palisade/pkg/netns"
)

// builtTools returns the directory holding the given test binaries (built
// by make into $PALISADE_TEST_BIN or .cache/test-bin). The builds take
// minutes, so tests do not start them: they fail in CI and skip elsewhere,
// naming the make target.
func builtTools(t *testing.T, target string, names ...string) string {
	t.Helper()
	requireRoot(t)
	dir := os.Getenv("PALISADE_TEST_BIN")
	if dir == "" {
		root, err := filepath.Abs("../..")
		if err != nil {
			t.Fatal(err)
		}
		dir = filepath.Join(root, ".cache", "test-bin")
	}
	for _, b := range names {
		if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
			msg := fmt.Sprintf("%s not built in %s: run make %s", b, dir, target)
			if os.Getenv("CI") != "" {
				t.Fatal(msg)
			}
			t.Skip(msg)
		}
	}
	return dir
}

// spireBinDir returns the directory with spire-server and spire-agent
// (SPIRE v1.13.3 from tools/spire).
func spireBinDir(t *testing.T) string {
	t.Helper()
	return builtTools(t, "spire", "spire-server", "spire-agent")
}

// upSPIRELab builds a lab whose node proxies take identities from a real
// SPIRE server and one SPIRE agent per node.
func upSPIRELab(t *testing.T, yaml string, svidTTL time.Duration, entries string) *lab.Lab {
	t.Helper()
	spireBin := spireBinDir(t)
	return upLabWith(t, "e2esp"+randHex(3), yaml, func(c *lab.Config) {
		c.Identity = "spire"
		c.SPIREBinDir = spireBin
		c.SPIRESVIDTTL = svidTTL
		c.SPIREEntries = entries
	})
}

// svidState mirrors identity.SVIDStatus's JSON.
type svidState struct {
	ID       string    `json:"id"`
	Ready    bool      `json:"ready"`
	Serial   string    `json:"serial"`
	Issuer   string    `json:"issuer"`
	URIs     []string  `json:"uris"`
	NotAfter time.Time `json:"notAfter"`
	Updates  uint64    `json:"updates"`
	Reason   string    `json:"reason"`
}

// identityState mirrors identity.Status's JSON.
type identityState struct {
	Mode      string      `json:"mode"`
	Connected bool        `json:"connected"`
	Self      *svidState  `json:"self"`
	SVIDs     []svidState `json:"svids"`
	Bundles   []struct {
		TrustDomain string   `json:"trustDomain"`
		Authorities []string `json:"authorities"`
	} `json:"bundles"`
}

func identities(t *testing.T, node *netns.Handle) identityState {
	t.Helper()
	var st identityState
	adminGet(t, node, "/identities", &st)
	return st
}

func (s identityState) svid(id string) (svidState, bool) {
	for _, x := range s.SVIDs {
		if x.ID == id {
			return x, true
		}
	}
	return svidState{}, false
}

// mintSVID has the lab's SPIRE server mint an SVID for id (as an attacker
// or an out-of-mesh client with a valid SPIRE identity would hold) and
// returns it with the server's bundle.
func mintSVID(t *testing.T, l *lab.Lab, id string) (*x509svid.SVID, *x509bundle.Bundle) {
	t.Helper()
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if out, err := l.SPIREServer(ctx, "x509", "mint", "-spiffeID", id, "-ttl", "1h", "-write", dir); err != nil {
		t.Fatalf("spire-server x509 mint: %v\n%s", err, out)
	}
	svid, err := x509svid.Load(filepath.Join(dir, "svid.pem"), filepath.Join(dir, "key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := x509bundle.Load(svid.ID.TrustDomain(), filepath.Join(dir, "bundle.pem"))
	if err != nil {
		t.Fatal(err)
	}
	return svid, b
}

// presentedLeaf completes a TLS handshake with an enrolled pod's 15008
// from h, verifying the server's chain against bundle and its SPIFFE ID
// against want, and returns the server's leaf certificate.
func presentedLeaf(h *netns.Handle, addr string, client *x509svid.SVID, bundle *x509bundle.Bundle, want spiffeid.ID) (*x509.Certificate, error) {
	cfg := tlsconfig.MTLSClientConfig(client, bundle, tlsconfig.AuthorizeID(want))
	cfg.NextProtos = []string{"h2"}
	cfg.MinVersion = tls.VersionTLS13
	tc, err := dialTLS(h, addr, cfg)
	if err != nil {
		return nil, err
	}
	defer tc.Close()
	return tc.ConnectionState().PeerCertificates[0], nil
}

func serialOf(c *x509.Certificate) string { return hex.EncodeToString(c.SerialNumber.Bytes()) }

// steadyTraffic opens a new echo connection every interval until stop,
// counting failures with their errors.
type steadyTraffic struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	errs       []string
	stop       chan struct{}
	done       chan struct{}
}

func startSteady(h *netns.Handle, addr string, interval time.Duration) *steadyTraffic {
	s := &steadyTraffic{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for i := 0; ; i++ {
			select {
			case <-s.stop:
				return
			case <-t.C:
			}
			if err := tryEcho(h, addr, fmt.Sprintf("steady-%d", i), 2048); err != nil {
				s.failed.Add(1)
				s.mu.Lock()
				s.errs = append(s.errs, time.Now().Format("15:04:05.000")+" "+err.Error())
				s.mu.Unlock()
			} else {
				s.ok.Add(1)
			}
		}
	}()
	return s
}

func (s *steadyTraffic) check(t *testing.T, phase string) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if n := s.failed.Load(); n > 0 {
		t.Fatalf("%s: %d of %d steady requests failed: %s", phase, n, n+s.ok.Load(), strings.Join(s.errs, "; "))
	}
	if s.ok.Load() == 0 {
		t.Fatalf("%s: no steady request completed", phase)
	}
}

func (s *steadyTraffic) halt() {
	close(s.stop)
	<-s.done
}

// staticProvider serves one SVID and one bundle, for a test client that
// plays a workload outside the lab.
type staticProvider struct {
	svid   *x509svid.SVID
	bundle *x509bundle.Bundle
}

func (p staticProvider) SVID(context.Context, spiffeid.ID) (*x509svid.SVID, error) {
	return p.svid, nil
}
func (p staticProvider) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return p.bundle.GetX509BundleForTrustDomain(td)
}
func (p staticProvider) Release(spiffeid.ID) {}

// TestSPIREIdentity runs the mesh on SVIDs from a real SPIRE server and
// agents: the certificates come from SPIRE, they rotate under a steady load
// without a failed request, the SPIRE server and a SPIRE agent can go away
// and come back, and peers with the wrong trust domain or identity are
// refused.
func TestSPIREIdentity(t *testing.T) {
	// 60 s SVIDs: SPIRE's agent renews at half-life, so two rotations take
	// about 70 s.
	const ttl = 60 * time.Second
	l := upSPIRELab(t, meshYAML, ttl, "manage")
	client := podNetns(t, l, "shop", "client")
	visitor := podNetns(t, l, "plain", "visitor")
	node1, node2 := nodeNetns(t, l, "node1"), nodeNetns(t, l, "node2")
	echo2 := podAddr(t, l, "shop", "echo2", 9000)
	echo2HBONE := netip.AddrPortFrom(netip.MustParseAddrPort(echo2).Addr(), hbone.Port).String()
	echoID := spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/echo")
	clientID := "spiffe://cluster.local/ns/shop/sa/client"
	visitorSVID, spireBundle := mintSVID(t, l, "spiffe://cluster.local/ns/plain/sa/visitor")
	spireCA := spireBundle.X509Authorities()

	// Enrolled traffic across nodes works on SPIRE SVIDs.
	eventually(t, 30*time.Second, "client reaches echo2 over HBONE", func() error { return tryEcho(client, echo2, "spire-first", 64<<10) })
	waitFlowTo(t, node1, echo2, "hbone")
	var inbound flow
	eventually(t, 5*time.Second, "node2 records the inbound HBONE flow", func() error {
		for _, f := range flows(t, node2) {
			if f.Direction == "inbound-hbone" && f.PeerIdentity == clientID {
				inbound = f
				return nil
			}
		}
		return errors.New("no inbound-hbone flow from the client's identity")
	})
	t.Logf("inbound flow: %+v", inbound)

	// The certificates are SPIRE's: the admin endpoint of each proxy shows
	// SVIDs issued by the SPIRE CA with the workload's URI SAN ...
	for _, c := range []struct {
		node *netns.Handle
		id   string
	}{{node1, clientID}, {node2, echoID.String()}} {
		st := identities(t, c.node)
		s, ok := st.svid(c.id)
		if st.Mode != "spire" || !ok || !s.Ready {
			t.Fatalf("identities: mode %q, %s: %+v", st.Mode, c.id, st.SVIDs)
		}
		if s.Issuer != spireCA[0].Subject.String() || len(s.URIs) != 1 || s.URIs[0] != c.id {
			t.Fatalf("%s: issuer %q URIs %v; want issuer %q (SPIRE's CA) and URI %s", c.id, s.Issuer, s.URIs, spireCA[0].Subject, c.id)
		}
		if st.Self == nil || !st.Self.Ready || !strings.HasPrefix(st.Self.ID, "spiffe://cluster.local/palisade/nodeproxy/") {
			t.Fatalf("node proxy's own SVID: %+v", st.Self)
		}
	}
	// ... and a handshake with echo2's 15008 verifies against SPIRE's
	// bundle and presents exactly that SVID.
	leaf, err := presentedLeaf(visitor, echo2HBONE, visitorSVID, spireBundle, echoID)
	if err != nil {
		t.Fatalf("handshake with echo2 verified against SPIRE's bundle: %v", err)
	}
	echoSVID, _ := identities(t, node2).svid(echoID.String())
	if serialOf(leaf) != echoSVID.Serial {
		t.Fatalf("echo2 presented serial %s, its proxy reports %s", serialOf(leaf), echoSVID.Serial)
	}

	// Rotation: a long-running connection and a steady stream of new
	// connections survive two rotations of both ends' SVIDs, and new
	// handshakes present the new SVID.
	long := openLong(t, client, echo2)
	steady := startSteady(client, echo2, 250*time.Millisecond)
	defer steady.halt()
	first := identities(t, node2)
	start1, _ := first.svid(echoID.String())
	startClient, _ := identities(t, node1).svid(clientID)
	seen := map[string]bool{serialOf(leaf): true}
	deadline := time.Now().Add(4 * ttl)
	for {
		if err := long.roundTrip("during rotation"); err != nil {
			t.Fatal(err)
		}
		cur, _ := identities(t, node2).svid(echoID.String())
		curClient, _ := identities(t, node1).svid(clientID)
		if cur.Serial != "" && !seen[cur.Serial] {
			leaf, err := presentedLeaf(visitor, echo2HBONE, visitorSVID, spireBundle, echoID)
			if err != nil {
				t.Fatalf("handshake after rotation: %v", err)
			}
			if serialOf(leaf) != cur.Serial {
				// The proxy may have rotated again in between; retry next round.
				t.Logf("rotation race: presented %s, current %s", serialOf(leaf), cur.Serial)
			} else {
				seen[cur.Serial] = true
				t.Logf("echo2 rotated to serial %s (not after %s), new handshakes present it", cur.Serial, cur.NotAfter)
			}
		}
		if cur.Updates >= start1.Updates+2 && curClient.Updates >= startClient.Updates+2 && len(seen) >= 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: echo2 updates %d→%d, client %d→%d, serials seen in handshakes %d; want two rotations each",
				4*ttl, start1.Updates, cur.Updates, startClient.Updates, curClient.Updates, len(seen))
		}
		time.Sleep(time.Second)
	}
	steady.check(t, "through two rotations")

	// The SPIRE server goes away for a while (less than the SVIDs' remaining
	// lifetime): existing and new traffic, and new handshakes, keep working
	// on cached SVIDs.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := l.StopSPIREServer(ctx, syscall.SIGTERM); err != nil {
		t.Fatalf("stop SPIRE server: %v", err)
	}
	outage := time.Now()
	for time.Since(outage) < 15*time.Second {
		if err := long.roundTrip("server down"); err != nil {
			t.Fatal(err)
		}
		if _, err := presentedLeaf(visitor, echo2HBONE, visitorSVID, spireBundle, echoID); err != nil {
			t.Fatalf("new handshake while the SPIRE server is down: %v", err)
		}
		time.Sleep(time.Second)
	}
	steady.check(t, "while the SPIRE server was down")
	if err := l.StartSPIREServer(ctx); err != nil {
		t.Fatalf("start SPIRE server: %v", err)
	}

	// node2's SPIRE agent restarts: traffic carries on meanwhile, and the
	// proxy's subscriptions resume (the next rotation arrives through them).
	before, _ := identities(t, node2).svid(echoID.String())
	if err := l.StopSPIREAgent(ctx, "node2", syscall.SIGTERM); err != nil {
		t.Fatalf("stop SPIRE agent: %v", err)
	}
	eventually(t, 10*time.Second, "node2's proxy notices its SPIRE agent is gone", func() error {
		if identities(t, node2).Connected {
			return errors.New("still reports connected")
		}
		return nil
	})
	if err := long.roundTrip("agent down"); err != nil {
		t.Fatal(err)
	}
	mustEcho(t, client, echo2, "agent-down", 4096)
	if err := l.StartSPIREAgent(ctx, "node2"); err != nil {
		t.Fatalf("start SPIRE agent: %v", err)
	}
	eventually(t, 2*ttl, "node2's subscription resumes and delivers a rotated SVID", func() error {
		st := identities(t, node2)
		s, _ := st.svid(echoID.String())
		if !st.Connected || !s.Ready || s.Updates <= before.Updates {
			return fmt.Errorf("connected %v, SVID %+v (updates before the restart %d)", st.Connected, s, before.Updates)
		}
		return nil
	})
	if err := long.roundTrip("after agent restart"); err != nil {
		t.Fatal(err)
	}
	steady.check(t, "through the SPIRE server outage and agent restart")

	// Peers with a foreign trust domain, or a server with another identity
	// than the destination workload's, are refused (and the refusal logged).
	t.Run("certificate of another trust domain", func(t *testing.T) {
		mark := logSize(t, l, "node2")
		evil, err := identity.LoadOrCreateDevCA(t.TempDir(), spiffeid.RequireTrustDomainFromString("evil.local"))
		if err != nil {
			t.Fatal(err)
		}
		svid, err := evil.Issue(spiffeid.RequireFromString("spiffe://evil.local/ns/shop/sa/client"), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		cfg := tlsconfig.MTLSClientConfig(svid, evil.Bundle(), tlsconfig.AuthorizeAny())
		cfg.NextProtos = []string{"h2"}
		cfg.InsecureSkipVerify = true // we are the attacker; we want the server's verdict
		cfg.VerifyPeerCertificate = nil
		if err := tlsRefused(visitor, echo2HBONE, cfg); err != nil {
			t.Fatal(err)
		}
		eventually(t, 5*time.Second, "node2 logs the refusal naming the trust domain", func() error {
			if !strings.Contains(logSince(t, l, "node2", mark), "evil.local") {
				return errors.New("no log line naming evil.local")
			}
			return nil
		})
	})
	t.Run("server identity other than the destination's", func(t *testing.T) {
		pool, err := hbone.NewPool(hbone.PoolConfig{Identities: staticProvider{visitorSVID, spireBundle},
			Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		defer pool.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		key := hbone.Key{Src: visitorSVID.ID, Dst: spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/other"),
			DstAddr: netip.MustParseAddrPort(echo2HBONE)}
		_, err = pool.Dial(ctx, key, echo2, http.Header{}, func(ctx context.Context) (net.Conn, error) { return dialFrom(ctx, visitor, echo2HBONE) })
		var pe *hbone.PeerIdentityError
		if !errors.As(err, &pe) || pe.Got != echoID {
			t.Fatalf("want a PeerIdentityError naming %s, got %v", echoID, err)
		}
		// The same client expecting the right identity gets through: the
		// refusal above was about the identity, not the client.
		key.Dst = echoID
		c, err := pool.Dial(ctx, key, echo2, http.Header{}, func(ctx context.Context) (net.Conn, error) { return dialFrom(ctx, visitor, echo2HBONE) })
		if err != nil {
			t.Fatalf("tunnel with the right expected identity: %v", err)
		}
		c.Close()
	})
}

// orphanYAML adds a pod whose service account has no SPIRE entry.
const orphanYAML = `
---
apiVersion: v1
kind: Pod
metadata: {name: orphan, namespace: shop, labels: {app: orphan}}
spec:
  nodeName: node1
  serviceAccountName: orphan
  containers: [{name: c, command: ["sleep", "infinity"]}]
`

// TestSPIREMissingEntry runs the agents with entry management off (as with
// spire-controller-manager): the test registers the workloads itself, the
// agents leave those entries alone, a pod without an entry is refused with
// a reason naming its identity, and registering it later makes it work
// without restarting anything.
func TestSPIREMissingEntry(t *testing.T) {
	l := upSPIRELab(t, meshYAML+orphanYAML, 0, "off")
	client := podNetns(t, l, "shop", "client")
	orphan := podNetns(t, l, "shop", "orphan")
	node1 := nodeNetns(t, l, "node1")
	echo2 := podAddr(t, l, "shop", "echo2", 9000)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	register := func(node, sa string) {
		t.Helper()
		out, err := l.SPIREServer(ctx, "entry", "create",
			"-parentID", "spiffe://cluster.local/palisade/node/"+node,
			"-spiffeID", "spiffe://cluster.local/ns/shop/sa/"+sa,
			"-selector", "k8s:ns:shop", "-selector", "k8s:sa:"+sa)
		if err != nil {
			t.Fatalf("spire-server entry create for %s on %s: %v\n%s", sa, node, err, out)
		}
	}
	register("node1", "client")
	register("node2", "echo")
	eventually(t, 60*time.Second, "client reaches echo2 once both are registered", func() error { return tryEcho(client, echo2, "registered", 4096) })

	// The orphan has no entry: its connection is held, then refused (never
	// sent in plaintext), and the reason names the missing identity.
	orphanID := "spiffe://cluster.local/ns/shop/sa/orphan"
	if err := tryEcho(orphan, echo2, "orphan", 1024); err == nil {
		t.Fatal("the orphan reached echo2 without an SVID")
	}
	var refused flow
	eventually(t, 10*time.Second, "node1 records the orphan's refusal", func() error {
		for _, f := range flows(t, node1) {
			if f.Pod == "shop/orphan" && f.Verdict == "failed" {
				refused = f
				return nil
			}
		}
		return errors.New("no failed flow of shop/orphan")
	})
	for _, want := range []string{orphanID, "no SPIRE registration entry", "k8s:sa:orphan"} {
		if !strings.Contains(refused.Reason, want) {
			t.Errorf("refusal reason %q does not name %q", refused.Reason, want)
		}
	}
	if refused.Transport != "hbone" {
		t.Errorf("orphan's flow transport %q, want hbone (never plaintext)", refused.Transport)
	}
	st := identities(t, node1)
	if s, ok := st.svid(orphanID); !ok || s.Ready || !strings.Contains(s.Reason, "no SPIRE registration entry") {
		t.Errorf("node1 identities for the orphan: %+v", s)
	}

	// Registering it makes it work, without restarts.
	register("node1", "orphan")
	eventually(t, 60*time.Second, "the orphan reaches echo2 once registered", func() error { return tryEcho(orphan, echo2, "orphan-registered", 4096) })

	// Entry management off: the agents created nothing and removed nothing.
	out, err := l.SPIREServer(ctx, "entry", "show")
	if err != nil {
		t.Fatalf("entry show: %v\n%s", err, out)
	}
	for _, sa := range []string{"client", "echo", "orphan"} {
		if n := strings.Count(string(out), "spiffe://cluster.local/ns/shop/sa/"+sa+"\n"); n != 1 {
			t.Errorf("entries for sa %s: %d, want exactly the test's one\n%s", sa, n, out)
		}
	}
	if strings.Contains(string(out), "Hint             : palisade") {
		t.Errorf("an agent created entries although entry management is off:\n%s", out)
	}
}
