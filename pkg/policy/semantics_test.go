package policy

import (
	"reflect"
	"strings"
	"testing"

	"github.com/palisade-net/palisade/pkg/l7"
)

// check is one connection (and optionally one request) to decide.
type check struct {
	name     string
	egress   bool
	src, dst Endpoint
	port     uint16
	http     *l7.HTTPRequest
	kafka    *l7.KafkaRequest
	// want is the final verdict: the connection, then the request.
	want bool
	// Optional expectations.
	proto    *l7.Protocol
	selected *bool
	rule     string // exact Verdict.Rule of the final verdict
	policy   string // exact Verdict.Policy of the final verdict
	reason   string // substring of the final Verdict.Reason
	edits    []l7.HeaderEdit
	logs     int
}

func ptr[T any](v T) *T { return &v }

// run decides c against s and checks the expectations.
func (c check) run(t *testing.T, s *Set) {
	t.Helper()
	var d Decision
	if c.egress {
		d = s.Egress(c.src, c.dst, c.port)
	} else {
		d = s.Ingress(c.src, c.dst, c.port)
	}
	v := d.Verdict
	if c.proto != nil && d.Protocol != *c.proto {
		t.Errorf("protocol = %q, want %q (verdict %+v)", d.Protocol, *c.proto, d.Verdict)
	}
	if c.selected != nil && d.Selected != *c.selected {
		t.Errorf("selected = %v, want %v", d.Selected, *c.selected)
	}
	if (d.Protocol == l7.None) != (d.Rules == nil) {
		t.Errorf("protocol %q with rules %v", d.Protocol, d.Rules)
	}
	if v.Allow && d.Rules != nil {
		switch {
		case c.http != nil:
			v = d.Rules.HTTP(c.http)
		case c.kafka != nil:
			v = d.Rules.Kafka(c.kafka)
		}
	}
	if v.Allow != c.want {
		t.Fatalf("allow = %v, want %v (verdict %+v, protocol %q)", v.Allow, c.want, v, d.Protocol)
	}
	if c.rule != "" && v.Rule != c.rule {
		t.Errorf("rule = %q, want %q", v.Rule, c.rule)
	}
	if c.policy != "" && v.Policy != c.policy {
		t.Errorf("policy = %q, want %q", v.Policy, c.policy)
	}
	if c.reason != "" && !strings.Contains(v.Reason, c.reason) {
		t.Errorf("reason = %q, want it to contain %q", v.Reason, c.reason)
	}
	if c.edits != nil && !reflect.DeepEqual(v.Edits, c.edits) {
		t.Errorf("edits = %+v, want %+v", v.Edits, c.edits)
	}
	if len(v.Logs) != c.logs {
		t.Errorf("logs = %q, want %d entries", v.Logs, c.logs)
	}
	if !v.Allow && v.Reason == "" {
		t.Errorf("denial without a reason: %+v", v)
	}
}

type scenario struct {
	name     string
	policies string
	checks   []check
}

func runScenarios(t *testing.T, scenarios []scenario) {
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			s := mustCompile(t, sc.policies)
			for _, c := range sc.checks {
				t.Run(c.name, func(t *testing.T) { c.run(t, s) })
			}
		})
	}
}

const l4WebToAPI = `
apiVersion: policy.palisade.dev/v1alpha1
kind: L7Policy
metadata: {name: l4, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: api}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: web}}]
    toPorts: [{ports: [{port: 8080}]}]
`

const httpAPI = `
apiVersion: policy.palisade.dev/v1alpha1
kind: L7Policy
metadata: {name: http, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: api}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: web}}]
    toPorts:
    - ports: [{port: "8080"}]
      rules:
        http:
        - {method: GET, path: "/api/v1/.*"}
        - {method: "GET|HEAD", path: "/search\\?q=[a-z]+"}
        - {path: "/any-method"}
        - {method: POST, path: "/orders", host: "api\\.shop"}
        - {path: "/env", headers: ["X-Env prod", "x-trace"]}
`

