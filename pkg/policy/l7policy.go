package policy

import (
	"slices"

	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/palisade-net/palisade/pkg/apis/policy/v1alpha1"
)

// compileL7Policy compiles the spec of an L7Policy (ref.Namespace set) or
// ClusterL7Policy.
func compileL7Policy(c *compiler, ref ObjectRef, spec *v1alpha1.L7PolicySpec) *policy {
	pol := &policy{ref: ref, name: ref.String()}
	base := field.NewPath("spec")
	if spec.EndpointSelector == nil {
		c.ps.errorf(base.Child("endpointSelector"), "required: select the pods the policy applies to ({} selects all)")
		pol.subject = &labelSel{never: true}
	} else {
		pol.subject = compileSelector(c.ps, base.Child("endpointSelector"), spec.EndpointSelector, ref.Namespace, subjectSelector, true)
	}
	for i := range spec.Ingress {
		if r := c.l7Rule(pol, base.Child("ingress").Index(i), ingressPeers(&spec.Ingress[i]), spec.Ingress[i].ToPorts, false); r != nil {
			pol.dirs[ingress].allows = append(pol.dirs[ingress].allows, r)
		}
	}
	for i := range spec.IngressDeny {
		if r := c.l7Rule(pol, base.Child("ingressDeny").Index(i), ingressPeers(&spec.IngressDeny[i]), spec.IngressDeny[i].ToPorts, true); r != nil {
			pol.dirs[ingress].denies = append(pol.dirs[ingress].denies, r)
		}
	}
	for i := range spec.Egress {
		if r := c.l7Rule(pol, base.Child("egress").Index(i), egressPeers(&spec.Egress[i]), spec.Egress[i].ToPorts, false); r != nil {
			pol.dirs[egress].allows = append(pol.dirs[egress].allows, r)
		}
	}
	for i := range spec.EgressDeny {
		if r := c.l7Rule(pol, base.Child("egressDeny").Index(i), egressPeers(&spec.EgressDeny[i]), spec.EgressDeny[i].ToPorts, true); r != nil {
			pol.dirs[egress].denies = append(pol.dirs[egress].denies, r)
		}
	}
	var dd v1alpha1.DefaultDenyConfig
	if spec.EnableDefaultDeny != nil {
		dd = *spec.EnableDefaultDeny
	}
	pol.dirs[ingress].defaultDeny = defaultDenyFor(len(spec.Ingress)+len(spec.IngressDeny) > 0, dd.Ingress)
	pol.dirs[egress].defaultDeny = defaultDenyFor(len(spec.Egress)+len(spec.EgressDeny) > 0, dd.Egress)
	return pol
}

func ingressPeers(r *v1alpha1.IngressRule) *peerFields {
	f := &peerFields{
		prefix:     "from",
		endpoints:  r.FromEndpoints,
		principals: r.FromPrincipals,
		namespaces: r.FromNamespaces,
		cidr:       r.FromCIDR,
	}
	fillCommonPeers(f, r.FromServiceAccounts, r.FromCIDRSet, r.FromEntities)
	f.kinds = map[string]bool{
		"fromEndpoints":        r.FromEndpoints != nil,
		"fromPrincipals":       r.FromPrincipals != nil,
		"fromServiceAccounts":  r.FromServiceAccounts != nil,
		"fromNamespaces":       r.FromNamespaces != nil,
		"fromCIDR/fromCIDRSet": r.FromCIDR != nil || r.FromCIDRSet != nil,
		"fromEntities":         r.FromEntities != nil,
	}
	return f
}

func egressPeers(r *v1alpha1.EgressRule) *peerFields {
	f := &peerFields{
		prefix:     "to",
		endpoints:  r.ToEndpoints,
		principals: r.ToPrincipals,
		namespaces: r.ToNamespaces,
		cidr:       r.ToCIDR,
	}
	fillCommonPeers(f, r.ToServiceAccounts, r.ToCIDRSet, r.ToEntities)
	f.kinds = map[string]bool{
		"toEndpoints":       r.ToEndpoints != nil,
		"toPrincipals":      r.ToPrincipals != nil,
		"toServiceAccounts": r.ToServiceAccounts != nil,
		"toNamespaces":      r.ToNamespaces != nil,
		"toCIDR/toCIDRSet":  r.ToCIDR != nil || r.ToCIDRSet != nil,
		"toEntities":        r.ToEntities != nil,
	}
	return f
}

func fillCommonPeers(f *peerFields, sas []v1alpha1.ServiceAccountRef, cidrs []v1alpha1.CIDRRule, ents []v1alpha1.Entity) {
	for _, sa := range sas {
		f.sas = append(f.sas, saInput{namespace: sa.Namespace, name: sa.Name})
	}
	for _, c := range cidrs {
		f.cidrSet = append(f.cidrSet, cidrInput{cidr: c.CIDR, except: c.Except})
	}
	for _, e := range ents {
		f.entities = append(f.entities, string(e))
	}
}

// l7Rule compiles one rule of an L7Policy.
func (c *compiler) l7Rule(pol *policy, path *field.Path, f *peerFields, toPorts []v1alpha1.PortRule, deny bool) *rule {
	kinds := peerKinds(f.kinds)
	if len(kinds) > 1 {
		combineError(c.ps, path, kinds)
	}
	peers := c.compilePeers(path, f, pol.ref.Namespace, deny)
	var ports []*portRule
	for i := range toPorts {
		in := &toPorts[i]
		pp := path.Child("toPorts").Index(i)
		pr := c.newPortRule(pol, pp)
		if len(in.Ports) == 0 {
			c.ps.errorf(pp.Child("ports"), "required: at least one port")
		}
		var pis []portInput
		for _, p := range in.Ports {
			pis = append(pis, portInput{port: p.Port, endPort: p.EndPort, protocol: string(p.Protocol)})
		}
		c.compilePorts(pp.Child("ports"), pr, pis, deny)
		if in.Rules != nil {
			c.compileL7(pp.Child("rules"), pr, l7InputOf(in.Rules), deny)
		}
		ports = append(ports, pr)
	}
	return finishRule(pol, path, peers, len(kinds) > 0, ports, len(toPorts) > 0, c.nextID)
}

func l7InputOf(r *v1alpha1.L7Rules) *l7Input {
	in := &l7Input{}
	for _, h := range r.HTTP {
		hi := httpInput{method: h.Method, path: h.Path, host: h.Host, headers: h.Headers}
		for _, m := range h.HeaderMatches {
			hi.matches = append(hi.matches, headerMatchInput{name: m.Name, value: m.Value, mismatch: string(m.Mismatch)})
		}
		in.http = append(in.http, hi)
	}
	for _, g := range r.GRPC {
		in.grpc = append(in.grpc, [2]string{g.Service, g.Method})
	}
	for _, k := range r.Kafka {
		ki := kafkaInput{role: k.Role, clientID: k.ClientID, topic: k.Topic}
		if k.APIKey != nil {
			ki.apiKey = k.APIKey.String()
		}
		if k.APIVersion != nil {
			ki.apiVersion = k.APIVersion.String()
		}
		in.kafka = append(in.kafka, ki)
	}
	for kind, n := range map[string]int{"http": len(r.HTTP), "grpc": len(r.GRPC), "kafka": len(r.Kafka)} {
		if n > 0 {
			in.kinds = append(in.kinds, kind)
		}
	}
	slices.Sort(in.kinds)
	return in
}
