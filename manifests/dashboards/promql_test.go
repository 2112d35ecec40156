package dashboards

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
)

// A small PromQL reader, enough to check the dashboards' queries against the
// spec without Prometheus' parser (not a dependency of this module): it
// finds every metric selector and its label matchers, the labels of
// by/without and on/ignoring clauses with the metrics they apply to, and
// the range of every range vector. It accepts the subset the dashboards
// use and rejects what it cannot check (label_replace, offset, subqueries).

type tokKind int

const (
	tIdent tokKind = iota
	tString
	tNumber
	tDuration
	tVar
	tPunct
	tOp
)

type token struct {
	kind tokKind
	text string // strings unquoted, variables without "$"
}

func lex(expr string) ([]token, error) {
	var toks []token
	for i := 0; i < len(expr); {
		c := expr[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			i++
		case c == '$':
			name, end, ok := variableAt(expr, i)
			if !ok {
				return nil, fmt.Errorf("stray $ at %d", i)
			}
			toks = append(toks, token{tVar, name})
			i = end
		case c == '_' || c == ':' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z':
			j := i + 1
			for j < len(expr) && (isIdentByte(expr[j], false) || expr[j] == ':') {
				j++
			}
			toks = append(toks, token{tIdent, expr[i:j]})
			i = j
		case c >= '0' && c <= '9' || c == '.' && i+1 < len(expr) && expr[i+1] >= '0' && expr[i+1] <= '9':
			j := i
			for j < len(expr) && (expr[j] >= '0' && expr[j] <= '9' || expr[j] == '.') {
				j++
			}
			if j < len(expr) && (expr[j] == 'e' || expr[j] == 'E') && j+1 < len(expr) && strings.ContainsRune("+-0123456789", rune(expr[j+1])) {
				j += 2
				for j < len(expr) && expr[j] >= '0' && expr[j] <= '9' {
					j++
				}
			}
			kind := tNumber
			if j < len(expr) && strings.ContainsRune("smhdwy", rune(expr[j])) {
				kind = tDuration
				for j < len(expr) && (strings.ContainsRune("smhdwy", rune(expr[j])) || expr[j] >= '0' && expr[j] <= '9') {
					j++
				}
			}
			toks = append(toks, token{kind, expr[i:j]})
			i = j
		case c == '"' || c == '\'' || c == '`':
			var b strings.Builder
			j := i + 1
			for ; j < len(expr) && expr[j] != c; j++ {
				if expr[j] == '\\' && c != '`' && j+1 < len(expr) {
					j++
				}
				b.WriteByte(expr[j])
			}
			if j >= len(expr) {
				return nil, fmt.Errorf("unterminated string at %d", i)
			}
			toks = append(toks, token{tString, b.String()})
			i = j + 1
		case strings.ContainsRune("(){}[],", rune(c)):
			toks = append(toks, token{tPunct, string(c)})
			i++
		default:
			op := ""
			for _, o := range []string{"=~", "!~", "!=", "==", ">=", "<=", "=", ">", "<", "+", "-", "*", "/", "%", "^"} {
				if strings.HasPrefix(expr[i:], o) {
					op = o
					break
				}
			}
			if op == "" {
				return nil, fmt.Errorf("unexpected %q at %d", c, i)
			}
			toks = append(toks, token{tOp, op})
			i += len(op)
		}
	}
	return toks, nil
}

var (
	aggregations = set("sum", "min", "max", "avg", "count", "group", "stddev", "stdvar", "topk", "bottomk", "quantile")
	// functions the checker understands: none of them adds or renames labels.
	functions = set("rate", "increase", "irate", "delta", "idelta", "deriv", "histogram_quantile", "abs", "ceil",
		"floor", "round", "clamp", "clamp_min", "clamp_max", "sort", "sort_desc", "avg_over_time", "min_over_time",
		"max_over_time", "sum_over_time", "last_over_time", "changes", "resets", "absent", "scalar", "vector", "time")
	binaryKeywords = set("and", "or", "unless", "bool")
	matchingKws    = set("on", "ignoring", "group_left", "group_right")
	// rangeVars are the only ranges the dashboards may use.
	rangeVars = set("__rate_interval", "__range")
	// simpleAlternation is a regex matcher value that is a list of literals.
	simpleAlternation = regexp.MustCompile(`^[A-Za-z0-9_.-]+(\|[A-Za-z0-9_.-]+)*$`)
)

