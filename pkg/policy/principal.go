package policy

import (
	"errors"
	"fmt"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// principal matches authenticated SPIFFE IDs. The syntax:
//
//   - any authenticated peer
//     spiffe://td/ns/a/sa/b          exactly this ID
//     spiffe://td/ns/a/*             any ID whose path starts with /ns/a/
//     spiffe://td/*                  any ID of trust domain td
type principal struct {
	any    bool
	exact  string
	prefix string // ends with "/"
}

func parsePrincipal(s string) (principal, error) {
	if s == "*" {
		return principal{any: true}, nil
	}
	if base, ok := strings.CutSuffix(s, "/*"); ok {
		if strings.Contains(base, "*") {
			return principal{}, errors.New("'*' is only allowed as the whole principal or as a final \"/*\" segment")
		}
		id, err := spiffeid.FromString(base)
		if err != nil {
			return principal{}, fmt.Errorf("invalid SPIFFE ID prefix %q: %w", base, err)
		}
		return principal{prefix: id.String() + "/"}, nil
	}
	if strings.Contains(s, "*") {
		return principal{}, errors.New("'*' is only allowed as the whole principal or as a final \"/*\" segment")
	}
	id, err := spiffeid.FromString(s)
	if err != nil {
		return principal{}, fmt.Errorf("invalid SPIFFE ID: %w", err)
	}
	if id.Path() == "" {
		return principal{}, fmt.Errorf("%q names a trust domain, not a workload; use %q for every workload of it", s, s+"/*")
	}
	return principal{exact: id.String()}, nil
}

func (p principal) matches(id spiffeid.ID) bool {
	if id.IsZero() {
		return false
	}
	switch {
	case p.any:
		return true
	case p.exact != "":
		return id.String() == p.exact
	default:
		s := id.String()
		return len(s) > len(p.prefix) && strings.HasPrefix(s, p.prefix)
	}
}

func (p principal) String() string {
	switch {
	case p.any:
		return "*"
	case p.exact != "":
		return p.exact
	default:
		return p.prefix + "*"
	}
}
