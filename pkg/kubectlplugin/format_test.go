package kubectlplugin

import (
	"strings"
	"testing"
	"time"

	"github.com/palisade-net/palisade/pkg/flowlog"
	"github.com/palisade-net/palisade/pkg/l7"
	"github.com/palisade-net/palisade/pkg/nodeproxy"
	"github.com/palisade-net/palisade/pkg/policy"
)

func TestRow(t *testing.T) {
	at := time.Date(2026, 11, 22, 10, 0, 0, 0, time.Local)
	src := flowlog.Endpoint{Pod: "client", Namespace: "shop"}
	for _, tc := range []struct {
		rec  flowlog.Record
		want []string
	}{
		{flowlog.Record{Time: at, Verdict: "denied", Protocol: "http", Source: src, Destination: flowlog.Endpoint{Pod: "web", Namespace: "shop"},
			HTTP: &l7.HTTPRecord{Method: "GET", Path: "/admin", Status: 403}, Policy: "L7Policy shop/web", Rule: "default-deny"},
			[]string{"10:00:00.000", "denied", "shop/client", "shop/web", "GET /admin", "403", "L7Policy shop/web / default-deny"}},
		{flowlog.Record{Time: at, Verdict: "denied", Protocol: "grpc", Source: src, GRPC: &l7.GRPCRecord{Service: "pkg.Svc", Method: "Get", Status: 7}},
			[]string{"pkg.Svc/Get", " 7 "}},
		{flowlog.Record{Time: at, Verdict: "denied", Protocol: "kafka", Source: src, Kafka: &l7.KafkaRecord{API: "Produce", APIVersion: 9, Topics: []string{"secret"}, ErrorCode: 29}},
			[]string{"Produce v9 secret", "29"}},
		{flowlog.Record{Time: at, Verdict: "allowed", Protocol: "tcp", Transport: "hbone", Source: src,
			Destination: flowlog.Endpoint{Identity: "spiffe://td/ns/bank/sa/api"}, BytesSent: 10, BytesReceived: 20, DurationMs: 1500},
			[]string{"hbone ↑10B ↓20B 1.5s", "spiffe://td/ns/bank/sa/api"}},
		{flowlog.Record{Time: at, Type: flowlog.TypePacket, Verdict: "dropped", Protocol: "tcp", Source: src,
			Destination: flowlog.Endpoint{Pod: "vecho", Namespace: "vault", Address: "10.0.2.5:9000"}, Reason: "plaintext_between_enrolled",
			Packet: &flowlog.Packet{Interface: "veth1a2b", Length: 60, TCPFlags: "SYN"}},
			[]string{"dropped", "vault/vecho", "packet SYN 60B veth1a2b", "plaintext_between_enrolled"}},
		{flowlog.Record{Time: at, Type: flowlog.TypeLost, Lost: 12}, []string{"12 records lost"}},
	} {
		got := Row("node1", &tc.rec)
		for _, w := range tc.want {
			if !strings.Contains(got, w) {
				t.Errorf("row %q lacks %q", got, w)
			}
		}
	}
}

func TestPrintExplanation(t *testing.T) {
	var b strings.Builder
	PrintExplanation(&b, &nodeproxy.Explanation{Node: "n2", Pod: "shop/web", Port: 8080, Enrolled: true, Mode: "strict",
		Identity: "spiffe://td/ns/shop/sa/web", From: "shop/client",
		Policies: policy.Explanation{Ingress: policy.DirectionExplanation{DefaultDeny: true, Policies: []policy.PolicyExplanation{{
			Policy: "L7Policy shop/web", DefaultDeny: true,
			Allow: []policy.RuleExplanation{{Rule: "spec.ingress[0]", Peers: "pods app=client", Ports: []string{"8080 http (2 rules)"}}},
		}}}},
		Connection: nodeproxy.Verdict{Allowed: true, Policy: "L7Policy shop/web", Rule: "spec.ingress[0].toPorts[0]", Protocol: "http"},
		Request:    &nodeproxy.Verdict{Policy: "L7Policy shop/web", Rule: "default-deny", Reason: "no rule allows GET /x", Request: "http GET /x"},
	})
	out := b.String()
	for _, w := range []string{"Pod shop/web port 8080 (node n2; enrolled, strict", "Ingress: default deny", "allow spec.ingress[0]: from pods app=client, ports 8080 http (2 rules)",
		"Egress: no policy selects the pod", "Connection from shop/client: ALLOWED by L7Policy shop/web rule spec.ingress[0].toPorts[0]",
		"parsed as http", "Request http GET /x: DENIED by L7Policy shop/web rule default-deny (no rule allows GET /x)"} {
		if !strings.Contains(out, w) {
			t.Errorf("explanation lacks %q:\n%s", w, out)
		}
	}
}
