package flowlog

import (
	"fmt"
	"slices"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/palisade-net/palisade/pkg/apis/policy/v1alpha1"
)

// IsFlowLog reports whether o is a FlowLog object.
func IsFlowLog(o *unstructured.Unstructured) bool {
	gvk := o.GroupVersionKind()
	return gvk.Group == v1alpha1.Group && gvk.Kind == v1alpha1.KindFlowLog
}

// Selection is the compiled set of FlowLog objects: which records the flow
// log file gets. The zero Selection (no FlowLog) selects nothing.
type Selection struct {
	rules []selRule
}

type selRule struct {
	name       string
	namespaces []string
	pods       labels.Selector // nil: any
	protocols  []string
	verdicts   []string
}

// Problem is a FlowLog that could not be used, and why.
type Problem struct {
	Name    string `json:"name"`
	Message string `json:"message"`
}

// Compile builds the Selection from the FlowLog objects among objs (other
// kinds are skipped). A FlowLog that cannot be used is left out and
// reported: unknown fields and values in standalone files (the API server's
// schema refuses those at admission), and pod selectors whose operators
// the schema cannot check.
func Compile(objs []*unstructured.Unstructured) (*Selection, []Problem) {
	s := &Selection{}
	var problems []Problem
	for _, o := range objs {
		if !IsFlowLog(o) {
			continue
		}
		var fl v1alpha1.FlowLog
		if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(o.Object, &fl, true); err != nil {
			problems = append(problems, Problem{Name: o.GetName(), Message: err.Error()})
			continue
		}
		r := selRule{name: fl.Name, namespaces: fl.Spec.Namespaces}
		if fl.Spec.PodSelector != nil {
			sel, err := metav1.LabelSelectorAsSelector(fl.Spec.PodSelector)
			if err != nil {
				problems = append(problems, Problem{Name: fl.Name, Message: fmt.Sprintf("spec.podSelector: %v", err)})
				continue
			}
			r.pods = sel
		}
		bad := false
		for i, p := range fl.Spec.Protocols {
			if !slices.Contains(protocols, string(p)) {
				problems = append(problems, Problem{Name: fl.Name, Message: fmt.Sprintf("spec.protocols[%d]: unknown protocol %q (%s)", i, p, strings.Join(protocols, ", "))})
				bad = true
			}
			r.protocols = append(r.protocols, string(p))
		}
		for i, v := range fl.Spec.Verdicts {
			if !slices.Contains(verdicts, string(v)) {
				problems = append(problems, Problem{Name: fl.Name, Message: fmt.Sprintf("spec.verdicts[%d]: unknown verdict %q (%s)", i, v, strings.Join(verdicts, ", "))})
				bad = true
			}
			r.verdicts = append(r.verdicts, string(v))
		}
		if !bad {
			s.rules = append(s.rules, r)
		}
	}
	return s, problems
}

// Len returns the number of FlowLogs in use.
func (s *Selection) Len() int {
	if s == nil {
		return 0
	}
	return len(s.rules)
}

// Selects reports whether some FlowLog selects r.
func (s *Selection) Selects(r *Record) bool {
	if s == nil {
		return false
	}
	for i := range s.rules {
		if s.rules[i].selects(r) {
			return true
		}
	}
	return false
}

func (sr *selRule) selects(r *Record) bool {
	if len(sr.protocols) > 0 && !slices.Contains(sr.protocols, r.Protocol) {
		return false
	}
	if len(sr.verdicts) > 0 && !slices.Contains(sr.verdicts, r.Verdict) {
		return false
	}
	side := func(e *Endpoint) bool {
		if e.Pod == "" {
			return false
		}
		if len(sr.namespaces) > 0 && !slices.Contains(sr.namespaces, e.Namespace) {
			return false
		}
		return sr.pods == nil || sr.pods.Matches(labels.Set(e.Labels))
	}
	if len(sr.namespaces) == 0 && sr.pods == nil {
		return true
	}
	return side(&r.Source) || side(&r.Destination)
}
