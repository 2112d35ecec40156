package manifests_test

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/twmb/franz-go/pkg/kmsg"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"

	"github.com/palisade-net/palisade/manifests"
	"github.com/palisade-net/palisade/pkg/apis/policy/v1alpha1"
	"github.com/palisade-net/palisade/pkg/policy"
)

// The CRD files, as "make crds" names them.
var crdFiles = []string{
	"crds/policy.palisade.dev_clusterl7policies.yaml",
	"crds/policy.palisade.dev_flowlogs.yaml",
	"crds/policy.palisade.dev_l7policies.yaml",
}

// TestCRDsUpToDate regenerates the CRDs with controller-gen and compares
// them with manifests/crds byte for byte.
func TestCRDsUpToDate(t *testing.T) {
	gen := testBin(t, "controller-gen", "test-tools")
	out := t.TempDir()
	cmd := exec.Command(gen, "crd", "paths=./pkg/apis/policy/v1alpha1/...", "output:crd:dir="+out)
	cmd.Dir = repoRoot
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("controller-gen: %v\n%s", err, b)
	}
	gotFiles, _ := filepath.Glob(filepath.Join(out, "*.yaml"))
	var got []string
	for _, f := range gotFiles {
		got = append(got, "crds/"+filepath.Base(f))
	}
	have, _ := filepath.Glob("crds/*.yaml")
	if !slices.Equal(got, have) || !slices.Equal(have, crdFiles) {
		t.Fatalf("controller-gen makes %v, manifests/crds holds %v, the tests expect %v: run make crds", got, have, crdFiles)
	}
	for _, f := range crdFiles {
		want, err := os.ReadFile(filepath.Join(out, filepath.Base(f)))
		if err != nil {
			t.Fatal(err)
		}
		cur, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(want, cur) {
			t.Errorf("manifests/%s is stale: run make crds\n%s", f, lineDiff(string(cur), string(want)))
		}
	}
}

// The parts of apiextensions.k8s.io/v1 CustomResourceDefinition the tests
// look at (k8s.io/apiextensions-apiserver is not a dependency).
type crd struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name        string            `json:"name"`
		Annotations map[string]string `json:"annotations"`
	} `json:"metadata"`
	Spec struct {
		Group string `json:"group"`
		Scope string `json:"scope"`
		Names struct {
			Kind       string   `json:"kind"`
			ListKind   string   `json:"listKind"`
			Plural     string   `json:"plural"`
			Singular   string   `json:"singular"`
			ShortNames []string `json:"shortNames"`
			Categories []string `json:"categories"`
		} `json:"names"`
		Versions []struct {
			Name         string `json:"name"`
			Served       bool   `json:"served"`
			Storage      bool   `json:"storage"`
			Subresources *struct {
				Status *map[string]any `json:"status"`
			} `json:"subresources"`
			AdditionalPrinterColumns []struct {
				Name     string `json:"name"`
				Type     string `json:"type"`
				JSONPath string `json:"jsonPath"`
				Priority int    `json:"priority"`
			} `json:"additionalPrinterColumns"`
			Schema struct {
				OpenAPIV3Schema *schema `json:"openAPIV3Schema"`
			} `json:"schema"`
		} `json:"versions"`
	} `json:"spec"`
}

type schema struct {
	Type         string             `json:"type"`
	Description  string             `json:"description"`
	Properties   map[string]*schema `json:"properties"`
	Items        *schema            `json:"items"`
	Required     []string           `json:"required"`
	Pattern      string             `json:"pattern"`
	MaxLength    *int64             `json:"maxLength"`
	MaxItems     *int64             `json:"maxItems"`
	MinItems     *int64             `json:"minItems"`
	Enum         []any              `json:"enum"`
	IntOrString  bool               `json:"x-kubernetes-int-or-string"`
	ListType     string             `json:"x-kubernetes-list-type"`
	ListMapKeys  []string           `json:"x-kubernetes-list-map-keys"`
	XValidations []validationRule   `json:"x-kubernetes-validations"`
	AddlProps    any                `json:"additionalProperties"`
	Preserve     bool               `json:"x-kubernetes-preserve-unknown-fields"`
	AnyOf        []map[string]any   `json:"anyOf"`
	Format       string             `json:"format"`
	Minimum      *float64           `json:"minimum"`
	Maximum      *float64           `json:"maximum"`
	MinLength    *int64             `json:"minLength"`
	Default      any                `json:"default"`
	Nullable     bool               `json:"nullable"`
	Embedded     bool               `json:"x-kubernetes-embedded-resource"`
	MapType      string             `json:"x-kubernetes-map-type"`
}

