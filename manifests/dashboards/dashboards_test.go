package dashboards

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// The dashboards this package ships.
var wantFiles = []string{"palisade-namespace.json", "palisade-workload.json"}

// allowedVars are the template variables a query may use: those
// SampleValues gives a value, as the end-to-end test does.
var allowedVars = set(slices.Collect(maps.Keys(SampleValues()))...)

func mustSpec(t *testing.T) *spec {
	t.Helper()
	s, err := loadSpec(specPath)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func loadAll(t *testing.T) map[string]*Dashboard {
	t.Helper()
	files, err := Files(".")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*Dashboard{}
	for _, f := range files {
		d, err := Load(f)
		if err != nil {
			t.Fatal(err)
		}
		out[filepath.Base(f)] = d
	}
	return out
}

// TestSpecParsed guards the spec parser: a change of the doc's layout that
// the parser misreads must not make the other tests pass vacuously.
func TestSpecParsed(t *testing.T) {
	s := mustSpec(t)
	opened := []string{"direction", "source_namespace", "source_workload", "source_principal",
		"destination_namespace", "destination_workload", "destination_principal"}
	for name, want := range map[string][]string{
		"palisade_tcp_connections_opened_total":       opened,
		"palisade_tcp_sent_bytes_total":               opened,
		"palisade_tcp_connections_revoked_total":      {},
		"palisade_l7_request_duration_seconds_bucket": {"direction", "protocol", "verdict", "destination_namespace", "destination_workload", "le"},
		"palisade_svid_expiry_seconds":                {"identity"},
		"palisade_ebpf_packets_total":                 {"pod", "direction", "verdict", "reason"},
		"palisade_hbone_handshake_duration_seconds":   {"role", "result"},
	} {
		m := s.metrics[name]
		if m == nil {
			t.Errorf("%s not found in the spec", name)
			continue
		}
		if !m.labelsKnown || !slices.Equal(m.labels, want) {
			t.Errorf("%s: labels %v (known %v), want %v", name, m.labels, m.labelsKnown, want)
		}
	}
	if m := s.metrics["palisade_svid_ready"]; m == nil || m.labelsKnown {
		t.Errorf("palisade_svid_ready: %+v, want listed without labels (the spec refers to the architecture)", m)
	}
	proxy := s.metrics["palisade_l7_requests_total"]
	if proxy == nil {
		t.Fatal("palisade_l7_requests_total not in the spec")
	}
	for label, want := range map[string][]string{
		"verdict":   {"allowed", "denied"},
		"protocol":  {"http", "grpc", "kafka"},
		"direction": {"outbound", "inbound-hbone", "inbound-plaintext"},
		"method":    nil, // open-ended
		"status":    nil,
	} {
		if got := s.allowedValues(proxy, label); !slices.Equal(got, want) {
			t.Errorf("values of %s: %v, want %v", label, got, want)
		}
	}
	if got := s.allowedValues(s.metrics["palisade_tcp_connections_failed_total"], "reason"); !slices.Contains(got, "policy-denied") || !slices.Contains(got, "strict-mode") {
		t.Errorf("values of reason: %v", got)
	}
	if got := s.allowedValues(s.metrics["palisade_ebpf_packets_total"], "reason"); got != nil {
		t.Errorf("the node proxy's reason values leak to the agent's metric: %v", got)
	}
	if got := s.allowedValues(s.metrics["palisade_hbone_handshake_duration_seconds_count"], "result"); !slices.Equal(got, []string{"ok", "error"}) {
		t.Errorf("values of result: %v", got)
	}
}

func TestDashboardFiles(t *testing.T) {
	files, err := Files(".")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range files {
		names = append(names, filepath.Base(f))
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		// json.Valid also rejects anything after the first value.
		if !json.Valid(data) {
			t.Errorf("%s is not valid JSON", f)
		}
	}
	if !slices.Equal(names, wantFiles) {
		t.Errorf("dashboards %v, want %v", names, wantFiles)
	}
}

func TestDashboardStructure(t *testing.T) {
	uids := map[string]string{}
	titles := map[string]string{}
	for file, d := range loadAll(t) {
		if d.SchemaVersion != 39 {
			t.Errorf("%s: schemaVersion %d, want 39", file, d.SchemaVersion)
		}
		if d.UID == "" || len(d.UID) > 40 {
			t.Errorf("%s: uid %q (Grafana wants 1-40 characters)", file, d.UID)
		}
		if other, dup := uids[d.UID]; dup {
			t.Errorf("%s and %s share the uid %q", file, other, d.UID)
		}
		uids[d.UID] = file
		if other, dup := titles[d.Title]; dup || d.Title == "" {
			t.Errorf("%s: title %q empty or shared with %s", file, d.Title, other)
		}
		titles[d.Title] = file
		checkVariables(t, file, d)
		ids := map[int]bool{}
		for _, p := range d.AllPanels() {
			where := fmt.Sprintf("%s: panel %d %q", file, p.ID, p.Title)
			if p.ID == 0 || ids[p.ID] {
				t.Errorf("%s: id missing or not unique", where)
			}
			ids[p.ID] = true
			if p.Title == "" {
				t.Errorf("%s: no title", where)
			}
			if g := p.GridPos; g.W <= 0 || g.H <= 0 || g.X < 0 || g.X+g.W > 24 {
				t.Errorf("%s: gridPos %+v outside the 24 columns", where, g)
			}
			if p.Type == "row" {
				if len(p.Targets) > 0 {
					t.Errorf("%s: a row with queries", where)
				}
				continue
			}
			if p.Datasource == nil || p.Datasource.Type != "prometheus" || p.Datasource.UID != "${datasource}" {
				t.Errorf("%s: datasource %+v, want the prometheus ${datasource} variable", where, p.Datasource)
			}
			if len(p.Targets) == 0 {
				t.Errorf("%s: no Prometheus target", where)
			}
			refs := map[string]bool{}
			for _, tg := range p.Targets {
				if strings.TrimSpace(tg.Expr) == "" {
					t.Errorf("%s: target %q has no expr", where, tg.RefID)
				}
				if tg.RefID == "" || refs[tg.RefID] {
					t.Errorf("%s: refId %q missing or not unique", where, tg.RefID)
				}
				refs[tg.RefID] = true
				if ds := tg.Datasource; ds != nil && (ds.Type != "prometheus" || ds.UID != "${datasource}") {
					t.Errorf("%s: target %s datasource %+v", where, tg.RefID, ds)
				}
				if p.Type == "heatmap" && tg.Format != "heatmap" {
					t.Errorf("%s: heatmap target %s has format %q, want heatmap", where, tg.RefID, tg.Format)
				}
				if strings.Contains(tg.Expr, "$__range") && !tg.Instant {
					t.Errorf("%s: target %s uses $__range in a range query; rate windows use $__rate_interval", where, tg.RefID)
				}
			}
		}
	}
}

func checkVariables(t *testing.T, file string, d *Dashboard) {
	t.Helper()
	vars := map[string]Variable{}
	for _, v := range d.Templating.List {
		vars[v.Name] = v
	}
	if v, ok := vars["datasource"]; !ok || v.Type != "datasource" || v.Query != "prometheus" {
		t.Errorf("%s: no datasource variable of type prometheus: %+v", file, v)
	}
	for _, name := range []string{"namespace", "workload"} {
		v, ok := vars[name]
		if !ok || v.Type != "query" {
			t.Errorf("%s: no query variable %s", file, name)
			continue
		}
		q, _ := json.Marshal(v.Query)
		if !strings.Contains(string(q), "label_values(palisade_l7_requests_total") {
			t.Errorf("%s: variable %s: query %s, want label_values on palisade_l7_requests_total", file, name, q)
		}
		if v.Datasource == nil || v.Datasource.UID != "${datasource}" {
			t.Errorf("%s: variable %s: datasource %+v", file, name, v.Datasource)
		}
	}
	p, ok := vars["protocol"]
	if !ok || p.Type != "custom" || p.Query != "http,grpc,kafka" || !p.Multi || !p.IncludeAll {
		t.Errorf("%s: protocol variable %+v, want custom http,grpc,kafka with multi and all", file, p)
	}
	for _, v := range d.Templating.List {
		if !allowedVars[v.Name] && v.Name != "datasource" {
			t.Errorf("%s: variable %s: the end-to-end test gives no value to it", file, v.Name)
		}
	}
}

// TestQueriesMatchSpec: every metric a query uses is in the spec, with only
// the labels the spec lists for it, in matchers and in by/on clauses.
func TestQueriesMatchSpec(t *testing.T) {
	qs, err := Queries(".")
	if err != nil {
		t.Fatal(err)
	}
	if len(qs) == 0 {
		t.Fatal("no queries")
	}
	checkQueries(t, mustSpec(t), qs)
}

func checkQueries(t *testing.T, s *spec, qs []Query) {
	t.Helper()
	for _, q := range qs {
		_, errs := checkExpr(s, q.Expr)
		for _, err := range errs {
			t.Errorf("%s: %v\n\t%s", q, err, q.Expr)
		}
		for _, v := range Variables(q.Expr) {
			if !allowedVars[v] {
				t.Errorf("%s: unknown variable $%s", q, v)
			}
		}
	}
}

// TestSpecRenameFails: a metric renamed in the spec fails the dashboards.
func TestSpecRenameFails(t *testing.T) {
	data, err := os.ReadFile(specPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, rename := range [][2]string{
		{"`palisade_l7_requests_total`", "`palisade_l7_request_total`"},
		{"`palisade_l7_request_duration_seconds`", "`palisade_l7_duration_seconds`"},
		{"`destination_workload`, `destination_principal`", "`destination_app`, `destination_principal`"},
	} {
		changed := strings.Replace(string(data), rename[0], rename[1], 1)
		if changed == string(data) {
			t.Fatalf("%s not in the spec", rename[0])
		}
		path := filepath.Join(t.TempDir(), "observability.md")
		if err := os.WriteFile(path, []byte(changed), 0o644); err != nil {
			t.Fatal(err)
		}
		s, err := loadSpec(path)
		if err != nil {
			t.Fatal(err)
		}
		qs, err := Queries(".")
		if err != nil {
			t.Fatal(err)
		}
		failed := 0
		for _, q := range qs {
			if _, errs := checkExpr(s, q.Expr); len(errs) > 0 {
				failed++
			}
		}
		if failed == 0 {
			t.Errorf("spec with %s renamed to %s: every query still passes", rename[0], rename[1])
		}
	}
}

// TestChecker: the checker accepts what the dashboards may write and
// rejects the mistakes it is there for.
func TestChecker(t *testing.T) {
	s := mustSpec(t)
	good := []string{
		`sum by (protocol, verdict) (rate(palisade_l7_requests_total{destination_namespace=~"$namespace", protocol=~"$protocol"}[$__rate_interval]))`,
		`histogram_quantile(0.99, sum by (le) (rate(palisade_l7_request_duration_seconds_bucket{verdict="denied"}[$__rate_interval])))`,
		`sum(rate(palisade_tcp_sent_bytes_total{direction=~"inbound-hbone|inbound-plaintext"}[$__rate_interval])) by (destination_workload)`,
		`sum by (reason) (rate(palisade_tcp_connections_failed_total{reason="policy-denied"}[$__rate_interval])) / on(reason) group_left sum by (reason) (rate(palisade_tcp_connections_failed_total[$__rate_interval]))`,
		`sum(increase(palisade_l7_requests_total{verdict="denied"}[$__range]))`,
		`palisade_tcp_connections_revoked_total`,
		`rate(palisade_hbone_handshake_duration_seconds_count{result="ok", role="client"}[$__rate_interval])`,
	}
	for _, e := range good {
		if _, errs := checkExpr(s, e); len(errs) > 0 {
			t.Errorf("%s: %v", e, errs)
		}
	}
	bad := map[string]string{
		`rate(palisade_l7_request_total[$__rate_interval])`:                                       "not in the spec",
		`rate(palisade_l7_requests_total{pod="x"}[$__rate_interval])`:                             `no label "pod"`,
		`sum by (pod) (rate(palisade_l7_requests_total[$__rate_interval]))`:                       `no label "pod"`,
		`sum(rate(palisade_l7_requests_total[$__rate_interval])) without (instance)`:              `no label "instance"`,
		`sum by (le) (rate(palisade_l7_request_duration_seconds_count[$__rate_interval]))`:        `no label "le"`,
		`rate(palisade_l7_requests_total{verdict="deny"}[$__rate_interval])`:                      "values of verdict",
		`rate(palisade_l7_requests_total{protocol=~"http|amqp"}[$__rate_interval])`:               "values of protocol",
		`rate(palisade_tcp_connections_failed_total{reason="denied"}[$__rate_interval])`:          "values of reason",
		`rate(palisade_hbone_handshake_duration_seconds_count{role="peer"}[$__rate_interval])`:    "values of role",
		`rate(palisade_l7_requests_total[5m])`:                                                    "$__rate_interval",
		`palisade_svid_ready{identity="x"}`:                                                       "lists no labels",
		`label_replace(palisade_workloads, "a", "$1", "b", "(.*)")`:                               "not supported",
		`rate(palisade_l7_requests_total{protocol=~"(http"}[$__rate_interval])`:                   "bad regex",
		`sum by (protocol) (rate(palisade_tcp_connections_opened_total[$__rate_interval]))`:       `no label "protocol"`,
		`rate(palisade_tcp_received_bytes_total{destination_namespace=$namespace}[1m])`:           "malformed",
		`sum(rate({__name__="palisade_l7_requests_total"}[$__rate_interval]))`:                    "without a metric name",
		`palisade_l7_requests_total offset 5m`:                                                    "offset",
		`sum by (verdict) (rate(palisade_tcp_connections_closed_total[$__rate_interval]))`:        `no label "verdict"`,
		`sum by (le) (rate(palisade_ebpf_packets_total{verdict="drop"}[$__rate_interval])) > 0.5`: `no label "le"`,
	}
	for e, want := range bad {
		_, errs := checkExpr(s, e)
		if len(errs) == 0 {
			t.Errorf("%s: accepted, want an error containing %q", e, want)
			continue
		}
		if msg := fmt.Sprint(errs); !strings.Contains(msg, want) {
			t.Errorf("%s: %s, want an error containing %q", e, msg, want)
		}
	}
}

// TestDashboardCoverage: each dashboard has the panels it was made for.
func TestDashboardCoverage(t *testing.T) {
	s := mustSpec(t)
	type need struct {
		what string
		ok   func(p Panel, tg Target, info *exprInfo) bool
	}
	uses := func(metric string) func(Panel, Target, *exprInfo) bool {
		return func(_ Panel, _ Target, info *exprInfo) bool { return slices.Contains(info.metrics, metric) }
	}
	groupsBy := func(metric string, labels ...string) func(Panel, Target, *exprInfo) bool {
		return func(_ Panel, _ Target, info *exprInfo) bool {
			if !slices.Contains(info.metrics, metric) {
				return false
			}
			for _, g := range info.groupings {
				if containsAll(g, labels) {
					return true
				}
			}
			return false
		}
	}
	needs := []need{
		{"L7 request rate", uses("palisade_l7_requests_total")},
		{"L7 verdicts", groupsBy("palisade_l7_requests_total", "verdict")},
		{"L7 status breakdown", groupsBy("palisade_l7_requests_total", "status")},
		{"L7 method/API breakdown", groupsBy("palisade_l7_requests_total", "method")},
		{"denied requests by policy and rule (table)", func(p Panel, tg Target, info *exprInfo) bool {
			return p.Type == "table" && tg.Instant && tg.Format == "table" &&
				slices.Contains(info.matchers["palisade_l7_requests_total"], `verdict=denied`) &&
				groupsBy("palisade_l7_requests_total", "policy", "rule")(p, tg, info)
		}},
		{"denied connections", uses("palisade_tcp_connections_failed_total")},
		{"latency heatmap", func(p Panel, tg Target, info *exprInfo) bool {
			return p.Type == "heatmap" && tg.Format == "heatmap" && groupsBy("palisade_l7_request_duration_seconds_bucket", "le")(p, tg, info)
		}},
		{"latency p50", func(p Panel, tg Target, info *exprInfo) bool {
			return strings.HasPrefix(tg.Expr, "histogram_quantile(0.5,") && uses("palisade_l7_request_duration_seconds_bucket")(p, tg, info)
		}},
		{"latency p99", func(p Panel, tg Target, info *exprInfo) bool {
			return strings.HasPrefix(tg.Expr, "histogram_quantile(0.99,") && uses("palisade_l7_request_duration_seconds_bucket")(p, tg, info)
		}},
		{"TCP bytes sent", uses("palisade_tcp_sent_bytes_total")},
		{"TCP bytes received", uses("palisade_tcp_received_bytes_total")},
		{"eBPF drops", func(_ Panel, _ Target, info *exprInfo) bool {
			return slices.Contains(info.matchers["palisade_ebpf_packets_total"], "verdict=drop")
		}},
		{"SVID expiry", uses("palisade_svid_expiry_seconds")},
	}
	for file, d := range loadAll(t) {
		found := make([]bool, len(needs))
		for _, p := range d.AllPanels() {
			for _, tg := range p.Targets {
				info, errs := checkExpr(s, tg.Expr)
				if len(errs) > 0 {
					continue // TestQueriesMatchSpec reports them
				}
				for i, n := range needs {
					found[i] = found[i] || n.ok(p, tg, info)
				}
				// Every L7 query follows the protocol selection.
				for _, m := range info.metrics {
					if strings.HasPrefix(m, "palisade_l7_") && !slices.Contains(info.matchers[m], "protocol=~$protocol") {
						t.Errorf("%s: panel %q: %s without protocol=~\"$protocol\"", file, p.Title, m)
					}
				}
				// Every workload-labelled selector follows the namespace selection.
				for m, ms := range info.matchers {
					if sm := s.metrics[m]; sm != nil && slices.Contains(sm.labels, "destination_namespace") && !hasPrefixAny(ms, "destination_namespace=~$namespace", "source_namespace=~$namespace") {
						t.Errorf("%s: panel %q: %s without a namespace matcher", file, p.Title, m)
					}
				}
			}
		}
		for i, n := range needs {
			if !found[i] {
				t.Errorf("%s: no panel for %s", file, n.what)
			}
		}
	}
}

func containsAll(have, want []string) bool {
	for _, w := range want {
		if !slices.Contains(have, w) {
			return false
		}
	}
	return true
}

func hasPrefixAny(xs []string, prefixes ...string) bool {
	for _, x := range xs {
		for _, p := range prefixes {
			if strings.HasPrefix(x, p) {
				return true
			}
		}
	}
	return false
}

// missing skips outside CI and fails in CI, where make installs the tools.
func missing(t *testing.T, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip(msg + " (skipped outside CI)")
}

// TestPromtoolAcceptsQueries has promtool parse every query (variables
// expanded) as a recording rule: PromQL syntax, offline.
func TestPromtoolAcceptsQueries(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		missing(t, "promtool not found (Debian package prometheus: make prometheus)")
	}
	qs, err := Queries(".")
	if err != nil {
		t.Fatal(err)
	}
	values := SampleValues()
	type rule struct {
		Record string `json:"record"`
		Expr   string `json:"expr"`
	}
	var rules []rule
	for i, q := range qs {
		e, err := Expand(q.Expr, values)
		if err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		rules = append(rules, rule{Record: fmt.Sprintf("dashboard:query_%d", i), Expr: e})
	}
	data, err := yaml.Marshal(map[string]any{"groups": []any{map[string]any{"name": "dashboards", "rules": rules}}})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "rules.yaml")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(promtool, "check", "rules", path).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), fmt.Sprintf("%d rules found", len(rules))) {
		t.Errorf("promtool check rules: %s, want %d rules", out, len(rules))
	}
}

