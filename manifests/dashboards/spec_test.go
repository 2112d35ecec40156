package dashboards

import (
	"fmt"
	"maps"
	"os"
	"regexp"
	"slices"
	"strings"
)

// specPath is docs/observability.md, seen from this package's directory.
const specPath = "../../docs/observability.md"

// specMetric is one metric of the spec's tables.
type specMetric struct {
	name    string
	section string // "Node proxy (`:15020`)", "Agent (`:15022`)"
	typ     string
	// labels are the label names the spec lists; labelsKnown is false when
	// the row lists none but refers elsewhere ("see the ... section").
	labels      []string
	labelsKnown bool
	// values are label values the row enumerates: `role` (`client`, `server`).
	values map[string][]string
}

// spec is what the tests know of docs/observability.md.
type spec struct {
	metrics map[string]*specMetric
	// values are the label values the "Label values" lists of a section
	// enumerate, for labels whose entry is nothing but a list of values.
	values map[string]map[string][]string
}

var (
	backticked = regexp.MustCompile("`([^`]*)`")
	metricName = regexp.MustCompile(`^palisade_[a-z0-9_]+$`)
	parens     = regexp.MustCompile(`\([^()]*\)`)
	inlineVals = regexp.MustCompile("`([a-z_]+)` \\(([^()]*)\\)")
	sameAs     = regexp.MustCompile(`^same as ([a-z_]+)`)
	enumRest   = regexp.MustCompile("^(\\s|,|\\.|and|or|`[^`]*`)*$")
)

// loadSpec parses the metric tables and label value lists of the spec.
func loadSpec(path string) (*spec, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	s := &spec{metrics: map[string]*specMetric{}, values: map[string]map[string][]string{}}
	section := ""
	inMetrics := false
	var bullets []string
	lines := strings.Split(string(data), "\n")
	for i := 0; i < len(lines); i++ {
		line := lines[i]
		switch {
		case strings.HasPrefix(line, "## "):
			inMetrics = strings.TrimSpace(line) == "## Metrics"
			section = ""
			continue
		case strings.HasPrefix(line, "### "):
			section = strings.TrimSpace(strings.TrimPrefix(line, "### "))
			continue
		}
		if !inMetrics || section == "" {
			continue
		}
		if strings.HasPrefix(line, "|") {
			if err := s.addRow(section, line); err != nil {
				return nil, fmt.Errorf("%s:%d: %w", path, i+1, err)
			}
			continue
		}
		if strings.HasPrefix(line, "- ") {
			b := strings.TrimPrefix(line, "- ")
			for i+1 < len(lines) && strings.HasPrefix(lines[i+1], "  ") {
				i++
				b += " " + strings.TrimSpace(lines[i])
			}
			bullets = append(bullets, section+"\x00"+b)
		}
	}
	for _, sb := range bullets {
		sec, b, _ := strings.Cut(sb, "\x00")
		s.addValues(sec, b)
	}
	// Histograms are exposed as _bucket (with le), _sum and _count.
	for _, m := range slices.Collect(maps.Values(s.metrics)) {
		if m.typ != "histogram" {
			continue
		}
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			c := *m
			c.name = m.name + suffix
			c.typ = "counter"
			c.labels = slices.Clone(m.labels)
			if suffix == "_bucket" {
				c.labels = append(c.labels, "le")
			}
			s.metrics[c.name] = &c
		}
	}
	if len(s.metrics) == 0 {
		return nil, fmt.Errorf("%s: no metric tables found under \"## Metrics\"", path)
	}
	return s, nil
}