type validationRule struct {
	Rule      string `json:"rule"`
	Message   string `json:"message"`
	FieldPath string `json:"fieldPath"`
}

// loadCRD decodes a CRD file, refusing fields the test types do not know
// (so a schema construct the checks below ignore cannot slip in).
func loadCRD(t *testing.T, path string) *crd {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var c crd
	if err := yaml.UnmarshalStrict(data, &c); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return &c
}

// walk calls f for every schema node with its path ("spec.ingress[].toPorts[]").
func walk(s *schema, path string, ancestors []*schema, f func(path string, s *schema, ancestors []*schema)) {
	if s == nil {
		return
	}
	f(path, s, ancestors)
	anc := append(slices.Clip(ancestors), s)
	keys := make([]string, 0, len(s.Properties))
	for k := range s.Properties {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		p := k
		if path != "" {
			p = path + "." + k
		}
		walk(s.Properties[k], p, anc, f)
	}
	if s.Items != nil {
		walk(s.Items, path+"[]", anc, f)
	}
}

// nodeAt finds the schema node at path.
func nodeAt(t *testing.T, root *schema, path string) *schema {
	t.Helper()
	var found *schema
	walk(root, "", nil, func(p string, s *schema, _ []*schema) {
		if p == path {
			found = s
		}
	})
	if found == nil {
		t.Fatalf("no schema node at %q", path)
	}
	return found
}

func TestCRDs(t *testing.T) {
	for _, tc := range []struct {
		file, name, kind, scope, shortName string
		// root rules: the ClusterL7Policy's service account namespaces.
		rootRules int
	}{
		{"crds/policy.palisade.dev_l7policies.yaml", "l7policies.policy.palisade.dev", "L7Policy", "Namespaced", "l7p", 0},
		{"crds/policy.palisade.dev_clusterl7policies.yaml", "clusterl7policies.policy.palisade.dev", "ClusterL7Policy", "Cluster", "cl7p", 4},
	} {
		t.Run(tc.kind, func(t *testing.T) {
			c := loadCRD(t, tc.file)
			if c.APIVersion != "apiextensions.k8s.io/v1" || c.Kind != "CustomResourceDefinition" || c.Metadata.Name != tc.name {
				t.Fatalf("%s/%s %s: want apiextensions.k8s.io/v1 CustomResourceDefinition %s", c.APIVersion, c.Kind, c.Metadata.Name, tc.name)
			}
			s := c.Spec
			if s.Group != v1alpha1.Group || s.Scope != tc.scope || s.Names.Kind != tc.kind || s.Names.ListKind != tc.kind+"List" {
				t.Errorf("group %s scope %s kind %s/%s; want %s %s %s", s.Group, s.Scope, s.Names.Kind, s.Names.ListKind, v1alpha1.Group, tc.scope, tc.kind)
			}
			if !slices.Equal(s.Names.ShortNames, []string{tc.shortName}) || !slices.Equal(s.Names.Categories, []string{"palisade"}) {
				t.Errorf("short names %v, categories %v; want [%s], [palisade]", s.Names.ShortNames, s.Names.Categories, tc.shortName)
			}
			if len(s.Versions) != 1 {
				t.Fatalf("%d versions, want 1", len(s.Versions))
			}
			v := s.Versions[0]
			if v.Name != v1alpha1.Version || !v.Served || !v.Storage {
				t.Errorf("version %s served=%v storage=%v", v.Name, v.Served, v.Storage)
			}
			if v.Subresources == nil || v.Subresources.Status == nil {
				t.Error("no status subresource")
			}
			type col struct {
				name, typ, path string
				prio            int
			}
			var cols []col
			for _, pc := range v.AdditionalPrinterColumns {
				cols = append(cols, col{pc.Name, pc.Type, pc.JSONPath, pc.Priority})
			}
			wantCols := []col{
				{"Accepted", "string", `.status.conditions[?(@.type=="Accepted")].status`, 0},
				{"Reason", "string", `.status.conditions[?(@.type=="Accepted")].reason`, 1},
				{"Age", "date", ".metadata.creationTimestamp", 0},
			}
			if !slices.Equal(cols, wantCols) {
				t.Errorf("printer columns %+v, want %+v", cols, wantCols)
			}
			root := v.Schema.OpenAPIV3Schema
			if root == nil {
				t.Fatal("no schema")
			}
			if !slices.Contains(root.Required, "spec") || !slices.Contains(nodeAt(t, root, "spec").Required, "endpointSelector") {
				t.Error("spec and spec.endpointSelector must be required")
			}
			conds := nodeAt(t, root, "status.conditions")
			if conds.ListType != "map" || !slices.Equal(conds.ListMapKeys, []string{"type"}) {
				t.Errorf("status.conditions: list type %q keys %v, want a map keyed by type", conds.ListType, conds.ListMapKeys)
			}
			for _, f := range []string{"type", "status", "reason", "message", "lastTransitionTime"} {
				if !slices.Contains(conds.Items.Required, f) {
					t.Errorf("status.conditions[] does not require %s (not a metav1.Condition?)", f)
				}
			}
			rootRules := 0
			for _, r := range root.XValidations {
				if strings.Contains(r.Rule, "__namespace__") {
					rootRules++
				}
			}
			if rootRules != tc.rootRules {
				t.Errorf("%d root rules requiring service account namespaces, want %d", rootRules, tc.rootRules)
			}
			checkRules(t, root)
			checkDescriptions(t, root)
			checkCostBounds(t, root)
		})
	}
}

