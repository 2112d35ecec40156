package policy

import (
	"github.com/palisade-net/palisade/pkg/l7"
)

// direction is ingress or egress.
type direction int

const (
	ingress direction = iota
	egress
)

func (d direction) String() string {
	if d == egress {
		return "egress"
	}
	return "ingress"
}

// policy is one compiled policy object (or one spec of a Cilium policy
// with specs[]).
type policy struct {
	ref  ObjectRef
	name string // ref.String(), the Verdict.Policy value
	// subject selects the pods the policy applies to.
	subject *labelSel
	dirs    [2]dirRules
	// invalid is set for a quarantined policy: its rules are dropped and
	// it only enforces default deny; the message says why.
	invalid string
}

// dirRules are a policy's rules for one direction.
type dirRules struct {
	// defaultDeny: the policy puts the pods it selects into default deny
	// for this direction.
	defaultDeny bool
	allows      []*rule
	denies      []*rule
}

// rule is one ingress/egress (deny) rule.
type rule struct {
	pol   *policy
	path  string // e.g. spec.ingress[0]
	peers peerSel
	// ports are the rule's port rules; a rule without toPorts has one
	// port rule for every port without L7 rules.
	ports []*portRule
}

// portRange is an inclusive range of ports.
type portRange struct{ lo, hi uint16 }

// portRule is one toPorts entry: ports and, optionally, L7 rules.
type portRule struct {
	id      int // unique in the Set; keys the cache of merged rule sets
	pol     *policy
	path    string // e.g. spec.ingress[0].toPorts[1]
	anyPort bool
	ranges  []portRange
	// proto is l7.None for an L3/L4-only port rule.
	proto l7.Protocol
	http  []*httpRule
	grpc  []*grpcRule
	kafka []*kafkaRule
}

func (p *portRule) matchesPort(port uint16) bool {
	if p.anyPort {
		return true
	}
	for _, r := range p.ranges {
		if port >= r.lo && port <= r.hi {
			return true
		}
	}
	return false
}
