package main

import (
	"fmt"
	"net/http"
	"net/netip"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/palisade-net/palisade/pkg/l7"
	"github.com/palisade-net/palisade/pkg/lab"
	"github.com/palisade-net/palisade/pkg/policy"
)

func benchEndpoint(name, sa, ip string, labels map[string]string) policy.Endpoint {
	return policy.Endpoint{
		Namespace: "mesh", ServiceAccount: sa, Labels: labels,
		NamespaceLabels: map[string]string{"palisade.dev/mtls": "enabled"},
		Identity:        spiffeid.RequireFromString("spiffe://cluster.local/ns/mesh/sa/" + sa),
		IP:              netip.MustParseAddr(ip), InCluster: true,
	}
}

var (
	benchClient = benchEndpoint("client", "client", "10.244.1.2", map[string]string{"app": "client"})
	benchServer = benchEndpoint("server", "server", "10.244.2.2", map[string]string{"app": "server"})
)

// compileRules compiles lab.yaml with the benchmark's policy of n rules,
// as the node proxies do, and returns the rules of the server's HTTP port.
func compileRules(t testing.TB, n int) *policy.PortRules {
	t.Helper()
	objs, err := lab.Decode(labYAML + "\n" + policyYAML(n))
	if err != nil {
		t.Fatal(err)
	}
	set, probs := policy.Compile(objs.Other)
	if len(probs) > 0 {
		t.Fatalf("policy with %d rules: problems %v", n, probs)
	}
	d := set.Ingress(benchClient, benchServer, httpPort)
	if n == 0 {
		if d.Selected || d.Rules != nil || !d.Allow {
			t.Fatalf("without policy: decision %+v", d)
		}
		return nil
	}
	if !d.Allow || d.Protocol != l7.HTTP || d.Rules == nil {
		t.Fatalf("policy with %d rules: decision %+v, want an HTTP-inspected allow", n, d)
	}
	return d.Rules
}

func echoRequest() *l7.HTTPRequest {
	return &l7.HTTPRequest{Method: "POST", Path: echoPath, Host: fmt.Sprintf("%s:%d", benchServer.IP, httpPort),
		Header: http.Header{"User-Agent": {"fortio.org/fortio-1.68.2"}, "Content-Length": {"1024"}, "Content-Type": {"application/octet-stream"}}}
}

// TestPolicyProbes checks, against the policy engine, what the benchmark
// relies on in the lab: the generated policies compile without problems,
// fortio's request is allowed by the last rule, and the probes tell the
// rule sets apart.
func TestPolicyProbes(t *testing.T) {
	compileRules(t, 0)
	for _, n := range ruleSets {
		r := compileRules(t, n)
		if got := strings.Count(policyYAML(n), "        - {method:"); got != n {
			t.Fatalf("policy %d has %d rules", n, got)
		}
		v := r.HTTP(echoRequest())
		if want := fmt.Sprintf("spec.ingress[0].toPorts[0].rules.http[%d]", n-1); !v.Allow || v.Rule != want {
			t.Errorf("%d rules: POST %s: %+v, want allowed by %s", n, echoPath, v, want)
		}
		for _, p := range probes(n) {
			v := r.HTTP(&l7.HTTPRequest{Method: p.Method, Path: p.Path, Host: "x", Header: http.Header{}})
			if v.Allow != (p.Want == 200) {
				t.Errorf("%d rules: probe %s %s: allow=%v (%s), want status %d", n, p.Method, p.Path, v.Allow, v.Rule, p.Want)
			}
		}
		// Every filler allows its own probe and nothing else does.
		for i := 0; i < n-1; i++ {
			_, p := filler(i)
			v := r.HTTP(&l7.HTTPRequest{Method: p.Method, Path: p.Path, Host: "x", Header: http.Header{}})
			if want := fmt.Sprintf(".http[%d]", i); !v.Allow || !strings.HasSuffix(v.Rule, want) {
				t.Errorf("%d rules: filler %d probe %s %s: %+v", n, i, p.Method, p.Path, v)
			}
		}
	}
}

// BenchmarkLiveRuleSet is the engine's cost per request for the rule
// sets the lab runs (fortio's POST /echo, allowed by the last rule).
func BenchmarkLiveRuleSet(b *testing.B) {
	for _, n := range ruleSets {
		b.Run(fmt.Sprintf("rules-%d", n), func(b *testing.B) {
			r := compileRules(b, n)
			rq := echoRequest()
			if !r.HTTP(rq).Allow {
				b.Fatal("denied")
			}
			b.ReportAllocs()
			for b.Loop() {
				r.HTTP(rq)
			}
		})
	}
}
