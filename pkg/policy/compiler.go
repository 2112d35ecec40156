package policy

import (
	"fmt"
	"sort"
	"strconv"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/palisade-net/palisade/pkg/l7"
)

// compiler turns one policy object into a *policy, collecting problems.
type compiler struct {
	ps     *problems
	nextID *int
	// strict: Palisade's own kinds, where everything unsupported is an
	// error. Cilium's kinds get warnings for what cannot be honoured in
	// allow rules (those parts then allow nothing).
	strict bool
}

// unsupported reports a part Palisade cannot honour: an error in strict
// mode and in deny rules (dropping part of a deny would allow more), a
// warning otherwise (the part then allows nothing).
func (c *compiler) unsupported(path *field.Path, deny bool, format string, args ...any) {
	if c.strict || deny {
		c.ps.errorf(path, format, args...)
		return
	}
	c.ps.warnf(path, format+"; it allows nothing", args...)
}

func (c *compiler) newPortRule(pol *policy, path *field.Path) *portRule {
	*c.nextID++
	return &portRule{id: *c.nextID, pol: pol, path: path.String()}
}

// peerFields are a rule's peer fields, in either API and direction.
type peerFields struct {
	prefix     string // "from" or "to"
	endpoints  []metav1.LabelSelector
	principals []string
	sas        []saInput
	namespaces []string
	cidr       []string
	cidrSet    []cidrInput
	entities   []string
	// authRequired: Cilium's authentication.mode=required.
	authRequired bool
	// kinds says which kinds of peer field are present (non-nil).
	kinds map[string]bool
}

type saInput struct{ namespace, name string }

type cidrInput struct {
	cidr   string
	except []string
}

// compilePeers compiles the peer fields of a rule of a policy in
// namespace ns ("" cluster-wide). The alternatives are ORed.
func (c *compiler) compilePeers(path *field.Path, f *peerFields, ns string, deny bool) peerSel {
	sel := peerSel{requireAuth: f.authRequired}
	name := func(s string) string { return f.prefix + s }
	for i := range f.endpoints {
		sel.endpoints = append(sel.endpoints,
			compileSelector(c.ps, path.Child(name("Endpoints")).Index(i), &f.endpoints[i], ns, peerSelector, c.strict))
	}
	for i, s := range f.principals {
		pr, err := parsePrincipal(s)
		if err != nil {
			c.ps.errorf(path.Child(name("Principals")).Index(i), "%v", err)
			continue
		}
		sel.principals = append(sel.principals, pr)
	}
	for i, sa := range f.sas {
		p := path.Child(name("ServiceAccounts")).Index(i)
		if errs := validation.IsDNS1123Subdomain(sa.name); len(errs) > 0 {
			c.ps.errorf(p.Child("name"), "%q is not a service account name: %s", sa.name, strings.Join(errs, "; "))
			continue
		}
		saNS := sa.namespace
		if saNS == "" {
			saNS = ns
		}
		if saNS == "" {
			c.ps.errorf(p.Child("namespace"), "required in a cluster-wide policy")
			continue
		}
		if errs := validation.IsDNS1123Label(saNS); len(errs) > 0 {
			c.ps.errorf(p.Child("namespace"), "%q is not a namespace name: %s", saNS, strings.Join(errs, "; "))
			continue
		}
		sel.sas = append(sel.sas, saRef{namespace: saNS, name: sa.name})
	}
	for i, n := range f.namespaces {
		if errs := validation.IsDNS1123Label(n); len(errs) > 0 {
			c.ps.errorf(path.Child(name("Namespaces")).Index(i), "%q is not a namespace name: %s", n, strings.Join(errs, "; "))
			continue
		}
		sel.namespaces = append(sel.namespaces, n)
	}
	for i, s := range f.cidr {
		p, err := parseCIDR(s, true)
		if err != nil {
			c.ps.errorf(path.Child(name("CIDR")).Index(i), "%v", err)
			continue
		}
		sel.cidrs = append(sel.cidrs, cidrSel{prefix: p})
	}
	for i, cs := range f.cidrSet {
		p := path.Child(name("CIDRSet")).Index(i)
		prefix, err := parseCIDR(cs.cidr, false)
		if err != nil {
			c.ps.errorf(p.Child("cidr"), "%v", err)
			continue
		}
		cidr := cidrSel{prefix: prefix}
		for j, e := range cs.except {
			ex, err := parseCIDR(e, false)
			switch {
			case err != nil:
				c.ps.errorf(p.Child("except").Index(j), "%v", err)
			case !prefix.Contains(ex.Addr()) || ex.Bits() < prefix.Bits():
				c.ps.errorf(p.Child("except").Index(j), "%s is not inside %s", ex, prefix)
			default:
				cidr.except = append(cidr.except, ex)
			}
		}
		sel.cidrs = append(sel.cidrs, cidr)
	}
	for i, e := range f.entities {
		p := path.Child(name("Entities")).Index(i)
		bits, ok := entityBits[e]
		switch {
		case ok:
			sel.entities |= bits
		case ciliumOnlyEntities[e]:
			c.unsupported(p, deny, "entity %q is not supported: Palisade cannot recognise such peers", e)
		default:
			c.ps.errorf(p, "unknown entity %q (want all, world, world-ipv4, world-ipv6, cluster or none)", e)
		}
	}
	return sel
}

// portInput is one port of a port rule.
type portInput struct {
	port     intstr.IntOrString
	endPort  int32
	protocol string
}

