package identity

import (
	"context"
	"crypto/x509"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	delegatedv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/agent/delegatedidentity/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// fakeAgent is a stand-in for the SPIRE agent's Delegated Identity API in
// this package's unit tests (the end-to-end tests run real SPIRE). Tests push
// responses to every open subscription of an identity.
type fakeAgent struct {
	delegatedv1.UnimplementedDelegatedIdentityServer

	mu       sync.Mutex
	subs     map[string][]chan *delegatedv1.SubscribeToX509SVIDsResponse // by "ns:x,sa:y"
	opened   map[string]int
	bundles  []chan map[string][]byte
	deny     bool
	changed  chan struct{}
	initial  map[string]*delegatedv1.SubscribeToX509SVIDsResponse
	bundleV0 map[string][]byte
}

func newFakeAgent() *fakeAgent {
	return &fakeAgent{
		subs:    map[string][]chan *delegatedv1.SubscribeToX509SVIDsResponse{},
		opened:  map[string]int{},
		changed: make(chan struct{}, 100),
		initial: map[string]*delegatedv1.SubscribeToX509SVIDsResponse{},
	}
}

func selKey(sel []*types.Selector) string {
	var s []string
	for _, x := range sel {
		s = append(s, x.Type+":"+x.Value)
	}
	return strings.Join(s, ",")
}

func (f *fakeAgent) SubscribeToX509SVIDs(req *delegatedv1.SubscribeToX509SVIDsRequest, stream delegatedv1.DelegatedIdentity_SubscribeToX509SVIDsServer) error {
	key := selKey(req.Selectors)
	ch := make(chan *delegatedv1.SubscribeToX509SVIDsResponse, 10)
	f.mu.Lock()
	if f.deny {
		f.mu.Unlock()
		return status.Error(codes.PermissionDenied, "caller not configured as an authorized delegate")
	}
	f.subs[key] = append(f.subs[key], ch)
	f.opened[key]++
	if r := f.initial[key]; r != nil {
		ch <- r
	} else {
		ch <- &delegatedv1.SubscribeToX509SVIDsResponse{}
	}
	f.mu.Unlock()
	f.changed <- struct{}{}
	defer func() {
		f.mu.Lock()
		list := f.subs[key]
		for i, c := range list {
			if c == ch {
				f.subs[key] = append(list[:i], list[i+1:]...)
				break
			}
		}
		f.mu.Unlock()
		f.changed <- struct{}{}
	}()
	for {
		select {
		case r, ok := <-ch:
			if !ok {
				return status.Error(codes.Unavailable, "agent going away")
			}
			if err := stream.Send(r); err != nil {
				return err
			}
		case <-stream.Context().Done():
			return nil
		}
	}
}

func (f *fakeAgent) SubscribeToX509Bundles(_ *delegatedv1.SubscribeToX509BundlesRequest, stream delegatedv1.DelegatedIdentity_SubscribeToX509BundlesServer) error {
	ch := make(chan map[string][]byte, 10)
	f.mu.Lock()
	f.bundles = append(f.bundles, ch)
	if f.bundleV0 != nil {
		ch <- f.bundleV0
	}
	f.mu.Unlock()
	for {
		select {
		case b, ok := <-ch:
			if !ok {
				return status.Error(codes.Unavailable, "agent going away")
			}
			if err := stream.Send(&delegatedv1.SubscribeToX509BundlesResponse{CaCertificates: b}); err != nil {
				return err
			}
		case <-stream.Context().Done():
			return nil
		}
	}
}

// push sends r to the open subscriptions of key and makes it the initial
// update of later ones.
func (f *fakeAgent) push(key string, r *delegatedv1.SubscribeToX509SVIDsResponse) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.initial[key] = r
	for _, ch := range f.subs[key] {
		ch <- r
	}
}

func (f *fakeAgent) pushBundles(b map[string][]byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.bundleV0 = b
	for _, ch := range f.bundles {
		ch <- b
	}
}

func (f *fakeAgent) open(key string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.subs[key])
}

// startFakeAgent serves f on a unix socket until the test ends; stop ends
// the server (every stream breaks).
func startFakeAgent(t *testing.T, f *fakeAgent, sock string) (stop func()) {
	t.Helper()
	os.Remove(sock)
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	delegatedv1.RegisterDelegatedIdentityServer(srv, f)
	go srv.Serve(ln)
	var once sync.Once
	stop = func() { once.Do(srv.Stop) }
	t.Cleanup(stop)
	return stop
}