func set(xs ...string) map[string]bool {
	m := map[string]bool{}
	for _, x := range xs {
		m[x] = true
	}
	return m
}

// exprInfo is what checkExpr learnt of an expression.
type exprInfo struct {
	metrics []string
	// matchers are label="value" of every selector, by metric.
	matchers map[string][]string
	// groupings are the labels of by() clauses.
	groupings [][]string
}

type frame struct {
	metrics []string
	group   []string // labels of a by/without clause written before "("
}

// checkExpr checks expr against the spec and returns every problem found.
func checkExpr(s *spec, expr string) (*exprInfo, []error) {
	info := &exprInfo{matchers: map[string][]string{}}
	toks, err := lex(expr)
	if err != nil {
		return info, []error{err}
	}
	var errs []error
	fail := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	at := func(i int) token {
		if i < len(toks) {
			return toks[i]
		}
		return token{kind: tPunct, text: "<end>"}
	}
	is := func(i int, kind tokKind, text string) bool { t := at(i); return t.kind == kind && t.text == text }
	// labelList reads "( a, b, … )" at i, returning the labels and the
	// index of ")".
	labelList := func(i int) ([]string, int) {
		if !is(i, tPunct, "(") {
			fail("want a label list at %q", at(i).text)
			return nil, i
		}
		var out []string
		for i++; i < len(toks) && !is(i, tPunct, ")"); i++ {
			switch t := at(i); {
			case t.kind == tIdent:
				out = append(out, t.text)
			case is(i, tPunct, ","):
			default:
				fail("unexpected %q in a label list", t.text)
			}
		}
		return out, i
	}
	labelsOf := func(metrics []string) []string {
		var out []string
		for _, n := range metrics {
			if m := s.metrics[n]; m != nil {
				out = append(out, m.labels...)
			}
		}
		return out
	}
	checkGrouping := func(labels, metrics []string, clause string) {
		if len(metrics) == 0 {
			fail("%s(%s) applies to no metric", clause, strings.Join(labels, ", "))
			return
		}
		have := labelsOf(metrics)
		for _, l := range labels {
			if !slices.Contains(have, l) {
				fail("%s(%s): the spec lists no label %q for %s", clause, strings.Join(labels, ", "), l, strings.Join(metrics, ", "))
			}
		}
		info.groupings = append(info.groupings, labels)
	}
	stack := []*frame{{}}
	var lastClosed *frame
	var pending []string
	pendingSet := false
	var matching [][]string
	for i := 0; i < len(toks); i++ {
		t := toks[i]
		top := stack[len(stack)-1]
		switch t.kind {
		case tIdent:
			switch {
			case aggregations[t.text]:
				if is(i+1, tIdent, "by") || is(i+1, tIdent, "without") {
					pending, i = labelList(i + 2)
					pendingSet = true
					if at(i+1).kind != tPunct || at(i+1).text != "(" {
						fail("%s by (…) without its argument", t.text)
					}
				} else if !is(i+1, tPunct, "(") {
					fail("aggregation %s without its argument", t.text)
				}
			case t.text == "by" || t.text == "without":
				labels, j := labelList(i + 1)
				if i == 0 || !is(i-1, tPunct, ")") || lastClosed == nil {
					fail("%s (…) not after an aggregation", t.text)
				} else {
					checkGrouping(labels, lastClosed.metrics, t.text)
				}
				i = j
			case matchingKws[t.text]:
				if is(i+1, tPunct, "(") {
					var labels []string
					labels, i = labelList(i + 1)
					matching = append(matching, labels)
				}
			case binaryKeywords[t.text]:
			case t.text == "offset" || t.text == "atan2":
				fail("%s is not supported by the dashboard checker", t.text)
			case is(i+1, tPunct, "("):
				if !functions[t.text] {
					fail("function %s is not supported by the dashboard checker (it may add or rename labels)", t.text)
				}
			default:
				i = checkSelector(s, toks, i, info, fail)
				top.metrics = append(top.metrics, t.text)
			}
		case tPunct:
			switch t.text {
			case "(":
				f := &frame{}
				if pendingSet {
					f.group, pending, pendingSet = pending, nil, false
					if f.group == nil {
						f.group = []string{}
					}
				}
				stack = append(stack, f)
			case ")":
				if len(stack) == 1 {
					fail("unbalanced )")
					continue
				}
				stack = stack[:len(stack)-1]
				if top.group != nil {
					checkGrouping(top.group, top.metrics, "by")
				}
				parent := stack[len(stack)-1]
				parent.metrics = append(parent.metrics, top.metrics...)
				lastClosed = top
			case "[":
				if at(i+1).kind != tVar || !rangeVars[at(i+1).text] || !is(i+2, tPunct, "]") {
					fail("range [%s…]: use [$__rate_interval] (or [$__range] in instant tables)", at(i+1).text)
				}
				for i < len(toks) && !is(i, tPunct, "]") {
					i++
				}
			case "{":
				fail("a selector without a metric name")
			case ",", "]", "}":
			}
		case tVar:
			fail("variable $%s outside a label value or range", t.text)
		case tString, tNumber, tOp, tDuration:
		}
	}
	if len(stack) != 1 {
		fail("unbalanced (")
	}
	if pendingSet {
		fail("by (…) without an aggregation argument")
	}
	info.metrics = stack[0].metrics
	for _, labels := range matching {
		checkGrouping(labels, info.metrics, "on")
	}
	if len(info.metrics) == 0 {
		fail("no metric in the expression")
	}
	return info, errs
}

