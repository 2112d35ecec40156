package policy

import (
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/palisade-net/palisade/pkg/apis/policy/v1alpha1"
)

// maxConditionMessage is the API server's limit on a condition message.
const maxConditionMessage = 32768

// AcceptedCondition returns the "Accepted" status condition of obj given
// the problems Compile or Validate reported (those of other objects are
// ignored): False/Invalid with errors, True/PartiallySupported with only
// warnings, True/Accepted otherwise.
func AcceptedCondition(obj ObjectRef, problems []Problem, generation int64, now metav1.Time) metav1.Condition {
	c := metav1.Condition{
		Type: v1alpha1.ConditionAccepted, Status: metav1.ConditionTrue, Reason: v1alpha1.ReasonAccepted,
		Message: "the policy is enforced", ObservedGeneration: generation, LastTransitionTime: now,
	}
	var errs, warns []string
	for _, p := range problems {
		if p.Object != obj {
			continue
		}
		line := p.Message
		if p.Field != "" {
			line = p.Field + ": " + p.Message
		}
		if p.Severity == Error {
			errs = append(errs, line)
		} else {
			warns = append(warns, line)
		}
	}
	switch {
	case len(errs) > 0:
		c.Status, c.Reason = metav1.ConditionFalse, v1alpha1.ReasonInvalid
		c.Message = "rejected; it only enforces default deny: " + strings.Join(errs, "; ")
	case len(warns) > 0:
		c.Reason = v1alpha1.ReasonPartiallySupported
		c.Message = "enforced except: " + strings.Join(warns, "; ")
	}
	if len(c.Message) > maxConditionMessage {
		c.Message = c.Message[:maxConditionMessage-3] + "..."
	}
	return c
}
