package policy

import (
	"fmt"

	"k8s.io/apimachinery/pkg/util/validation/field"
)

// Severity says what a Problem did to its policy.
type Severity string

// Severities.
const (
	// Error: the object is invalid and none of its rules are enforced.
	// Its endpointSelector (when it could be read) still puts the pods
	// it selects into default deny for the directions it has rules for,
	// so that a broken policy fails closed.
	Error Severity = "error"
	// Warning: the object is enforced, but the named part cannot be
	// honoured by Palisade. Such a part never allows anything (an allow
	// rule, port rule or HTTP rule that relies on it matches nothing).
	Warning Severity = "warning"
)

// ObjectRef names a policy object.
type ObjectRef struct {
	Kind      string
	Namespace string // empty for cluster-scoped kinds
	Name      string
}

// String returns "Kind namespace/name" or "Kind name", the form used in
// verdicts (l7.Verdict.Policy).
func (o ObjectRef) String() string {
	if o.Namespace == "" {
		return o.Kind + " " + o.Name
	}
	return o.Kind + " " + o.Namespace + "/" + o.Name
}

// Problem is something wrong with, or not honoured in, one policy object.
type Problem struct {
	Object   ObjectRef
	Field    string // field path, e.g. spec.ingress[0].toPorts[0].rules.http[1].method
	Message  string
	Severity Severity
}

// Error formats the problem as "Kind ns/name: field: message"; Problem
// implements error so that problems can be joined and wrapped.
func (p Problem) Error() string {
	prefix := p.Object.String()
	if p.Severity == Warning {
		prefix += " (warning)"
	}
	if p.Field == "" {
		return prefix + ": " + p.Message
	}
	return fmt.Sprintf("%s: %s: %s", prefix, p.Field, p.Message)
}

// FieldError returns the problem as a Kubernetes field error, the form an
// admission webhook returns.
func (p Problem) FieldError() *field.Error {
	return &field.Error{
		Type:     field.ErrorTypeInvalid,
		Field:    p.Field,
		BadValue: field.OmitValueType{},
		Detail:   p.Message,
	}
}

// HasErrors reports whether any problem has severity Error.
func HasErrors(problems []Problem) bool {
	for _, p := range problems {
		if p.Severity == Error {
			return true
		}
	}
	return false
}

// problems collects the problems of one object.
type problems struct {
	obj  ObjectRef
	list []Problem
}

func (ps *problems) errorf(path *field.Path, format string, args ...any) {
	ps.add(Error, path, fmt.Sprintf(format, args...))
}

func (ps *problems) warnf(path *field.Path, format string, args ...any) {
	ps.add(Warning, path, fmt.Sprintf(format, args...))
}

func (ps *problems) add(sev Severity, path *field.Path, msg string) {
	f := ""
	if path != nil {
		f = path.String()
	}
	ps.list = append(ps.list, Problem{Object: ps.obj, Field: f, Message: msg, Severity: sev})
}

func (ps *problems) hasErrors() bool { return HasErrors(ps.list) }
