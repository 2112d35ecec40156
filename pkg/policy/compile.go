package policy

import (
	"cmp"
	"fmt"
	"slices"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/palisade-net/palisade/pkg/apis/policy/v1alpha1"
	"github.com/palisade-net/palisade/pkg/policy/cilium"
)

// Compile builds a Set from every policy object in objs; objects of other
// kinds are skipped. It returns the problems of every object.
//
// An object with errors is left out of the Set's rules; if its
// endpointSelector can be read, it still puts the pods it selects into
// default deny for the directions it has rules for (it fails closed), and
// denials name it. An object with warnings is enforced without the parts
// the warnings name, which allow nothing.
//
// When several objects have the same kind, namespace and name, the last
// one wins and a warning says so.
func Compile(objs []*unstructured.Unstructured) (*Set, []Problem) {
	type entry struct {
		ref ObjectRef
		obj *unstructured.Unstructured
	}
	var entries []entry
	index := map[ObjectRef]int{}
	var all []Problem
	for _, o := range objs {
		ref, ok := identify(o)
		if !ok {
			continue
		}
		if i, dup := index[ref]; dup {
			all = append(all, Problem{Object: ref, Severity: Warning,
				Message: "defined more than once; the last definition is used"})
			entries[i].obj = o
			continue
		}
		index[ref] = len(entries)
		entries = append(entries, entry{ref, o})
	}
	slices.SortFunc(entries, func(a, b entry) int {
		return cmp.Or(
			cmp.Compare(kindOrder[a.ref.Kind], kindOrder[b.ref.Kind]),
			cmp.Compare(a.ref.Namespace, b.ref.Namespace),
			cmp.Compare(a.ref.Name, b.ref.Name))
	})

	s := &Set{byNamespace: map[string][]*policy{}}
	nextID := 0
	var compiled []*policy
	for _, e := range entries {
		pols, probs := compileObject(e.ref, e.obj, &nextID)
		all = append(all, probs...)
		compiled = append(compiled, pols...)
		for _, p := range pols {
			s.nPolicies++
			if p.ref.Namespace == "" {
				s.cluster = append(s.cluster, p)
			} else {
				s.byNamespace[p.ref.Namespace] = append(s.byNamespace[p.ref.Namespace], p)
			}
		}
	}
	all = append(all, conflicts(compiled)...)
	s.problems = all
	return s, all
}

// Validate decodes obj strictly and validates it: the problems an
// admission webhook reports (errors reject the object; warnings name the
// parts that will not be honoured). It returns nil for a valid policy
// that is honoured in full.
func Validate(obj *unstructured.Unstructured) []Problem {
	ref, ok := identify(obj)
	if !ok {
		return []Problem{{Object: ObjectRef{Kind: obj.GetKind(), Name: obj.GetName()}, Severity: Error,
			Message: fmt.Sprintf("%s is not a policy kind", obj.GroupVersionKind())}}
	}
	id := 0
	_, probs := compileObject(ref, obj, &id)
	return probs
}

// ValidateL7Policy validates a typed L7Policy.
func ValidateL7Policy(p *v1alpha1.L7Policy) []Problem {
	ns := p.Namespace
	if ns == "" {
		ns = "default"
	}
	return validateSpec(ObjectRef{Kind: v1alpha1.KindL7Policy, Namespace: ns, Name: p.Name}, &p.Spec)
}

// ValidateClusterL7Policy validates a typed ClusterL7Policy.
func ValidateClusterL7Policy(p *v1alpha1.ClusterL7Policy) []Problem {
	return validateSpec(ObjectRef{Kind: v1alpha1.KindClusterL7Policy, Name: p.Name}, &p.Spec)
}

func validateSpec(ref ObjectRef, spec *v1alpha1.L7PolicySpec) []Problem {
	ps := &problems{obj: ref}
	id := 0
	compileL7Policy(&compiler{ps: ps, nextID: &id, strict: true}, ref, spec)
	return ps.list
}

