package policy

import (
	"slices"

	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/palisade-net/palisade/pkg/policy/cilium"
)

// compileCilium translates a CiliumNetworkPolicy (ref.Namespace set) or
// CiliumClusterwideNetworkPolicy: one policy per spec. What Palisade
// cannot honour is reported: as a warning where dropping it only allows
// less, as an error (the object is rejected) where it would allow more.
func compileCilium(c *compiler, ref ObjectRef, cnp *cilium.CiliumNetworkPolicy) []*policy {
	if cnp.Spec == nil && len(cnp.Specs) == 0 {
		c.ps.errorf(field.NewPath("spec"), "required: spec or specs")
		return nil
	}
	var out []*policy
	if cnp.Spec != nil {
		if p := c.ciliumRule(ref, cnp.Spec, field.NewPath("spec")); p != nil {
			out = append(out, p)
		}
	}
	for i := range cnp.Specs {
		if p := c.ciliumRule(ref, &cnp.Specs[i], field.NewPath("specs").Index(i)); p != nil {
			out = append(out, p)
		}
	}
	return out
}

func (c *compiler) ciliumRule(ref ObjectRef, r *cilium.Rule, base *field.Path) *policy {
	switch {
	case r.EndpointSelector != nil && r.NodeSelector != nil:
		c.ps.errorf(base, "endpointSelector and nodeSelector are exclusive")
		return nil
	case r.NodeSelector != nil && ref.Namespace != "":
		c.ps.errorf(base.Child("nodeSelector"), "only allowed in a CiliumClusterwideNetworkPolicy")
		return nil
	case r.NodeSelector != nil:
		c.ps.warnf(base.Child("nodeSelector"), "host policies are not enforced by Palisade (it proxies pods only); this spec is ignored")
		return nil
	case r.EndpointSelector == nil:
		c.ps.errorf(base, "required: endpointSelector")
		return nil
	}
	pol := &policy{ref: ref, name: ref.String()}
	pol.subject = compileSelector(c.ps, base.Child("endpointSelector"), r.EndpointSelector, ref.Namespace, subjectSelector, false)
	for i := range r.Ingress {
		ir := &r.Ingress[i]
		p := base.Child("ingress").Index(i)
		f := c.ciliumIngressPeers(p, &ir.IngressCommonRule, false)
		if !c.ciliumAuth(p, ir.Authentication, f) {
			continue
		}
		c.ciliumICMP(p, len(ir.ICMPs))
		var ports []*portRule
		for j := range ir.ToPorts {
			if pr := c.ciliumPortRule(pol, p.Child("toPorts").Index(j), &ir.ToPorts[j]); pr != nil {
				ports = append(ports, pr)
			}
		}
		if rl := c.ciliumFinish(pol, p, f, ports, len(ir.ToPorts) > 0, false); rl != nil {
			pol.dirs[ingress].allows = append(pol.dirs[ingress].allows, rl)
		}
	}
	for i := range r.IngressDeny {
		ir := &r.IngressDeny[i]
		p := base.Child("ingressDeny").Index(i)
		f := c.ciliumIngressPeers(p, &ir.IngressCommonRule, true)
		c.ciliumICMP(p, len(ir.ICMPs))
		ports := c.ciliumDenyPorts(pol, p, ir.ToPorts)
		if rl := c.ciliumFinish(pol, p, f, ports, len(ir.ToPorts) > 0, true); rl != nil {
			pol.dirs[ingress].denies = append(pol.dirs[ingress].denies, rl)
		}
	}
	for i := range r.Egress {
		er := &r.Egress[i]
		p := base.Child("egress").Index(i)
		f := c.ciliumEgressPeers(p, &er.EgressCommonRule, false)
		if er.ToFQDNs != nil {
			f.kinds["toFQDNs"] = true
			c.unsupported(p.Child("toFQDNs"), false, "toFQDNs is not supported (Palisade does not observe DNS)")
		}
		if !c.ciliumAuth(p, er.Authentication, f) {
			continue
		}
		c.ciliumICMP(p, len(er.ICMPs))
		var ports []*portRule
		for j := range er.ToPorts {
			if pr := c.ciliumPortRule(pol, p.Child("toPorts").Index(j), &er.ToPorts[j]); pr != nil {
				ports = append(ports, pr)
			}
		}
		if rl := c.ciliumFinish(pol, p, f, ports, len(er.ToPorts) > 0, false); rl != nil {
			pol.dirs[egress].allows = append(pol.dirs[egress].allows, rl)
		}
	}
	for i := range r.EgressDeny {
		er := &r.EgressDeny[i]
		p := base.Child("egressDeny").Index(i)
		f := c.ciliumEgressPeers(p, &er.EgressCommonRule, true)
		c.ciliumICMP(p, len(er.ICMPs))
		ports := c.ciliumDenyPorts(pol, p, er.ToPorts)
		if rl := c.ciliumFinish(pol, p, f, ports, len(er.ToPorts) > 0, true); rl != nil {
			pol.dirs[egress].denies = append(pol.dirs[egress].denies, rl)
		}
	}
	var dd cilium.DefaultDenyConfig
	if r.EnableDefaultDeny != nil {
		dd = *r.EnableDefaultDeny
	}
	pol.dirs[ingress].defaultDeny = defaultDenyFor(len(r.Ingress)+len(r.IngressDeny) > 0, dd.Ingress)
	pol.dirs[egress].defaultDeny = defaultDenyFor(len(r.Egress)+len(r.EgressDeny) > 0, dd.Egress)
	return pol
}

