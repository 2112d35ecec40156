package registration

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
)

var (
	testTD     = spiffeid.RequireTrustDomainFromString("cluster.local")
	testParent = spiffeid.RequireFromString("spiffe://cluster.local/palisade/node/n1")
	otherNode  = "spiffe://cluster.local/palisade/node/n2"
)

// ent builds an entry for sa under parent with the given hint and TTL.
func ent(id, ns, sa, parent, hint string, ttl int32) *types.Entry {
	return &types.Entry{
		Id:          id,
		SpiffeId:    apiID("spiffe://cluster.local/ns/" + ns + "/sa/" + sa),
		ParentId:    apiID(parent),
		Selectors:   []*types.Selector{{Type: "k8s", Value: "ns:" + ns}, {Type: "k8s", Value: "sa:" + sa}},
		X509SvidTtl: ttl,
		Hint:        hint,
	}
}

func own(id, ns, sa string, ttl int32) *types.Entry {
	return ent(id, ns, sa, testParent.String(), Hint, ttl)
}

func foreign(id, ns, sa string) *types.Entry {
	return ent(id, ns, sa, testParent.String(), "", 0)
}

func with(e *types.Entry, f func(*types.Entry)) *types.Entry {
	f(e)
	return e
}

func sas(s ...string) []ServiceAccount {
	var out []ServiceAccount
	for _, x := range s {
		ns, name, _ := strings.Cut(x, "/")
		out = append(out, ServiceAccount{Namespace: ns, Name: name})
	}
	return out
}

// describe renders entries as "id:path:ttl" (id omitted when empty).
func describe(es []*types.Entry) string {
	var out []string
	for _, e := range es {
		s := e.GetSpiffeId().GetPath() + fmt.Sprintf(":%d", e.GetX509SvidTtl())
		if e.GetId() != "" {
			s = e.GetId() + ":" + s
		}
		out = append(out, s)
	}
	return strings.Join(out, " ")
}

