package policy

import (
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

// labelSel is a compiled label selector. It only ever matches pods
// (InCluster endpoints), as Cilium's endpoint selectors only match
// endpoints with a namespace label.
type labelSel struct {
	sel labels.Selector
	// namespace, when set, restricts matches to pods of this namespace.
	namespace string
	// never makes the selector match nothing (it relies on something
	// Palisade does not know; a Problem says so).
	never bool
}

func (s *labelSel) matches(ep *Endpoint) bool {
	if s.never || !ep.InCluster {
		return false
	}
	if s.namespace != "" && ep.Namespace != s.namespace {
		return false
	}
	return s.sel.Matches(endpointLabels{ep})
}

func (s *labelSel) String() string {
	if s.never {
		return "<nothing>"
	}
	str := s.sel.String()
	if s.namespace != "" {
		if str != "" {
			str += ","
		}
		str += LabelNamespace + "=" + s.namespace
	}
	if str == "" {
		return "<all pods>"
	}
	return str
}

// selectorRole says where a selector sits, which decides how it is
// scoped to namespaces.
type selectorRole int

const (
	// subjectSelector is a policy's endpointSelector: in a namespaced
	// policy it always applies in the policy's namespace only.
	subjectSelector selectorRole = iota
	// peerSelector is fromEndpoints/toEndpoints: in a namespaced policy it
	// is restricted to the policy's namespace unless it names a namespace
	// (io.kubernetes.pod.namespace) or namespace labels
	// (io.cilium.k8s.namespace.labels.*), exactly as Cilium does.
	peerSelector
)

// compileSelector compiles a selector of a policy in namespace policyNS
// ("" for cluster-wide). Keys may carry Cilium's "k8s:" or "any:" source
// prefix. Label sources Palisade does not see (reserved:, cidr:, ...) and
// Cilium policy labels other than the service account are errors in
// Palisade's own kinds (strict) and warnings in Cilium's (the selector
// then matches nothing).
func compileSelector(ps *problems, path *field.Path, in *metav1.LabelSelector, policyNS string, role selectorRole, strict bool) *labelSel {
	out := &labelSel{sel: labels.Everything()}
	if in == nil {
		return out
	}
	unsupported := func(p *field.Path, format string, args ...any) {
		if strict {
			ps.errorf(p, format, args...)
		} else {
			ps.warnf(p, format+"; this selector matches nothing", args...)
		}
		out.never = true
	}
	var reqs []metav1.LabelSelectorRequirement
	var nsReqs []metav1.LabelSelectorRequirement
	hasNSLabels := false
	add := func(p *field.Path, r metav1.LabelSelectorRequirement) {
		key, ok := normalizeKey(r.Key)
		if !ok {
			unsupported(p, "label source of %q is not supported (only k8s: and any:)", r.Key)
			return
		}
		if strings.HasPrefix(key, ciliumPolicyPrefix) && key != LabelServiceAccount {
			unsupported(p, "label %q is not known to Palisade", r.Key)
			return
		}
		r.Key = key
		switch {
		case key == LabelNamespace:
			nsReqs = append(nsReqs, r)
		case strings.HasPrefix(key, LabelNamespaceLabelsPrefix):
			hasNSLabels = true
		}
		reqs = append(reqs, r)
	}
	for _, k := range sortedKeys(in.MatchLabels) {
		add(path.Child("matchLabels").Key(k), metav1.LabelSelectorRequirement{
			Key: k, Operator: metav1.LabelSelectorOpIn, Values: []string{in.MatchLabels[k]},
		})
	}
	for i, r := range in.MatchExpressions {
		r.Values = append([]string(nil), r.Values...)
		add(path.Child("matchExpressions").Index(i), r)
	}
	if out.never {
		return out
	}

	switch {
	case policyNS == "":
		// Cluster-wide: selectors match pods of every namespace.
	case role == subjectSelector:
		out.namespace = policyNS
		if len(nsReqs) > 0 {
			if !(len(nsReqs) == 1 && nsReqs[0].Operator == metav1.LabelSelectorOpIn &&
				len(nsReqs[0].Values) == 1 && nsReqs[0].Values[0] == policyNS) {
				msg := "the endpointSelector of a namespaced policy always applies in the policy's namespace " + policyNS
				if strict {
					ps.errorf(path, "%s; remove the %s requirement", msg, LabelNamespace)
				} else {
					ps.warnf(path, "%s; the %s requirement is ignored (as Cilium does)", msg, LabelNamespace)
				}
			}
			reqs = withoutKey(reqs, LabelNamespace)
		}
	case len(nsReqs) == 0 && !hasNSLabels:
		out.namespace = policyNS
	}

	// Single-value In requirements become matchLabels again (so that the
	// selector prints as written), unless two prefixed forms of a key
	// collided.
	norm := &metav1.LabelSelector{}
	for _, r := range reqs {
		if r.Operator == metav1.LabelSelectorOpIn && len(r.Values) == 1 {
			if _, dup := norm.MatchLabels[r.Key]; !dup {
				if norm.MatchLabels == nil {
					norm.MatchLabels = map[string]string{}
				}
				norm.MatchLabels[r.Key] = r.Values[0]
				continue
			}
		}
		norm.MatchExpressions = append(norm.MatchExpressions, r)
	}
	sel, err := metav1.LabelSelectorAsSelector(norm)
	if err != nil {
		// Cilium rejects unparsable selectors too: an error in both kinds.
		ps.errorf(path, "invalid selector: %v", err)
		out.never = true
		return out
	}
	out.sel = sel
	return out
}

// normalizeKey strips Cilium's k8s: or any: source prefix. It reports
// false for other sources.
func normalizeKey(key string) (string, bool) {
	src, rest, found := strings.Cut(key, ":")
	if !found {
		return key, true
	}
	switch src {
	case "k8s", "any":
		return rest, true
	}
	return key, false
}

func withoutKey(reqs []metav1.LabelSelectorRequirement, key string) []metav1.LabelSelectorRequirement {
	out := reqs[:0:0]
	for _, r := range reqs {
		if r.Key != key {
			out = append(out, r)
		}
	}
	return out
}
