package policy

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/palisade-net/palisade/pkg/l7"
)

// benchPolicy returns an L7Policy with n HTTP rules for app=api on 8080.
// pathFmt formats rule i's path expression.
func benchPolicy(n int, pathFmt string) string {
	var b strings.Builder
	b.WriteString(`
apiVersion: policy.palisade.dev/v1alpha1
kind: L7Policy
metadata: {name: bench, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: api}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: web}}]
    toPorts:
    - ports: [{port: 8080}]
      rules:
        http:
`)
	methods := []string{"GET", "GET|HEAD", "POST", "PUT|PATCH", "DELETE"}
	for i := 0; i < n; i++ {
		fmt.Fprintf(&b, "        - {method: %q, path: %q, headers: [\"X-Tenant\"]}\n", methods[i%len(methods)], fmt.Sprintf(pathFmt, i))
	}
	return b.String()
}

func benchRules(b *testing.B, n int, pathFmt string) *PortRules {
	s := mustCompile(b, benchPolicy(n, pathFmt))
	d := s.Ingress(web, api, 8080)
	if d.Rules == nil {
		b.Fatal("no rules")
	}
	return d.Rules
}

func benchHTTP(b *testing.B, n int, pathFmt, path string, want bool) {
	r := benchRules(b, n, pathFmt)
	// Rule n-2 is near the end; its method is methods[(n-2)%5].
	method := []string{"GET", "HEAD", "POST", "PATCH", "DELETE"}[(n-2)%5]
	rq := &l7.HTTPRequest{Method: method, Path: path, Host: "api.shop", Header: http.Header{"X-Tenant": {"a"}}}
	if v := r.HTTP(rq); v.Allow != want {
		b.Fatalf("verdict %+v, want allow=%v", v, want)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		r.HTTP(rq)
	}
}

const benchPath = "/api/v1/svc%d/items/[0-9]+"

// BenchmarkHTTP10Rules: a request matching the 9th of 10 rules.
func BenchmarkHTTP10Rules(b *testing.B) {
	b.Run("match-near-end", func(b *testing.B) { benchHTTP(b, 10, benchPath, "/api/v1/svc8/items/42", true) })
	b.Run("no-match", func(b *testing.B) { benchHTTP(b, 10, benchPath, "/api/v1/svc8/orders/42", false) })
}

// BenchmarkHTTP1000Rules: a request matching the 999th of 1,000 rules, and
// one matching none.
func BenchmarkHTTP1000Rules(b *testing.B) {
	b.Run("match-near-end", func(b *testing.B) { benchHTTP(b, 1000, benchPath, "/api/v1/svc998/items/42", true) })
	b.Run("no-match", func(b *testing.B) { benchHTTP(b, 1000, benchPath, "/api/v1/svc998/orders/42", false) })
	b.Run("no-match-unknown-prefix", func(b *testing.B) { benchHTTP(b, 1000, benchPath, "/internal/debug", false) })
}

// BenchmarkHTTP1000RulesUnindexed is the worst case: path expressions
// without a literal prefix, so every rule is tried.
func BenchmarkHTTP1000RulesUnindexed(b *testing.B) {
	b.Run("match-near-end", func(b *testing.B) {
		benchHTTP(b, 1000, "(?i)/api/v1/svc%d/items/[0-9]+", "/api/v1/svc998/items/42", true)
	})
	b.Run("no-match", func(b *testing.B) {
		benchHTTP(b, 1000, "(?i)/api/v1/svc%d/items/[0-9]+", "/api/v1/svc998/orders/42", false)
	})
}

// BenchmarkIngress is the connection-level lookup with 200 policies in
// the namespace and 20 cluster-wide.
func BenchmarkIngress(b *testing.B) {
	var docs []string
	for i := 0; i < 200; i++ {
		docs = append(docs, fmt.Sprintf(`
apiVersion: policy.palisade.dev/v1alpha1
kind: L7Policy
metadata: {name: p%d, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: svc%d}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: web}}]
    toPorts:
    - ports: [{port: 8080}]
      rules: {http: [{method: GET, path: "/p%d/.*"}]}
`, i, i%50, i))
	}
	for i := 0; i < 20; i++ {
		docs = append(docs, fmt.Sprintf(`
apiVersion: policy.palisade.dev/v1alpha1
kind: ClusterL7Policy
metadata: {name: c%d}
spec:
  endpointSelector: {matchLabels: {tier: t%d}}
  ingressDeny:
  - fromEntities: [world]
`, i, i))
	}
	s := mustCompile(b, strings.Join(docs, "\n---\n"))
	dst := pod("shop", "svc", "10.0.1.9", map[string]string{"app": "svc7"}, nil)
	b.Run("l7", func(b *testing.B) {
		if d := s.Ingress(web, dst, 8080); !d.Allow || d.Protocol != l7.HTTP {
			b.Fatalf("decision %+v", d)
		}
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			s.Ingress(web, dst, 8080)
		}
	})
	b.Run("denied", func(b *testing.B) {
		if d := s.Ingress(web, dst, 9090); d.Allow {
			b.Fatalf("decision %+v", d)
		}
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			s.Ingress(web, dst, 9090)
		}
	})
}

// BenchmarkKafka judges a multi-topic Produce against 100 topic rules.
func BenchmarkKafka(b *testing.B) {
	var rules strings.Builder
	for i := 0; i < 100; i++ {
		fmt.Fprintf(&rules, "        - {role: produce, topic: t%d}\n", i)
	}
	s := mustCompile(b, `
apiVersion: policy.palisade.dev/v1alpha1
kind: L7Policy
metadata: {name: k, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: api}}
  ingress:
  - toPorts:
    - ports: [{port: 9092}]
      rules:
        kafka:
`+rules.String())
	r := s.Ingress(web, api, 9092).Rules
	rq := kafka(0, 9, "c", "t97", "t98", "t99")
	if !r.Kafka(rq).Allow {
		b.Fatal("denied")
	}
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		r.Kafka(rq)
	}
}