// addRow adds one table row: | `name`[, `name`…] | type | labels |.
func (s *spec) addRow(section, line string) error {
	cells := strings.Split(strings.Trim(strings.TrimSpace(line), "|"), "|")
	if len(cells) != 3 {
		return fmt.Errorf("table row with %d cells, want 3: %s", len(cells), line)
	}
	for i := range cells {
		cells[i] = strings.TrimSpace(cells[i])
	}
	if cells[0] == "metric" || strings.HasPrefix(cells[0], "---") {
		return nil
	}
	var names []string
	for _, m := range backticked.FindAllStringSubmatch(cells[0], -1) {
		if !metricName.MatchString(m[1]) {
			return fmt.Errorf("%q is not a metric name", m[1])
		}
		names = append(names, m[1])
	}
	if len(names) == 0 {
		return fmt.Errorf("no metric name in %q", cells[0])
	}
	labels, known, values, err := s.parseLabels(section, cells[2])
	if err != nil {
		return fmt.Errorf("%s: %w", names[0], err)
	}
	for _, n := range names {
		if _, dup := s.metrics[n]; dup {
			return fmt.Errorf("metric %s listed twice", n)
		}
		s.metrics[n] = &specMetric{name: n, section: section, typ: cells[1], labels: labels, labelsKnown: known, values: values}
	}
	return nil
}

// parseLabels reads a labels cell: "—" (none), "same as opened", or
// backticked label names, each optionally followed by a parenthesis that
// may enumerate its values.
func (s *spec) parseLabels(section, cell string) (labels []string, known bool, values map[string][]string, err error) {
	switch {
	case cell == "":
		return nil, false, nil, nil
	case strings.HasPrefix(cell, "—"):
		return []string{}, true, nil, nil
	}
	if m := sameAs.FindStringSubmatch(cell); m != nil {
		var found *specMetric
		for _, o := range s.metrics {
			if o.section == section && strings.Contains(o.name, "_"+m[1]+"_") {
				if found != nil {
					return nil, false, nil, fmt.Errorf("%q names more than one metric", m[0])
				}
				found = o
			}
		}
		if found == nil {
			return nil, false, nil, fmt.Errorf("%q names no metric above it", m[0])
		}
		return slices.Clone(found.labels), found.labelsKnown, found.values, nil
	}
	for _, m := range inlineVals.FindAllStringSubmatch(cell, -1) {
		var vs []string
		for _, v := range backticked.FindAllStringSubmatch(m[2], -1) {
			vs = append(vs, v[1])
		}
		if len(vs) > 0 {
			if values == nil {
				values = map[string][]string{}
			}
			values[m[1]] = vs
		}
	}
	for _, m := range backticked.FindAllStringSubmatch(stripParens(cell), -1) {
		labels = append(labels, m[1])
	}
	if len(labels) == 0 {
		// "see the identity section of the architecture": names, no labels.
		return nil, false, nil, nil
	}
	return labels, true, values, nil
}

// addValues reads an entry of the "Label values" list: "`label`[, `label`]
// (remark): values". Only entries whose values part is nothing but
// backticked values (and remarks in parentheses) are enumerations.
func (s *spec) addValues(section, b string) {
	colon := indexOutside(b, ':')
	if colon < 0 {
		return
	}
	head, rest := stripParens(b[:colon]), stripParens(b[colon+1:])
	if !enumRest.MatchString(rest) {
		return
	}
	var vs []string
	for _, m := range backticked.FindAllStringSubmatch(rest, -1) {
		vs = append(vs, m[1])
	}
	if len(vs) == 0 {
		return
	}
	if s.values[section] == nil {
		s.values[section] = map[string][]string{}
	}
	for _, m := range backticked.FindAllStringSubmatch(head, -1) {
		s.values[section][m[1]] = vs
	}
}

// stripParens removes parenthesised remarks.
func stripParens(s string) string {
	for {
		t := parens.ReplaceAllString(s, "")
		if t == s {
			return t
		}
		s = t
	}
}

// indexOutside returns the index of the first c outside backticks and
// parentheses, or -1.
func indexOutside(s string, c byte) int {
	depth, tick := 0, false
	for i := 0; i < len(s); i++ {
		switch {
		case s[i] == '`':
			tick = !tick
		case tick:
		case s[i] == '(':
			depth++
		case s[i] == ')':
			depth--
		case s[i] == c && depth == 0:
			return i
		}
	}
	return -1
}

// allowedValues returns the values the spec enumerates for the metric's
// label, or nil when it does not enumerate them.
func (s *spec) allowedValues(m *specMetric, label string) []string {
	if vs := m.values[label]; vs != nil {
		return vs
	}
	return s.values[m.section][label]
}