// TestFlowLogCRD checks the FlowLog CRD: cluster-scoped, with status, and
// with the enums that make admission refuse unknown protocols and verdicts.
func TestFlowLogCRD(t *testing.T) {
	c := loadCRD(t, "crds/policy.palisade.dev_flowlogs.yaml")
	s := c.Spec
	if c.Metadata.Name != "flowlogs.policy.palisade.dev" || s.Scope != "Cluster" || s.Names.Kind != v1alpha1.KindFlowLog {
		t.Fatalf("%s scope %s kind %s", c.Metadata.Name, s.Scope, s.Names.Kind)
	}
	v := s.Versions[0]
	if v.Subresources == nil || v.Subresources.Status == nil {
		t.Error("no status subresource")
	}
	root := v.Schema.OpenAPIV3Schema
	for path, want := range map[string][]string{
		"spec.protocols[]": {"tcp", "http", "grpc", "kafka", "udp", "icmp", "icmpv6"},
		"spec.verdicts[]":  {"allowed", "denied", "failed", "revoked", "dropped"},
	} {
		var got []string
		for _, e := range nodeAt(t, root, path).Enum {
			got = append(got, fmt.Sprint(e))
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s enum %v, want %v", path, got, want)
		}
	}
	if conds := nodeAt(t, root, "status.conditions"); conds.ListType != "map" {
		t.Errorf("status.conditions: list type %q", conds.ListType)
	}
	checkDescriptions(t, root)
}

