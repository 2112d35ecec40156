package policy

import (
	"strings"
	"testing"

	"github.com/palisade-net/palisade/pkg/apis/policy/v1alpha1"
)

// l7policy wraps a spec fragment (indented two spaces) in an L7Policy.
func l7policy(spec string) string {
	return `
apiVersion: policy.palisade.dev/v1alpha1
kind: L7Policy
metadata: {name: v, namespace: shop}
spec:
` + spec
}

func TestValidateNamesTheField(t *testing.T) {
	for _, tc := range []struct {
		name, spec, field, msg string
	}{
		{"unknown field", `
  endpointSelector: {}
  ingress:
  - toPorts:
    - ports: [{port: 80}]
      rules:
        http: [{method: GET}, {methd: GET}]
`, "spec.ingress[0].toPorts[0].rules.http[1].methd", "unknown field"},
		{"endpointSelector required", `
  ingress: [{}]
`, "spec.endpointSelector", "required"},
		{"bad regex", `
  endpointSelector: {}
  ingress:
  - toPorts:
    - ports: [{port: 80}]
      rules: {http: [{path: "/a("}]}
`, "spec.ingress[0].toPorts[0].rules.http[0].path", "invalid RE2"},
		{"perl lookahead is not RE2", `
  endpointSelector: {}
  ingress:
  - toPorts:
    - ports: [{port: 80}]
      rules: {http: [{method: "(?!GET)"}]}
`, "spec.ingress[0].toPorts[0].rules.http[0].method", "invalid RE2"},
		{"bad host regex", `
  endpointSelector: {}
  ingress:
  - toPorts:
    - ports: [{port: 80}]
      rules: {http: [{host: "*.shop"}]}
`, "spec.ingress[0].toPorts[0].rules.http[0].host", "invalid RE2"},
		{"bad header", `
  endpointSelector: {}
  ingress:
  - toPorts:
    - ports: [{port: 80}]
      rules: {http: [{headers: ["Bad:Name value"]}]}
`, "spec.ingress[0].toPorts[0].rules.http[0].headers[0]", "valid header name"},
		{"bad mismatch", `
  endpointSelector: {}
  ingress:
  - toPorts:
    - ports: [{port: 80}]
      rules: {http: [{headerMatches: [{name: X, mismatch: DROP}]}]}
`, "spec.ingress[0].toPorts[0].rules.http[0].headerMatches[0].mismatch", "LOG, ADD, DELETE, REPLACE"},
		{"mismatch in deny", `
  endpointSelector: {}
  ingressDeny:
  - toPorts:
    - ports: [{port: 80}]
      rules: {http: [{headerMatches: [{name: X, value: z, mismatch: LOG}]}]}
`, "spec.ingressDeny[0].toPorts[0].rules.http[0].headerMatches[0].mismatch", "not allowed in deny rules"},
		{"role and apiKey", `
  endpointSelector: {}
  ingress:
  - toPorts:
    - ports: [{port: 9092}]
      rules: {kafka: [{role: produce, apiKey: fetch}]}
`, "spec.ingress[0].toPorts[0].rules.kafka[0]", "exclusive"},
		{"bad role", `
  endpointSelector: {}
  ingress:
  - toPorts:
    - ports: [{port: 9092}]
      rules: {kafka: [{role: write}]}
`, "spec.ingress[0].toPorts[0].rules.kafka[0].role", "produce or consume"},
		{"bad apiKey", `
  endpointSelector: {}
  ingress:
  - toPorts:
    - ports: [{port: 9092}]
      rules: {kafka: [{apiKey: publish}]}
`, "spec.ingress[0].toPorts[0].rules.kafka[0].apiKey", "not a Kafka API key"},
		{"bad apiVersion", `
  endpointSelector: {}
  ingress:
  - toPorts:
    - ports: [{port: 9092}]
      rules: {kafka: [{apiVersion: "-1"}]}
`, "spec.ingress[0].toPorts[0].rules.kafka[0].apiVersion", "version number"},
		{"topic characters", `
  endpointSelector: {}
  ingress:
  - toPorts:
    - ports: [{port: 9092}]
      rules: {kafka: [{topic: "a/b"}]}
`, "spec.ingress[0].toPorts[0].rules.kafka[0].topic", "a-z, A-Z, 0-9"},
		{"topic length", `
  endpointSelector: {}
  ingress:
  - toPorts:
    - ports: [{port: 9092}]
      rules: {kafka: [{topic: "` + strings.Repeat("t", 256) + `"}]}
`, "spec.ingress[0].toPorts[0].rules.kafka[0].topic", "at most 255"},
		{"port zero", `
  endpointSelector: {}
  ingress:
  - toPorts: [{ports: [{port: 0}]}]
`, "spec.ingress[0].toPorts[0].ports[0].port", "1-65535"},
		{"port too large", `
  endpointSelector: {}
  ingress:
  - toPorts: [{ports: [{port: 65536}]}]
`, "spec.ingress[0].toPorts[0].ports[0].port", "1-65535"},
		{"named port", `
  endpointSelector: {}
  ingress:
  - toPorts: [{ports: [{port: http}]}]
`, "spec.ingress[0].toPorts[0].ports[0].port", "1-65535"},
		{"endPort below port", `
  endpointSelector: {}
  ingress:
  - toPorts: [{ports: [{port: 90, endPort: 80}]}]
`, "spec.ingress[0].toPorts[0].ports[0].endPort", "from 90 to 65535"},
		{"protocol", `
  endpointSelector: {}
  ingress:
  - toPorts: [{ports: [{port: 53, protocol: UDP}]}]
`, "spec.ingress[0].toPorts[0].ports[0].protocol", "TCP or ANY"},
		{"no ports", `
  endpointSelector: {}
  ingress:
  - toPorts: [{rules: {http: [{}]}}]
`, "spec.ingress[0].toPorts[0].ports", "at least one port"},
		{"http and kafka mixed", `
  endpointSelector: {}
  ingress:
  - toPorts:
    - ports: [{port: 80}]
      rules: {http: [{}], kafka: [{}]}
`, "spec.ingress[0].toPorts[0].rules", "http and kafka cannot be mixed"},
		{"http and grpc mixed", `
  endpointSelector: {}
  ingress:
  - toPorts:
    - ports: [{port: 80}]
      rules: {http: [{}], grpc: [{}]}
`, "spec.ingress[0].toPorts[0].rules", "grpc and http cannot be mixed"},
		{"grpc service", `
  endpointSelector: {}
  ingress:
  - toPorts:
    - ports: [{port: 80}]
      rules: {grpc: [{service: "/shop.Cart"}]}
`, "spec.ingress[0].toPorts[0].rules.grpc[0].service", "gRPC service"},
		{"principal syntax", `
  endpointSelector: {}
  ingress:
  - fromPrincipals: ["spiffe://cluster.local/ns/*/sa/web"]
`, "spec.ingress[0].fromPrincipals[0]", "'*' is only allowed"},
		{"principal not a SPIFFE ID", `
  endpointSelector: {}
  ingress:
  - fromPrincipals: ["cluster.local/ns/a/sa/b"]
`, "spec.ingress[0].fromPrincipals[0]", "invalid SPIFFE ID"},
		{"principal trust domain only", `
  endpointSelector: {}
  ingress:
  - fromPrincipals: ["spiffe://cluster.local"]
`, "spec.ingress[0].fromPrincipals[0]", "spiffe://cluster.local/*"},
		{"peer kinds combined", `
  endpointSelector: {}
  ingress:
  - fromEndpoints: [{}]
    fromPrincipals: ["*"]
`, "spec.ingress[0]", "fromEndpoints and fromPrincipals cannot be combined"},
		{"egress peer kinds combined", `
  endpointSelector: {}
  egress:
  - toCIDR: [10.0.0.0/8]
    toEntities: [world]
`, "spec.egress[0]", "toCIDR/toCIDRSet and toEntities cannot be combined"},
		{"bad selector operator", `
  endpointSelector: {}
  ingress:
  - fromEndpoints: [{matchExpressions: [{key: app, operator: Near}]}]
`, "spec.ingress[0].fromEndpoints[0]", "invalid selector"},
		{"reserved label source", `
  endpointSelector: {}
  ingress:
  - fromEndpoints: [{matchLabels: {"reserved:host": ""}}]
`, "spec.ingress[0].fromEndpoints[0].matchLabels[reserved:host]", "label source"},
		{"endpointSelector other namespace", `
  endpointSelector: {matchLabels: {io.kubernetes.pod.namespace: billing}}
`, "spec.endpointSelector", "always applies in the policy's namespace shop"},
		{"service account name", `
  endpointSelector: {}
  ingress:
  - fromServiceAccounts: [{name: "Bad_Name"}]
`, "spec.ingress[0].fromServiceAccounts[0].name", "not a service account name"},
		{"namespace name", `
  endpointSelector: {}
  ingress:
  - fromNamespaces: ["a.b"]
`, "spec.ingress[0].fromNamespaces[0]", "not a namespace name"},
		{"cidr", `
  endpointSelector: {}
  ingress:
  - fromCIDR: [10.0.0.0/33]
`, "spec.ingress[0].fromCIDR[0]", "invalid CIDR"},
		{"cidr except outside", `
  endpointSelector: {}
  ingress:
  - fromCIDRSet: [{cidr: 10.0.0.0/8, except: [192.168.0.0/16]}]
`, "spec.ingress[0].fromCIDRSet[0].except[0]", "not inside 10.0.0.0/8"},
		{"entity", `
  endpointSelector: {}
  ingress:
  - fromEntities: [host]
`, "spec.ingress[0].fromEntities[0]", `entity "host" is not supported`},
		{"wrong type", `
  endpointSelector: {}
  ingress:
  - toPorts: [{ports: [{port: 80, endPort: "x"}]}]
`, "spec.ingress.toPorts.ports.endPort", "cannot decode"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			objs := parseObjects(t, l7policy(tc.spec))
			probs := Validate(objs[0])
			found := false
			for _, p := range probs {
				if p.Field == tc.field && strings.Contains(p.Message, tc.msg) && p.Severity == Error {
					found = true
				}
			}
			if !found {
				t.Fatalf("want an error at %s containing %q; got %v", tc.field, tc.msg, probs)
			}
			// The same problems come out of Compile, and the object is
			// not enforced beyond default deny.
			_, cprobs := Compile(objs)
			if len(cprobs) != len(probs) {
				t.Errorf("Compile found %d problems, Validate %d", len(cprobs), len(probs))
			}
		})
	}
}

