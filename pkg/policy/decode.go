package policy

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	kjson "sigs.k8s.io/json"

	"github.com/palisade-net/palisade/pkg/apis/policy/v1alpha1"
	"github.com/palisade-net/palisade/pkg/policy/cilium"
)

// kindOrder orders policies in a Set (and so which rule a verdict names
// when several match): Palisade's kinds before Cilium's, namespaced
// before cluster-wide.
var kindOrder = map[string]int{
	v1alpha1.KindL7Policy:                     0,
	v1alpha1.KindClusterL7Policy:              1,
	cilium.KindCiliumNetworkPolicy:            2,
	cilium.KindCiliumClusterwideNetworkPolicy: 3,
}

// IsPolicy reports whether obj is of a kind this package compiles:
// policy.palisade.dev L7Policy and ClusterL7Policy, cilium.io
// CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy (any version;
// unsupported versions are reported by Validate and Compile).
func IsPolicy(obj *unstructured.Unstructured) bool {
	_, ok := identify(obj)
	return ok
}

// RefOf returns how problems and verdicts name obj, and whether obj is a
// policy kind at all.
func RefOf(obj *unstructured.Unstructured) (ObjectRef, bool) { return identify(obj) }

// identify returns the object's reference when it is a policy kind.
func identify(obj *unstructured.Unstructured) (ObjectRef, bool) {
	if obj == nil {
		return ObjectRef{}, false
	}
	gvk := obj.GroupVersionKind()
	ref := ObjectRef{Kind: gvk.Kind, Name: obj.GetName()}
	switch {
	case gvk.Group == v1alpha1.Group && gvk.Kind == v1alpha1.KindL7Policy,
		gvk.Group == cilium.Group && gvk.Kind == cilium.KindCiliumNetworkPolicy:
		ref.Namespace = obj.GetNamespace()
		if ref.Namespace == "" {
			ref.Namespace = "default"
		}
	case gvk.Group == v1alpha1.Group && gvk.Kind == v1alpha1.KindClusterL7Policy,
		gvk.Group == cilium.Group && gvk.Kind == cilium.KindCiliumClusterwideNetworkPolicy:
	default:
		return ObjectRef{}, false
	}
	return ref, true
}

var unknownFieldRE = regexp.MustCompile(`^(unknown|duplicate) field "(.*)"$`)

// decodeStrict decodes obj into out, rejecting unknown fields; each
// problem names the field's path.
func decodeStrict(ps *problems, obj *unstructured.Unstructured, out any) bool {
	data, err := obj.MarshalJSON()
	if err != nil {
		ps.errorf(nil, "cannot encode object: %v", err)
		return false
	}
	strictErrs, err := kjson.UnmarshalStrict(data, out, kjson.DisallowUnknownFields)
	if err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) && typeErr.Field != "" {
			ps.list = append(ps.list, Problem{Object: ps.obj, Field: typeErr.Field, Severity: Error,
				Message: fmt.Sprintf("cannot decode a JSON %s into a %s", typeErr.Value, typeErr.Type)})
		} else {
			ps.errorf(nil, "cannot decode: %v", err)
		}
		return false
	}
	for _, e := range strictErrs {
		if m := unknownFieldRE.FindStringSubmatch(e.Error()); m != nil {
			ps.list = append(ps.list, Problem{Object: ps.obj, Field: m[2], Message: m[1] + " field", Severity: Error})
		} else {
			ps.errorf(nil, "%v", e)
		}
	}
	return len(strictErrs) == 0
}

// decodeLenient decodes obj ignoring unknown fields; used to find out
// what an invalid policy selects so that it can fail closed.
func decodeLenient(obj *unstructured.Unstructured, out any) bool {
	data, err := obj.MarshalJSON()
	if err != nil {
		return false
	}
	return json.Unmarshal(data, out) == nil
}
