package policy

import (
	"net/http"
	"net/netip"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	"github.com/palisade-net/palisade/pkg/l7"
)

// parseObjects parses "---"-separated YAML documents.
func parseObjects(t testing.TB, docs string) []*unstructured.Unstructured {
	t.Helper()
	var out []*unstructured.Unstructured
	for _, doc := range strings.Split(docs, "\n---\n") {
		if strings.TrimSpace(doc) == "" {
			continue
		}
		u := &unstructured.Unstructured{}
		if err := yaml.Unmarshal([]byte(doc), &u.Object); err != nil {
			t.Fatalf("parse test YAML: %v\n%s", err, doc)
		}
		out = append(out, u)
	}
	return out
}

// mustCompile compiles docs and fails on any problem with severity Error.
func mustCompile(t testing.TB, docs string) *Set {
	t.Helper()
	s, probs := Compile(parseObjects(t, docs))
	for _, p := range probs {
		if p.Severity == Error {
			t.Fatalf("unexpected problem: %v", p)
		}
	}
	return s
}

func id(s string) spiffeid.ID {
	return spiffeid.RequireFromString(s)
}

// pod is an authenticated pod in the cluster domain cluster.local.
func pod(ns, sa, ip string, labels map[string]string, nsLabels map[string]string) Endpoint {
	return Endpoint{
		Namespace: ns, ServiceAccount: sa, Labels: labels, NamespaceLabels: nsLabels,
		Identity: id("spiffe://cluster.local/ns/" + ns + "/sa/" + sa),
		IP:       netip.MustParseAddr(ip), InCluster: true,
	}
}

func plaintext(e Endpoint) Endpoint {
	e.Identity = spiffeid.ID{}
	return e
}

func world(ip string) Endpoint {
	return Endpoint{IP: netip.MustParseAddr(ip)}
}

var (
	web   = pod("shop", "web", "10.0.1.1", map[string]string{"app": "web"}, map[string]string{"team": "a"})
	api   = pod("shop", "api", "10.0.1.2", map[string]string{"app": "api"}, map[string]string{"team": "a"})
	admin = pod("shop", "admin", "10.0.1.3", map[string]string{"app": "admin"}, map[string]string{"team": "a"})
	pay   = pod("billing", "pay", "10.0.2.1", map[string]string{"app": "pay"}, map[string]string{"team": "b"})
	ext   = world("203.0.113.7")
)

func get(path string) *l7.HTTPRequest {
	return &l7.HTTPRequest{Method: "GET", Path: path, Host: "api.shop", Header: http.Header{}}
}

func req(method, path string, hdr ...string) *l7.HTTPRequest {
	r := &l7.HTTPRequest{Method: method, Path: path, Host: "api.shop", Header: http.Header{}}
	for i := 0; i+1 < len(hdr); i += 2 {
		r.Header.Add(hdr[i], hdr[i+1])
	}
	return r
}

func grpcCall(service, method string) *l7.HTTPRequest {
	return req("POST", "/"+service+"/"+method, "Content-Type", "application/grpc")
}

func kafka(key, version int16, clientID string, topics ...string) *l7.KafkaRequest {
	return &l7.KafkaRequest{APIKey: key, APIVersion: version, ClientID: clientID, Topics: topics}
}