func TestDefaultDenyAndL4(t *testing.T) {
	runScenarios(t, []scenario{
		{"no policy allows all", ``, []check{
			{name: "any peer any port", src: ext, dst: api, port: 1, want: true, proto: ptr(l7.None), selected: ptr(false)},
		}},
		{"L4 allow", l4WebToAPI, []check{
			{name: "allowed peer and port", src: web, dst: api, port: 8080, want: true, selected: ptr(true),
				policy: "L7Policy shop/l4", rule: "spec.ingress[0].toPorts[0]", proto: ptr(l7.None)},
			{name: "plaintext peer matched by labels", src: plaintext(web), dst: api, port: 8080, want: true},
			{name: "other port", src: web, dst: api, port: 9090, want: false, reason: "no rule allows spiffe://cluster.local/ns/shop/sa/web as source on port 9090"},
			{name: "other pod", src: admin, dst: api, port: 8080, want: false},
			{name: "same labels other namespace", src: pod("billing", "web", "10.0.2.9", map[string]string{"app": "web"}, nil), dst: api, port: 8080, want: false},
			{name: "world", src: ext, dst: api, port: 8080, want: false},
			{name: "unselected pod", src: ext, dst: web, port: 8080, want: true, selected: ptr(false)},
			{name: "egress not selected", egress: true, src: api, dst: ext, port: 443, want: true, selected: ptr(false)},
		}},
		{"empty rule only turns default deny on", `
apiVersion: policy.palisade.dev/v1alpha1
kind: L7Policy
metadata: {name: deny-all, namespace: shop}
spec:
  endpointSelector: {}
  ingress: [{}]
`, []check{
			{name: "pod", src: web, dst: api, port: 80, want: false, selected: ptr(true), reason: "default deny by L7Policy shop/deny-all"},
			{name: "world", src: ext, dst: web, port: 80, want: false},
			{name: "egress untouched", egress: true, src: web, dst: ext, port: 80, want: true},
		}},
		{"toPorts without peers applies to every peer", `
apiVersion: policy.palisade.dev/v1alpha1
kind: L7Policy
metadata: {name: port-only, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: api}}
  ingress:
  - toPorts: [{ports: [{port: 80}, {port: 9000, endPort: 9010}]}]
`, []check{
			{name: "world", src: ext, dst: api, port: 80, want: true},
			{name: "pod of another namespace", src: pay, dst: api, port: 80, want: true},
			{name: "range start", src: pay, dst: api, port: 9000, want: true},
			{name: "range end", src: pay, dst: api, port: 9010, want: true},
			{name: "after range", src: pay, dst: api, port: 9011, want: false},
			{name: "other port", src: pay, dst: api, port: 81, want: false},
		}},
		{"peers without toPorts apply to every port", `
apiVersion: policy.palisade.dev/v1alpha1
kind: L7Policy
metadata: {name: l3, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: api}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: web}}]
`, []check{
			{name: "any port", src: web, dst: api, port: 12345, want: true, rule: "spec.ingress[0]"},
			{name: "other pod", src: admin, dst: api, port: 12345, want: false},
		}},
		{"explicit empty peer list matches nothing", `
apiVersion: policy.palisade.dev/v1alpha1
kind: L7Policy
metadata: {name: empty, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: api}}
  ingress:
  - fromEndpoints: []
    toPorts: [{ports: [{port: 80}]}]
`, []check{
			{name: "pod", src: web, dst: api, port: 80, want: false},
			{name: "world", src: ext, dst: api, port: 80, want: false},
		}},
		{"enableDefaultDeny false with deny rule", `
apiVersion: policy.palisade.dev/v1alpha1
kind: ClusterL7Policy
metadata: {name: no-world}
spec:
  endpointSelector: {}
  enableDefaultDeny: {ingress: false}
  ingressDeny:
  - fromEntities: [world]
`, []check{
			{name: "pod allowed", src: pay, dst: api, port: 80, want: true, selected: ptr(false)},
			{name: "world denied", src: ext, dst: api, port: 80, want: false, policy: "ClusterL7Policy no-world", reason: "denied by a deny rule"},
		}},
		{"egress rules do not select ingress", `
apiVersion: policy.palisade.dev/v1alpha1
kind: L7Policy
metadata: {name: eg, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: api}}
  egress:
  - toEndpoints: [{matchLabels: {app: web}}]
`, []check{
			{name: "ingress open", src: ext, dst: api, port: 80, want: true, selected: ptr(false)},
			{name: "egress to web", egress: true, src: api, dst: web, port: 80, want: true, selected: ptr(true)},
			{name: "egress to world", egress: true, src: api, dst: ext, port: 443, want: false},
		}},
	})
}

