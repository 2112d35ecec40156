package dashboards

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
)

// Query is one Prometheus query of a dashboard panel, as written in the
// dashboard (with Grafana's template variables).
type Query struct {
	// File is the dashboard's file name (palisade-namespace.json).
	File string
	// Panel is the panel's title, RefID the target's letter in it.
	Panel string
	RefID string
	// Expr is the PromQL expression.
	Expr string
}

func (q Query) String() string {
	return fmt.Sprintf("%s / %q / %s", q.File, q.Panel, q.RefID)
}

// Dashboard is the part of a Grafana dashboard the tests read.
type Dashboard struct {
	UID           string `json:"uid"`
	Title         string `json:"title"`
	SchemaVersion int    `json:"schemaVersion"`
	Panels        []Panel
	Templating    struct {
		List []Variable `json:"list"`
	} `json:"templating"`
}

// Panel is a dashboard panel; a row holds its panels in Panels when it is
// collapsed.
type Panel struct {
	ID         int         `json:"id"`
	Type       string      `json:"type"`
	Title      string      `json:"title"`
	Datasource *Datasource `json:"datasource"`
	Targets    []Target    `json:"targets"`
	GridPos    struct {
		X, Y, W, H int
	} `json:"gridPos"`
	Panels []Panel `json:"panels"`
}

// Target is one query of a panel.
type Target struct {
	RefID      string      `json:"refId"`
	Expr       string      `json:"expr"`
	Format     string      `json:"format"`
	Instant    bool        `json:"instant"`
	Datasource *Datasource `json:"datasource"`
}

// Datasource is a panel's or target's data source reference.
type Datasource struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

// Variable is a template variable.
type Variable struct {
	Name       string      `json:"name"`
	Type       string      `json:"type"`
	Query      any         `json:"query"`
	Datasource *Datasource `json:"datasource"`
	Multi      bool        `json:"multi"`
	IncludeAll bool        `json:"includeAll"`
}

// SampleValues returns a value for each template variable a dashboard
// query may use (the dashboards' own variables and the Grafana interval
// variables they use), for expanding queries with Expand outside Grafana:
// the namespace "shop" (the end-to-end test's), every workload (".*"), the
// protocols http and grpc (a multi-value selection, as Grafana's regex
// "http|grpc"), and fixed intervals. A query may use no other variable
// (the tests check it). The map is new on each call; callers may override
// entries, as the end-to-end test does with protocol, one protocol at a
// time.
func SampleValues() map[string]string {
	return map[string]string{
		"namespace":       "shop",
		"workload":        ".*",
		"protocol":        "http|grpc",
		"__rate_interval": "1m",
		"__range":         "1h",
		"__interval":      "15s",
	}
}

// Files returns the dashboards' paths in dir (every *.json), sorted.
func Files(dir string) ([]string, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil {
		return nil, err
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("no dashboards (*.json) in %s", dir)
	}
	sort.Strings(files)
	return files, nil
}

// Load reads one dashboard file.
func Load(path string) (*Dashboard, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var d Dashboard
	if err := json.Unmarshal(data, &d); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &d, nil
}

// AllPanels returns the dashboard's panels in order, the panels of
// collapsed rows after their row.
func (d *Dashboard) AllPanels() []Panel {
	var out []Panel
	for _, p := range d.Panels {
		out = append(out, p)
		out = append(out, p.Panels...)
	}
	return out
}

// Queries returns every Prometheus query of every dashboard in dir, in the
// order of the files and their panels.
func Queries(dir string) ([]Query, error) {
	files, err := Files(dir)
	if err != nil {
		return nil, err
	}
	var out []Query
	for _, f := range files {
		d, err := Load(f)
		if err != nil {
			return nil, err
		}
		for _, p := range d.AllPanels() {
			for _, t := range p.Targets {
				out = append(out, Query{File: filepath.Base(f), Panel: p.Title, RefID: t.RefID, Expr: t.Expr})
			}
		}
	}
	return out, nil
}

// Variables returns the names of the template variables expr uses ($name
// or ${name}), sorted, without duplicates.
func Variables(expr string) []string {
	var out []string
	for i := 0; i < len(expr); i++ {
		if expr[i] != '$' {
			continue
		}
		name, _, ok := variableAt(expr, i)
		if ok && !slices.Contains(out, name) {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}

// Expand replaces the template variables of expr ($name, ${name}) by their
// values, as Grafana does before it sends a query. A variable without a
// value is an error. "$" followed by a digit (a regex group reference) is
// left alone.
func Expand(expr string, values map[string]string) (string, error) {
	var b strings.Builder
	var missing []string
	for i := 0; i < len(expr); i++ {
		if expr[i] != '$' {
			b.WriteByte(expr[i])
			continue
		}
		name, end, ok := variableAt(expr, i)
		if !ok {
			b.WriteByte(expr[i])
			continue
		}
		v, found := values[name]
		if !found {
			missing = append(missing, name)
		}
		b.WriteString(v)
		i = end - 1
	}
	if len(missing) > 0 {
		return "", fmt.Errorf("no value for the variables %v of %s", missing, expr)
	}
	return b.String(), nil
}

// variableAt parses a variable reference at expr[i] == '$': its name and
// the index just past it.
func variableAt(expr string, i int) (name string, end int, ok bool) {
	j := i + 1
	braced := j < len(expr) && expr[j] == '{'
	if braced {
		j++
	}
	start := j
	for j < len(expr) && isIdentByte(expr[j], j == start) {
		j++
	}
	if j == start {
		return "", 0, false
	}
	name = expr[start:j]
	if braced {
		if j >= len(expr) || expr[j] != '}' {
			return "", 0, false
		}
		j++
	}
	return name, j, true
}

func isIdentByte(c byte, first bool) bool {
	switch {
	case c == '_', c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z':
		return true
	case c >= '0' && c <= '9':
		return !first
	}
	return false
}