// checkRules checks that the CEL rules and patterns that make admission
// refuse malformed policies are where they belong, in all four directions.
func checkRules(t *testing.T, root *schema) {
	t.Helper()
	type want struct {
		path, rule, pattern string
	}
	var wants []want
	for _, d := range []struct{ dir, peer string }{{"ingress", "from"}, {"ingressDeny", "from"}, {"egress", "to"}, {"egressDeny", "to"}} {
		r := "spec." + d.dir + "[]"
		pr := r + ".toPorts[]"
		l7 := pr + ".rules"
		wants = append(wants,
			want{path: r, rule: "has(self." + d.peer + "Endpoints)"},
			want{path: r + "." + d.peer + "CIDR[]", rule: "isCIDR(self) || isIP(self)"},
			want{path: r + "." + d.peer + "CIDRSet[]", rule: "containsCIDR"},
			want{path: r + "." + d.peer + "CIDRSet[].cidr", rule: "isCIDR(self)"},
			want{path: r + "." + d.peer + "CIDRSet[].except[]", rule: "isCIDR(self)"},
			want{path: r + "." + d.peer + "Principals[]", pattern: "spiffe://"},
			want{path: r + "." + d.peer + "Namespaces[]", pattern: "[a-z0-9]"},
			want{path: r + "." + d.peer + "ServiceAccounts[].name", pattern: "[a-z0-9]"},
			want{path: r + "." + d.peer + "ServiceAccounts[].namespace", pattern: "[a-z0-9]"},
			want{path: pr + ".ports[]", rule: "self.endPort >= self.port"},
			want{path: pr + ".ports[].port", rule: "self <= 65535"},
			want{path: l7, rule: "size(self.http) > 0"},
			want{path: l7 + ".http[].method", rule: `"".matches(self)`},
			want{path: l7 + ".http[].path", rule: `"".matches(self)`},
			want{path: l7 + ".http[].host", rule: `"".matches(self)`},
			want{path: l7 + ".http[].headers[]", pattern: "( .*)?$"},
			want{path: l7 + ".http[].headerMatches[].name", pattern: "^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"},
			want{path: l7 + ".grpc[].service", pattern: "^[A-Za-z_]"},
			want{path: l7 + ".grpc[].method", pattern: "^[A-Za-z_]"},
			want{path: l7 + ".kafka[]", rule: "has(self.apiKey)"},
			want{path: l7 + ".kafka[].role", rule: "'produce', 'consume'"},
			want{path: l7 + ".kafka[].apiKey", rule: "'offsets'"},
			want{path: l7 + ".kafka[].apiVersion", rule: "32767"},
			want{path: l7 + ".kafka[].topic", pattern: "^[a-zA-Z0-9._-]+$"},
		)
	}
	for _, w := range wants {
		n := nodeAt(t, root, w.path)
		if w.pattern != "" && !strings.Contains(n.Pattern, w.pattern) {
			t.Errorf("%s: pattern %q, want one containing %q", w.path, n.Pattern, w.pattern)
		}
		if w.pattern != "" {
			if _, err := regexp.Compile(n.Pattern); err != nil {
				t.Errorf("%s: pattern: %v", w.path, err)
			}
		}
		if w.rule == "" {
			continue
		}
		found := false
		for _, r := range n.XValidations {
			found = found || strings.Contains(r.Rule, w.rule)
			if r.Message == "" {
				t.Errorf("%s: rule %q has no message", w.path, r.Rule)
			}
		}
		if !found {
			t.Errorf("%s: no CEL rule containing %q (rules: %+v)", w.path, w.rule, n.XValidations)
		}
	}
}

// checkDescriptions makes "kubectl explain" useful: every field of spec
// and status is described.
func checkDescriptions(t *testing.T, root *schema) {
	t.Helper()
	for _, top := range []string{"spec", "status"} {
		walk(nodeAt(t, root, top), top, nil, func(p string, s *schema, anc []*schema) {
			if strings.HasSuffix(p, "[]") {
				return // the list is described
			}
			if s.Description == "" {
				t.Errorf("%s has no description: add a doc comment to the Go field", p)
			}
		})
	}
}

// checkCostBounds checks what the API server's CEL cost estimate needs:
// every list above a rule has maxItems, and every string a rule reads
// has maxLength. Without them it assumes the largest possible request
// and refuses the CRD.
func checkCostBounds(t *testing.T, root *schema) {
	t.Helper()
	walk(root, "", nil, func(p string, s *schema, anc []*schema) {
		if len(s.XValidations) == 0 {
			return
		}
		for i, a := range anc {
			if a.Type == "array" && a.MaxItems == nil {
				t.Errorf("%s has CEL rules but the list above it (depth %d) has no maxItems", p, i)
			}
		}
		if (s.Type == "string" || s.IntOrString) && s.MaxLength == nil {
			t.Errorf("%s has CEL rules but no maxLength", p)
		}
	})
}