func TestHTTPMatching(t *testing.T) {
	http := l7.HTTP
	runScenarios(t, []scenario{{"http", httpAPI, []check{
		{name: "prefix regex", src: web, dst: api, port: 8080, http: get("/api/v1/items"), want: true, proto: &http,
			policy: "L7Policy shop/http", rule: "spec.ingress[0].toPorts[0].rules.http[0]"},
		{name: "anchored at start", src: web, dst: api, port: 8080, http: get("/x/api/v1/items"), want: false,
			policy: "L7Policy shop/http", rule: DefaultDenyRule, reason: "no rule allows GET /x/api/v1/items on port 8080 for spiffe://cluster.local/ns/shop/sa/web"},
		{name: "anchored at end", src: web, dst: api, port: 8080, http: get("/api/v1"), want: false},
		{name: "query is part of the path", src: web, dst: api, port: 8080, http: get("/search?q=shoes"), want: true,
			rule: "spec.ingress[0].toPorts[0].rules.http[1]"},
		{name: "query must match too", src: web, dst: api, port: 8080, http: get("/search?q=SHOES"), want: false},
		{name: "method alternation", src: web, dst: api, port: 8080, http: req("HEAD", "/search?q=a"), want: true},
		{name: "method anchored", src: web, dst: api, port: 8080, http: req("XGET", "/api/v1/a"), want: false},
		{name: "fields ANDed", src: web, dst: api, port: 8080, http: req("POST", "/api/v1/items"), want: false},
		{name: "empty method is any", src: web, dst: api, port: 8080, http: req("PURGE", "/any-method"), want: true},
		{name: "host matches", src: web, dst: api, port: 8080, http: req("POST", "/orders"), want: true},
		{name: "host anchored (port included)", src: web, dst: api, port: 8080,
			http: &l7.HTTPRequest{Method: "POST", Path: "/orders", Host: "api.shop:8080"}, want: false},
		{name: "header exact and presence", src: web, dst: api, port: 8080, http: req("GET", "/env", "X-Env", "prod", "X-Trace", "1"), want: true},
		{name: "header wrong value", src: web, dst: api, port: 8080, http: req("GET", "/env", "X-Env", "dev", "X-Trace", "1"), want: false},
		{name: "header missing", src: web, dst: api, port: 8080, http: req("GET", "/env", "X-Env", "prod"), want: false},
		{name: "multi-valued header compared joined", src: web, dst: api, port: 8080,
			http: req("GET", "/env", "X-Env", "prod", "X-Env", "dev", "X-Trace", "1"), want: false},
		{name: "other peer has no L7 allow", src: admin, dst: api, port: 8080, http: get("/api/v1/items"), want: false},
	}}})
}

func TestHeaderMatches(t *testing.T) {
	runScenarios(t, []scenario{{"headerMatches", `
apiVersion: policy.palisade.dev/v1alpha1
kind: L7Policy
metadata: {name: hm, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: api}}
  ingress:
  - toPorts:
    - ports: [{port: 80}]
      rules:
        http:
        - path: /strict
          headerMatches: [{name: X-Token, value: s3cret}]
        - path: /present
          headerMatches: [{name: X-Token}]
        - path: /log
          headerMatches: [{name: X-Token, value: s3cret, mismatch: LOG}]
        - path: /add
          headerMatches: [{name: X-Tenant, value: shop, mismatch: ADD}]
        - path: /delete
          headerMatches: [{name: X-Debug, value: "on", mismatch: DELETE}]
        - path: /replace
          headerMatches: [{name: X-Tenant, value: shop, mismatch: REPLACE}]
        - path: /replace
          method: GET
          headerMatches: [{name: X-Env, value: prod, mismatch: REPLACE}]
`, []check{
		{name: "no action: match", src: ext, dst: api, port: 80, http: req("GET", "/strict", "X-Token", "s3cret"), want: true},
		{name: "no action: mismatch fails", src: ext, dst: api, port: 80, http: req("GET", "/strict", "X-Token", "guess"), want: false},
		{name: "no action: missing fails", src: ext, dst: api, port: 80, http: get("/strict"), want: false},
		{name: "presence", src: ext, dst: api, port: 80, http: req("GET", "/present", "X-Token", "x"), want: true},
		{name: "presence missing", src: ext, dst: api, port: 80, http: get("/present"), want: false},
		{name: "LOG allows and logs", src: ext, dst: api, port: 80, http: req("GET", "/log", "X-Token", "guess"), want: true, logs: 1},
		{name: "LOG match does not log", src: ext, dst: api, port: 80, http: req("GET", "/log", "X-Token", "s3cret"), want: true, logs: 0},
		{name: "ADD", src: ext, dst: api, port: 80, http: get("/add"), want: true,
			edits: []l7.HeaderEdit{{Action: l7.HeaderAdd, Name: "X-Tenant", Value: "shop"}}},
		{name: "DELETE wrong value", src: ext, dst: api, port: 80, http: req("GET", "/delete", "X-Debug", "yes"), want: true,
			edits: []l7.HeaderEdit{{Action: l7.HeaderDelete, Name: "X-Debug"}}},
		{name: "DELETE absent header: nothing to do", src: ext, dst: api, port: 80, http: get("/delete"), want: true, edits: []l7.HeaderEdit(nil)},
		{name: "REPLACE from every matching rule", src: ext, dst: api, port: 80, http: req("GET", "/replace", "X-Tenant", "evil"), want: true,
			rule: "spec.ingress[0].toPorts[0].rules.http[5]",
			edits: []l7.HeaderEdit{
				{Action: l7.HeaderReplace, Name: "X-Tenant", Value: "shop"},
				{Action: l7.HeaderReplace, Name: "X-Env", Value: "prod"},
			}},
		{name: "match: no edit", src: ext, dst: api, port: 80, http: req("POST", "/replace", "X-Tenant", "shop"), want: true, edits: []l7.HeaderEdit(nil)},
	}}})
}

