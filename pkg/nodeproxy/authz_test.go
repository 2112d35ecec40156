package nodeproxy

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/yaml"

	"github.com/palisade-net/palisade/pkg/cluster"
	"github.com/palisade-net/palisade/pkg/l7"
	"github.com/palisade-net/palisade/pkg/policy"
	"github.com/palisade-net/palisade/pkg/workload"
)

var td = spiffeid.RequireTrustDomainFromString("cluster.local")

// testProxy is a Proxy with a cluster view of pods (namespace shop) and
// the given policy YAML, without listeners.
func testProxy(t *testing.T, pods map[string]string, policies ...string) *Proxy {
	t.Helper()
	m, recs := newTestProxyRecords(prometheus.NewRegistry())
	p := &Proxy{
		cfg:          Config{TrustDomain: td, DialTimeout: time.Second},
		log:          slog.New(slog.DiscardHandler),
		flows:        newRing[Flow](16),
		metrics:      m,
		records:      recs,
		inspectors:   inspectors(),
		clusterReady: make(chan struct{}),
	}
	snap := &cluster.Snapshot{Namespaces: map[string]*corev1.Namespace{"shop": {ObjectMeta: metav1.ObjectMeta{Name: "shop", Labels: map[string]string{workload.LabelMTLS: "enabled"}}}}}
	for name, ip := range pods {
		snap.Pods = append(snap.Pods, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "shop", UID: types.UID("uid-" + name), Labels: map[string]string{"app": name}},
			Spec:       corev1.PodSpec{NodeName: "n1", ServiceAccountName: sa(name)},
			Status:     corev1.PodStatus{PodIP: ip, Phase: corev1.PodRunning},
		})
	}
	snap.Other = toObjects(t, policies...)
	p.UpdateCluster(snap)
	return p
}

// sa maps pod names to service accounts: "client" and "twin" share one.
func sa(pod string) string {
	if pod == "twin" {
		return "client"
	}
	return pod
}

func id(sa string) spiffeid.ID {
	i, _ := workload.IdentityFor(td, "shop", sa)
	return i
}

func TestPeerEndpointTakesLabelsOnlyFromVerifiedFacts(t *testing.T) {
	p := testProxy(t, map[string]string{"client": "10.0.0.1", "twin": "10.0.0.2", "web": "10.0.0.3"})
	tcp := func(s string) net.Addr { return net.TCPAddrFromAddrPort(netip.MustParseAddrPort(s)) }
	tests := []struct {
		name      string
		peer      spiffeid.ID
		forwarded string
		remote    net.Addr
		wantApp   string
	}{
		{"forwarded pod has the peer's identity and sent the tunnel", id("client"), `for="10.0.0.1:4000"`, tcp("10.0.0.1:5000"), "client"},
		{"forwarded pod has another identity", id("client"), `for="10.0.0.3:4000"`, tcp("10.0.0.3:5000"), ""},
		{"same service account, tunnel from another pod", id("client"), `for="10.0.0.2:4000"`, tcp("10.0.0.1:5000"), ""},
		{"no forwarded header", id("client"), ``, tcp("10.0.0.1:5000"), ""},
		{"unknown address", id("client"), `for="10.9.9.9:1"`, tcp("10.9.9.9:5000"), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := p.peerEndpoint(tt.peer, tt.forwarded, tt.remote)
			if e.Labels["app"] != tt.wantApp {
				t.Errorf("labels %v, want app=%q", e.Labels, tt.wantApp)
			}
			if e.Identity != tt.peer || e.Namespace != "shop" || e.ServiceAccount != "client" {
				t.Errorf("endpoint %+v lost the verified identity", e)
			}
		})
	}
}

const allowClientHTTP = `
apiVersion: policy.palisade.dev/v1alpha1
kind: L7Policy
metadata: {name: web, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: "8080"}]
      rules:
        http: [{method: GET}]
`

const allowClientL4 = `
apiVersion: policy.palisade.dev/v1alpha1
kind: L7Policy
metadata: {name: web, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: "8080"}]
`

func compileYAML(t *testing.T, docs ...string) *policy.Set {
	t.Helper()
	set, problems := policy.Compile(toObjects(t, docs...))
	if policy.HasErrors(problems) {
		t.Fatalf("policy problems: %v", problems)
	}
	return set
}

func webConn(p *Proxy) *authorized {
	src := p.addrEndpoint(netip.MustParseAddr("10.0.0.1"))
	dst := p.addrEndpoint(netip.MustParseAddr("10.0.0.3"))
	return &authorized{p: p, direction: ingress, src: src, dst: dst, port: 8080}
}