// compilePorts fills pr's port ranges. Palisade's kinds want numbers
// 1-65535; Cilium's also accept "0" (every port) and named ports (not
// supported: they match nothing). UDP and SCTP never match the TCP
// connections Palisade carries.
func (c *compiler) compilePorts(path *field.Path, pr *portRule, ports []portInput, deny bool) {
	for i, in := range ports {
		p := path.Index(i)
		switch strings.ToUpper(in.protocol) {
		case "", "TCP", "ANY":
		case "UDP", "SCTP":
			if c.strict {
				c.ps.errorf(p.Child("protocol"), "%q: want TCP or ANY (Palisade carries TCP only)", in.protocol)
			}
			continue
		default:
			c.ps.errorf(p.Child("protocol"), "%q: want TCP or ANY", in.protocol)
			continue
		}
		var lo uint64
		var err error
		if in.port.Type == intstr.Int {
			lo = uint64(max(in.port.IntVal, 0))
			if in.port.IntVal < 0 || in.port.IntVal > 65535 {
				err = fmt.Errorf("out of range")
			}
		} else {
			lo, err = strconv.ParseUint(in.port.StrVal, 10, 16)
		}
		if err != nil {
			if in.port.Type == intstr.String && !c.strict && validation.IsValidPortName(in.port.StrVal) == nil {
				c.unsupported(p.Child("port"), deny, "named port %q is not supported", in.port.StrVal)
				continue
			}
			c.ps.errorf(p.Child("port"), "%q: want a port number 1-65535", in.port.String())
			continue
		}
		if lo == 0 {
			if c.strict {
				c.ps.errorf(p.Child("port"), "want a port number 1-65535 (omit toPorts for every port)")
				continue
			}
			pr.anyPort = true
			continue
		}
		hi := lo
		if in.endPort != 0 {
			if in.endPort < int32(lo) || in.endPort > 65535 {
				c.ps.errorf(p.Child("endPort"), "%d: want a port from %d to 65535", in.endPort, lo)
				continue
			}
			hi = uint64(in.endPort)
		}
		pr.ranges = append(pr.ranges, portRange{lo: uint16(lo), hi: uint16(hi)})
	}
}

// l7Input are the L7 rules of a port rule, in either API.
type l7Input struct {
	http  []httpInput
	grpc  [][2]string // service, method
	kafka []kafkaInput
	// kinds names the kinds present (http, grpc, kafka).
	kinds []string
}

// compileL7 fills pr's L7 rules.
func (c *compiler) compileL7(path *field.Path, pr *portRule, in *l7Input, deny bool) {
	if len(in.kinds) > 1 {
		c.ps.errorf(path, "%s cannot be mixed in one port rule: use one of http, grpc, kafka", strings.Join(in.kinds, " and "))
		return
	}
	switch {
	case len(in.http) > 0:
		pr.proto = l7.HTTP
		for i, h := range in.http {
			if r := compileHTTP(c.ps, path.Child("http").Index(i), h, pr.pol, deny); r != nil {
				pr.http = append(pr.http, r)
			}
		}
	case len(in.grpc) > 0:
		pr.proto = l7.HTTP
		for i, g := range in.grpc {
			if r := compileGRPC(c.ps, path.Child("grpc").Index(i), g[0], g[1], pr.pol); r != nil {
				pr.grpc = append(pr.grpc, r)
			}
		}
	case len(in.kafka) > 0:
		pr.proto = l7.Kafka
		for i, k := range in.kafka {
			if r := compileKafka(c.ps, path.Child("kafka").Index(i), k, pr.pol); r != nil {
				pr.kafka = append(pr.kafka, r)
			}
		}
	}
}

// usable reports whether a compiled port rule can still match anything:
// it has ports, and when it had L7 rules at least one survived (a port
// rule whose every L7 rule was dropped must not become L4-only).
func (pr *portRule) usable() bool {
	if !pr.anyPort && len(pr.ranges) == 0 {
		return false
	}
	return pr.proto == l7.None || len(pr.http)+len(pr.grpc)+len(pr.kafka) > 0
}

// finishRule builds a rule from its peers and port rules, following
// Cilium: a rule with peers and no toPorts applies to every port; a rule
// with toPorts and no peers applies to every peer; a rule with neither
// matches nothing (it only turns default deny on). It returns nil when
// the rule matches nothing.
func finishRule(pol *policy, path *field.Path, peers peerSel, hasPeers bool, ports []*portRule, hasToPorts bool, nextID *int) *rule {
	if !hasPeers && !hasToPorts {
		return nil
	}
	r := &rule{pol: pol, path: path.String(), peers: peers}
	r.peers.all = !hasPeers
	if !hasToPorts {
		*nextID++
		r.ports = []*portRule{{id: *nextID, pol: pol, path: r.path, anyPort: true}}
		return r
	}
	for _, pr := range ports {
		if pr.usable() {
			r.ports = append(r.ports, pr)
		}
	}
	if len(r.ports) == 0 {
		return nil
	}
	return r
}

// peerKinds names the peer kinds present; Cilium allows one per rule.
func peerKinds(kinds map[string]bool) []string {
	var out []string
	for k, present := range kinds {
		if present {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}

func combineError(ps *problems, path *field.Path, kinds []string) {
	ps.errorf(path, "%s cannot be combined in one rule (as in Cilium): write one rule per kind of peer",
		strings.Join(kinds, " and "))
}

// defaultDenyFor applies enableDefaultDeny: unset, a direction is default
// deny when the policy has allow or deny rules for it.
func defaultDenyFor(hasRules bool, explicit *bool) bool {
	if explicit != nil {
		return *explicit
	}
	return hasRules
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
