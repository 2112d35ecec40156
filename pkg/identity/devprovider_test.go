package identity

import (
	"context"
	"crypto/ecdsa"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

var (
	webID = spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/web")
	dbID  = spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/db")
)

func newTestProvider(t *testing.T, ttl time.Duration) *DevProvider {
	t.Helper()
	ca, err := LoadOrCreateDevCA(t.TempDir(), testTD)
	if err != nil {
		t.Fatal(err)
	}
	p := NewDevProvider(ca, ttl, nil)
	t.Cleanup(func() { p.Close() })
	return p
}

func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func serial(s *x509svid.SVID) string { return s.Certificates[0].SerialNumber.String() }

func TestDevProvider_CachesPerIdentity(t *testing.T) {
	p := newTestProvider(t, time.Hour)
	ctx := ctxTimeout(t, 5*time.Second)

	a1, err := p.SVID(ctx, webID)
	if err != nil {
		t.Fatal(err)
	}
	a2, err := p.SVID(ctx, webID)
	if err != nil {
		t.Fatal(err)
	}
	if a1 != a2 {
		t.Error("second call issued a new SVID instead of using the cache")
	}
	b, err := p.SVID(ctx, dbID)
	if err != nil {
		t.Fatal(err)
	}
	if b.ID != dbID || a1.ID != webID {
		t.Errorf("IDs = %s, %s", a1.ID, b.ID)
	}
	if a1.PrivateKey.Public().(*ecdsa.PublicKey).Equal(b.PrivateKey.Public()) {
		t.Error("two identities share a key")
	}
	// Issued SVIDs verify against the provider's own bundle.
	if _, _, err := x509svid.Verify(b.Certificates, p); err != nil {
		t.Errorf("verify against provider bundle: %v", err)
	}
}

func TestDevProvider_ConcurrentFirstUseIssuesOnce(t *testing.T) {
	p := newTestProvider(t, time.Hour)
	ctx := ctxTimeout(t, 5*time.Second)
	const n = 32
	got := make([]*x509svid.SVID, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := p.SVID(ctx, webID)
			if err != nil {
				t.Error(err)
			}
			got[i] = s
		}()
	}
	wg.Wait()
	for i := range n {
		if got[i] != got[0] {
			t.Fatalf("caller %d got a different SVID", i)
		}
	}
}

// X.509 stores NotAfter in whole seconds, so a leaf issued for ttl lives
// between ttl-1s and ttl: timings below allow for that.