func TestStillAllowed(t *testing.T) {
	p := testProxy(t, map[string]string{"client": "10.0.0.1", "web": "10.0.0.3"})
	none, _ := policy.Compile(nil)
	l4 := compileYAML(t, allowClientL4)
	l7set := compileYAML(t, allowClientHTTP)
	nobody := compileYAML(t, strings.ReplaceAll(allowClientL4, "{app: client}", "{app: nobody}"))
	tests := []struct {
		name  string
		proto l7.Protocol
		set   *policy.Set
		ok    bool
		why   string
	}{
		{"raw, no policy", l7.None, none, true, ""},
		{"raw, L4 allow", l7.None, l4, true, ""},
		{"raw, port gains L7 rules", l7.None, l7set, false, "not inspected from its start"},
		{"raw, allowance withdrawn", l7.None, nobody, false, "no longer allows"},
		{"inspected, rules relaxed to L4", l7.HTTP, l4, true, ""},
		{"inspected, rules stay", l7.HTTP, l7set, true, ""},
		{"inspected, allowance withdrawn", l7.HTTP, nobody, false, "no longer allows"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := webConn(p)
			a.proto = tt.proto
			ok, why := a.stillAllowed(tt.set)
			if ok != tt.ok || !strings.Contains(why, tt.why) {
				t.Fatalf("stillAllowed = %v %q, want %v containing %q", ok, why, tt.ok, tt.why)
			}
		})
	}
}

// A policy that arrives between a connection's decision and its
// registration must still reach it (the register re-check), and one that
// arrives later reaches it through revalidate.
func TestPolicyChangeReachesEveryLiveConnection(t *testing.T) {
	p := testProxy(t, map[string]string{"client": "10.0.0.1", "web": "10.0.0.3"})
	pp := &podProxy{p: p, ctx: context.Background()}
	denyAll := strings.ReplaceAll(allowClientL4, "{app: client}", "{app: nobody}")

	// Decided under "no policy", then the deny arrives before registration.
	a := webConn(p)
	if d := a.current(); !d.Allow {
		t.Fatalf("no policy yet, but denied: %s", d.Reason)
	}
	var ended []string
	a.end = func(r string) { ended = append(ended, r) }
	p.updatePolicy(toObjects(t, denyAll))
	if pp.register(a) {
		t.Fatal("register admitted a connection the current policy denies")
	}
	if a.revoked.Load() == nil {
		t.Fatal("no revocation reason recorded")
	}

	// Registered under "allowed", then the deny arrives.
	p.updatePolicy(nil)
	b := webConn(p)
	b.end = func(r string) { ended = append(ended, r) }
	if !pp.register(b) {
		t.Fatal("register refused an allowed connection")
	}
	p.updatePolicy(toObjects(t, denyAll))
	if len(ended) != 1 || !strings.Contains(ended[0], "no longer allows") {
		t.Fatalf("revalidate ended %v, want the registered connection ended once", ended)
	}
}

func toObjects(t testing.TB, docs ...string) []*unstructured.Unstructured {
	t.Helper()
	var out []*unstructured.Unstructured
	for _, y := range docs {
		u := &unstructured.Unstructured{}
		if err := yaml.Unmarshal([]byte(y), &u.Object); err != nil {
			t.Fatal(err)
		}
		out = append(out, u)
	}
	return out
}

// An inspector that ends a connection for malformed traffic leaves its
// reason in the flow record, whatever order the closes happen in.
func TestInspectorFailureReachesTheFlowRecord(t *testing.T) {
	p := testProxy(t, map[string]string{"client": "10.0.0.1", "web": "10.0.0.3"})
	p.inspectors[l7.HTTP] = func(ctx context.Context, client, backend net.Conn, s *l7.Session) error {
		client.Close()
		backend.Close() // the contract: closed before returning
		return errors.New("malformed: conflicting Content-Length")
	}
	pp := &podProxy{p: p, ctx: context.Background()}
	a := webConn(p)
	a.proto = l7.HTTP
	c1, c2 := net.Pipe()
	defer c2.Close()
	b1, b2 := net.Pipe()
	defer b2.Close()
	f := &Flow{Direction: dirInboundHBONE, Start: time.Now()}
	sent, recv := pp.inspectAndClose(c1, &countedConn{Conn: b1}, a, f)
	p.finish(f, sent, recv, a)
	got := p.flows.list()
	if len(got) != 1 || got[0].Verdict != "failed" || !strings.Contains(got[0].Reason, "Content-Length") {
		t.Fatalf("flow records %+v, want one failed flow naming the reason", got)
	}
}