// ciliumFinish checks Cilium's one-kind-of-peer rule and builds the rule.
func (c *compiler) ciliumFinish(pol *policy, path *field.Path, f *peerFields, ports []*portRule, hasToPorts, deny bool) *rule {
	kinds := peerKinds(f.kinds)
	if len(kinds) > 1 {
		combineError(c.ps, path, kinds)
	}
	peers := c.compilePeers(path, f, pol.ref.Namespace, deny)
	return finishRule(pol, path, peers, len(kinds) > 0, ports, hasToPorts, c.nextID)
}

func (c *compiler) ciliumIngressPeers(path *field.Path, r *cilium.IngressCommonRule, deny bool) *peerFields {
	f := &peerFields{prefix: "from", endpoints: r.FromEndpoints, cidr: r.FromCIDR, entities: r.FromEntities}
	f.cidrSet = c.ciliumCIDRSet(path.Child("fromCIDRSet"), r.FromCIDRSet, deny)
	f.kinds = map[string]bool{
		"fromEndpoints": r.FromEndpoints != nil,
		"fromCIDR":      r.FromCIDR != nil,
		"fromCIDRSet":   r.FromCIDRSet != nil,
		"fromEntities":  r.FromEntities != nil,
		"fromNodes":     r.FromNodes != nil,
		"fromGroups":    r.FromGroups != nil,
	}
	if r.FromRequires != nil {
		c.ps.errorf(path.Child("fromRequires"), "not supported (deprecated in Cilium): it restricts every other rule, so the policy cannot be enforced without it")
	}
	if r.FromNodes != nil {
		c.unsupported(path.Child("fromNodes"), deny, "fromNodes is not supported (Palisade never sees nodes as peers)")
	}
	if r.FromGroups != nil {
		c.unsupported(path.Child("fromGroups"), deny, "fromGroups is not supported")
	}
	return f
}

func (c *compiler) ciliumEgressPeers(path *field.Path, r *cilium.EgressCommonRule, deny bool) *peerFields {
	f := &peerFields{prefix: "to", endpoints: r.ToEndpoints, cidr: r.ToCIDR, entities: r.ToEntities}
	f.cidrSet = c.ciliumCIDRSet(path.Child("toCIDRSet"), r.ToCIDRSet, deny)
	f.kinds = map[string]bool{
		"toEndpoints": r.ToEndpoints != nil,
		"toCIDR":      r.ToCIDR != nil,
		"toCIDRSet":   r.ToCIDRSet != nil,
		"toEntities":  r.ToEntities != nil,
		"toServices":  r.ToServices != nil,
		"toGroups":    r.ToGroups != nil,
		"toNodes":     r.ToNodes != nil,
	}
	if r.ToRequires != nil {
		c.ps.errorf(path.Child("toRequires"), "not supported (deprecated in Cilium): it restricts every other rule, so the policy cannot be enforced without it")
	}
	if r.ToServices != nil {
		c.unsupported(path.Child("toServices"), deny, "toServices is not supported (select the backends with toEndpoints)")
	}
	if r.ToGroups != nil {
		c.unsupported(path.Child("toGroups"), deny, "toGroups is not supported")
	}
	if r.ToNodes != nil {
		c.unsupported(path.Child("toNodes"), deny, "toNodes is not supported (Palisade never sees nodes as peers)")
	}
	return f
}

func (c *compiler) ciliumCIDRSet(path *field.Path, in []cilium.CIDRRule, deny bool) []cidrInput {
	var out []cidrInput
	for i, r := range in {
		if r.CIDRGroupRef != "" || r.CIDRGroupSelector != nil {
			c.unsupported(path.Index(i), deny, "CIDR groups (cidrGroupRef, cidrGroupSelector) are not supported")
			continue
		}
		out = append(out, cidrInput{cidr: r.CIDR, except: r.ExceptCIDRs})
	}
	return out
}