// TestCRDPatternsNotStricterThanValidate checks values against the CRD's
// OpenAPI patterns and against policy.ValidateL7Policy: whatever the CRD
// refuses, Validate refuses too (admission may only say early what the
// agent would say later), and the cases meant to be refused are.
func TestCRDPatternsNotStricterThanValidate(t *testing.T) {
	root := loadCRD(t, "crds/policy.palisade.dev_l7policies.yaml").Spec.Versions[0].Schema.OpenAPIV3Schema
	const r = "spec.ingress[]"
	const h = r + ".toPorts[].rules.http[]"
	const k = r + ".toPorts[].rules.kafka[]"
	const g = r + ".toPorts[].rules.grpc[]"
	for _, tc := range []struct {
		path, value string
		valid       bool
		set         func(*v1alpha1.L7PolicySpec, string)
	}{
		{r + ".fromPrincipals[]", "*", true, principal},
		{r + ".fromPrincipals[]", "spiffe://cluster.local/ns/a/sa/b", true, principal},
		{r + ".fromPrincipals[]", "spiffe://cluster.local/ns/a/*", true, principal},
		{r + ".fromPrincipals[]", "spiffe://cluster.local/*", true, principal},
		{r + ".fromPrincipals[]", "spiffe://td/.../x", true, principal},
		{r + ".fromPrincipals[]", "spiffe://cluster.local", false, principal},
		{r + ".fromPrincipals[]", "spiffe://cluster.local/ns/*/sa/web", false, principal},
		{r + ".fromPrincipals[]", "cluster.local/ns/a/sa/b", false, principal},
		{r + ".fromPrincipals[]", "spiffe://Cluster.local/ns/a", false, principal},
		{r + ".fromPrincipals[]", "spiffe://td/a/../b", false, principal},
		{r + ".fromPrincipals[]", "spiffe://td/a/./b", false, principal},
		{r + ".fromPrincipals[]", "spiffe://td/a//b", false, principal},
		{r + ".fromPrincipals[]", "spiffe://td/a/", false, principal},
		{r + ".fromNamespaces[]", "shop", true, namespace},
		{r + ".fromNamespaces[]", "a.b", false, namespace},
		{r + ".fromNamespaces[]", "Shop", false, namespace},
		{r + ".fromServiceAccounts[].name", "web", true, saName},
		{r + ".fromServiceAccounts[].name", "web.v2", true, saName},
		{r + ".fromServiceAccounts[].name", "Bad_Name", false, saName},
		{r + ".fromServiceAccounts[].namespace", "billing", true, saNamespace},
		{r + ".fromServiceAccounts[].namespace", "", true, saNamespace},
		{r + ".fromServiceAccounts[].namespace", "a.b", false, saNamespace},
		{h + ".headers[]", "X-Token", true, header},
		{h + ".headers[]", "X-Token abc def", true, header},
		{h + ".headers[]", "Bad:Name value", false, header},
		{h + ".headers[]", " leading", false, header},
		{h + ".headerMatches[].name", "x-user", true, headerMatchName},
		{h + ".headerMatches[].name", "x user", false, headerMatchName},
		{k + ".topic", "orders.v1_a-b", true, topic},
		{k + ".topic", "a/b", false, topic},
		{g + ".service", "shop.v1.Cart", true, grpcService},
		{g + ".service", "/shop.Cart", false, grpcService},
		{g + ".method", "Checkout", true, grpcMethod},
		{g + ".method", "Check.out", false, grpcMethod},
	} {
		t.Run(tc.path+"="+tc.value, func(t *testing.T) {
			n := nodeAt(t, root, tc.path)
			crdOK := n.Pattern == "" || regexp.MustCompile(n.Pattern).MatchString(tc.value)
			if n.MaxLength != nil && int64(len(tc.value)) > *n.MaxLength {
				crdOK = false
			}
			spec := v1alpha1.L7PolicySpec{EndpointSelector: &metav1.LabelSelector{}}
			tc.set(&spec, tc.value)
			probs := policy.ValidateL7Policy(&v1alpha1.L7Policy{
				ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "shop"}, Spec: spec,
			})
			validateOK := len(probs) == 0
			if crdOK != tc.valid {
				t.Errorf("the CRD's pattern %q says valid=%v, want %v", n.Pattern, crdOK, tc.valid)
			}
			if !crdOK && validateOK {
				t.Errorf("the CRD refuses what policy.Validate accepts")
			}
			if tc.valid && !validateOK {
				t.Errorf("policy.Validate refuses a value meant to be valid: %v", probs)
			}
		})
	}
}