func TestDevProvider_RenewsAtHalfLifetime(t *testing.T) {
	const ttl = 4 * time.Second
	p := newTestProvider(t, ttl)
	ctx := ctxTimeout(t, 10*time.Second)
	first, err := p.SVID(ctx, webID)
	if err != nil {
		t.Fatal(err)
	}
	// Well before half-life (≥ 1.5 s): still the same SVID.
	time.Sleep(ttl / 4)
	if s, _ := p.SVID(ctx, webID); s != first {
		t.Fatal("renewed too early")
	}
	// Past half-life (plus slack): renewed, with a new key.
	deadline := time.Now().Add(ttl)
	for {
		s, err := p.SVID(ctx, webID)
		if err != nil {
			t.Fatal(err)
		}
		if s != first {
			if serial(s) == serial(first) {
				t.Fatal("renewed SVID has the same serial")
			}
			if s.Certificates[0].NotAfter.Before(first.Certificates[0].NotAfter) {
				t.Fatal("renewed SVID expires earlier")
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("SVID not renewed by the end of its lifetime")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestDevProvider_BundleAndTrustDomain(t *testing.T) {
	p := newTestProvider(t, time.Hour)
	b, err := p.GetX509BundleForTrustDomain(testTD)
	if err != nil || len(b.X509Authorities()) != 1 {
		t.Fatalf("own bundle: %v", err)
	}
	if _, err := p.GetX509BundleForTrustDomain(otherTD); err == nil {
		t.Error("bundle for a foreign trust domain")
	}
	foreign := spiffeid.RequireFromString("spiffe://other.example/ns/a/sa/b")
	if _, err := p.SVID(context.Background(), foreign); err == nil {
		t.Error("SVID for a foreign trust domain")
	}
}

func TestDevProvider_ReleaseAndClose(t *testing.T) {
	p := newTestProvider(t, time.Hour)
	ctx := ctxTimeout(t, 5*time.Second)
	a, err := p.SVID(ctx, webID)
	if err != nil {
		t.Fatal(err)
	}
	p.Release(webID)
	if n := p.cache.len(); n != 0 {
		t.Fatalf("%d entries after release", n)
	}
	b, err := p.SVID(ctx, webID)
	if err != nil {
		t.Fatal(err)
	}
	if a == b {
		t.Error("released identity served from cache")
	}
	p.Release(dbID) // unknown: no-op
	p.Close()
	if _, err := p.SVID(ctx, webID); !errors.Is(err, ErrClosed) {
		t.Errorf("after Close: %v", err)
	}
}

// fakeIssuer lets cache tests inject failures and observe concurrency.
type fakeIssuer struct {
	ca       *DevCA
	ttl      time.Duration
	fail     atomic.Bool
	block    chan struct{} // when non-nil, fetches wait on it
	calls    atomic.Int32
	inFlight atomic.Int32
	maxSeen  atomic.Int32
}

func (f *fakeIssuer) fetch(ctx context.Context, id spiffeid.ID) (*x509svid.SVID, error) {
	f.calls.Add(1)
	n := f.inFlight.Add(1)
	defer f.inFlight.Add(-1)
	for {
		m := f.maxSeen.Load()
		if n <= m || f.maxSeen.CompareAndSwap(m, n) {
			break
		}
	}
	if f.block != nil {
		select {
		case <-f.block:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if f.fail.Load() {
		return nil, errors.New("issuer unavailable")
	}
	return f.ca.Issue(id, f.ttl)
}

func newFakeCache(t *testing.T, f *fakeIssuer) *svidCache {
	t.Helper()
	ca, err := LoadOrCreateDevCA(t.TempDir(), testTD)
	if err != nil {
		t.Fatal(err)
	}
	f.ca = ca
	c := newSVIDCache(f.fetch, nil)
	c.minBackoff = 10 * time.Millisecond
	c.maxBackoff = 40 * time.Millisecond
	t.Cleanup(c.close)
	return c
}

func TestCache_KeepsOldSVIDWhileRenewalFails(t *testing.T) {
	f := &fakeIssuer{ttl: 4 * time.Second} // lives 3–4 s, renewal due after 1.5–2 s
	c := newFakeCache(t, f)
	ctx := ctxTimeout(t, 10*time.Second)
	first, err := c.get(ctx, webID)
	if err != nil {
		t.Fatal(err)
	}
	f.fail.Store(true)
	// Past half-life, renewal attempts fail: the old SVID is still served.
	time.Sleep(2300 * time.Millisecond)
	s, err := c.get(ctx, webID)
	if err != nil || s != first {
		t.Fatalf("got %v, %v; want the old SVID", s, err)
	}
	if calls := f.calls.Load(); calls < 3 {
		t.Fatalf("only %d fetches: renewal not retried", calls)
	}
	// The issuer recovers: the next retry (≤ 40 ms back-off) renews.
	f.fail.Store(false)
	deadline := time.Now().Add(2 * time.Second)
	for s == first {
		if time.Now().After(deadline) {
			t.Fatal("not renewed after the issuer recovered")
		}
		time.Sleep(10 * time.Millisecond)
		if s, err = c.get(ctx, webID); err != nil {
			t.Fatal(err)
		}
	}
}

func TestCache_FirstFetchFailureBlocksUntilContextEnds(t *testing.T) {
	f := &fakeIssuer{ttl: time.Hour}
	f.fail.Store(true)
	c := newFakeCache(t, f)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := c.get(ctx, webID)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "issuer unavailable") {
		t.Fatalf("err = %v; want deadline exceeded with the last fetch error", err)
	}
	// A caller that waits longer gets the SVID once the issuer recovers.
	go func() {
		time.Sleep(50 * time.Millisecond)
		f.fail.Store(false)
	}()
	if _, err := c.get(ctxTimeout(t, 5*time.Second), webID); err != nil {
		t.Fatal(err)
	}
}

func TestCache_BoundsConcurrentFetches(t *testing.T) {
	f := &fakeIssuer{ttl: time.Hour, block: make(chan struct{})}
	c := newFakeCache(t, f)
	ctx := ctxTimeout(t, 10*time.Second)
	const ids = 20
	var wg sync.WaitGroup
	for i := range ids {
		id := spiffeid.RequireFromString("spiffe://cluster.local/ns/n/sa/s" + string(rune('a'+i)))
		for range 3 { // several callers per identity: still one fetch each
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := c.get(ctx, id); err != nil {
					t.Error(err)
				}
			}()
		}
	}
	time.Sleep(200 * time.Millisecond)
	if n := f.inFlight.Load(); n != MaxConcurrentFetches {
		t.Errorf("%d fetches in flight, want %d", n, MaxConcurrentFetches)
	}
	close(f.block)
	wg.Wait()
	if m := f.maxSeen.Load(); m > MaxConcurrentFetches {
		t.Errorf("saw %d concurrent fetches", m)
	}
	if n := f.calls.Load(); n != ids {
		t.Errorf("%d fetches for %d identities", n, ids)
	}
}
