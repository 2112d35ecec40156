package registration

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
)

func newTestReconciler(t *testing.T, fs *fakeServer, mod func(*Config)) *Reconciler {
	t.Helper()
	cfg := Config{Client: fs, TrustDomain: testTD, ParentID: testParent, Logger: testLogger(t)}
	if mod != nil {
		mod(&cfg)
	}
	r, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// paths lists the SPIFFE ID paths of the entries whose hint is h, sorted.
func paths(es []*types.Entry, h string) string {
	var out []string
	for _, e := range es {
		if e.GetHint() == h {
			out = append(out, e.GetSpiffeId().GetPath())
		}
	}
	slices.Sort(out)
	return strings.Join(out, " ")
}

func TestNewValidates(t *testing.T) {
	tests := []struct {
		name    string
		mod     func(*Config)
		wantErr string
	}{
		{name: "valid", mod: func(*Config) {}},
		{name: "valid TTL", mod: func(c *Config) { c.SVIDTTL = time.Hour }},
		{name: "no client", mod: func(c *Config) { c.Client = nil }, wantErr: "no entry API client"},
		{name: "no trust domain", mod: func(c *Config) { c.TrustDomain = spiffeid.TrustDomain{} }, wantErr: "no trust domain"},
		{name: "no parent", mod: func(c *Config) { c.ParentID = spiffeid.ID{} }, wantErr: "no parent ID"},
		{name: "parent in another trust domain", mod: func(c *Config) { c.ParentID = spiffeid.RequireFromString("spiffe://other.org/node") }, wantErr: "not in trust domain"},
		{name: "parent without path", mod: func(c *Config) { c.ParentID = spiffeid.RequireFromString("spiffe://cluster.local") }, wantErr: "has no path"},
		{name: "negative TTL", mod: func(c *Config) { c.SVIDTTL = -time.Second }, wantErr: "negative"},
		{name: "fractional TTL", mod: func(c *Config) { c.SVIDTTL = 1500 * time.Millisecond }, wantErr: "whole number of seconds"},
		{name: "huge TTL", mod: func(c *Config) { c.SVIDTTL = (1 << 31) * time.Second }, wantErr: "too long"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := Config{Client: newFakeServer(), TrustDomain: testTD, ParentID: testParent}
			tt.mod(&cfg)
			_, err := New(cfg)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestSyncBeforeUpdateDoesNothing(t *testing.T) {
	fs := newFakeServer()
	fs.add(own("", "shop", "web", 0))
	r := newTestReconciler(t, fs, nil)
	res, err := r.Sync(context.Background())
	if err != nil || res != (Result{}) {
		t.Fatalf("Sync before Update: %+v, %v", res, err)
	}
	if calls := fs.takeCalls(); len(calls) != 0 {
		t.Fatalf("Sync before Update called the server: %v", calls)
	}
	if len(fs.snapshot()) != 1 {
		t.Fatal("own entry removed before the desired set was known")
	}
}

// TestSyncPagingAndBatches converges a server holding more entries than a
// page, with batches smaller than the work, and checks the second pass
// does nothing.
func TestSyncPagingAndBatches(t *testing.T) {
	fs := newFakeServer()
	fs.maxPage = 3
	var want []ServiceAccount
	for i := range 10 {
		want = append(want, ServiceAccount{Namespace: "shop", Name: "sa" + itoa(i)})
	}
	for i := range 7 {
		fs.add(own("", "old", "sa"+itoa(i), 0)) // stale own entries
	}
	for i := range 4 {
		fs.add(foreign("", "ops", "tool"+itoa(i))) // foreign, not desired
	}
	fs.add(foreign("", "shop", "sa9"))                                 // foreign, satisfies shop/sa9
	fs.add(ent("", "shop", "sa8", otherNode, Hint, 0))                 // another node's
	fs.add(ent("", "old", "sa1", "spiffe://cluster.local/x", Hint, 0)) // another parent's
	before := fs.snapshot()
	r := newTestReconciler(t, fs, func(c *Config) { c.BatchSize = 4; c.PageSize = 100 })
	r.Update(want)

	res, err := r.Sync(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if want := (Result{Created: 9, Deleted: 7, Foreign: 1}); res != want {
		t.Fatalf("first pass %+v, want %+v", res, want)
	}
	calls := fs.takeCalls()
	lists := 0
	for _, c := range calls {
		if c == "list" {
			lists++
		}
	}
	// 7 stale + 4 foreign + 1 foreign-satisfying under the parent = 12
	// entries, 3 a page: four pages with entries.
	if lists < 4 {
		t.Errorf("ListEntries called %d times, want every page (>= 4): %v", lists, calls)
	}
	if got, want := strings.Join(slices.DeleteFunc(calls, func(c string) bool { return c == "list" }), " "),
		"create:4 create:4 create:1 delete:4 delete:3"; got != want {
		t.Errorf("batches %q, want %q", got, want)
	}

	after := fs.snapshot()
	if got, want := paths(after, Hint), "/ns/old/sa/sa1 /ns/shop/sa/sa0 /ns/shop/sa/sa1 /ns/shop/sa/sa2 /ns/shop/sa/sa3 /ns/shop/sa/sa4 /ns/shop/sa/sa5 /ns/shop/sa/sa6 /ns/shop/sa/sa7 /ns/shop/sa/sa8 /ns/shop/sa/sa8"; got != want {
		t.Errorf("palisade entries:\n got %s\nwant %s", got, want)
	}
	// Everything not ours is exactly as before.
	for _, b := range before {
		if s := (spec{td: testTD, parent: testParent}); s.own(b) {
			continue
		}
		i := slices.IndexFunc(after, func(a *types.Entry) bool { return a.Id == b.Id })
		if i < 0 || key(after[i]) != key(b) || after[i].RevisionNumber != b.RevisionNumber {
			t.Errorf("entry %s of someone else was touched", b.Id)
		}
	}

	res, err = r.Sync(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if want := (Result{Unchanged: 9, Foreign: 1}); res != want {
		t.Fatalf("second pass %+v, want %+v", res, want)
	}
	for _, c := range fs.takeCalls() {
		if c != "list" {
			t.Errorf("second pass changed something: %s", c)
		}
	}
}

func TestSyncPartialFailure(t *testing.T) {
	fs := newFakeServer()
	fs.rejectCreate["spiffe://cluster.local/ns/shop/sa/bad"] = true
	// A similar entry another writer created after our listing: the
	// server answers AlreadyExists, which is success.
	fs.hidden[fs.add(foreign("", "shop", "racy"))] = true
	r := newTestReconciler(t, fs, nil)
	r.Update(sas("shop/bad", "shop/good", "shop/racy"))
	res, err := r.Sync(context.Background())
	if err == nil || !strings.Contains(err.Error(), "spiffe://cluster.local/ns/shop/sa/bad") || !strings.Contains(err.Error(), "datastore on fire") {
		t.Fatalf("error %v, want one naming the failed entry and the reason", err)
	}
	if strings.Contains(err.Error(), "racy") {
		t.Fatalf("AlreadyExists treated as failure: %v", err)
	}
	if res.Created != 1 {
		t.Fatalf("created %d, want 1 (the others are not lost to one failure)", res.Created)
	}
	if got := paths(fs.snapshot(), Hint); got != "/ns/shop/sa/good" {
		t.Fatalf("palisade entries %q", got)
	}
	if got := paths(fs.snapshot(), ""); got != "/ns/shop/sa/racy" {
		t.Fatalf("foreign entries %q (no duplicate next to the similar one)", got)
	}
}

func TestUpdateInPlace(t *testing.T) {
	fs := newFakeServer()
	id := fs.add(own("", "shop", "web", 60))
	r := newTestReconciler(t, fs, func(c *Config) { c.SVIDTTL = time.Hour })
	r.Update(sas("shop/web"))
	res, err := r.Sync(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if res != (Result{Updated: 1}) {
		t.Fatalf("result %+v, want one update", res)
	}
	es := fs.snapshot()
	if len(es) != 1 || es[0].Id != id || es[0].X509SvidTtl != 3600 {
		t.Fatalf("entries after update: %v", es)
	}
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestRun(t *testing.T) {
	fs := newFakeServer()
	staleID := fs.add(own("", "old", "gone", 0))
	fs.failList = 3 // the server is not up at first
	r := newTestReconciler(t, fs, func(c *Config) {
		c.Debounce = 20 * time.Millisecond
		c.ResyncInterval = 100 * time.Millisecond
		c.MinBackoff = 10 * time.Millisecond
		c.MaxBackoff = 40 * time.Millisecond
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	// Nothing happens before the desired set is known.
	time.Sleep(150 * time.Millisecond)
	if calls := fs.takeCalls(); len(calls) != 0 {
		t.Fatalf("Run acted before the first Update: %v", calls)
	}

	// Changes in quick succession are applied together, after the server
	// comes back.
	r.Update(sas("shop/web"))
	r.Update(sas("shop/web", "shop/db"))
	waitFor(t, "entries created", 5*time.Second, func() bool {
		return paths(fs.snapshot(), Hint) == "/ns/shop/sa/db /ns/shop/sa/web"
	})
	calls := fs.takeCalls()
	if got := strings.Join(calls, " "); !strings.HasPrefix(got, "list list list list create:2 delete:1") {
		t.Fatalf("calls %q, want three failed listings retried, then one create batch and one delete batch", got)
	}
	for _, e := range fs.snapshot() {
		if e.Id == staleID {
			t.Fatal("stale own entry not deleted")
		}
	}

	// An entry deleted behind the reconciler's back comes back on resync.
	var webID string
	for _, e := range fs.snapshot() {
		if strings.HasSuffix(e.SpiffeId.Path, "/web") {
			webID = e.Id
		}
	}
	fs.remove(webID)
	waitFor(t, "entry re-created by resync", 5*time.Second, func() bool {
		return paths(fs.snapshot(), Hint) == "/ns/shop/sa/db /ns/shop/sa/web"
	})

	// A service account leaving removes its entry.
	r.Update(sas("shop/db"))
	waitFor(t, "entry deleted", 5*time.Second, func() bool {
		return paths(fs.snapshot(), Hint) == "/ns/shop/sa/db"
	})
}