// checkSelector checks the metric name at toks[i] and its matchers, and
// returns the index of its last token.
func checkSelector(s *spec, toks []token, i int, info *exprInfo, fail func(string, ...any)) int {
	name := toks[i].text
	m := s.metrics[name]
	if m == nil {
		fail("metric %s is not in the spec (docs/observability.md)", name)
	}
	if i+1 >= len(toks) || toks[i+1].kind != tPunct || toks[i+1].text != "{" {
		return i
	}
	j := i + 2
	for j < len(toks) && !(toks[j].kind == tPunct && toks[j].text == "}") {
		if toks[j].kind == tPunct && toks[j].text == "," {
			j++
			continue
		}
		if j+2 >= len(toks) || toks[j].kind != tIdent || toks[j+1].kind != tOp || toks[j+2].kind != tString {
			fail("%s: malformed label matcher at %q", name, toks[j].text)
			return j
		}
		label, op, value := toks[j].text, toks[j+1].text, toks[j+2].text
		j += 3
		info.matchers[name] = append(info.matchers[name], label+op+value)
		if m == nil {
			continue
		}
		if !m.labelsKnown {
			fail("%s{%s}: the spec lists no labels for %s", name, label, name)
			continue
		}
		if !slices.Contains(m.labels, label) {
			fail("%s{%s}: the spec lists no label %q for %s (it lists %s)", name, label, label, name, strings.Join(m.labels, ", "))
			continue
		}
		if err := checkValue(s, m, label, op, value); err != nil {
			fail("%s{%s%s%q}: %v", name, label, op, value, err)
		}
	}
	return j
}

// checkValue checks a matcher's value: regexes compile (variables
// replaced by ".*"), and literal values of labels the spec enumerates are
// among them.
func checkValue(s *spec, m *specMetric, label, op, value string) error {
	regex := op == "=~" || op == "!~"
	if regex {
		sample, err := Expand(value, sampleValues(value))
		if err != nil {
			return err
		}
		if _, err := regexp.Compile("^(?:" + sample + ")$"); err != nil {
			return fmt.Errorf("bad regex: %w", err)
		}
	}
	allowed := s.allowedValues(m, label)
	if allowed == nil || strings.Contains(value, "$") {
		return nil
	}
	var values []string
	switch {
	case !regex:
		values = []string{value}
	case simpleAlternation.MatchString(value):
		values = strings.Split(value, "|")
	}
	for _, v := range values {
		if !slices.Contains(allowed, v) {
			return fmt.Errorf("the spec's values of %s are %s", label, strings.Join(allowed, ", "))
		}
	}
	return nil
}

// sampleValues gives every variable of expr the value ".*".
func sampleValues(expr string) map[string]string {
	out := map[string]string{}
	for _, v := range Variables(expr) {
		out[v] = ".*"
	}
	return out
}