func TestUnionAcrossRulesPortRulesPolicies(t *testing.T) {
	runScenarios(t, []scenario{{"union", `
apiVersion: policy.palisade.dev/v1alpha1
kind: L7Policy
metadata: {name: a, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: api}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: web}}]
    toPorts:
    - ports: [{port: 80}]
      rules: {http: [{path: /a}]}
    - ports: [{port: 80}]
      rules: {http: [{path: /b}]}
---
apiVersion: policy.palisade.dev/v1alpha1
kind: L7Policy
metadata: {name: b, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: api}}
  ingress:
  - fromEndpoints: [{}]
    toPorts:
    - ports: [{port: 80}]
      rules: {http: [{path: /c}]}
`, []check{
		{name: "first port rule", src: web, dst: api, port: 80, http: get("/a"), want: true, policy: "L7Policy shop/a"},
		{name: "second port rule", src: web, dst: api, port: 80, http: get("/b"), want: true, rule: "spec.ingress[0].toPorts[1].rules.http[0]"},
		{name: "other policy", src: web, dst: api, port: 80, http: get("/c"), want: true, policy: "L7Policy shop/b"},
		{name: "none", src: web, dst: api, port: 80, http: get("/d"), want: false},
		{name: "peer of b only", src: admin, dst: api, port: 80, http: get("/a"), want: false},
		{name: "peer of b only, its path", src: admin, dst: api, port: 80, http: get("/c"), want: true},
	}}})
}

func TestDenyPrecedence(t *testing.T) {
	runScenarios(t, []scenario{
		{"L4 deny beats allow", l4WebToAPI + `
---
apiVersion: policy.palisade.dev/v1alpha1
kind: ClusterL7Policy
metadata: {name: deny-web}
spec:
  endpointSelector: {}
  ingressDeny:
  - fromEndpoints: [{matchLabels: {app: web}}]
    toPorts: [{ports: [{port: 8080}]}]
`, []check{
			{name: "denied", src: web, dst: api, port: 8080, want: false, policy: "ClusterL7Policy deny-web", rule: "spec.ingressDeny[0].toPorts[0]"},
		}},
		{"L7 deny beats L4 allow", l4WebToAPI + `
---
apiVersion: policy.palisade.dev/v1alpha1
kind: L7Policy
metadata: {name: no-admin, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: api}}
  ingressDeny:
  - toPorts:
    - ports: [{port: 8080}]
      rules: {http: [{path: "/admin(/.*)?"}]}
`, []check{
			{name: "needs inspection", src: web, dst: api, port: 8080, want: true, proto: ptr(l7.HTTP)},
			{name: "other path allowed by the L4 allow", src: web, dst: api, port: 8080, http: req("DELETE", "/anything"), want: true, policy: "L7Policy shop/l4"},
			{name: "denied path", src: web, dst: api, port: 8080, http: get("/admin/users"), want: false,
				policy: "L7Policy shop/no-admin", rule: "spec.ingressDeny[0].toPorts[0].rules.http[0]", reason: "matches a deny rule"},
		}},
		{"L7 deny beats L7 allow", httpAPI + `
---
apiVersion: policy.palisade.dev/v1alpha1
kind: L7Policy
metadata: {name: no-items, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: api}}
  ingressDeny:
  - fromPrincipals: ["spiffe://cluster.local/ns/shop/sa/web"]
    toPorts:
    - ports: [{port: 8080}]
      rules: {http: [{path: "/api/v1/items"}]}
`, []check{
			{name: "denied", src: web, dst: api, port: 8080, http: get("/api/v1/items"), want: false, policy: "L7Policy shop/no-items"},
			{name: "sibling allowed", src: web, dst: api, port: 8080, http: get("/api/v1/users"), want: true},
			{name: "deny is per peer", src: plaintext(web), dst: api, port: 8080, http: get("/api/v1/items"), want: true},
		}},
	})
}

