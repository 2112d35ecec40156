package policy

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/palisade-net/palisade/pkg/l7"
)

// Set is a compiled, immutable policy set. The proxy swaps whole Sets
// atomically when policies change. A nil *Set allows everything.
type Set struct {
	byNamespace map[string][]*policy
	cluster     []*policy
	problems    []Problem
	nPolicies   int

	// cache holds the merged L7 rule sets by port-rule combination; it
	// is internal memoization, not state visible to callers.
	cache     sync.Map // string -> *ruleSet
	cacheSize atomic.Int32
}

// maxCachedRuleSets bounds the memoized rule sets of one Set.
const maxCachedRuleSets = 4096

// Decision is the connection-level verdict for a peer on a port.
type Decision struct {
	// Verdict says whether the connection is allowed at all (L4), and by
	// which policy and rule, or why not.
	l7.Verdict
	// Selected is true when default deny is active for the endpoint in
	// this direction (some policy selecting it enables default deny).
	Selected bool
	// Protocol is the parser the connection needs; l7.None when no
	// request inspection is needed.
	Protocol l7.Protocol
	// Rules judge the requests when Protocol is not l7.None.
	Rules *PortRules
}

// Problems returns the problems found while compiling the set.
func (s *Set) Problems() []Problem {
	if s == nil {
		return nil
	}
	return append([]Problem(nil), s.problems...)
}

// Len returns the number of compiled policies (quarantined ones included).
func (s *Set) Len() int {
	if s == nil {
		return 0
	}
	return s.nPolicies
}

// Ingress decides a connection from src into dst (a local pod) on port.
func (s *Set) Ingress(src, dst Endpoint, port uint16) Decision {
	return s.decide(ingress, &dst, &src, port)
}

// Egress decides a connection from src (a local pod) to dst on port.
func (s *Set) Egress(src, dst Endpoint, port uint16) Decision {
	return s.decide(egress, &src, &dst, port)
}

// selecting returns the policies that select local, namespaced first.
func (s *Set) selecting(local *Endpoint, buf []*policy) []*policy {
	if !local.InCluster {
		return buf
	}
	for _, list := range [2][]*policy{s.byNamespace[local.Namespace], s.cluster} {
		for _, p := range list {
			if p.subject.matches(local) {
				buf = append(buf, p)
			}
		}
	}
	return buf
}

func (s *Set) decide(dir direction, local, peer *Endpoint, port uint16) Decision {
	if s == nil {
		return Decision{Verdict: l7.Verdict{Allow: true, Reason: "no policies"}}
	}
	var buf [8]*policy
	pols := s.selecting(local, buf[:0])
	defaultDeny := false
	for _, p := range pols {
		if p.dirs[dir].defaultDeny {
			defaultDeny = true
		}
	}

	// Deny rules first: an L3/L4 deny decides at once, L7 denies are
	// collected for request inspection.
	var denyBuf [4]*portRule
	l7Denies := denyBuf[:0]
	for _, p := range pols {
		for _, r := range p.dirs[dir].denies {
			if !r.peers.matches(peer) {
				continue
			}
			for _, pr := range r.ports {
				if !pr.matchesPort(port) {
					continue
				}
				if pr.proto == l7.None {
					return Decision{Selected: defaultDeny, Verdict: l7.Verdict{
						Policy: p.name, Rule: pr.path,
						Reason: fmt.Sprintf("%s %s on port %d is denied by a deny rule", peer.describe(), dir.verb(), port),
					}}
				}
				l7Denies = append(l7Denies, pr)
			}
		}
	}

	// Allow rules: without default deny everything is allowed (as if by
	// an L3/L4 allow); with it, the union of matching allow rules. An
	// L3/L4 allow for the peer and port makes L7 allow rules moot.
	allowAll := !defaultDeny
	var allowBy *portRule
	var allowBuf [4]*portRule
	l7Allows := allowBuf[:0]
	if defaultDeny {
		for _, p := range pols {
			for _, r := range p.dirs[dir].allows {
				if !r.peers.matches(peer) {
					continue
				}
				for _, pr := range r.ports {
					if !pr.matchesPort(port) {
						continue
					}
					if pr.proto == l7.None {
						if allowBy == nil {
							allowBy = pr
						}
						allowAll = true
					} else {
						l7Allows = append(l7Allows, pr)
					}
				}
			}
		}
		if !allowAll && len(l7Allows) == 0 {
			return Decision{Selected: true, Verdict: l7.Verdict{
				Reason: fmt.Sprintf("no rule allows %s %s on port %d (default deny by %s)%s",
					peer.describe(), dir.verb(), port, policyNames(pols, dir), invalidNote(pols)),
			}}
		}
	}
	if allowAll {
		l7Allows = l7Allows[:0]
	}

	proto, conflict := protocolOf(l7Allows, l7Denies)
	if conflict != "" {
		return Decision{Selected: defaultDeny, Verdict: l7.Verdict{
			Reason: fmt.Sprintf("conflicting L7 rules for %s on port %d: %s", peer.describe(), port, conflict),
		}}
	}
	d := Decision{Selected: defaultDeny, Protocol: proto, Verdict: l7.Verdict{Allow: true}}
	switch {
	case allowBy != nil:
		d.Policy, d.Rule = allowBy.pol.name, allowBy.path
	case len(l7Allows) > 0:
		d.Policy, d.Rule = l7Allows[0].pol.name, l7Allows[0].path
	case len(pols) == 0:
		d.Reason = "no policy selects the " + dir.localRole()
	default:
		d.Reason = "no policy selecting the " + dir.localRole() + " enables default deny for " + dir.String()
	}
	if proto != l7.None {
		d.Rules = &PortRules{
			set:       s.ruleSet(proto, allowAll, allowBy, l7Allows, l7Denies),
			peer:      peer.describe(),
			port:      port,
			denyingBy: policyNames(pols, dir),
		}
	}
	return d
}

