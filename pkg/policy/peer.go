package policy

import (
	"fmt"
	"net/netip"
	"strings"
)

// entitySet is a set of Cilium entities Palisade can recognise.
type entitySet uint8

const (
	entAll entitySet = 1 << iota
	entWorld
	entWorld4
	entWorld6
	entCluster
)

// entityBits maps the supported entity names; "none" maps to no bits.
var entityBits = map[string]entitySet{
	"all":        entAll,
	"world":      entWorld,
	"world-ipv4": entWorld4,
	"world-ipv6": entWorld6,
	"cluster":    entCluster,
	"none":       0,
}

// ciliumOnlyEntities are entities Cilium knows and Palisade cannot
// recognise: it never sees nodes, the host, health or init endpoints as
// peers, and does not know which addresses the API server has.
var ciliumOnlyEntities = map[string]bool{
	"host": true, "remote-node": true, "kube-apiserver": true, "init": true,
	"ingress": true, "health": true, "unmanaged": true,
}

func (e entitySet) matches(ep *Endpoint) bool {
	switch {
	case e&entAll != 0:
		return true
	case e&entCluster != 0 && ep.InCluster:
		return true
	case ep.InCluster:
		return false
	case e&entWorld != 0:
		return true
	}
	ip := ep.IP.Unmap()
	return (e&entWorld4 != 0 && ip.Is4()) || (e&entWorld6 != 0 && ip.Is6())
}

func (e entitySet) names() []string {
	var out []string
	for _, n := range []string{"all", "world", "world-ipv4", "world-ipv6", "cluster"} {
		if e&entityBits[n] != 0 {
			out = append(out, n)
		}
	}
	return out
}

// cidrSel matches addresses of peers outside the cluster.
type cidrSel struct {
	prefix netip.Prefix
	except []netip.Prefix
}

func (c cidrSel) matches(ip netip.Addr) bool {
	if !c.prefix.Contains(ip) {
		return false
	}
	for _, e := range c.except {
		if e.Contains(ip) {
			return false
		}
	}
	return true
}

// saRef names a service account.
type saRef struct{ namespace, name string }

// peerSel says which peers a rule applies to. The alternatives are ORed.
// As in Cilium, CIDR selectors only match peers outside the cluster and
// endpoint selectors only pods.
type peerSel struct {
	// all: the rule names no peer, so it applies to every peer.
	all bool
	// requireAuth: Cilium's authentication.mode=required; only peers
	// with an authenticated identity match.
	requireAuth bool
	endpoints   []*labelSel
	principals  []principal
	sas         []saRef
	namespaces  []string
	cidrs       []cidrSel
	entities    entitySet
}

func (p *peerSel) matches(ep *Endpoint) bool {
	if p.requireAuth && ep.Identity.IsZero() {
		return false
	}
	if p.all || p.entities.matches(ep) {
		return true
	}
	for _, s := range p.endpoints {
		if s.matches(ep) {
			return true
		}
	}
	for _, pr := range p.principals {
		if pr.matches(ep.Identity) {
			return true
		}
	}
	if ep.InCluster {
		for _, sa := range p.sas {
			if sa.namespace == ep.Namespace && sa.name == ep.ServiceAccount {
				return true
			}
		}
		for _, ns := range p.namespaces {
			if ns == ep.Namespace {
				return true
			}
		}
	} else if ep.IP.IsValid() {
		ip := ep.IP.Unmap()
		for _, c := range p.cidrs {
			if c.matches(ip) {
				return true
			}
		}
	}
	return false
}

// String describes the peers for Explain.
func (p *peerSel) String() string {
	var parts []string
	if p.all {
		parts = append(parts, "all peers")
	}
	for _, e := range p.entities.names() {
		parts = append(parts, "entity "+e)
	}
	for _, s := range p.endpoints {
		parts = append(parts, "pods "+s.String())
	}
	for _, pr := range p.principals {
		parts = append(parts, "principal "+pr.String())
	}
	for _, sa := range p.sas {
		parts = append(parts, fmt.Sprintf("service account %s/%s", sa.namespace, sa.name))
	}
	for _, ns := range p.namespaces {
		parts = append(parts, "namespace "+ns)
	}
	for _, c := range p.cidrs {
		s := "cidr " + c.prefix.String()
		for _, e := range c.except {
			s += " except " + e.String()
		}
		parts = append(parts, s)
	}
	if len(parts) == 0 {
		parts = append(parts, "no peer")
	}
	out := strings.Join(parts, " | ")
	if p.requireAuth {
		out += " (authenticated)"
	}
	return out
}

// parseCIDR accepts a prefix or a single address (as Cilium's fromCIDR).
func parseCIDR(s string, allowAddr bool) (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Masked(), nil
	} else if !allowAddr {
		return netip.Prefix{}, fmt.Errorf("invalid CIDR %q: %w", s, err)
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("invalid CIDR or address %q", s)
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}