// kustomization is the part of kustomization.yaml the tests read.
type kustomization struct {
	Resources          []string `json:"resources"`
	ConfigMapGenerator []struct {
		Name    string   `json:"name"`
		Files   []string `json:"files"`
		Options struct {
			Labels                map[string]string `json:"labels"`
			DisableNameSuffixHash bool              `json:"disableNameSuffixHash"`
		} `json:"options"`
	} `json:"configMapGenerator"`
}

// TestKustomization: the ConfigMap generator ships every dashboard with
// the label Grafana's sidecar looks for, and the main kustomization leaves
// the dashboards out.
func TestKustomization(t *testing.T) {
	data, err := os.ReadFile("kustomization.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var k kustomization
	if err := yaml.Unmarshal(data, &k); err != nil {
		t.Fatal(err)
	}
	if len(k.ConfigMapGenerator) != 1 {
		t.Fatalf("configMapGenerator: %d entries, want 1", len(k.ConfigMapGenerator))
	}
	g := k.ConfigMapGenerator[0]
	files := slices.Clone(g.Files)
	sort.Strings(files)
	if !slices.Equal(files, wantFiles) {
		t.Errorf("configMapGenerator files %v, want %v", g.Files, wantFiles)
	}
	if g.Options.Labels["grafana_dashboard"] != "1" {
		t.Errorf("configMapGenerator labels %v, want grafana_dashboard: \"1\"", g.Options.Labels)
	}
	if !g.Options.DisableNameSuffixHash {
		t.Error("configMapGenerator without disableNameSuffixHash: every change would leave the old ConfigMap (and a duplicate dashboard) behind")
	}
	main, err := os.ReadFile("../kustomization.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(main), "dashboards") {
		t.Error("manifests/kustomization.yaml refers to the dashboards; they are applied on their own")
	}
}

// TestKustomizeBuild has kubectl's kustomize build the ConfigMap.
func TestKustomizeBuild(t *testing.T) {
	kubectl := findKubectl()
	if kubectl == "" {
		missing(t, "kubectl not found in $PALISADE_TEST_BIN, .cache/test-bin or $PATH: run make kube")
	}
	out, err := exec.Command(kubectl, "kustomize", ".").Output()
	if err != nil {
		t.Fatalf("kubectl kustomize: %v", err)
	}
	var cm corev1.ConfigMap
	if err := yaml.UnmarshalStrict(out, &cm); err != nil {
		t.Fatalf("kubectl kustomize output is not one ConfigMap: %v\n%s", err, out)
	}
	if cm.Kind != "ConfigMap" || cm.Labels["grafana_dashboard"] != "1" {
		t.Errorf("built %s %s with labels %v", cm.Kind, cm.Name, cm.Labels)
	}
	var keys []string
	for k, v := range cm.Data {
		keys = append(keys, k)
		want, err := os.ReadFile(k)
		if err != nil {
			t.Errorf("ConfigMap key %s: %v", k, err)
		} else if v != string(want) {
			t.Errorf("ConfigMap key %s differs from the file", k)
		}
	}
	sort.Strings(keys)
	if !slices.Equal(keys, wantFiles) {
		t.Errorf("ConfigMap keys %v, want %v", keys, wantFiles)
	}
}

func findKubectl() string {
	for _, d := range []string{os.Getenv("PALISADE_TEST_BIN"), filepath.Join("..", "..", ".cache", "test-bin")} {
		if d == "" {
			continue
		}
		if p, err := filepath.Abs(filepath.Join(d, "kubectl")); err == nil {
			if st, err := os.Stat(p); err == nil && !st.IsDir() {
				return p
			}
		}
	}
	p, _ := exec.LookPath("kubectl")
	return p
}
