package redirect

import (
	"fmt"
	"slices"
	"strings"
)

// savedTable is one table of iptables-save output.
type savedTable struct {
	name string
	// chains in the order iptables-save declared them, with their policy
	// ("-" for user-defined chains).
	chains   []string
	policies map[string]string
	rules    []savedRule
}

// savedRule is one "-A chain spec" line.
type savedRule struct {
	chain string
	spec  string
}

// parseSave parses iptables-save output (without counters on rules) into
// its tables, keyed by name.
func parseSave(out string) (map[string]*savedTable, error) {
	tables := map[string]*savedTable{}
	var cur *savedTable
	for i, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "*"):
			if cur != nil {
				return nil, fmt.Errorf("line %d: table %s starts before table %s is committed", i+1, line[1:], cur.name)
			}
			name := line[1:]
			if _, dup := tables[name]; dup {
				return nil, fmt.Errorf("line %d: table %s appears twice", i+1, name)
			}
			cur = &savedTable{name: name, policies: map[string]string{}}
			tables[name] = cur
		case cur == nil:
			return nil, fmt.Errorf("line %d: %q outside a table", i+1, line)
		case line == "COMMIT":
			cur = nil
		case strings.HasPrefix(line, ":"):
			f := strings.Fields(line[1:])
			if len(f) < 2 {
				return nil, fmt.Errorf("line %d: bad chain line %q", i+1, line)
			}
			cur.chains = append(cur.chains, f[0])
			cur.policies[f[0]] = f[1]
		case strings.HasPrefix(line, "-A "):
			chain, spec, _ := strings.Cut(line[len("-A "):], " ")
			cur.rules = append(cur.rules, savedRule{chain: chain, spec: spec})
		default:
			return nil, fmt.Errorf("line %d: unexpected %q", i+1, line)
		}
	}
	if cur != nil {
		return nil, fmt.Errorf("table %s is not committed", cur.name)
	}
	return tables, nil
}

// owned returns the chains of t that belong to Palisade, in save order.
func (t *savedTable) owned() []string {
	var out []string
	for _, c := range t.chains {
		if strings.HasPrefix(c, ChainPrefix) {
			out = append(out, c)
		}
	}
	return out
}

// chainRules returns the rule specs of chain c and whether c exists.
func (t *savedTable) chainRules(c string) ([]string, bool) {
	if _, ok := t.policies[c]; !ok {
		return nil, false
	}
	var out []string
	for _, r := range t.rules {
		if r.chain == c {
			out = append(out, r.spec)
		}
	}
	return out, true
}

// refs returns the rules outside Palisade's chains that jump or go to one of
// Palisade's chains, in save order.
func (t *savedTable) refs() []savedRule {
	var out []savedRule
	for _, r := range t.rules {
		if strings.HasPrefix(r.chain, ChainPrefix) {
			continue
		}
		if target := ruleTarget(r.spec); strings.HasPrefix(target, ChainPrefix) {
			out = append(out, r)
		}
	}
	return out
}

// empty reports whether t holds nothing but built-in chains with policy
// ACCEPT and no rules. Such a table behaves exactly like an absent one.
func (t *savedTable) empty() bool {
	if len(t.rules) > 0 {
		return false
	}
	for _, c := range t.chains {
		if t.policies[c] != "ACCEPT" {
			return false
		}
	}
	return true
}

// ruleTarget returns the chain or target a rule spec jumps or goes to.
func ruleTarget(spec string) string {
	f := splitSpec(spec)
	for i := 0; i+1 < len(f); i++ {
		switch f[i] {
		case "-j", "--jump", "-g", "--goto":
			return f[i+1]
		}
	}
	return ""
}

// splitSpec splits a rule spec into words the way iptables-restore does:
// at blanks, honouring double quotes (used by iptables-save around comments
// and other strings) and backslash escapes inside them.
func splitSpec(spec string) []string {
	var (
		out   []string
		word  strings.Builder
		inQ   bool
		esc   bool
		inTok bool
	)
	for _, r := range spec {
		switch {
		case esc:
			word.WriteRune(r)
			esc = false
		case inQ && r == '\\':
			esc = true
		case r == '"':
			inQ = !inQ
			inTok = true
		case !inQ && (r == ' ' || r == '\t'):
			if inTok {
				out = append(out, word.String())
				word.Reset()
				inTok = false
			}
		default:
			word.WriteRune(r)
			inTok = true
		}
	}
	if inTok {
		out = append(out, word.String())
	}
	return out
}

// normaliseSave turns iptables-save output into a stable form for
// comparisons: comment and date lines and all counters are dropped, tables
// are sorted by name, and tables that hold nothing but empty built-in chains
// with policy ACCEPT are left out (iptables creates those implicitly, even
// when only listing, and they filter nothing).
func normaliseSave(out string) (string, error) {
	tables, err := parseSave(out)
	if err != nil {
		return "", err
	}
	names := make([]string, 0, len(tables))
	for n, t := range tables {
		if !t.empty() {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	var b strings.Builder
	for _, n := range names {
		t := tables[n]
		fmt.Fprintf(&b, "*%s\n", n)
		for _, c := range t.chains {
			fmt.Fprintf(&b, ":%s %s\n", c, t.policies[c])
		}
		for _, r := range t.rules {
			fmt.Fprintf(&b, "-A %s %s\n", r.chain, r.spec)
		}
		b.WriteString("COMMIT\n")
	}
	return b.String(), nil
}
