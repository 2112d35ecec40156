package redirect

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// ChainPrefix starts the name of every chain Palisade owns. Any chain with
// this prefix, in any table, is considered Palisade's: Install replaces or
// deletes it, Remove deletes it.
const ChainPrefix = "PALISADE_"

// Names of the chains Palisade installs in the nat table.
const (
	ChainPrerouting = ChainPrefix + "PREROUTING"
	ChainOutput     = ChainPrefix + "OUTPUT"
)

// family is an IP family together with the names of its iptables tools.
type family struct {
	name string // "iptables" or "ip6tables"
	// legacyTables is the /proc/net file listing the legacy backend's
	// tables of a namespace.
	legacyTables string
	loopback     netip.Prefix
	probe        func(Config) netip.Addr
}

var (
	familyV4 = family{
		name:         "iptables",
		legacyTables: "ip_tables_names",
		loopback:     netip.MustParsePrefix("127.0.0.0/8"),
		probe:        func(c Config) netip.Addr { return c.ProbeSourceV4 },
	}
	familyV6 = family{
		name:         "ip6tables",
		legacyTables: "ip6_tables_names",
		loopback:     netip.MustParsePrefix("::1/128"),
		probe:        func(c Config) netip.Addr { return c.ProbeSourceV6 },
	}
)

// families returns the IP families cfg handles.
func families(cfg Config) []family {
	if cfg.IPv6 {
		return []family{familyV4, familyV6}
	}
	return []family{familyV4}
}

// chainSpec is the exact content of one chain Palisade owns. Rules are
// written in the canonical form iptables-save prints, so the installed state
// can be compared with the wanted state textually.
type chainSpec struct {
	name  string
	rules []string // rule specifications, without "-A <chain> "
}

// hookSpec is a jump from a built-in chain into one of Palisade's chains. It
// is always the first rule of the built-in chain, so that nothing another
// component installs there can let traffic escape capture.
type hookSpec struct {
	chain  string
	target string
}

// tableSpec is everything Palisade wants in one table.
type tableSpec struct {
	name   string
	chains []chainSpec
	hooks  []hookSpec
}

// desired returns the tables Palisade wants for one family.
//
// Only the nat table is used. This version of Palisade never spoofs source
// addresses: the node proxy connects from the pod's own address, and
// REDIRECT (not TPROXY) captures inbound traffic. Hence no mangle rules, no
// connection marks and no policy routing (ip rule/route) are needed, and
// none are installed.
func desired(cfg Config, fam family) []tableSpec {
	mark := markMatch(cfg)
	var pre []string
	pre = append(pre, mark+" -j RETURN")
	if p := fam.probe(cfg); p.IsValid() {
		pre = append(pre, fmt.Sprintf("-s %s -j RETURN", netip.PrefixFrom(p, p.BitLen())))
	}
	pre = append(pre,
		fmt.Sprintf("-p tcp -m tcp --dport %d -j RETURN", cfg.InboundHBONEPort),
		fmt.Sprintf("-p tcp -j REDIRECT --to-ports %d", cfg.InboundPlaintextPort),
	)
	out := []string{
		mark + " -j RETURN",
		fmt.Sprintf("-d %s -j RETURN", fam.loopback),
		fmt.Sprintf("-p tcp -j REDIRECT --to-ports %d", cfg.OutboundPort),
	}
	return []tableSpec{{
		name: "nat",
		chains: []chainSpec{
			{name: ChainPrerouting, rules: pre},
			{name: ChainOutput, rules: out},
		},
		hooks: []hookSpec{
			{chain: "PREROUTING", target: ChainPrerouting},
			{chain: "OUTPUT", target: ChainOutput},
		},
	}}
}

// markMatch renders the mark match the way iptables-save prints it.
func markMatch(cfg Config) string {
	if cfg.Mask == 0xffffffff {
		return fmt.Sprintf("-m mark --mark %#x", cfg.Mark)
	}
	return fmt.Sprintf("-m mark --mark %#x/%#x", cfg.Mark, cfg.Mask)
}

// Rules returns the iptables-restore --noflush input that installs
// Palisade's redirect rules into a network namespace holding none of them,
// for IPv4 and for IPv6 (v6 is empty when cfg.IPv6 is false). The output is
// deterministic.
//
// In the nat table, chain PALISADE_PREROUTING (hooked first in PREROUTING)
// lets packets carrying the proxy mark, packets from the kubelet probe
// source and TCP to the HBONE port through, and redirects all other inbound
// TCP to the inbound plaintext port. Chain PALISADE_OUTPUT (hooked first in
// OUTPUT) lets marked packets and traffic to loopback through and redirects
// all other locally originated TCP to the outbound port. UDP (DNS) and other
// protocols are never captured. Declaring a chain in a --noflush restore
// flushes it, so the chains' content is exact however often it is applied.
//
// Install does not apply this text as is: it reads the namespace's current
// rules first and adds the deletions needed to converge (see Install). Rules
// does not validate cfg; Install does.
func Rules(cfg Config) (v4, v6 string) {
	v4 = plan(nil, desired(cfg, familyV4))
	if cfg.IPv6 {
		v6 = plan(nil, desired(cfg, familyV6))
	}
	return v4, v6
}