func TestUndecodablePolicyFailsClosed(t *testing.T) {
	s, probs := Compile(parseObjects(t, l7policy(`
  endpointSelector: {matchLabels: {app: api}}
  ingress:
  - toPorts: [{ports: [{port: 80, endPort: "x"}]}]
`)))
	if !HasErrors(probs) {
		t.Fatalf("no error: %v", probs)
	}
	d := s.Ingress(web, api, 80)
	if d.Allow || !d.Selected || !strings.Contains(d.Reason, "L7Policy shop/v is invalid") {
		t.Fatalf("decision %+v", d)
	}
	if d := s.Ingress(web, admin, 80); !d.Allow {
		t.Fatalf("unselected pod: %+v", d)
	}
}

func TestValidateAcceptsValidPolicy(t *testing.T) {
	objs := parseObjects(t, httpAPI+"\n---\n"+l4WebToAPI)
	for _, o := range objs {
		if probs := Validate(o); len(probs) != 0 {
			t.Errorf("%s: unexpected problems %v", o.GetName(), probs)
		}
	}
}

func TestValidateTyped(t *testing.T) {
	p := &v1alpha1.L7Policy{}
	p.Name = "x"
	probs := ValidateL7Policy(p)
	if len(probs) != 1 || probs[0].Field != "spec.endpointSelector" || probs[0].Object.String() != "L7Policy default/x" {
		t.Fatalf("problems: %v", probs)
	}
	fe := probs[0].FieldError()
	if !strings.Contains(fe.Error(), "spec.endpointSelector") {
		t.Fatalf("field error %q", fe.Error())
	}
	cp := &v1alpha1.ClusterL7Policy{}
	cp.Name = "c"
	cp.Spec.Ingress = []v1alpha1.IngressRule{{FromServiceAccounts: []v1alpha1.ServiceAccountRef{{Name: "web"}}}}
	if probs := ValidateClusterL7Policy(cp); !containsField(probs, "spec.ingress[0].fromServiceAccounts[0].namespace") {
		t.Fatalf("cluster policy without service account namespace: %v", probs)
	}
}