func TestL4AllowMakesL7Moot(t *testing.T) {
	runScenarios(t, []scenario{{"moot", httpAPI + `
---
apiVersion: policy.palisade.dev/v1alpha1
kind: L7Policy
metadata: {name: l4-any, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: api}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: web}}]
  - fromEntities: [world]
    toPorts:
    - ports: [{port: 8080}]
      rules: {http: [{method: GET}]}
`, []check{
		{name: "L3-only allow: no inspection", src: web, dst: api, port: 8080, want: true, proto: ptr(l7.None), policy: "L7Policy shop/l4-any", rule: "spec.ingress[0]"},
		{name: "world keeps its L7 rules", src: ext, dst: api, port: 8080, want: true, proto: ptr(l7.HTTP)},
		{name: "world POST denied", src: ext, dst: api, port: 8080, http: req("POST", "/x"), want: false},
	}}})
}

func TestNamespaceAwareness(t *testing.T) {
	policy := func(kind, ns, selector string) string {
		meta := "{name: p}"
		if ns != "" {
			meta = "{name: p, namespace: " + ns + "}"
		}
		return `
apiVersion: policy.palisade.dev/v1alpha1
kind: ` + kind + `
metadata: ` + meta + `
spec:
  endpointSelector: {matchLabels: {app: api}}
  ingress:
  - fromEndpoints: [` + selector + `]
`
	}
	for _, tc := range []struct {
		name, kind, ns, selector string
		src                      Endpoint
		dst                      Endpoint
		want                     bool
	}{
		{"namespaced: same namespace", "L7Policy", "shop", "{matchLabels: {app: web}}", web, api, true},
		{"namespaced: other namespace not matched", "L7Policy", "shop", "{matchLabels: {app: pay}}", pay, api, false},
		{"namespaced: empty selector is the namespace", "L7Policy", "shop", "{}", pay, api, false},
		{"namespaced: empty selector matches own namespace", "L7Policy", "shop", "{}", admin, api, true},
		{"namespaced: explicit namespace", "L7Policy", "shop", "{matchLabels: {io.kubernetes.pod.namespace: billing}}", pay, api, true},
		{"namespaced: k8s: prefix", "L7Policy", "shop", "{matchLabels: {k8s:io.kubernetes.pod.namespace: billing, k8s:app: pay}}", pay, api, true},
		{"namespaced: any: prefix", "L7Policy", "shop", "{matchLabels: {any:app: web}}", web, api, true},
		{"namespaced: namespace expression", "L7Policy", "shop", "{matchExpressions: [{key: io.kubernetes.pod.namespace, operator: In, values: [billing]}]}", pay, api, true},
		{"namespaced: namespace labels lift the restriction", "L7Policy", "shop", "{matchLabels: {io.cilium.k8s.namespace.labels.team: b}}", pay, api, true},
		{"namespaced: namespace labels still match", "L7Policy", "shop", "{matchLabels: {io.cilium.k8s.namespace.labels.team: b}}", web, api, false},
		{"namespaced: prefixed forms of one key are ANDed", "L7Policy", "shop", "{matchLabels: {k8s:app: web, app: api}}", web, api, false},
		{"namespaced: service account label", "L7Policy", "shop", "{matchLabels: {io.cilium.k8s.policy.serviceaccount: web}}", web, api, true},
		{"namespaced: policy elsewhere does not select", "L7Policy", "billing", "{}", web, api, true},
		{"cluster: any namespace", "ClusterL7Policy", "", "{matchLabels: {app: pay}}", pay, api, true},
		{"cluster: empty selector is every pod", "ClusterL7Policy", "", "{}", pay, api, true},
		{"cluster: not world", "ClusterL7Policy", "", "{}", ext, api, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := mustCompile(t, policy(tc.kind, tc.ns, tc.selector))
			check{src: tc.src, dst: tc.dst, port: 80, want: tc.want}.run(t, s)
		})
	}
}

