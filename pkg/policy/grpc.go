package policy

import (
	"regexp"

	"k8s.io/apimachinery/pkg/util/validation/field"
)

// grpcRule matches gRPC calls by service and method; empty matches any.
type grpcRule struct {
	pol     *policy
	path    string
	service string
	method  string
}

var (
	grpcServiceRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.]*$`)
	grpcMethodRE  = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
)

func compileGRPC(ps *problems, p *field.Path, service, method string, pol *policy) *grpcRule {
	ok := true
	if service != "" && !grpcServiceRE.MatchString(service) {
		ps.errorf(p.Child("service"), "%q is not a fully qualified gRPC service name (package.Service)", service)
		ok = false
	}
	if method != "" && !grpcMethodRE.MatchString(method) {
		ps.errorf(p.Child("method"), "%q is not a gRPC method name", method)
		ok = false
	}
	if !ok {
		return nil
	}
	return &grpcRule{pol: pol, path: p.String(), service: service, method: method}
}

func (g *grpcRule) match(service, method string) bool {
	return (g.service == "" || g.service == service) && (g.method == "" || g.method == method)
}
