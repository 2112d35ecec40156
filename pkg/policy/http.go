package policy

import (
	"fmt"
	"net/http"
	"net/textproto"
	"regexp"
	"strings"

	"golang.org/x/net/http/httpguts"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/palisade-net/palisade/pkg/l7"
)

// strMatcher matches a whole string against an RE2 expression; literal
// expressions are compared without the regexp engine.
type strMatcher struct {
	set     bool
	literal bool
	lit     string
	re      *regexp.Regexp
	// prefix is a literal every matching string starts with.
	prefix string
}

func compileMatcher(expr string) (strMatcher, error) {
	if expr == "" {
		return strMatcher{}, nil
	}
	re, err := regexp.Compile(`^(?:` + expr + `)$`)
	if err != nil {
		return strMatcher{}, err
	}
	// The unanchored form tells the literal prefix every match begins with
	// (and whether the expression is that literal and nothing else).
	unanchored, err := regexp.Compile(expr)
	if err != nil {
		return strMatcher{}, err
	}
	prefix, complete := unanchored.LiteralPrefix()
	m := strMatcher{set: true, re: re, prefix: prefix}
	if complete {
		m.literal, m.lit = true, prefix
	}
	return m, nil
}

func (m *strMatcher) match(s string) bool {
	switch {
	case !m.set:
		return true
	case m.literal:
		return s == m.lit
	default:
		return m.re.MatchString(s)
	}
}

// knownMethods are the methods whose match results are precomputed.
var knownMethods = [...]string{
	http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
	http.MethodDelete, http.MethodConnect, http.MethodOptions, http.MethodTrace,
}

func knownMethodIndex(m string) int {
	switch m {
	case http.MethodGet:
		return 0
	case http.MethodHead:
		return 1
	case http.MethodPost:
		return 2
	case http.MethodPut:
		return 3
	case http.MethodPatch:
		return 4
	case http.MethodDelete:
		return 5
	case http.MethodConnect:
		return 6
	case http.MethodOptions:
		return 7
	case http.MethodTrace:
		return 8
	}
	return -1
}

// methodMatcher is a strMatcher with the results for the standard
// methods precomputed, so most requests skip the regexp.
type methodMatcher struct {
	strMatcher
	known uint16
}

func compileMethod(expr string) (methodMatcher, error) {
	sm, err := compileMatcher(expr)
	if err != nil {
		return methodMatcher{}, err
	}
	m := methodMatcher{strMatcher: sm}
	for i, k := range knownMethods {
		if sm.match(k) {
			m.known |= 1 << i
		}
	}
	return m, nil
}

func (m *methodMatcher) match(method string) bool {
	if !m.set {
		return true
	}
	if i := knownMethodIndex(method); i >= 0 {
		return m.known&(1<<i) != 0
	}
	return m.strMatcher.match(method)
}

// headerCheck is one "Name value" (exact) or "Name" (presence) entry.
type headerCheck struct {
	name     string // canonical
	value    string
	presence bool
}

// headerMatch is one headerMatches entry.
type headerMatch struct {
	name     string // canonical
	value    string // empty: presence
	mismatch string // "", LOG, ADD, DELETE, REPLACE
}

// httpRule is a compiled HTTP rule: all fields must match.
type httpRule struct {
	pol     *policy
	path    string // field path of the rule
	method  methodMatcher
	pathM   strMatcher
	host    strMatcher
	headers []headerCheck
	matches []headerMatch
}

// httpInput is an HTTP rule as written, in either API.
type httpInput struct {
	method, path, host string
	headers            []string
	matches            []headerMatchInput
}

type headerMatchInput struct {
	name, value, mismatch string
	// unsupported, when set, says why this match cannot be evaluated
	// (a Cilium secret): the rule then never matches.
	unsupported string
}