func containsField(probs []Problem, f string) bool {
	for _, p := range probs {
		if p.Field == f {
			return true
		}
	}
	return false
}

func TestNotAPolicy(t *testing.T) {
	objs := parseObjects(t, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
	if IsPolicy(objs[0]) {
		t.Fatal("ConfigMap is a policy")
	}
	if probs := Validate(objs[0]); len(probs) != 1 {
		t.Fatalf("problems %v", probs)
	}
	s, probs := Compile(objs)
	if len(probs) != 0 || s.Len() != 0 {
		t.Fatalf("compiled a ConfigMap: %v", probs)
	}
}

func TestUnsupportedVersion(t *testing.T) {
	objs := parseObjects(t, "apiVersion: policy.palisade.dev/v1\nkind: L7Policy\nmetadata: {name: x}\nspec: {endpointSelector: {}}\n")
	probs := Validate(objs[0])
	if len(probs) != 1 || !strings.Contains(probs[0].Message, "unsupported API version") {
		t.Fatalf("problems %v", probs)
	}
}

func TestDuplicateObjectsLastWins(t *testing.T) {
	s, probs := Compile(parseObjects(t, l4WebToAPI+"\n---\n"+strings.Replace(l4WebToAPI, "port: 8080", "port: 9090", 1)))
	if len(probs) != 1 || probs[0].Severity != Warning {
		t.Fatalf("problems %v", probs)
	}
	if s.Ingress(web, api, 8080).Allow || !s.Ingress(web, api, 9090).Allow {
		t.Fatal("the last definition is not the one used")
	}
}