func TestPeersBeyondCilium(t *testing.T) {
	runScenarios(t, []scenario{{"principals, service accounts, namespaces, CIDR, entities", `
apiVersion: policy.palisade.dev/v1alpha1
kind: L7Policy
metadata: {name: peers, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: api}}
  ingress:
  - fromPrincipals: ["spiffe://cluster.local/ns/shop/sa/web"]
    toPorts: [{ports: [{port: 1}]}]
  - fromPrincipals: ["spiffe://cluster.local/ns/billing/*"]
    toPorts: [{ports: [{port: 2}]}]
  - fromPrincipals: ["*"]
    toPorts: [{ports: [{port: 3}]}]
  - fromServiceAccounts: [{name: admin}, {namespace: billing, name: pay}]
    toPorts: [{ports: [{port: 4}]}]
  - fromNamespaces: [billing]
    toPorts: [{ports: [{port: 5}]}]
  - fromCIDR: [203.0.113.0/24]
    toPorts: [{ports: [{port: 6}]}]
  - fromCIDRSet: [{cidr: 203.0.113.0/24, except: [203.0.113.0/30]}]
    toPorts: [{ports: [{port: 7}]}]
  - fromEntities: [world]
    toPorts: [{ports: [{port: 8}]}]
  - fromEntities: [cluster]
    toPorts: [{ports: [{port: 9}]}]
  - fromEntities: [all]
    toPorts: [{ports: [{port: 10}]}]
`, []check{
		{name: "principal exact", src: web, dst: api, port: 1, want: true},
		{name: "principal exact: other", src: admin, dst: api, port: 1, want: false},
		{name: "principal: plaintext never", src: plaintext(web), dst: api, port: 1, want: false},
		{name: "principal prefix", src: pay, dst: api, port: 2, want: true},
		{name: "principal prefix: other namespace", src: web, dst: api, port: 2, want: false},
		{name: "principal any authenticated", src: admin, dst: api, port: 3, want: true},
		{name: "principal any: plaintext", src: plaintext(admin), dst: api, port: 3, want: false},
		{name: "service account, policy namespace", src: admin, dst: api, port: 4, want: true},
		{name: "service account, explicit namespace", src: pay, dst: api, port: 4, want: true},
		{name: "service account: other", src: web, dst: api, port: 4, want: false},
		{name: "namespace", src: pay, dst: api, port: 5, want: true},
		{name: "namespace: other", src: web, dst: api, port: 5, want: false},
		{name: "cidr", src: ext, dst: api, port: 6, want: true},
		{name: "cidr: pods never", src: pod("x", "y", "203.0.113.9", nil, nil), dst: api, port: 6, want: false},
		{name: "cidr set", src: ext, dst: api, port: 7, want: true},
		{name: "cidr set except", src: world("203.0.113.3"), dst: api, port: 7, want: false},
		{name: "world", src: ext, dst: api, port: 8, want: true},
		{name: "world: pod", src: web, dst: api, port: 8, want: false},
		{name: "cluster", src: pay, dst: api, port: 9, want: true},
		{name: "cluster: world", src: ext, dst: api, port: 9, want: false},
		{name: "all", src: ext, dst: api, port: 10, want: true},
	}}})
}

func TestEgress(t *testing.T) {
	runScenarios(t, []scenario{{"egress L7 to outside", `
apiVersion: policy.palisade.dev/v1alpha1
kind: L7Policy
metadata: {name: out, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: web}}
  egress:
  - toCIDR: [203.0.113.0/24]
    toPorts:
    - ports: [{port: 80}]
      rules: {http: [{method: GET, path: "/public/.*"}]}
  - toEndpoints: [{matchLabels: {app: api}}]
  - toPrincipals: ["spiffe://cluster.local/ns/billing/sa/pay"]
    toPorts: [{ports: [{port: 443}]}]
`, []check{
		{name: "allowed request", egress: true, src: web, dst: ext, port: 80, http: get("/public/x"), want: true, proto: ptr(l7.HTTP)},
		{name: "denied request", egress: true, src: web, dst: ext, port: 80, http: req("POST", "/public/x"), want: false,
			reason: "no rule allows POST /public/x on port 80 for 203.0.113.7 (outside the cluster)"},
		{name: "denied port", egress: true, src: web, dst: ext, port: 443, want: false},
		{name: "to pod", egress: true, src: web, dst: api, port: 1234, want: true},
		{name: "to principal", egress: true, src: web, dst: pay, port: 443, want: true},
		{name: "to principal: unauthenticated destination", egress: true, src: web, dst: plaintext(pay), port: 443, want: false},
	}}})
}