func principal(s *v1alpha1.L7PolicySpec, v string) {
	s.Ingress = []v1alpha1.IngressRule{{FromPrincipals: []string{v}}}
}

func namespace(s *v1alpha1.L7PolicySpec, v string) {
	s.Ingress = []v1alpha1.IngressRule{{FromNamespaces: []string{v}}}
}

func saName(s *v1alpha1.L7PolicySpec, v string) {
	s.Ingress = []v1alpha1.IngressRule{{FromServiceAccounts: []v1alpha1.ServiceAccountRef{{Name: v}}}}
}

func saNamespace(s *v1alpha1.L7PolicySpec, v string) {
	s.Ingress = []v1alpha1.IngressRule{{FromServiceAccounts: []v1alpha1.ServiceAccountRef{{Name: "web", Namespace: v}}}}
}

func withL7(s *v1alpha1.L7PolicySpec, rules *v1alpha1.L7Rules) {
	s.Ingress = []v1alpha1.IngressRule{{ToPorts: []v1alpha1.PortRule{{
		Ports: []v1alpha1.PortProtocol{{Port: intstr.FromInt32(80)}}, Rules: rules,
	}}}}
}

func header(s *v1alpha1.L7PolicySpec, v string) {
	withL7(s, &v1alpha1.L7Rules{HTTP: []v1alpha1.HTTPRule{{Headers: []string{v}}}})
}

func headerMatchName(s *v1alpha1.L7PolicySpec, v string) {
	withL7(s, &v1alpha1.L7Rules{HTTP: []v1alpha1.HTTPRule{{HeaderMatches: []v1alpha1.HeaderMatch{{Name: v}}}}})
}

func topic(s *v1alpha1.L7PolicySpec, v string) {
	withL7(s, &v1alpha1.L7Rules{Kafka: []v1alpha1.KafkaRule{{Topic: v}}})
}

func grpcService(s *v1alpha1.L7PolicySpec, v string) {
	withL7(s, &v1alpha1.L7Rules{GRPC: []v1alpha1.GRPCRule{{Service: v}}})
}

func grpcMethod(s *v1alpha1.L7PolicySpec, v string) {
	withL7(s, &v1alpha1.L7Rules{GRPC: []v1alpha1.GRPCRule{{Method: v}}})
}

// TestCRDKafkaAPIKeyNames checks the names the apiKey rule accepts against
// policy.Validate, both ways, for every request key kmsg knows.
func TestCRDKafkaAPIKeyNames(t *testing.T) {
	root := loadCRD(t, "crds/policy.palisade.dev_l7policies.yaml").Spec.Versions[0].Schema.OpenAPIV3Schema
	n := nodeAt(t, root, "spec.ingress[].toPorts[].rules.kafka[].apiKey")
	var rule string
	for _, r := range n.XValidations {
		if strings.Contains(r.Rule, "lowerAscii() in [") {
			rule = r.Rule
		}
	}
	if rule == "" {
		t.Fatalf("no name list in the apiKey rules %+v", n.XValidations)
	}
	list := rule[strings.Index(rule, "lowerAscii() in [")+len("lowerAscii() in ["):]
	list = list[:strings.Index(list, "]")]
	crdNames := map[string]bool{}
	for _, m := range regexp.MustCompile(`'([a-z]+)'`).FindAllStringSubmatch(list, -1) {
		crdNames[m[1]] = true
	}
	candidates := map[string]bool{"offsets": true, "publish": true}
	for name := range crdNames {
		candidates[name] = true
	}
	for k := int16(0); k <= kmsg.MaxKey; k++ {
		candidates[strings.ToLower(kmsg.NameForKey(k))] = true
	}
	accepted := 0
	for name := range candidates {
		key := intstr.FromString(name)
		spec := v1alpha1.L7PolicySpec{EndpointSelector: &metav1.LabelSelector{}}
		withL7(&spec, &v1alpha1.L7Rules{Kafka: []v1alpha1.KafkaRule{{APIKey: &key}}})
		probs := policy.ValidateL7Policy(&v1alpha1.L7Policy{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "shop"}, Spec: spec})
		ok := len(probs) == 0
		if ok {
			accepted++
		}
		if ok != crdNames[name] {
			t.Errorf("apiKey %q: policy.Validate accepts=%v, the CRD's rule lists it=%v", name, ok, crdNames[name])
		}
	}
	if accepted < 70 {
		t.Errorf("only %d names accepted; the candidates are wrong", accepted)
	}
}