// ciliumAuth applies authentication.mode; it reports false when the rule
// can never match (test-always-fail) or is invalid.
func (c *compiler) ciliumAuth(path *field.Path, a *cilium.Authentication, f *peerFields) bool {
	if a == nil {
		return true
	}
	switch a.Mode {
	case "disabled":
		return true
	case "required":
		f.authRequired = true
		return true
	case "test-always-fail":
		return false
	}
	c.ps.errorf(path.Child("authentication", "mode"), "%q: want disabled, required or test-always-fail", a.Mode)
	return false
}

func (c *compiler) ciliumICMP(path *field.Path, n int) {
	if n > 0 {
		c.ps.warnf(path.Child("icmps"), "ICMP is not carried by Palisade; icmps have no effect on the TCP connections it proxies")
	}
}

// ciliumPortRule translates one allow toPorts entry; nil when the entry
// cannot be honoured (it then allows nothing).
func (c *compiler) ciliumPortRule(pol *policy, path *field.Path, in *cilium.PortRule) *portRule {
	pr := c.newPortRule(pol, path)
	ok := true
	for _, x := range []struct {
		name    string
		present bool
	}{
		{"terminatingTLS", in.TerminatingTLS != nil},
		{"originatingTLS", in.OriginatingTLS != nil},
		{"serverNames", in.ServerNames != nil},
		{"listener", in.Listener != nil},
	} {
		if x.present {
			c.unsupported(path.Child(x.name), false, "%s is not supported", x.name)
			ok = false
		}
	}
	if len(in.Ports) == 0 {
		pr.anyPort = true
	}
	c.compilePorts(path.Child("ports"), pr, ciliumPorts(in.Ports), false)
	if in.Rules != nil {
		rp := path.Child("rules")
		in7 := ciliumL7Input(in.Rules)
		if slices.ContainsFunc(in.Ports, func(p cilium.PortProtocol) bool { return p.Port.String() == "0" }) && len(in7.kinds) > 0 {
			c.ps.errorf(path.Child("ports"), "L7 rules can not be used when a port is 0")
		}
		switch {
		case len(in7.kinds) > 1:
			c.ps.errorf(rp, "multiple L7 protocol rule types (%v) specified in a single port rule", in7.kinds)
			return nil
		case in.Rules.DNS != nil:
			c.unsupported(rp.Child("dns"), false, "DNS rules are not supported")
			return nil
		case in.Rules.L7Proto != "" || in.Rules.L7 != nil:
			c.unsupported(rp.Child("l7proto"), false, "generic L7 rules (l7proto %q) are not supported", in.Rules.L7Proto)
			return nil
		}
		c.compileL7(rp, pr, in7, false)
	}
	if !ok {
		return nil
	}
	return pr
}

func (c *compiler) ciliumDenyPorts(pol *policy, path *field.Path, in []cilium.PortDenyRule) []*portRule {
	var out []*portRule
	for i := range in {
		p := path.Child("toPorts").Index(i)
		pr := c.newPortRule(pol, p)
		if len(in[i].Ports) == 0 {
			pr.anyPort = true
		}
		c.compilePorts(p.Child("ports"), pr, ciliumPorts(in[i].Ports), true)
		out = append(out, pr)
	}
	return out
}

func ciliumPorts(in []cilium.PortProtocol) []portInput {
	out := make([]portInput, 0, len(in))
	for _, p := range in {
		out = append(out, portInput{port: p.Port, endPort: p.EndPort, protocol: p.Protocol})
	}
	return out
}

func ciliumL7Input(r *cilium.L7Rules) *l7Input {
	in := &l7Input{}
	for _, h := range r.HTTP {
		hi := httpInput{method: h.Method, path: h.Path, host: h.Host, headers: h.Headers}
		for _, m := range h.HeaderMatches {
			if m == nil {
				continue
			}
			hm := headerMatchInput{name: m.Name, value: m.Value, mismatch: m.Mismatch}
			if m.Secret != nil {
				hm.unsupported = "headerMatches with a secret are not supported (Palisade does not read Secrets)"
			}
			hi.matches = append(hi.matches, hm)
		}
		in.http = append(in.http, hi)
	}
	for _, k := range r.Kafka {
		in.kafka = append(in.kafka, kafkaInput{role: k.Role, apiKey: k.APIKey, apiVersion: k.APIVersion, clientID: k.ClientID, topic: k.Topic})
	}
	if r.HTTP != nil {
		in.kinds = append(in.kinds, "http")
	}
	if r.Kafka != nil {
		in.kinds = append(in.kinds, "kafka")
	}
	if r.DNS != nil {
		in.kinds = append(in.kinds, "dns")
	}
	if r.L7Proto != "" {
		in.kinds = append(in.kinds, "l7proto")
	}
	return in
}
