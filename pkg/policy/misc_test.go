package policy

import (
	"strings"
	"sync"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/palisade-net/palisade/pkg/l7"
)

func TestNilSetAllowsEverything(t *testing.T) {
	var s *Set
	d := s.Ingress(ext, api, 80)
	if !d.Allow || d.Selected || d.Protocol != l7.None || s.Len() != 0 || s.Problems() != nil {
		t.Fatalf("nil set: %+v", d)
	}
	if e := s.Explain(api); len(e.Ingress.Policies) != 0 {
		t.Fatalf("nil set explains %+v", e)
	}
}

func TestRuleSetsAreShared(t *testing.T) {
	s := mustCompile(t, httpAPI)
	a := s.Ingress(web, api, 8080)
	b := s.Ingress(plaintext(web), api, 8080)
	if a.Rules == nil || a.Rules.set != b.Rules.set {
		t.Fatal("connections of the same peer class do not share their rule set")
	}
	if !strings.Contains(b.Rules.peer, "unauthenticated") {
		t.Fatalf("peer description %q", b.Rules.peer)
	}
}

func TestConcurrentUse(t *testing.T) {
	s := mustCompile(t, httpAPI+"\n---\n"+l4WebToAPI)
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 200; j++ {
				d := s.Ingress(web, api, 8080)
				if !d.Allow {
					t.Error("denied")
					return
				}
			}
		}()
	}
	wg.Wait()
}

func TestExplain(t *testing.T) {
	s := mustCompile(t, httpAPI+"\n---\n"+`
apiVersion: policy.palisade.dev/v1alpha1
kind: ClusterL7Policy
metadata: {name: c}
spec:
  endpointSelector: {}
  enableDefaultDeny: {ingress: false}
  ingressDeny: [{fromEntities: [world]}]
`)
	e := s.Explain(api)
	if !e.Ingress.DefaultDeny || len(e.Ingress.Policies) != 2 || len(e.Egress.Policies) != 0 {
		t.Fatalf("explanation %+v", e)
	}
	p := e.Ingress.Policies[0]
	if p.Policy != "L7Policy shop/http" || len(p.Allow) != 1 || p.Allow[0].Ports[0] != "8080 http (5 rules)" ||
		p.Allow[0].Peers != "pods app=web,io.kubernetes.pod.namespace=shop" {
		t.Fatalf("policy %+v", p)
	}
	c := e.Ingress.Policies[1]
	if c.DefaultDeny || len(c.Deny) != 1 || c.Deny[0].Peers != "entity world" || c.Deny[0].Ports[0] != "any" {
		t.Fatalf("cluster policy %+v", c)
	}
}

func TestAcceptedCondition(t *testing.T) {
	objs := parseObjects(t, l7policy(`
  endpointSelector: {}
  ingress: [{fromEntities: [host]}]
`)+"\n---\n"+`
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: fqdn, namespace: shop}
spec:
  endpointSelector: {}
  egress: [{toFQDNs: [{matchName: example.com}]}]
`)
	_, probs := Compile(objs)
	now := metav1.Now()
	bad := AcceptedCondition(ObjectRef{Kind: "L7Policy", Namespace: "shop", Name: "v"}, probs, 3, now)
	if bad.Status != metav1.ConditionFalse || bad.Reason != "Invalid" || bad.ObservedGeneration != 3 ||
		!strings.Contains(bad.Message, "spec.ingress[0].fromEntities[0]") {
		t.Fatalf("invalid: %+v", bad)
	}
	partial := AcceptedCondition(ObjectRef{Kind: "CiliumNetworkPolicy", Namespace: "shop", Name: "fqdn"}, probs, 1, now)
	if partial.Status != metav1.ConditionTrue || partial.Reason != "PartiallySupported" || !strings.Contains(partial.Message, "toFQDNs") {
		t.Fatalf("partial: %+v", partial)
	}
	ok := AcceptedCondition(ObjectRef{Kind: "L7Policy", Namespace: "shop", Name: "other"}, probs, 1, now)
	if ok.Status != metav1.ConditionTrue || ok.Reason != "Accepted" {
		t.Fatalf("ok: %+v", ok)
	}
}

func TestPrincipalSyntax(t *testing.T) {
	for _, tc := range []struct {
		in    string
		id    string
		match bool
	}{
		{"*", "spiffe://x/y", true},
		{"spiffe://td/ns/a/sa/b", "spiffe://td/ns/a/sa/b", true},
		{"spiffe://td/ns/a/sa/b", "spiffe://td/ns/a/sa/bb", false},
		{"spiffe://td/ns/a/*", "spiffe://td/ns/a/sa/b", true},
		{"spiffe://td/ns/a/*", "spiffe://td/ns/ab/sa/b", false},
		{"spiffe://td/ns/a/*", "spiffe://td/ns/a", false},
		{"spiffe://td/*", "spiffe://td/anything", true},
		{"spiffe://td/*", "spiffe://other/anything", false},
	} {
		p, err := parsePrincipal(tc.in)
		if err != nil {
			t.Fatalf("%s: %v", tc.in, err)
		}
		if got := p.matches(id(tc.id)); got != tc.match {
			t.Errorf("%s matches %s = %v, want %v", tc.in, tc.id, got, tc.match)
		}
		if p.String() != tc.in {
			t.Errorf("String() = %q, want %q", p.String(), tc.in)
		}
	}
}

func TestPrefixIndex(t *testing.T) {
	var root prefixNode
	keys := []string{"/api/v1/users/", "/api/v1/", "/api/v2/", "", "/api/v1/users/x", "/b"}
	for i, k := range keys {
		root.insert(k, int32(i))
	}
	got := map[int32]bool{}
	for _, ids := range root.collect("/api/v1/users/42", nil) {
		for _, id := range ids {
			got[id] = true
		}
	}
	want := map[int32]bool{0: true, 1: true, 3: true}
	if len(got) != len(want) {
		t.Fatalf("candidates %v, want %v", got, want)
	}
	for k := range want {
		if !got[k] {
			t.Fatalf("candidates %v, want %v", got, want)
		}
	}
}