// TestCRDsEmbedded checks that the package embeds the same CRDs.
func TestCRDsEmbedded(t *testing.T) {
	for _, f := range crdFiles {
		got, err := manifests.CRDs.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		want, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("embedded %s differs", f)
		}
	}
}

// TestCRDsExample decodes the examples' policies against the CRDs'
// required fields: a cheap guard that the examples use the schema's names.
func TestCRDsExample(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(repoRoot, "examples", "demo", "policy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	root := loadCRD(t, "crds/policy.palisade.dev_l7policies.yaml").Spec.Versions[0].Schema.OpenAPIV3Schema
	n := 0
	for _, doc := range yamlDocs(t, data) {
		var obj map[string]any
		if err := yaml.Unmarshal(doc, &obj); err != nil {
			t.Fatal(err)
		}
		if obj["kind"] != v1alpha1.KindL7Policy {
			continue
		}
		n++
		if errs := checkAgainstSchema(root.Properties["spec"], obj["spec"], "spec"); len(errs) > 0 {
			t.Errorf("%v: %s", obj["metadata"], strings.Join(errs, "; "))
		}
	}
	if n == 0 {
		t.Skip("no L7Policy in examples/demo/policy.yaml")
	}
}

// checkAgainstSchema checks field names, required fields, patterns and
// max sizes (not CEL).
func checkAgainstSchema(s *schema, v any, path string) []string {
	var errs []string
	switch x := v.(type) {
	case map[string]any:
		if s.Properties == nil {
			return nil // a map (matchLabels) or free-form
		}
		for k, val := range x {
			ps, ok := s.Properties[k]
			if !ok {
				errs = append(errs, path+"."+k+": unknown field")
				continue
			}
			errs = append(errs, checkAgainstSchema(ps, val, path+"."+k)...)
		}
		for _, r := range s.Required {
			if _, ok := x[r]; !ok {
				errs = append(errs, path+"."+r+": required")
			}
		}
	case []any:
		if s.MaxItems != nil && int64(len(x)) > *s.MaxItems {
			errs = append(errs, fmt.Sprintf("%s: more than %d items", path, *s.MaxItems))
		}
		for i, e := range x {
			if s.Items != nil {
				errs = append(errs, checkAgainstSchema(s.Items, e, fmt.Sprintf("%s[%d]", path, i))...)
			}
		}
	case string:
		if s.Pattern != "" && !regexp.MustCompile(s.Pattern).MatchString(x) {
			errs = append(errs, fmt.Sprintf("%s: %q does not match %s", path, x, s.Pattern))
		}
	}
	return errs
}

// TestAdmissionCasesAgreeWithValidate reads testdata/admission.yaml (the
// cases an API server test applies against the CRDs) and checks that
// policy.Validate refuses each case the CRDs refuse, with an error at or
// below the same field, and accepts the others: admission only says
// early what the agent would report.
func TestAdmissionCasesAgreeWithValidate(t *testing.T) {
	data, err := os.ReadFile("testdata/admission.yaml")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, doc := range yamlDocs(t, data) {
		var obj unstructured.Unstructured
		if err := yaml.Unmarshal(doc, &obj.Object); err != nil {
			t.Fatal(err)
		}
		n++
		want := obj.GetAnnotations()["test.palisade.dev/refused-at"]
		t.Run(obj.GetName(), func(t *testing.T) {
			var errs []string
			for _, p := range policy.Validate(&obj) {
				if p.Severity == policy.Error {
					errs = append(errs, p.Field+": "+p.Message)
				}
			}
			if want == "" {
				if len(errs) > 0 {
					t.Errorf("the CRDs accept it, policy.Validate refuses it: %v", errs)
				}
				return
			}
			for _, e := range errs {
				if strings.HasPrefix(e, want+":") || strings.HasPrefix(e, want+".") || strings.HasPrefix(e, want+"[") {
					return
				}
			}
			t.Errorf("the CRDs refuse it at %s, policy.Validate reports %v", want, errs)
		})
	}
	if n < 30 {
		t.Errorf("only %d cases", n)
	}
}