// A snapshot whose policies did not change keeps the compiled set, so live
// connections keep their cached decisions; a changed policy replaces it.
func TestUnchangedPoliciesKeepTheSet(t *testing.T) {
	p := testProxy(t, map[string]string{"client": "10.0.0.1", "web": "10.0.0.3"}, allowClientL4)
	before := p.policy.Load()
	p.updatePolicy(toObjects(t, allowClientL4))
	if p.policy.Load() != before {
		t.Fatal("an identical policy snapshot recompiled the set")
	}
	p.updatePolicy(toObjects(t, allowClientHTTP))
	if p.policy.Load() == before {
		t.Fatal("a changed policy did not replace the set")
	}
}

func TestExplain(t *testing.T) {
	p := testProxy(t, map[string]string{"client": "10.0.0.1", "other": "10.0.0.2", "web": "10.0.0.3"}, allowClientHTTP)
	for _, tc := range []struct {
		query            string
		connAllowed      bool
		connProto        string
		reqAllowed       *bool
		reqRule, wantErr string
	}{
		{query: "pod=shop/web&port=8080&from=shop/client", connAllowed: true, connProto: "http"},
		{query: "pod=shop/web&port=8080&from=shop/client&method=GET&path=/x", connAllowed: true, connProto: "http",
			reqAllowed: ptr(true), reqRule: "spec.ingress[0].toPorts[0].rules.http[0]"},
		{query: "pod=shop/web&port=8080&from=shop/client&method=POST&path=/x", connAllowed: true, connProto: "http",
			reqAllowed: ptr(false), reqRule: policy.DefaultDenyRule},
		{query: "pod=shop/web&port=8080&from=shop/other&path=/x", reqAllowed: ptr(false)},
		{query: "pod=shop/web&port=8080&fromIdentity=spiffe://cluster.local/ns/shop/sa/client"},
		{query: "pod=shop/web&port=8080", connAllowed: false},
		{query: "pod=shop/nope&port=8080", wantErr: "no pod shop/nope"},
		{query: "pod=shop/web&port=http", wantErr: "port"},
		{query: "pod=shop/web&port=80&grpc=nomethod", wantErr: "grpc"},
		{query: "pod=shop/web&port=80&kafkaApi=Frobnicate", wantErr: "kafkaApi"},
	} {
		q, _ := url.ParseQuery(tc.query)
		e, err := p.Explain(q)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%s: error %v, want %q", tc.query, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s: %v", tc.query, err)
		}
		if e.Connection.Allowed != tc.connAllowed || e.Connection.Protocol != tc.connProto && tc.connAllowed {
			t.Errorf("%s: connection %+v, want allowed=%v protocol %q", tc.query, e.Connection, tc.connAllowed, tc.connProto)
		}
		if len(e.Policies.Ingress.Policies) != 1 || e.Policies.Ingress.Policies[0].Policy != "L7Policy shop/web" {
			t.Errorf("%s: policies %+v", tc.query, e.Policies)
		}
		switch {
		case tc.reqAllowed == nil && e.Request != nil:
			t.Errorf("%s: request verdict %+v without a request", tc.query, e.Request)
		case tc.reqAllowed != nil && (e.Request == nil || e.Request.Allowed != *tc.reqAllowed || (tc.reqRule != "" && e.Request.Rule != tc.reqRule)):
			t.Errorf("%s: request verdict %+v, want allowed=%v rule %q", tc.query, e.Request, *tc.reqAllowed, tc.reqRule)
		}
	}
}

func ptr[T any](v T) *T { return &v }

func TestConfigDumpHoldsPoliciesAndFlowLogs(t *testing.T) {
	p := testProxy(t, map[string]string{"web": "10.0.0.3"}, allowClientHTTP,
		"apiVersion: policy.palisade.dev/v1alpha1\nkind: FlowLog\nmetadata: {name: all}\nspec: {}\n")
	d := p.ConfigDump()
	if len(d.Policies) != 1 || d.Policies[0].GetName() != "web" || len(d.FlowLogs) != 1 || d.FlowLogs[0].GetName() != "all" {
		t.Errorf("config dump policies %v, flow logs %v", d.Policies, d.FlowLogs)
	}
	if d.PolicyProblems == nil {
		t.Error("policy problems must be an empty list, not null")
	}
}