func TestGRPC(t *testing.T) {
	runScenarios(t, []scenario{{"grpc", `
apiVersion: policy.palisade.dev/v1alpha1
kind: L7Policy
metadata: {name: grpc, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: api}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: web}}]
    toPorts:
    - ports: [{port: 9000}]
      rules:
        grpc:
        - {service: shop.v1.Cart, method: Checkout}
        - {service: grpc.health.v1.Health}
`, []check{
		{name: "service and method", src: web, dst: api, port: 9000, http: grpcCall("shop.v1.Cart", "Checkout"), want: true, proto: ptr(l7.HTTP),
			rule: "spec.ingress[0].toPorts[0].rules.grpc[0]"},
		{name: "other method", src: web, dst: api, port: 9000, http: grpcCall("shop.v1.Cart", "Empty"), want: false,
			reason: "no rule allows POST /shop.v1.Cart/Empty"},
		{name: "empty method is any", src: web, dst: api, port: 9000, http: grpcCall("grpc.health.v1.Health", "Watch"), want: true},
		{name: "not gRPC (content type)", src: web, dst: api, port: 9000, http: req("POST", "/shop.v1.Cart/Checkout"), want: false},
		{name: "not gRPC (method)", src: web, dst: api, port: 9000, http: req("GET", "/shop.v1.Cart/Checkout", "Content-Type", "application/grpc"), want: false},
	}}})
}

func TestKafka(t *testing.T) {
	kafkaPolicy := `
apiVersion: policy.palisade.dev/v1alpha1
kind: L7Policy
metadata: {name: kafka, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: api}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: web}}]
    toPorts:
    - ports: [{port: 9092}]
      rules:
        kafka:
        - {role: produce, topic: orders}
        - {role: produce, topic: audit}
        - {role: Consume, topic: orders}
        - {apiKey: createtopics, clientID: ops}
        - {apiKey: 32, apiVersion: 4}
  - fromEndpoints: [{matchLabels: {app: admin}}]
    toPorts:
    - ports: [{port: 9092}]
      rules:
        kafka: [{apiKey: Metadata}]
`
	kafkaDeny := `
apiVersion: policy.palisade.dev/v1alpha1
kind: L7Policy
metadata: {name: kafka-deny, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: api}}
  ingressDeny:
  - toPorts:
    - ports: [{port: 9092}]
      rules:
        kafka: [{topic: secret}]
`
	runScenarios(t, []scenario{{"kafka", kafkaPolicy, []check{
		{name: "produce", src: web, dst: api, port: 9092, kafka: kafka(0, 9, "app", "orders"), want: true, proto: ptr(l7.Kafka),
			rule: "spec.ingress[0].toPorts[0].rules.kafka[0]"},
		{name: "produce other topic names it", src: web, dst: api, port: 9092, kafka: kafka(0, 9, "app", "payments"), want: false,
			reason: `no rule allows Produce v9 to topic "payments" from client id "app" on port 9092 for spiffe://cluster.local/ns/shop/sa/web`},
		{name: "multi-topic covered by two rules", src: web, dst: api, port: 9092, kafka: kafka(0, 9, "app", "orders", "audit"), want: true},
		{name: "multi-topic one uncovered", src: web, dst: api, port: 9092, kafka: kafka(0, 9, "app", "orders", "audit", "payments"), want: false,
			reason: `topic "payments"`},
		{name: "metadata of allowed topics", src: web, dst: api, port: 9092, kafka: kafka(3, 12, "app", "orders", "audit"), want: true},
		{name: "metadata for all topics", src: web, dst: api, port: 9092, kafka: kafka(3, 12, "app", ""), want: false, reason: "Metadata v12 to all topics"},
		{name: "brokers-only metadata names no topic", src: web, dst: api, port: 9092, kafka: kafka(3, 12, "app"), want: true},
		{name: "api versions (no topics) in role", src: web, dst: api, port: 9092, kafka: kafka(18, 3, "app"), want: true},
		{name: "consume role: fetch", src: web, dst: api, port: 9092, kafka: kafka(1, 12, "app", "orders"), want: true},
		{name: "consume role: fetch other topic", src: web, dst: api, port: 9092, kafka: kafka(1, 12, "app", "audit"), want: false},
		{name: "consume role: heartbeat ignores topic", src: web, dst: api, port: 9092, kafka: kafka(12, 4, "app"), want: true},
		{name: "not in role", src: web, dst: api, port: 9092, kafka: kafka(20, 4, "app", "orders"), want: false},
		{name: "apiKey by name with client id", src: web, dst: api, port: 9092, kafka: kafka(19, 5, "ops", "new"), want: true},
		{name: "client id exact", src: web, dst: api, port: 9092, kafka: kafka(19, 5, "ops2", "new"), want: false, reason: `client id "ops2"`},
		{name: "apiKey number and version", src: web, dst: api, port: 9092, kafka: kafka(32, 4, "x"), want: true},
		{name: "version exact", src: web, dst: api, port: 9092, kafka: kafka(32, 3, "x"), want: false},
		{name: "unresolved topic fails closed", src: web, dst: api, port: 9092, kafka: kafka(1, 13, "app", "orders", ""), want: false,
			reason: "could not resolve"},
		{name: "OffsetFetch naming no topic", src: web, dst: api, port: 9092, kafka: kafka(9, 8, "app"), want: true},
		{name: "metadata key without topic rule", src: admin, dst: api, port: 9092, kafka: kafka(3, 12, "x", "a", "b"), want: true},
	}}, {"kafka with deny", kafkaPolicy + "\n---\n" + kafkaDeny, []check{
		{name: "allowed", src: web, dst: api, port: 9092, kafka: kafka(0, 9, "app", "orders"), want: true},
		{name: "deny topic", src: web, dst: api, port: 9092, kafka: kafka(0, 9, "app", "orders", "secret"), want: false,
			policy: "L7Policy shop/kafka-deny", reason: "matches a deny rule"},
		{name: "deny applies to all-topics requests", src: admin, dst: api, port: 9092, kafka: kafka(3, 12, "x", ""), want: false, policy: "L7Policy shop/kafka-deny"},
		{name: "deny ignores requests naming no topic", src: admin, dst: api, port: 9092, kafka: kafka(3, 12, "x"), want: true},
		{name: "other topics pass the deny", src: admin, dst: api, port: 9092, kafka: kafka(3, 12, "x", "a"), want: true},
	}}})
}