// planNew returns the iptables-restore --noflush input that installs want
// into tables holding no chain of ours: plan(nil, want) with each chain
// declaration (":NAME - [0:0]", which creates a chain or flushes an
// existing one) replaced by "-N NAME", which fails the whole transaction
// when the chain exists.
func planNew(want []tableSpec) string {
	script := plan(nil, want)
	var b strings.Builder
	for line := range strings.Lines(script) {
		if name, ok := strings.CutSuffix(strings.TrimSuffix(line, "\n"), " - [0:0]"); ok && strings.HasPrefix(name, ":"+ChainPrefix) {
			b.WriteString("-N " + name[1:] + "\n")
			continue
		}
		b.WriteString(line)
	}
	return b.String()
}

// plan returns the iptables-restore --noflush input that turns the state
// cur (parsed iptables-save output; nil for none) into want for every table
// that holds or should hold chains with ChainPrefix, or "" when cur already
// is exactly want. Rules, chains and tables that do not belong to Palisade
// are never touched.
func plan(cur map[string]*savedTable, want []tableSpec) string {
	wantBy := map[string]tableSpec{}
	var names []string
	for _, t := range want {
		wantBy[t.name] = t
		names = append(names, t.name)
	}
	for name, t := range cur {
		if _, ok := wantBy[name]; !ok && len(t.owned()) > 0 {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	names = slices.Compact(names)

	var b strings.Builder
	for _, name := range names {
		tw, ok := wantBy[name]
		if !ok {
			tw = tableSpec{name: name}
		}
		b.WriteString(planTable(cur[name], tw))
	}
	if b.Len() == 0 {
		return ""
	}
	return "# Generated by palisade pkg/redirect\n" + b.String()
}

// planTable is plan for a single table; cur may be nil.
func planTable(cur *savedTable, want tableSpec) string {
	if cur == nil {
		cur = &savedTable{name: want.name}
	}
	wantChain := map[string]bool{}
	for _, c := range want.chains {
		wantChain[c.name] = true
	}

	// Chains that are ours but no longer wanted (older versions, Remove).
	var stale []string
	for _, c := range cur.owned() {
		if !wantChain[c] {
			stale = append(stale, c)
		}
	}

	// Chains whose content differs from what we want.
	contentOK := true
	for _, c := range want.chains {
		rules, ok := cur.chainRules(c.name)
		if !ok || !slices.Equal(rules, c.rules) {
			contentOK = false
		}
	}

	// Built-in (or foreign) chains whose jumps into our chains must be
	// rewritten: the wanted hooks must be exactly their first rules, and
	// there must be no other reference to any chain of ours.
	refs := cur.refs()
	hookChains := map[string][]hookSpec{}
	var fixOrder []string
	addChain := func(c string) {
		if _, ok := hookChains[c]; !ok {
			hookChains[c] = nil
			fixOrder = append(fixOrder, c)
		}
	}
	for _, h := range want.hooks {
		addChain(h.chain)
		hookChains[h.chain] = append(hookChains[h.chain], h)
	}
	for _, r := range refs {
		addChain(r.chain)
	}
	var fix []string
	for _, c := range fixOrder {
		hooks := hookChains[c]
		n := 0
		for _, r := range refs {
			if r.chain == c {
				n++
			}
		}
		ok := n == len(hooks)
		if ok {
			rules, _ := cur.chainRules(c)
			for i, h := range hooks {
				if i >= len(rules) || rules[i] != "-j "+h.target {
					ok = false
					break
				}
			}
		}
		if !ok {
			fix = append(fix, c)
		}
	}

	if contentOK && len(stale) == 0 && len(fix) == 0 {
		return ""
	}

	var b strings.Builder
	fmt.Fprintf(&b, "*%s\n", want.name)
	// Declaring a chain creates it, or flushes it when it exists.
	for _, c := range want.chains {
		fmt.Fprintf(&b, ":%s - [0:0]\n", c.name)
	}
	for _, c := range stale {
		fmt.Fprintf(&b, ":%s - [0:0]\n", c)
	}
	for _, c := range fix {
		for _, r := range refs {
			if r.chain == c {
				fmt.Fprintf(&b, "-D %s %s\n", r.chain, r.spec)
			}
		}
	}
	for _, c := range want.chains {
		for _, r := range c.rules {
			fmt.Fprintf(&b, "-A %s %s\n", c.name, r)
		}
	}
	for _, c := range fix {
		hooks := hookChains[c]
		for i := len(hooks) - 1; i >= 0; i-- {
			fmt.Fprintf(&b, "-I %s 1 -j %s\n", c, hooks[i].target)
		}
	}
	for _, c := range stale {
		fmt.Fprintf(&b, "-X %s\n", c)
	}
	b.WriteString("COMMIT\n")
	return b.String()
}
