package lab

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base32"
	"fmt"
	"sort"
	"strings"
)

// The lab plays kube-proxy (iptables mode) for clients that Palisade does not
// capture: in every node netns, nat rules DNAT a Service's VIP:port to one of
// its ready endpoints, picked at random with equal probability. The rules
// live in chains of the lab's own, so nothing else in the node's tables is
// touched, and are replaced atomically with iptables-restore --noflush.
const (
	chainServices    = "PLAB-SERVICES"
	chainPostrouting = "PLAB-POSTROUTING"
	chainSvcPrefix   = "PLAB-SVC-"
	chainSepPrefix   = "PLAB-SEP-"
	// masqMark marks connections that must be masqueraded: a pod that reaches
	// itself through its own Service ("hairpin"). The bit is the one
	// kube-proxy uses, outside Palisade's 0xfff mark mask.
	masqMark = "0x4000/0x4000"
)

// installProxyBase hooks the lab's chains into a fresh node netns.
func (sys *system) installProxyBase(ctx context.Context, ns string) error {
	rules := strings.Join([]string{
		"*nat",
		":" + chainServices + " - [0:0]",
		":" + chainPostrouting + " - [0:0]",
		`-A PREROUTING -m comment --comment "palisade lab: kube-proxy" -j ` + chainServices,
		`-A OUTPUT -m comment --comment "palisade lab: kube-proxy" -j ` + chainServices,
		`-A POSTROUTING -m comment --comment "palisade lab: kube-proxy" -j ` + chainPostrouting,
		"COMMIT", "",
	}, "\n")
	if _, err := sys.inNetns(ctx, ns, []byte(rules), "iptables-restore", "-w", "5", "--noflush"); err != nil {
		return fmt.Errorf("netns %s: install service chains: %w", ns, err)
	}
	return nil
}

// chainName returns a stable chain name (at most 28 characters) for key.
func chainName(prefix, key string) string {
	sum := sha256.Sum256([]byte(key))
	return prefix + base32.StdEncoding.EncodeToString(sum[:])[:16]
}

// proxyRules renders the nat table for services; stale lists chains of the
// lab's that exist but are no longer needed (they are flushed and deleted).
func proxyRules(services []ServiceInfo, stale []string) string {
	var chains, rules []string
	chains = append(chains, chainServices, chainPostrouting)
	rules = append(rules, fmt.Sprintf(`-A %s -m comment --comment "palisade lab: hairpin" -m mark --mark %s -j MASQUERADE`, chainPostrouting, masqMark))
	for _, svc := range services {
		if !svc.ClusterIP.IsValid() {
			continue
		}
		for _, port := range svc.Ports {
			if len(port.Endpoints) == 0 {
				continue
			}
			proto := strings.ToLower(port.Protocol)
			id := fmt.Sprintf("%s/%s:%s/%d/%s", svc.Namespace, svc.Name, port.Name, port.Port, proto)
			svcChain := chainName(chainSvcPrefix, id)
			chains = append(chains, svcChain)
			rules = append(rules, fmt.Sprintf(`-A %s -d %s/32 -p %s -m %s --dport %d -m comment --comment "%s" -j %s`,
				chainServices, svc.ClusterIP, proto, proto, port.Port, id, svcChain))
			n := len(port.Endpoints)
			for i, ep := range port.Endpoints {
				sep := chainName(chainSepPrefix, id+"/"+ep.String())
				chains = append(chains, sep)
				if i < n-1 {
					rules = append(rules, fmt.Sprintf(`-A %s -m comment --comment "%s -> %s" -m statistic --mode random --probability %.10f -j %s`,
						svcChain, id, ep, 1/float64(n-i), sep))
				} else {
					rules = append(rules, fmt.Sprintf(`-A %s -m comment --comment "%s -> %s" -j %s`, svcChain, id, ep, sep))
				}
				rules = append(rules,
					fmt.Sprintf(`-A %s -s %s/32 -j MARK --set-xmark %s`, sep, ep.Addr(), masqMark),
					fmt.Sprintf(`-A %s -p %s -m %s -j DNAT --to-destination %s`, sep, proto, proto, ep))
			}
		}
	}
	want := map[string]bool{}
	for _, c := range chains {
		want[c] = true
	}
	var drop []string
	for _, c := range stale {
		if !want[c] {
			drop = append(drop, c)
		}
	}
	sort.Strings(drop)
	var b strings.Builder
	b.WriteString("*nat\n")
	for _, c := range append(chains, drop...) {
		fmt.Fprintf(&b, ":%s - [0:0]\n", c)
	}
	for _, r := range rules {
		b.WriteString(r + "\n")
	}
	for _, c := range drop {
		fmt.Fprintf(&b, "-X %s\n", c)
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

// labChains lists the lab's chains in the nat table of a node netns.
func (sys *system) labChains(ctx context.Context, ns string) ([]string, error) {
	out, err := sys.inNetns(ctx, ns, nil, "iptables-save", "-t", "nat")
	if err != nil {
		return nil, fmt.Errorf("netns %s: %w", ns, err)
	}
	var chains []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, ":"+chainSvcPrefix) || strings.HasPrefix(line, ":"+chainSepPrefix) {
			chains = append(chains, strings.Fields(line[1:])[0])
		}
	}
	return chains, nil
}

// syncProxy replaces the Service rules of one node netns.
func (sys *system) syncProxy(ctx context.Context, ns string, services []ServiceInfo) error {
	stale, err := sys.labChains(ctx, ns)
	if err != nil {
		return err
	}
	rules := proxyRules(services, stale)
	if _, err := sys.inNetns(ctx, ns, []byte(rules), "iptables-restore", "-w", "5", "--noflush"); err != nil {
		return fmt.Errorf("netns %s: sync service rules: %w", ns, err)
	}
	return nil
}