func TestDiff(t *testing.T) {
	tests := []struct {
		name     string
		ttl      int32
		want     []ServiceAccount
		existing []*types.Entry
		// expected plan, rendered by describe
		create, update, del, foreign, unchanged string
		errs                                    int
	}{
		{
			name:   "empty server: everything is created",
			want:   sas("shop/web", "shop/db"),
			create: "/ns/shop/sa/db:0 /ns/shop/sa/web:0",
		},
		{
			name:   "TTL is put on new entries",
			ttl:    3600,
			want:   sas("shop/web"),
			create: "/ns/shop/sa/web:3600",
		},
		{
			name:      "own entries as desired: nothing to do",
			want:      sas("shop/web", "shop/db"),
			existing:  []*types.Entry{own("a", "shop", "web", 0), own("b", "shop", "db", 0)},
			unchanged: "b:/ns/shop/sa/db:0 a:/ns/shop/sa/web:0",
		},
		{
			name:      "own stale entry is deleted",
			want:      sas("shop/web"),
			existing:  []*types.Entry{own("a", "shop", "web", 0), own("b", "shop", "db", 0)},
			del:       "b:/ns/shop/sa/db:0",
			unchanged: "a:/ns/shop/sa/web:0",
		},
		{
			name:     "empty desired set deletes every own entry, no foreign one",
			want:     []ServiceAccount{},
			existing: []*types.Entry{own("a", "shop", "web", 0), foreign("f", "shop", "db")},
			del:      "a:/ns/shop/sa/web:0",
		},
		{
			name:     "foreign entry satisfies the need and is not touched",
			want:     sas("shop/web", "shop/db"),
			existing: []*types.Entry{foreign("f", "shop", "web")},
			create:   "/ns/shop/sa/db:0",
			foreign:  "f:/ns/shop/sa/web:0",
		},
		{
			name:     "foreign entry with a TTL of its own still satisfies the need",
			ttl:      60,
			want:     sas("shop/web"),
			existing: []*types.Entry{with(foreign("f", "shop", "web"), func(e *types.Entry) { e.X509SvidTtl = 7 })},
			foreign:  "f:/ns/shop/sa/web:7",
		},
		{
			name:      "foreign entry not desired is never deleted",
			want:      sas("shop/web"),
			existing:  []*types.Entry{foreign("f", "ops", "tool"), own("a", "shop", "web", 0)},
			unchanged: "a:/ns/shop/sa/web:0",
		},
		{
			name: "foreign entry with other selectors does not satisfy the need",
			want: sas("shop/web"),
			existing: []*types.Entry{with(foreign("f", "shop", "web"), func(e *types.Entry) {
				e.Selectors = append(e.Selectors, &types.Selector{Type: "k8s", Value: "pod-label:app:web"})
			})},
			create: "/ns/shop/sa/web:0",
		},
		{
			name: "entry of another node, even with our hint, is neither ours nor a match",
			want: sas("shop/web"),
			existing: []*types.Entry{
				ent("x", "shop", "web", otherNode, Hint, 0),
				ent("y", "shop", "old", otherNode, Hint, 0),
			},
			create: "/ns/shop/sa/web:0",
		},
		{
			name:     "own entry with a changed TTL is updated in place",
			ttl:      3600,
			want:     sas("shop/web"),
			existing: []*types.Entry{own("a", "shop", "web", 60)},
			update:   "a:/ns/shop/sa/web:3600",
		},
		{
			name:     "own entry with a TTL when the server default is wanted",
			want:     sas("shop/web"),
			existing: []*types.Entry{own("a", "shop", "web", 60)},
			update:   "a:/ns/shop/sa/web:0",
		},
		{
			name: "own entry given extra powers is reset",
			want: sas("shop/web"),
			existing: []*types.Entry{with(own("a", "shop", "web", 0), func(e *types.Entry) {
				e.Admin, e.DnsNames, e.FederatesWith = true, []string{"web.shop"}, []string{"other.org"}
			})},
			update: "a:/ns/shop/sa/web:0",
		},
		{
			name: "own entry whose selectors were edited is replaced",
			want: sas("shop/web"),
			existing: []*types.Entry{with(own("a", "shop", "web", 0), func(e *types.Entry) {
				e.Selectors = e.Selectors[:1]
			})},
			create: "/ns/shop/sa/web:0",
			del:    "a:/ns/shop/sa/web:0",
		},
		{
			name:      "selector order does not matter",
			want:      sas("shop/web"),
			existing:  []*types.Entry{with(own("a", "shop", "web", 0), func(e *types.Entry) { slices.Reverse(e.Selectors) })},
			unchanged: "a:/ns/shop/sa/web:0",
		},
		{
			name:      "duplicate own entries: the exact one stays",
			want:      sas("shop/web"),
			existing:  []*types.Entry{own("a", "shop", "web", 60), own("b", "shop", "web", 0), own("c", "shop", "web", 0)},
			del:       "a:/ns/shop/sa/web:60 c:/ns/shop/sa/web:0",
			unchanged: "b:/ns/shop/sa/web:0",
		},
		{
			name:     "duplicate own entries, none exact: the first is updated",
			ttl:      30,
			want:     sas("shop/web"),
			existing: []*types.Entry{own("b", "shop", "web", 60), own("a", "shop", "web", 0)},
			update:   "a:/ns/shop/sa/web:30",
			del:      "b:/ns/shop/sa/web:60",
		},
		{
			name:      "own and foreign for the same need: ours is kept, the foreign one untouched",
			want:      sas("shop/web"),
			existing:  []*types.Entry{own("a", "shop", "web", 0), foreign("f", "shop", "web")},
			unchanged: "a:/ns/shop/sa/web:0",
		},
		{
			name:   "duplicates in the desired set make one entry",
			want:   sas("shop/web", "shop/web"),
			create: "/ns/shop/sa/web:0",
		},
		{
			name:   "invalid service accounts are reported and skipped",
			want:   sas("shop/", "/web", "shop/We b", "shop/web"),
			create: "/ns/shop/sa/web:0",
			errs:   3,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := spec{td: testTD, parent: testParent, ttl: tt.ttl}
			p, errs := s.diff(tt.want, tt.existing)
			if len(errs) != tt.errs {
				t.Errorf("errors %v, want %d", errs, tt.errs)
			}
			for _, c := range []struct {
				what      string
				got, want string
			}{
				{"create", describe(p.create), tt.create},
				{"update", describe(p.update), tt.update},
				{"delete", describe(p.delete), tt.del},
				{"foreign", describe(p.foreign), tt.foreign},
				{"unchanged", describe(p.unchanged), tt.unchanged},
			} {
				if c.got != c.want {
					t.Errorf("%s: %q, want %q", c.what, c.got, c.want)
				}
			}
			// Only own entries are ever updated or deleted.
			for _, e := range append(slices.Clone(p.update), p.delete...) {
				if e.GetId() == "" {
					t.Errorf("update/delete without an entry ID: %v", e)
				}
				for _, x := range tt.existing {
					if x.GetId() == e.GetId() && !s.own(x) {
						t.Errorf("plan touches foreign entry %s", e.GetId())
					}
				}
			}
			// New and updated entries carry exactly the agreed fields.
			for _, e := range append(slices.Clone(p.create), p.update...) {
				if e.GetHint() != Hint || idString(e.GetParentId()) != testParent.String() || len(e.GetSelectors()) != 2 ||
					e.GetSelectors()[0].GetType() != "k8s" || !strings.HasPrefix(e.GetSelectors()[0].GetValue(), "ns:") ||
					e.GetSelectors()[1].GetType() != "k8s" || !strings.HasPrefix(e.GetSelectors()[1].GetValue(), "sa:") {
					t.Errorf("malformed desired entry %v", e)
				}
			}
		})
	}
}

func TestDesiredEntry(t *testing.T) {
	s := spec{td: testTD, parent: testParent, ttl: 90}
	e, err := s.entry(ServiceAccount{Namespace: "shop", Name: "web"})
	if err != nil {
		t.Fatal(err)
	}
	got := fmt.Sprintf("%s parent=%s selectors=[%s:%s %s:%s] ttl=%d hint=%s", idString(e.SpiffeId), idString(e.ParentId),
		e.Selectors[0].Type, e.Selectors[0].Value, e.Selectors[1].Type, e.Selectors[1].Value, e.X509SvidTtl, e.Hint)
	want := "spiffe://cluster.local/ns/shop/sa/web parent=spiffe://cluster.local/palisade/node/n1 selectors=[k8s:ns:shop k8s:sa:web] ttl=90 hint=palisade"
	if got != want {
		t.Fatalf("entry\n got %s\nwant %s", got, want)
	}
}
