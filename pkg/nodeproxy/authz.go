package nodeproxy

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/palisade-net/palisade/pkg/l7"
	"github.com/palisade-net/palisade/pkg/policy"
	"github.com/palisade-net/palisade/pkg/workload"
)

// Policy directions: ingress is judged at the destination's proxy for
// inbound connections (HBONE and plaintext), egress at the source's proxy
// for outbound ones.
const (
	ingress = "ingress"
	egress  = "egress"
)

// authorized is one connection under policy. It is the connection's
// l7.Judge: every request is judged by the policy set that is current when
// it arrives, and the proxy re-checks the connection's L4 allowance on every
// policy change (revalidate), closing it when the allowance is withdrawn.
type authorized struct {
	p         *Proxy
	direction string
	src, dst  policy.Endpoint
	port      uint16
	// proto is the parser the connection runs through (l7.None: relayed
	// raw). It is fixed for the connection's life: a raw connection whose
	// port gains L7 rules is closed, since a parser cannot join mid-stream.
	proto l7.Protocol
	// end closes the connection with a reason; set once it is established.
	end func(reason string)

	last atomic.Pointer[cachedDecision]
	// revoked and failed hold why the connection was ended by a policy
	// change or by its inspector (malformed traffic), for the flow record.
	revoked, failed atomic.Pointer[string]
}

func (a *authorized) revoke(reason string) { a.revoked.CompareAndSwap(nil, &reason) }

func (a *authorized) fail(err error) {
	reason := err.Error()
	a.failed.CompareAndSwap(nil, &reason)
}

type cachedDecision struct {
	set *policy.Set
	d   policy.Decision
}

// decide evaluates the connection under set, caching the result per set.
func (a *authorized) decide(set *policy.Set) policy.Decision {
	if c := a.last.Load(); c != nil && c.set == set {
		return c.d
	}
	var d policy.Decision
	if a.direction == ingress {
		d = set.Ingress(a.src, a.dst, a.port)
	} else {
		d = set.Egress(a.src, a.dst, a.port)
	}
	a.last.Store(&cachedDecision{set: set, d: d})
	return d
}

// current evaluates the connection under the proxy's current policy.
func (a *authorized) current() policy.Decision { return a.decide(a.p.policy.Load()) }

// HTTP judges one HTTP request (l7.Judge).
func (a *authorized) HTTP(r *l7.HTTPRequest) l7.Verdict {
	d := a.current()
	if !d.Allow || d.Rules == nil {
		return d.Verdict
	}
	return d.Rules.HTTP(r)
}

// Kafka judges one Kafka request (l7.Judge).
func (a *authorized) Kafka(r *l7.KafkaRequest) l7.Verdict {
	d := a.current()
	if !d.Allow || d.Rules == nil {
		return d.Verdict
	}
	return d.Rules.Kafka(r)
}

// stillAllowed reports whether the connection may continue under set, and
// why not.
func (a *authorized) stillAllowed(set *policy.Set) (bool, string) {
	d := a.decide(set)
	if !d.Allow {
		return false, "policy no longer allows the connection: " + d.Reason
	}
	if d.Protocol != l7.None && d.Protocol != a.proto {
		if a.proto == l7.None {
			return false, fmt.Sprintf("port %d now has %s rules; the connection was not inspected from its start", a.port, d.Protocol)
		}
		return false, fmt.Sprintf("port %d changed from %s to %s rules", a.port, a.proto, d.Protocol)
	}
	return true, ""
}

// liveSet holds the proxy's connections under policy.
type liveSet struct {
	mu sync.Mutex
	m  map[*authorized]struct{}
}

func (s *liveSet) add(a *authorized) {
	s.mu.Lock()
	if s.m == nil {
		s.m = map[*authorized]struct{}{}
	}
	s.m[a] = struct{}{}
	s.mu.Unlock()
}

func (s *liveSet) remove(a *authorized) {
	s.mu.Lock()
	delete(s.m, a)
	s.mu.Unlock()
}

func (s *liveSet) list() []*authorized {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*authorized, 0, len(s.m))
	for a := range s.m {
		out = append(out, a)
	}
	return out
}

// revalidate closes every live connection the policy set no longer allows.
func (p *Proxy) revalidate(set *policy.Set) {
	for _, a := range p.live.list() {
		if ok, reason := a.stillAllowed(set); !ok && a.end != nil {
			p.log.Info("closing connection after a policy change", "direction", a.direction,
				"src", a.src.IP, "dst", a.dst.IP, "port", a.port, "reason", reason)
			p.metrics.revoked.Inc()
			a.end(reason)
		}
	}
}

