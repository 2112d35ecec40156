package registration

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"

	"github.com/palisade-net/palisade/pkg/workload"
)

// spec is what the desired entries are made of.
type spec struct {
	td     spiffeid.TrustDomain
	parent spiffeid.ID
	ttl    int32 // x509_svid_ttl, seconds
}

func (r *Reconciler) spec() spec {
	ttl, _ := TTLSeconds(r.cfg.SVIDTTL) // checked by New
	return spec{td: r.cfg.TrustDomain, parent: r.cfg.ParentID, ttl: ttl}
}

// plan is the difference between the desired entries and the server's.
type plan struct {
	create []*types.Entry // desired entries missing on the server
	update []*types.Entry // own entries with the right key but other fields
	delete []*types.Entry // own entries not desired (or duplicates)
	// foreign are desired entries satisfied by entries Palisade does not
	// manage.
	foreign []*types.Entry
	// unchanged are own entries exactly as desired.
	unchanged []*types.Entry
}

// Selectors returns the selectors of the entry for sa, in SPIRE's order.
func Selectors(sa ServiceAccount) []*types.Selector {
	return []*types.Selector{
		{Type: SelectorType, Value: namespacePrefix + sa.Namespace},
		{Type: SelectorType, Value: serviceAcctPrefix + sa.Name},
	}
}

// entry builds the desired entry for sa.
func (s spec) entry(sa ServiceAccount) (*types.Entry, error) {
	if sa.Namespace == "" || sa.Name == "" {
		return nil, fmt.Errorf("service account %q: empty namespace or name", sa)
	}
	id, err := workload.IdentityFor(s.td, sa.Namespace, sa.Name)
	if err != nil {
		return nil, err
	}
	return &types.Entry{
		SpiffeId:    protoID(id),
		ParentId:    protoID(s.parent),
		Selectors:   Selectors(sa),
		X509SvidTtl: s.ttl,
		Hint:        Hint,
	}, nil
}

func protoID(id spiffeid.ID) *types.SPIFFEID {
	return &types.SPIFFEID{TrustDomain: id.TrustDomain().Name(), Path: id.Path()}
}

// idString renders a SPIFFE ID of the API, normalised when it parses.
func idString(p *types.SPIFFEID) string {
	if p == nil {
		return ""
	}
	if td, err := spiffeid.TrustDomainFromString(p.TrustDomain); err == nil {
		if id, err := spiffeid.FromPath(td, p.Path); err == nil {
			return id.String()
		}
	}
	return "spiffe://" + p.TrustDomain + p.Path
}

// key identifies an entry the way SPIRE does when it refuses a "similar"
// entry: SPIFFE ID, parent ID and the set of selectors.
func key(e *types.Entry) string {
	sels := make([]string, 0, len(e.GetSelectors()))
	for _, s := range e.GetSelectors() {
		sels = append(sels, s.GetType()+":"+s.GetValue())
	}
	slices.Sort(sels)
	sels = slices.Compact(sels)
	return idString(e.GetSpiffeId()) + " " + idString(e.GetParentId()) + " " + strings.Join(sels, ",")
}

// own reports whether e is Palisade's on this node.
func (s spec) own(e *types.Entry) bool {
	return e.GetHint() == Hint && idString(e.GetParentId()) == s.parent.String()
}

// needsUpdate reports whether the own entry have, whose key matches want,
// differs from it in a field Palisade sets.
func needsUpdate(have, want *types.Entry) bool {
	return have.GetX509SvidTtl() != want.GetX509SvidTtl() ||
		have.GetJwtSvidTtl() != want.GetJwtSvidTtl() ||
		have.GetAdmin() != want.GetAdmin() ||
		have.GetDownstream() != want.GetDownstream() ||
		have.GetExpiresAt() != want.GetExpiresAt() ||
		have.GetStoreSvid() != want.GetStoreSvid() ||
		len(have.GetDnsNames()) != 0 ||
		len(have.GetFederatesWith()) != 0
}

// updateMask names the fields an update resets to the desired values.
var updateMask = &types.EntryMask{
	X509SvidTtl:   true,
	JwtSvidTtl:    true,
	Admin:         true,
	Downstream:    true,
	ExpiresAt:     true,
	StoreSvid:     true,
	DnsNames:      true,
	FederatesWith: true,
}

// diff compares the desired service accounts with the entries on the
// server (those under the parent ID; others are ignored). Service accounts
// that make no valid SPIFFE ID are reported and skipped.
func (s spec) diff(want []ServiceAccount, existing []*types.Entry) (plan, []error) {
	var errs []error
	wanted := map[string]*types.Entry{}
	var order []string
	want = slices.Clone(want)
	slices.SortFunc(want, compareSA)
	for _, sa := range want {
		e, err := s.entry(sa)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		k := key(e)
		if _, dup := wanted[k]; !dup {
			order = append(order, k)
		}
		wanted[k] = e
	}

	// Group what the server has by key; own entries in a stable order so
	// the same one is kept on every pass.
	ownByKey := map[string][]*types.Entry{}
	foreignByKey := map[string]*types.Entry{}
	var p plan
	sorted := slices.Clone(existing)
	slices.SortFunc(sorted, func(a, b *types.Entry) int { return cmp.Compare(a.GetId(), b.GetId()) })
	for _, e := range sorted {
		if idString(e.GetParentId()) != s.parent.String() {
			continue // not under this node: never ours, never a match
		}
		k := key(e)
		if !s.own(e) {
			if _, ok := foreignByKey[k]; !ok {
				foreignByKey[k] = e
			}
			continue
		}
		if _, ok := wanted[k]; !ok {
			p.delete = append(p.delete, e)
			continue
		}
		ownByKey[k] = append(ownByKey[k], e)
	}

	for _, k := range order {
		w := wanted[k]
		owns := ownByKey[k]
		switch {
		case len(owns) > 0:
			// Keep one (an exact one when there is one), drop duplicates.
			keep := slices.IndexFunc(owns, func(e *types.Entry) bool { return !needsUpdate(e, w) })
			if keep < 0 {
				keep = 0
				u := cloneEntry(w)
				u.Id = owns[0].GetId()
				p.update = append(p.update, u)
			} else {
				p.unchanged = append(p.unchanged, owns[keep])
			}
			for i, e := range owns {
				if i != keep {
					p.delete = append(p.delete, e)
				}
			}
		case foreignByKey[k] != nil:
			p.foreign = append(p.foreign, foreignByKey[k])
		default:
			p.create = append(p.create, w)
		}
	}
	return p, errs
}

func cloneEntry(e *types.Entry) *types.Entry {
	return &types.Entry{
		Id:          e.GetId(),
		SpiffeId:    e.GetSpiffeId(),
		ParentId:    e.GetParentId(),
		Selectors:   e.GetSelectors(),
		X509SvidTtl: e.GetX509SvidTtl(),
		Hint:        e.GetHint(),
	}
}