// compileHTTP compiles one HTTP rule; it returns nil when the rule is
// invalid (errors) or cannot be honoured (warnings).
func compileHTTP(ps *problems, p *field.Path, in httpInput, pol *policy, deny bool) *httpRule {
	r := &httpRule{pol: pol, path: p.String()}
	ok := true
	var err error
	if r.method, err = compileMethod(in.method); err != nil {
		ps.errorf(p.Child("method"), "invalid RE2 regular expression: %v", err)
		ok = false
	}
	if r.pathM, err = compileMatcher(in.path); err != nil {
		ps.errorf(p.Child("path"), "invalid RE2 regular expression: %v", err)
		ok = false
	}
	if r.host, err = compileMatcher(in.host); err != nil {
		ps.errorf(p.Child("host"), "invalid RE2 regular expression: %v", err)
		ok = false
	}
	for i, h := range in.headers {
		name, value, hasValue := strings.Cut(h, " ")
		if !httpguts.ValidHeaderFieldName(name) {
			ps.errorf(p.Child("headers").Index(i), "%q: want \"Name value\" or \"Name\" with a valid header name", h)
			ok = false
			continue
		}
		r.headers = append(r.headers, headerCheck{
			name: textproto.CanonicalMIMEHeaderKey(name), value: value, presence: !hasValue,
		})
	}
	for i, m := range in.matches {
		mp := p.Child("headerMatches").Index(i)
		if !httpguts.ValidHeaderFieldName(m.name) {
			ps.errorf(mp.Child("name"), "%q is not a valid header name", m.name)
			ok = false
		}
		switch m.mismatch {
		case "", "LOG", "ADD", "DELETE", "REPLACE":
		default:
			ps.errorf(mp.Child("mismatch"), "%q: want one of LOG, ADD, DELETE, REPLACE or empty", m.mismatch)
			ok = false
		}
		if deny && m.mismatch != "" {
			ps.errorf(mp.Child("mismatch"), "mismatch actions are not allowed in deny rules: a deny rule's header must match for it to deny")
			ok = false
		}
		if m.unsupported != "" {
			ps.warnf(mp, "%s; this HTTP rule never matches", m.unsupported)
			ok = false
		}
		r.matches = append(r.matches, headerMatch{
			name: textproto.CanonicalMIMEHeaderKey(m.name), value: m.value, mismatch: m.mismatch,
		})
	}
	if !ok {
		return nil
	}
	return r
}

// headerValue returns a header's value, several values joined with ","
// (as Envoy presents them to Cilium's matchers).
func headerValue(h http.Header, name string) (string, bool) {
	vs, ok := h[name]
	switch {
	case !ok || len(vs) == 0:
		return "", false
	case len(vs) == 1:
		return vs[0], true
	default:
		return strings.Join(vs, ","), true
	}
}

// matchBase reports whether the rule's method, path, host and headers
// match (everything but headerMatches).
func (r *httpRule) matchBase(req *l7.HTTPRequest) bool {
	if !r.method.match(req.Method) || !r.pathM.match(req.Path) || !r.host.match(req.Host) {
		return false
	}
	for i := range r.headers {
		h := &r.headers[i]
		v, ok := headerValue(req.Header, h.name)
		if !ok || (!h.presence && v != h.value) {
			return false
		}
	}
	return true
}

// applyHeaderMatches checks the rule's headerMatches. It reports false
// when a match without mismatch action fails; otherwise it appends the
// mismatch actions to v.
func (r *httpRule) applyHeaderMatches(req *l7.HTTPRequest, v *l7.Verdict) bool {
	var edits []l7.HeaderEdit
	var logs []string
	for i := range r.matches {
		m := &r.matches[i]
		got, present := headerValue(req.Header, m.name)
		if present && (m.value == "" || got == m.value) {
			continue
		}
		switch m.mismatch {
		case "":
			return false
		case "LOG":
			logs = append(logs, fmt.Sprintf("header %s does not match (rule %s %s)", m.name, r.pol.name, r.path))
		case "ADD":
			edits = append(edits, l7.HeaderEdit{Action: l7.HeaderAdd, Name: m.name, Value: m.value})
		case "DELETE":
			if present && m.value != "" {
				edits = append(edits, l7.HeaderEdit{Action: l7.HeaderDelete, Name: m.name})
			}
		case "REPLACE":
			edits = append(edits, l7.HeaderEdit{Action: l7.HeaderReplace, Name: m.name, Value: m.value})
		}
	}
	v.Edits = append(v.Edits, edits...)
	v.Logs = append(v.Logs, logs...)
	return true
}