// updatePolicy compiles the policy objects of a cluster snapshot, swaps
// the set in and closes live connections it withdraws. Objects that do not
// compile are left out and logged once per distinct problem.
func (p *Proxy) updatePolicy(objs []*unstructured.Unstructured) {
	p.policyMu.Lock()
	defer p.policyMu.Unlock()
	// Most snapshots change pods, not policies: keeping the compiled set
	// keeps every live connection's cached decision and skips re-deciding
	// them all.
	if p.policy.Load() != nil && equality.Semantic.DeepEqual(p.policyObjs, policyObjects(objs)) {
		return
	}
	p.policyObjs = policyObjects(objs)
	set, problems := policy.Compile(objs)
	old := p.problems.Swap(&problems)
	for _, pr := range problems {
		if old == nil || !slices.Contains(*old, pr) {
			p.log.Warn("policy problem", "object", pr.Object, "field", pr.Field, "problem", pr.Message)
		}
	}
	p.metrics.policyProblems.Set(float64(len(problems)))
	p.policy.Store(set)
	p.revalidate(set)
}

// policyObjects returns the objects of objs that are policies.
func policyObjects(objs []*unstructured.Unstructured) []*unstructured.Unstructured {
	var out []*unstructured.Unstructured
	for _, o := range objs {
		if policy.IsPolicy(o) {
			out = append(out, o)
		}
	}
	return out
}

// PolicyProblems returns what the last policy compilation reported.
func (p *Proxy) PolicyProblems() []policy.Problem {
	if pr := p.problems.Load(); pr != nil {
		return *pr
	}
	return nil
}

// localEndpoint describes a workload this proxy serves.
func (p *Proxy) localEndpoint(w *workload.Workload, id spiffeid.ID, ip netip.Addr) policy.Endpoint {
	return policy.Endpoint{
		Namespace:       w.Namespace,
		ServiceAccount:  w.ServiceAccountOrDefault(),
		Labels:          w.Labels,
		NamespaceLabels: w.NamespaceLabels,
		Identity:        id,
		IP:              ip,
		InCluster:       true,
	}
}

// peerEndpoint describes the source of an HBONE connection: its verified
// SPIFFE ID and, when the client address it names belongs to a pod with
// that same identity and is also the address the tunnel came from (source
// proxies dial tunnels from inside the source pod's netns), the pod's
// labels. Anything else is ignored: labels never come from an unverified
// claim, and a certificate shared by several pods (one service account)
// cannot borrow another pod's labels.
func (p *Proxy) peerEndpoint(peer spiffeid.ID, forwarded string, remote net.Addr) policy.Endpoint {
	e := policy.Endpoint{Identity: peer, InCluster: true}
	if ns, sa, ok := identityParts(peer); ok {
		e.Namespace, e.ServiceAccount = ns, sa
	}
	ap, err := netip.ParseAddrPort(forwardedFor(forwarded))
	if err != nil {
		return e
	}
	ip := ap.Addr().Unmap()
	if ta, ok := remote.(*net.TCPAddr); !ok || ta.AddrPort().Addr().Unmap() != ip {
		return e
	}
	if w := p.index.Load().Workload(ip); w != nil {
		if id, err := w.Identity(p.cfg.TrustDomain); err == nil && id == peer {
			e.Labels, e.NamespaceLabels, e.IP = w.Labels, w.NamespaceLabels, ip
		}
	}
	return e
}

// addrEndpoint describes an unauthenticated address: a known pod (labels,
// no identity) or something outside the cluster.
func (p *Proxy) addrEndpoint(ip netip.Addr) policy.Endpoint {
	ip = ip.Unmap()
	if w := p.index.Load().Workload(ip); w != nil {
		return policy.Endpoint{
			Namespace:       w.Namespace,
			ServiceAccount:  w.ServiceAccountOrDefault(),
			Labels:          w.Labels,
			NamespaceLabels: w.NamespaceLabels,
			IP:              ip,
			InCluster:       true,
		}
	}
	return policy.Endpoint{IP: ip}
}

// identityParts splits spiffe://td/ns/<ns>/sa/<sa>.
func identityParts(id spiffeid.ID) (ns, sa string, ok bool) {
	parts := strings.Split(strings.TrimPrefix(id.Path(), "/"), "/")
	if len(parts) != 4 || parts[0] != "ns" || parts[2] != "sa" {
		return "", "", false
	}
	return parts[1], parts[3], true
}
