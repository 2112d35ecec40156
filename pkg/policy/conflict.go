package policy

import (
	"fmt"

	"github.com/palisade-net/palisade/pkg/l7"
)

// conflicts reports port rules of different L7 protocols (http or grpc
// against kafka) whose ports overlap in policies that may select the same
// pods. Where both apply to the same peer, Decide denies that peer on the
// port (fail closed); the warning says so ahead of time.
func conflicts(pols []*policy) []Problem {
	type l7port struct {
		pol *policy
		pr  *portRule
	}
	var out []Problem
	for _, d := range []direction{ingress, egress} {
		var list []l7port
		for _, p := range pols {
			for _, rules := range [2][]*rule{p.dirs[d].allows, p.dirs[d].denies} {
				for _, r := range rules {
					for _, pr := range r.ports {
						if pr.proto != l7.None {
							list = append(list, l7port{p, pr})
						}
					}
				}
			}
		}
		for i, a := range list {
			for _, b := range list[:i] {
				if a.pr.proto == b.pr.proto || !portsOverlap(a.pr, b.pr) || !subjectsMayOverlap(a.pol, b.pol) {
					continue
				}
				out = append(out, Problem{Object: a.pol.ref, Field: a.pr.path, Severity: Warning,
					Message: fmt.Sprintf("%s rules here and %s rules at %s %s cover the same ports; a peer both apply to is denied on those ports",
						a.pr.proto, b.pr.proto, b.pol.name, b.pr.path)})
				break
			}
		}
	}
	return out
}

func portsOverlap(a, b *portRule) bool {
	if (a.anyPort && (b.anyPort || len(b.ranges) > 0)) || (b.anyPort && len(a.ranges) > 0) {
		return true
	}
	for _, x := range a.ranges {
		for _, y := range b.ranges {
			if x.lo <= y.hi && y.lo <= x.hi {
				return true
			}
		}
	}
	return false
}

// subjectsMayOverlap: policies of different namespaces never select the
// same pod; otherwise they may.
func subjectsMayOverlap(a, b *policy) bool {
	return a.ref.Namespace == "" || b.ref.Namespace == "" || a.ref.Namespace == b.ref.Namespace
}