func TestProtocolConflict(t *testing.T) {
	runScenarios(t, []scenario{{"http and kafka on one port", `
apiVersion: policy.palisade.dev/v1alpha1
kind: L7Policy
metadata: {name: h, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: api}}
  ingress:
  - toPorts: [{ports: [{port: 9092}], rules: {http: [{}]}}]
---
apiVersion: policy.palisade.dev/v1alpha1
kind: L7Policy
metadata: {name: k, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: api}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: web}}]
    toPorts: [{ports: [{port: 9092}], rules: {kafka: [{}]}}]
`, []check{
		{name: "conflict denies", src: web, dst: api, port: 9092, want: false, reason: "conflicting L7 rules"},
		{name: "peer with one protocol", src: admin, dst: api, port: 9092, want: true, proto: ptr(l7.HTTP)},
	}}})
}

func TestProtocolConflictReported(t *testing.T) {
	objs := parseObjects(t, `
apiVersion: policy.palisade.dev/v1alpha1
kind: L7Policy
metadata: {name: h, namespace: shop}
spec:
  endpointSelector: {}
  ingress:
  - toPorts: [{ports: [{port: 9000, endPort: 9100}], rules: {grpc: [{}]}}]
---
apiVersion: policy.palisade.dev/v1alpha1
kind: L7Policy
metadata: {name: k, namespace: shop}
spec:
  endpointSelector: {}
  ingress:
  - toPorts: [{ports: [{port: 9092}], rules: {kafka: [{}]}}]
---
apiVersion: policy.palisade.dev/v1alpha1
kind: L7Policy
metadata: {name: other, namespace: billing}
spec:
  endpointSelector: {}
  ingress:
  - toPorts: [{ports: [{port: 9092}], rules: {http: [{}]}}]
`)
	_, probs := Compile(objs)
	if len(probs) != 1 {
		t.Fatalf("want one conflict warning, got %v", probs)
	}
	p := probs[0]
	if p.Severity != Warning || p.Object.Name != "k" || p.Field != "spec.ingress[0].toPorts[0]" ||
		!strings.Contains(p.Message, "http rules at L7Policy shop/h spec.ingress[0].toPorts[0]") {
		t.Fatalf("problem %v", p)
	}
}

func TestPortRulesWrongProtocol(t *testing.T) {
	s := mustCompile(t, httpAPI)
	d := s.Ingress(web, api, 8080)
	if v := d.Rules.Kafka(kafka(0, 1, "")); v.Allow || v.Reason == "" {
		t.Fatalf("Kafka on an HTTP port: %+v", v)
	}
	var nilRules *PortRules
	if v := nilRules.HTTP(get("/")); v.Allow {
		t.Fatal("nil rules allowed a request")
	}
}