func (d direction) verb() string {
	if d == egress {
		return "as destination"
	}
	return "as source"
}

func (d direction) localRole() string {
	if d == egress {
		return "source"
	}
	return "destination"
}

// protocolOf returns the L7 protocol the port rules need, or a
// description of the conflict when they need different ones.
func protocolOf(allows, denies []*portRule) (l7.Protocol, string) {
	var proto l7.Protocol
	var by *portRule
	for _, list := range [2][]*portRule{allows, denies} {
		for _, pr := range list {
			switch {
			case proto == l7.None:
				proto, by = pr.proto, pr
			case pr.proto != proto:
				return l7.None, fmt.Sprintf("%s rules at %s %s and %s rules at %s %s",
					by.proto, by.pol.name, by.path, pr.proto, pr.pol.name, pr.path)
			}
		}
	}
	return proto, ""
}

func policyNames(pols []*policy, dir direction) string {
	var names []string
	for _, p := range pols {
		if p.dirs[dir].defaultDeny {
			names = append(names, p.name)
		}
	}
	return strings.Join(names, ", ")
}

func invalidNote(pols []*policy) string {
	for _, p := range pols {
		if p.invalid != "" {
			return "; " + p.name + " is invalid and enforces only default deny: " + p.invalid
		}
	}
	return ""
}

// ruleSet returns the merged rule set for a combination of port rules,
// memoized: connections of the same peer class share it.
func (s *Set) ruleSet(proto l7.Protocol, allowAll bool, allowBy *portRule, allows, denies []*portRule) *ruleSet {
	key := make([]byte, 0, 64)
	key = append(key, proto...)
	if allowAll {
		key = append(key, '*')
		if allowBy != nil {
			key = strconv.AppendInt(key, int64(allowBy.id), 10)
		}
	}
	key = append(key, '|')
	for _, p := range allows {
		key = strconv.AppendInt(append(key, ','), int64(p.id), 10)
	}
	key = append(key, '|')
	for _, p := range denies {
		key = strconv.AppendInt(append(key, ','), int64(p.id), 10)
	}
	if v, ok := s.cache.Load(string(key)); ok {
		return v.(*ruleSet)
	}
	rs := newRuleSet(proto, allowAll, allowBy, allows, denies)
	if s.cacheSize.Load() < maxCachedRuleSets {
		if _, loaded := s.cache.LoadOrStore(string(key), rs); !loaded {
			s.cacheSize.Add(1)
		}
	}
	return rs
}
