package policy

import (
	"slices"
	"strings"

	"github.com/palisade-net/palisade/pkg/l7"
)

// prefixNode is a radix tree from literal path prefixes to rule indices.
// Looking a path up yields every rule whose path expression must start
// with a prefix of that path: the only rules that can match it.
type prefixNode struct {
	label    string
	ids      []int32
	children []*prefixNode // distinct first bytes
}

func (n *prefixNode) child(b byte) *prefixNode {
	for _, c := range n.children {
		if c.label[0] == b {
			return c
		}
	}
	return nil
}

func (n *prefixNode) insert(key string, id int32) {
	node := n
	for key != "" {
		c := node.child(key[0])
		if c == nil {
			node.children = append(node.children, &prefixNode{label: key, ids: []int32{id}})
			return
		}
		l := commonPrefixLen(c.label, key)
		if l < len(c.label) {
			tail := &prefixNode{label: c.label[l:], ids: c.ids, children: c.children}
			c.label, c.ids, c.children = c.label[:l], nil, []*prefixNode{tail}
		}
		key = key[l:]
		node = c
	}
	node.ids = append(node.ids, id)
}

// collect appends the id lists of every node whose prefix starts s.
func (n *prefixNode) collect(s string, out [][]int32) [][]int32 {
	node := n
	for {
		if len(node.ids) > 0 {
			out = append(out, node.ids)
		}
		if s == "" {
			return out
		}
		c := node.child(s[0])
		if c == nil || !strings.HasPrefix(s, c.label) {
			return out
		}
		s = s[len(c.label):]
		node = c
	}
}

func commonPrefixLen(a, b string) int {
	n := min(len(a), len(b))
	for i := 0; i < n; i++ {
		if a[i] != b[i] {
			return i
		}
	}
	return n
}

// httpSet is an indexed list of HTTP and gRPC rules. Rules are tried in
// list order; the index only skips rules that cannot match.
type httpSet struct {
	rules         []*httpRule
	tree          prefixNode // rules by literal path prefix (root: none)
	headerMatches bool       // some rule has headerMatches

	grpc      []*grpcRule
	grpcBySvc map[string][]int32
	grpcAny   []int32
}

func newHTTPSet(rules []*httpRule, grpcs []*grpcRule) *httpSet {
	s := &httpSet{rules: rules, grpc: grpcs}
	for i, r := range rules {
		s.tree.insert(r.pathM.prefix, int32(i))
		if len(r.matches) > 0 {
			s.headerMatches = true
		}
	}
	for i, g := range grpcs {
		if g.service == "" {
			s.grpcAny = append(s.grpcAny, int32(i))
			continue
		}
		if s.grpcBySvc == nil {
			s.grpcBySvc = map[string][]int32{}
		}
		s.grpcBySvc[g.service] = append(s.grpcBySvc[g.service], int32(i))
	}
	return s
}

func (s *httpSet) empty() bool { return s == nil || len(s.rules)+len(s.grpc) == 0 }

// candidates returns the id lists of the HTTP rules that can match req,
// each list ascending.
func (s *httpSet) candidates(req *l7.HTTPRequest, buf [][]int32) [][]int32 {
	return s.tree.collect(req.Path, buf)
}

// fullMatch: base fields match and every headerMatch either matches or
// has a mismatch action.
func (r *httpRule) fullMatch(req *l7.HTTPRequest) bool {
	if !r.matchBase(req) {
		return false
	}
	for i := range r.matches {
		m := &r.matches[i]
		if m.mismatch != "" {
			continue
		}
		got, ok := headerValue(req.Header, m.name)
		if !ok || (m.value != "" && got != m.value) {
			return false
		}
	}
	return true
}

// first returns the first rule (in list order) that matches req, HTTP
// rules before gRPC rules, or nil. Header actions are not collected.
func (s *httpSet) first(req *l7.HTTPRequest) (*httpRule, *grpcRule) {
	if s.empty() {
		return nil, nil
	}
	best := int32(-1)
	var buf [16][]int32
	for _, ids := range s.candidates(req, buf[:0]) {
		for _, id := range ids {
			if best >= 0 && id >= best {
				break
			}
			if s.rules[id].fullMatch(req) {
				best = id
				break
			}
		}
	}
	if best >= 0 {
		return s.rules[best], nil
	}
	return nil, s.firstGRPC(req)
}

func (s *httpSet) firstGRPC(req *l7.HTTPRequest) *grpcRule {
	if len(s.grpc) == 0 {
		return nil
	}
	svc, method, ok := req.GRPC()
	if !ok {
		return nil
	}
	best := int32(-1)
	for _, ids := range [2][]int32{s.grpcBySvc[svc], s.grpcAny} {
		for _, id := range ids {
			if best >= 0 && id >= best {
				break
			}
			if s.grpc[id].match(svc, method) {
				best = id
				break
			}
		}
	}
	if best < 0 {
		return nil
	}
	return s.grpc[best]
}

// allowAll evaluates an allow set whose rules have headerMatches: every
// matching rule applies its mismatch actions (as Cilium's proxy runs all
// of them), in list order. It returns the first matching rule.
func (s *httpSet) allowAll(req *l7.HTTPRequest, v *l7.Verdict) (*httpRule, *grpcRule) {
	var buf [16][]int32
	var matched []int32
	for _, ids := range s.candidates(req, buf[:0]) {
		for _, id := range ids {
			if s.rules[id].matchBase(req) {
				matched = append(matched, id)
			}
		}
	}
	slices.Sort(matched)
	var first *httpRule
	for _, id := range matched {
		if s.rules[id].applyHeaderMatches(req, v) && first == nil {
			first = s.rules[id]
		}
	}
	if first != nil {
		return first, nil
	}
	return nil, s.firstGRPC(req)
}