// compileObject decodes, validates and compiles one policy object. An
// object with errors yields quarantined policies (default deny only).
func compileObject(ref ObjectRef, obj *unstructured.Unstructured, nextID *int) ([]*policy, []Problem) {
	ps := &problems{obj: ref}
	if v := obj.GroupVersionKind().Version; (kindOrder[ref.Kind] < 2 && v != v1alpha1.Version) || (kindOrder[ref.Kind] >= 2 && v != cilium.Version) {
		ps.errorf(nil, "unsupported API version %q", obj.GetAPIVersion())
		return nil, ps.list
	}
	if ref.Name == "" {
		ps.errorf(nil, "metadata.name is required")
		return nil, ps.list
	}
	decodeOK := true
	var pols []*policy
	compileAs := func(ps *problems, strictDecode bool) []*policy {
		c := &compiler{ps: ps, nextID: nextID, strict: kindOrder[ref.Kind] < 2}
		decode := func(out any) bool {
			if strictDecode {
				decodeOK = decodeStrict(ps, obj, out)
				return decodeOK
			}
			return decodeLenient(obj, out)
		}
		switch ref.Kind {
		case v1alpha1.KindL7Policy:
			var p v1alpha1.L7Policy
			if decode(&p) {
				return []*policy{compileL7Policy(c, ref, &p.Spec)}
			}
		case v1alpha1.KindClusterL7Policy:
			var p v1alpha1.ClusterL7Policy
			if decode(&p) {
				return []*policy{compileL7Policy(c, ref, &p.Spec)}
			}
		default:
			var p cilium.CiliumNetworkPolicy
			if decode(&p) {
				return compileCilium(c, ref, &p)
			}
		}
		return nil
	}
	pols = compileAs(ps, true)
	if !ps.hasErrors() {
		return pols, ps.list
	}
	if !decodeOK {
		// Find out what the object selects from a lenient decode; its own
		// problems are not reported twice. When even that fails, read
		// just the selectors.
		pols = compileAs(&problems{obj: ref}, false)
		if len(pols) == 0 {
			pols = selectorsOnly(ref, obj)
		}
	}
	reason := firstError(ps.list)
	var out []*policy
	for _, p := range pols {
		if p == nil || p.subject == nil || p.subject.never {
			continue
		}
		q := &policy{ref: p.ref, name: p.name, subject: p.subject, invalid: reason}
		for d := range q.dirs {
			q.dirs[d].defaultDeny = p.dirs[d].defaultDeny
		}
		out = append(out, q)
	}
	return out, ps.list
}

func firstError(ps []Problem) string {
	for _, p := range ps {
		if p.Severity == Error {
			if p.Field == "" {
				return p.Message
			}
			return p.Field + ": " + p.Message
		}
	}
	return ""
}

// selectorsOnly reads the endpointSelector(s) of an object that cannot be
// decoded at all, so that it can still fail closed: each spec puts the
// pods it selects into default deny for the directions it has rules for.
func selectorsOnly(ref ObjectRef, obj *unstructured.Unstructured) []*policy {
	var specs []map[string]any
	if spec, ok := obj.Object["spec"].(map[string]any); ok {
		specs = append(specs, spec)
	}
	if list, ok := obj.Object["specs"].([]any); ok {
		for _, s := range list {
			if spec, ok := s.(map[string]any); ok {
				specs = append(specs, spec)
			}
		}
	}
	var out []*policy
	for _, spec := range specs {
		raw, ok := spec["endpointSelector"].(map[string]any)
		if !ok {
			continue
		}
		var sel metav1.LabelSelector
		if runtime.DefaultUnstructuredConverter.FromUnstructured(raw, &sel) != nil {
			continue
		}
		ps := &problems{obj: ref}
		p := &policy{ref: ref, name: ref.String()}
		p.subject = compileSelector(ps, field.NewPath("spec", "endpointSelector"), &sel, ref.Namespace, subjectSelector, false)
		if ps.hasErrors() {
			continue
		}
		p.dirs[ingress].defaultDeny = spec["ingress"] != nil || spec["ingressDeny"] != nil
		p.dirs[egress].defaultDeny = spec["egress"] != nil || spec["egressDeny"] != nil
		out = append(out, p)
	}
	return out
}
