package policy

import (
	"net/http"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	"github.com/palisade-net/palisade/pkg/l7"
)

// FuzzCompile feeds arbitrary policy documents to the decoder, validator
// and compiler, then evaluates whatever was accepted: nothing may panic,
// and decisions must be self-consistent. The seed corpus is in
// testdata/fuzz/FuzzCompile (policies of every kind, valid and not).
func FuzzCompile(f *testing.F) {
	f.Add([]byte(httpAPI))
	f.Add([]byte(l4WebToAPI))
	f.Fuzz(func(t *testing.T, data []byte) {
		u := &unstructured.Unstructured{}
		if err := yaml.Unmarshal(data, &u.Object); err != nil || u.Object == nil {
			return
		}
		_ = Validate(u)
		s, _ := Compile([]*unstructured.Unstructured{u})
		_ = s.Explain(api)
		reqs := []*l7.HTTPRequest{
			get("/api/v1/items"),
			req("POST", "/orders", "X-Env", "prod", "X-Token", "a", "X-Token", "b"),
			grpcCall("shop.v1.Cart", "Checkout"),
			{Method: "\x00", Path: "\xff/", Header: http.Header{}},
		}
		kreqs := []*l7.KafkaRequest{kafka(0, 9, "c", "orders", ""), kafka(3, 12, ""), kafka(-1, -1, "x")}
		peers := []Endpoint{web, plaintext(web), pay, ext, world("2001:db8::1"), {}}
		for _, peer := range peers {
			for _, port := range []uint16{0, 80, 8080, 9092, 65535} {
				for _, d := range []Decision{s.Ingress(peer, api, port), s.Egress(api, peer, port)} {
					if (d.Protocol == l7.None) != (d.Rules == nil) {
						t.Fatalf("protocol %q with rules %v", d.Protocol, d.Rules)
					}
					if !d.Allow && d.Reason == "" {
						t.Fatalf("denial without reason: %+v", d.Verdict)
					}
					if d.Rules == nil {
						continue
					}
					for _, r := range reqs {
						if v := d.Rules.HTTP(r); !v.Allow && v.Reason == "" {
							t.Fatalf("HTTP denial without reason: %+v", v)
						}
					}
					for _, r := range kreqs {
						if v := d.Rules.Kafka(r); !v.Allow && v.Reason == "" {
							t.Fatalf("Kafka denial without reason: %+v", v)
						}
					}
				}
			}
		}
	})
}