func svidResponse(t *testing.T, svids ...*x509svid.SVID) *delegatedv1.SubscribeToX509SVIDsResponse {
	t.Helper()
	r := &delegatedv1.SubscribeToX509SVIDsResponse{}
	for _, s := range svids {
		key, err := x509.MarshalPKCS8PrivateKey(s.PrivateKey)
		if err != nil {
			t.Fatal(err)
		}
		var chain [][]byte
		for _, c := range s.Certificates {
			chain = append(chain, c.Raw)
		}
		r.X509Svids = append(r.X509Svids, &delegatedv1.X509SVIDWithKey{
			X509Svid:    &types.X509SVID{Id: &types.SPIFFEID{TrustDomain: s.ID.TrustDomain().Name(), Path: s.ID.Path()}, CertChain: chain, ExpiresAt: s.Certificates[0].NotAfter.Unix()},
			X509SvidKey: key,
		})
	}
	return r
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

type spireFixture struct {
	agent *fakeAgent
	sock  string
	stop  func()
	p     *SPIREProvider
	ca    *DevCA
	td    spiffeid.TrustDomain
}

func newSPIREFixture(t *testing.T) *spireFixture {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "spire-fake-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	ca, err := LoadOrCreateDevCA(t.TempDir(), td)
	if err != nil {
		t.Fatal(err)
	}
	f := &spireFixture{agent: newFakeAgent(), sock: filepath.Join(dir, "admin.sock"), ca: ca, td: td}
	f.agent.bundleV0 = map[string][]byte{td.IDString(): ca.Certificate().Raw}
	f.stop = startFakeAgent(t, f.agent, f.sock)
	p, err := NewSPIREProvider(SPIREConfig{AdminSocket: f.sock, TrustDomain: td})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	f.p = p
	return f
}

func (f *spireFixture) issue(t *testing.T, id spiffeid.ID, ttl time.Duration) *x509svid.SVID {
	t.Helper()
	s, err := f.ca.Issue(id, ttl)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestSPIREProviderRotation(t *testing.T) {
	f := newSPIREFixture(t)
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/web")
	key := "k8s:ns:shop,k8s:sa:web"
	first := f.issue(t, id, time.Hour)
	f.agent.push(key, svidResponse(t, f.issue(t, spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/other"), time.Hour), first))

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	got, err := f.p.SVID(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Certificates[0].Equal(first.Certificates[0]) {
		t.Fatal("first SVID: got another certificate than the agent sent for this ID")
	}
	if n := f.agent.open(key); n != 1 {
		t.Fatalf("%d subscriptions open for %s, want exactly 1 (selectors must be k8s:ns and k8s:sa)", n, key)
	}
	// A second call uses the same subscription.
	if _, err := f.p.SVID(ctx, id); err != nil || f.agent.open(key) != 1 {
		t.Fatalf("second call: err %v, %d subscriptions", err, f.agent.open(key))
	}

	rotated := f.issue(t, id, time.Hour)
	f.agent.push(key, svidResponse(t, rotated))
	waitFor(t, "the rotated SVID", func() bool {
		s, err := f.p.SVID(ctx, id)
		return err == nil && s.Certificates[0].Equal(rotated.Certificates[0])
	})
	st := f.p.Status()
	if len(st.SVIDs) != 1 || st.SVIDs[0].Updates != 2 || !st.SVIDs[0].Ready || st.SVIDs[0].NotAfter.IsZero() {
		t.Fatalf("status after one rotation: %+v", st.SVIDs)
	}

	// Release ends the subscription.
	f.p.Release(id)
	waitFor(t, "the subscription to end", func() bool { return f.agent.open(key) == 0 })
	if st := f.p.Status(); len(st.SVIDs) != 0 {
		t.Fatalf("status after release: %+v", st.SVIDs)
	}
}

func TestSPIREProviderMissingEntry(t *testing.T) {
	f := newSPIREFixture(t)
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/nobody")
	key := "k8s:ns:shop,k8s:sa:nobody"

	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	_, err := f.p.SVID(ctx, id)
	cancel()
	var ne *NoSVIDError
	if !errors.As(err, &ne) || ne.ID != id {
		t.Fatalf("want a NoSVIDError for %s, got %v", id, err)
	}
	for _, want := range []string{"no SPIRE registration entry", id.String(), "k8s:ns:shop, k8s:sa:nobody"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}

	// The entry appears: a waiting call gets the SVID, no restart needed.
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := f.p.SVID(ctx, id)
		done <- err
	}()
	time.Sleep(50 * time.Millisecond)
	f.agent.push(key, svidResponse(t, f.issue(t, id, time.Hour)))
	if err := <-done; err != nil {
		t.Fatalf("after the entry appeared: %v", err)
	}

	// The entry is deleted: SPIRE withdraws the identity.
	f.agent.push(key, &delegatedv1.SubscribeToX509SVIDsResponse{})
	waitFor(t, "the SVID to be withdrawn", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		defer cancel()
		_, err := f.p.SVID(ctx, id)
		return err != nil
	})
}

func TestSPIREProviderAgentRestart(t *testing.T) {
	f := newSPIREFixture(t)
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/web")
	key := "k8s:ns:shop,k8s:sa:web"
	first := f.issue(t, id, time.Hour)
	f.agent.push(key, svidResponse(t, first))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := f.p.SVID(ctx, id); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the local bundle", func() bool { return f.p.Ready() == nil })

	// The agent goes away: cached SVID and bundle keep serving.
	f.stop()
	waitFor(t, "the provider to notice", func() bool { return !f.p.Status().Connected })
	if s, err := f.p.SVID(ctx, id); err != nil || !s.Certificates[0].Equal(first.Certificates[0]) {
		t.Fatalf("cached SVID while the agent is down: %v", err)
	}
	if _, err := f.p.GetX509BundleForTrustDomain(f.td); err != nil {
		t.Fatalf("cached bundle while the agent is down: %v", err)
	}

	// A new agent on the same socket, whose first update is empty (still
	// syncing): the cached SVID stays; then it delivers a rotated one.
	agent2 := newFakeAgent()
	agent2.bundleV0 = f.agent.bundleV0
	startFakeAgent(t, agent2, f.sock)
	waitFor(t, "the subscription to resume", func() bool { return agent2.open(key) == 1 })
	if s, err := f.p.SVID(ctx, id); err != nil || !s.Certificates[0].Equal(first.Certificates[0]) {
		t.Fatalf("after resubscribing with an empty first update: %v", err)
	}
	rotated := f.issue(t, id, time.Hour)
	agent2.push(key, svidResponse(t, rotated))
	waitFor(t, "the rotated SVID from the new agent", func() bool {
		s, err := f.p.SVID(ctx, id)
		return err == nil && s.Certificates[0].Equal(rotated.Certificates[0])
	})
	waitFor(t, "the bundle stream to resume", func() bool { return f.p.Status().Connected })
}

func TestSPIREProviderExpiry(t *testing.T) {
	f := newSPIREFixture(t)
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/web")
	key := "k8s:ns:shop,k8s:sa:web"
	f.agent.push(key, svidResponse(t, f.issue(t, id, 1500*time.Millisecond)))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := f.p.SVID(ctx, id); err != nil {
		t.Fatal(err)
	}
	f.stop() // no renewal will come
	waitFor(t, "the SVID to expire", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		defer cancel()
		_, err := f.p.SVID(ctx, id)
		return err != nil && strings.Contains(err.Error(), "expired")
	})
}

func TestSPIREProviderBundles(t *testing.T) {
	f := newSPIREFixture(t)
	waitFor(t, "the local bundle", func() bool { return f.p.Ready() == nil })
	fed := spiffeid.RequireTrustDomainFromString("partner.example")
	fedCA, err := LoadOrCreateDevCA(t.TempDir(), fed)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.p.GetX509BundleForTrustDomain(fed); err == nil {
		t.Fatal("bundle for a trust domain not federated yet")
	}
	f.agent.pushBundles(map[string][]byte{f.td.IDString(): f.ca.Certificate().Raw, fed.IDString(): fedCA.Certificate().Raw})
	waitFor(t, "the federated bundle", func() bool {
		b, err := f.p.GetX509BundleForTrustDomain(fed)
		return err == nil && b.HasX509Authority(fedCA.Certificate())
	})
	if st := f.p.Status(); len(st.Bundles) != 2 {
		t.Fatalf("status bundles: %+v", st.Bundles)
	}
	f.agent.pushBundles(map[string][]byte{f.td.IDString(): f.ca.Certificate().Raw})
	waitFor(t, "the federated bundle to go", func() bool {
		_, err := f.p.GetX509BundleForTrustDomain(fed)
		return err != nil
	})
}

func TestSPIREProviderNotADelegate(t *testing.T) {
	f := newSPIREFixture(t)
	f.agent.mu.Lock()
	f.agent.deny = true
	f.agent.mu.Unlock()
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/web")
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	_, err := f.p.SVID(ctx, id)
	if err == nil || !strings.Contains(err.Error(), "authorized_delegates") {
		t.Fatalf("want an error pointing at authorized_delegates, got %v", err)
	}
}

func TestWorkloadSelectors(t *testing.T) {
	for _, tc := range []struct {
		id   string
		want string
	}{
		{"spiffe://cluster.local/ns/shop/sa/web", "k8s:ns:shop, k8s:sa:web"},
		{"spiffe://cluster.local/ns/shop", ""},
		{"spiffe://cluster.local/palisade/node/n1", ""},
		{"spiffe://cluster.local/ns/shop/sa/web/extra", ""},
	} {
		sel, err := WorkloadSelectors(spiffeid.RequireFromString(tc.id))
		if tc.want == "" {
			if err == nil {
				t.Errorf("%s: want an error, got %s", tc.id, selectorString(sel))
			}
			continue
		}
		if err != nil || selectorString(sel) != tc.want {
			t.Errorf("%s: got %q %v, want %q", tc.id, selectorString(sel), err, tc.want)
		}
	}
}
