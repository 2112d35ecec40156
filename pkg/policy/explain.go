package policy

import (
	"fmt"
	"strings"

	"github.com/palisade-net/palisade/pkg/l7"
)

// Explanation lists the policies that select an endpoint, per direction,
// for tools such as a kubectl plugin.
type Explanation struct {
	Ingress, Egress DirectionExplanation
}

// DirectionExplanation is what applies to an endpoint in one direction.
type DirectionExplanation struct {
	// DefaultDeny: some selecting policy turns default deny on.
	DefaultDeny bool
	Policies    []PolicyExplanation
}

// PolicyExplanation is one selecting policy's rules for a direction.
type PolicyExplanation struct {
	Policy      string
	DefaultDeny bool
	// Invalid is set when the policy is rejected and only enforces
	// default deny.
	Invalid string
	Allow   []RuleExplanation
	Deny    []RuleExplanation
}

// RuleExplanation describes one rule.
type RuleExplanation struct {
	Rule  string // field path
	Peers string
	Ports []string // e.g. "any", "8080 http (2 rules)", "9092-9094 kafka (1 rule)"
}

// Explain lists the policies that select ep and their rules.
func (s *Set) Explain(ep Endpoint) Explanation {
	var out Explanation
	if s == nil {
		return out
	}
	pols := s.selecting(&ep, nil)
	for _, d := range []direction{ingress, egress} {
		de := &out.Ingress
		if d == egress {
			de = &out.Egress
		}
		for _, p := range pols {
			dr := &p.dirs[d]
			if !dr.defaultDeny && len(dr.allows)+len(dr.denies) == 0 {
				continue
			}
			pe := PolicyExplanation{Policy: p.name, DefaultDeny: dr.defaultDeny, Invalid: p.invalid}
			for _, r := range dr.allows {
				pe.Allow = append(pe.Allow, explainRule(r))
			}
			for _, r := range dr.denies {
				pe.Deny = append(pe.Deny, explainRule(r))
			}
			de.DefaultDeny = de.DefaultDeny || dr.defaultDeny
			de.Policies = append(de.Policies, pe)
		}
	}
	return out
}

func explainRule(r *rule) RuleExplanation {
	re := RuleExplanation{Rule: r.path, Peers: r.peers.String()}
	for _, pr := range r.ports {
		re.Ports = append(re.Ports, explainPorts(pr))
	}
	return re
}

func explainPorts(pr *portRule) string {
	var ports []string
	if pr.anyPort {
		ports = append(ports, "any")
	}
	for _, r := range pr.ranges {
		if r.lo == r.hi {
			ports = append(ports, fmt.Sprint(r.lo))
		} else {
			ports = append(ports, fmt.Sprintf("%d-%d", r.lo, r.hi))
		}
	}
	s := strings.Join(ports, ",")
	if pr.proto != l7.None {
		n := len(pr.http) + len(pr.grpc) + len(pr.kafka)
		unit := "rules"
		if n == 1 {
			unit = "rule"
		}
		s += fmt.Sprintf(" %s (%d %s)", pr.proto, n, unit)
	}
	return s
}
