package nodeproxy

import (
	"bytes"
	"crypto/rand"
	"io"
	"log/slog"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/palisade-net/palisade/pkg/flowlog"
	"github.com/palisade-net/palisade/pkg/l7"
)

func TestForwardedFor(t *testing.T) {
	tests := []struct{ in, want string }{
		{`for="10.0.0.1:5000"`, "10.0.0.1:5000"},
		{`proto=https; for="[fd00::1]:80"`, "[fd00::1]:80"},
		{`FOR=10.0.0.2:1`, "10.0.0.2:1"},
		{``, ``},
		{`by=x`, `by=x`},
	}
	for _, tt := range tests {
		if got := forwardedFor(tt.in); got != tt.want {
			t.Errorf("forwardedFor(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestFlowRing(t *testing.T) {
	r := newRing[Flow](3)
	if got := r.list(); len(got) != 0 {
		t.Fatalf("empty ring lists %d", len(got))
	}
	for i := range 5 {
		r.add(Flow{Pod: string(rune('a' + i))})
	}
	var pods string
	for _, f := range r.list() {
		pods += f.Pod
	}
	if pods != "cde" {
		t.Fatalf("ring keeps %q, want the newest three oldest first (cde)", pods)
	}
}

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	acc := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		acc <- c
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s := <-acc
	t.Cleanup(func() { c.Close(); s.Close() })
	return c, s
}

// TestPipeHalfClose: a client that half-closes after its request still gets
// the whole response, byte counts are right, and both ends are closed.
func TestPipeHalfClose(t *testing.T) {
	for _, name := range []string{"tcp-tcp (splice)", "pooled-buffer"} {
		t.Run(name, func(t *testing.T) {
			app, proxyDown := tcpPair(t)   // app ⇄ proxy
			proxyUp, backend := tcpPair(t) // proxy ⇄ backend
			var down, up net.Conn = proxyDown, proxyUp
			if name == "pooled-buffer" {
				down, up = halfConn{proxyDown.(*net.TCPConn)}, halfConn{proxyUp.(*net.TCPConn)}
			}
			req := make([]byte, 300<<10)
			rand.Read(req)
			resp := bytes.Repeat([]byte("r"), 200<<10)
			type result struct{ ab, ba int64 }
			done := make(chan result, 1)
			go func() {
				ab, ba, _ := newBufPool().pipe(down, up)
				done <- result{ab, ba}
			}()
			// Backend: read the request to EOF (the client's half-close must
			// arrive), then answer and close.
			bdone := make(chan []byte, 1)
			go func() {
				got, _ := io.ReadAll(backend)
				backend.Write(resp)
				backend.Close()
				bdone <- got
			}()
			app.Write(req)
			app.(*net.TCPConn).CloseWrite()
			app.SetReadDeadline(time.Now().Add(10 * time.Second))
			got, err := io.ReadAll(app)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(<-bdone, req) {
				t.Fatal("backend did not receive the request byte-exact")
			}
			if !bytes.Equal(got, resp) {
				t.Fatalf("app got %d bytes, want %d", len(got), len(resp))
			}
			r := <-done
			if r.ab != int64(len(req)) || r.ba != int64(len(resp)) {
				t.Fatalf("counted %d/%d, want %d/%d", r.ab, r.ba, len(req), len(resp))
			}
		})
	}
}

// halfConn hides *net.TCPConn so pipe takes its generic path.
type halfConn struct{ *net.TCPConn }

func (h halfConn) CloseWrite() error { return h.TCPConn.CloseWrite() }

// newTestProxyRecords gives a bare Proxy its metrics and record pipeline.
func newTestProxyRecords(reg *prometheus.Registry) (*metrics, *flowlog.Pipeline) {
	return newMetrics(reg), flowlog.NewPipeline(flowlog.NewHub(100, flowlog.NewMetrics(reg)), nil)
}

func TestFinishRecordsFlowAndMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, recs := newTestProxyRecords(reg)
	p := &Proxy{cfg: Config{Node: "n1"}, flows: newRing[Flow](4), metrics: m, records: recs}
	client := flowlog.Endpoint{Pod: "client-7d9f-abcde", Namespace: "shop", Workload: "client", Identity: "spiffe://td/ns/shop/sa/client"}
	api := flowlog.Endpoint{Pod: "api-0", Namespace: "shop", Workload: "api", Identity: "spiffe://td/ns/shop/sa/api"}
	p.finish(&Flow{Direction: dirInboundHBONE, Start: time.Now(), src: client, dst: api}, 100, 7, nil)
	p.finish(&Flow{Direction: dirInboundHBONE, Start: time.Now(), src: client, dst: api}, 1, 1, nil)
	p.finish(&Flow{Direction: dirOutbound, Start: time.Now(), src: api}, 5, 5, nil)
	series := func(v *prometheus.CounterVec, dir string, src, dst flowlog.Endpoint) float64 {
		return testutil.ToFloat64(v.WithLabelValues(dir, orUnknown(src.Namespace), orUnknown(src.Workload), orUnknown(src.Identity),
			orUnknown(dst.Namespace), orUnknown(dst.Workload), orUnknown(dst.Identity)))
	}
	if got := series(p.metrics.closed, dirInboundHBONE, client, api); got != 2 {
		t.Errorf("closed inbound-hbone client→api = %v, want 2", got)
	}
	if got := series(p.metrics.sent, dirInboundHBONE, client, api); got != 101 {
		t.Errorf("sent inbound-hbone = %v, want 101", got)
	}
	if got := series(p.metrics.recv, dirOutbound, api, flowlog.Endpoint{}); got != 5 {
		t.Errorf("received outbound api→unknown = %v, want 5", got)
	}
	fl := p.Flows()
	if len(fl) != 3 || fl[0].Verdict != "allowed" || fl[0].BytesSent != 100 || fl[0].BytesRecv != 7 {
		t.Errorf("flows = %+v", fl)
	}
	got := recs.Hub().Recent(flowlog.Filter{}, 0)
	if len(got) != 3 || got[0].Type != flowlog.TypeConnection || got[0].Protocol != flowlog.ProtoTCP || got[0].Node != "n1" ||
		got[0].Source.Workload != "client" || got[0].Destination.Pod != "api-0" || got[0].BytesSent != 100 || got[0].Verdict != flowlog.Allowed {
		t.Errorf("records = %+v", got)
	}
}

func TestObserveRequestLabels(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, recs := newTestProxyRecords(reg)
	p := &Proxy{cfg: Config{Node: "n1"}, metrics: m, records: recs, log: slog.New(slog.DiscardHandler)}
	f := &Flow{Direction: dirInboundHBONE, src: flowlog.Endpoint{Namespace: "shop", Workload: "client"}, dst: flowlog.Endpoint{Namespace: "shop", Workload: "api"}}
	var last atomic.Pointer[reqCacheEntry]
	deny := l7.Verdict{Policy: "L7Policy shop/api", Rule: "spec.ingress[0]", Reason: "no rule"}
	allow := l7.Verdict{Allow: true, Policy: "L7Policy shop/api", Rule: "spec.ingress[0].toPorts[0].rules.http[0]"}
	for _, tc := range []struct {
		rec                               l7.Record
		protocol, method, status, verdict string
		rule                              string
	}{
		{l7.Record{Protocol: "http/1.1", HTTP: &l7.HTTPRecord{Method: "GET", Path: "/x", Status: 200}, Verdict: allow}, "http", "GET", "200", "allowed", allow.Rule},
		{l7.Record{Protocol: "h2", HTTP: &l7.HTTPRecord{Method: "BREW", Path: "/pot", Status: 403}, Verdict: deny}, "http", "OTHER", "403", "denied", deny.Rule},
		{l7.Record{Protocol: "grpc", GRPC: &l7.GRPCRecord{Service: "pkg.Svc", Method: "Get", Status: 7}, Verdict: deny}, "grpc", "pkg.Svc/Get", "7", "denied", deny.Rule},
		{l7.Record{Protocol: "grpc", GRPC: &l7.GRPCRecord{Service: "pkg.Svc", Method: "Get", Status: -1}, Verdict: allow}, "grpc", "pkg.Svc/Get", "", "allowed", allow.Rule},
		{l7.Record{Protocol: "kafka", Kafka: &l7.KafkaRecord{API: "Produce", ErrorCode: 29}, Verdict: deny}, "kafka", "Produce", "29", "denied", deny.Rule},
	} {
		p.observe(f, &last, tc.rec)
		c := p.metrics.requests.WithLabelValues(dirInboundHBONE, tc.protocol, tc.method, tc.status, tc.verdict, "L7Policy shop/api", tc.rule,
			"shop", "client", "shop", "api")
		if got := testutil.ToFloat64(c); got != 1 {
			t.Errorf("%s %s %s %s: counted %v, want 1", tc.protocol, tc.method, tc.status, tc.verdict, got)
		}
	}
	if n := testutil.CollectAndCount(p.metrics.reqDuration); n != 5 {
		t.Errorf("duration series = %d, want 5 (one per protocol and verdict)", n)
	}
	denied := recs.Hub().Recent(flowlog.Filter{Verdicts: []string{flowlog.Denied}}, 0)
	if len(denied) != 3 || denied[2].Kafka == nil || denied[2].Protocol != "kafka" || denied[1].HTTPVersion != "2" {
		t.Errorf("denied records = %+v", denied)
	}
	// Repeated labels go through the connection's cached series.
	again := l7.Record{Protocol: "grpc", GRPC: &l7.GRPCRecord{Service: "pkg.Svc", Method: "Get", Status: 7}, Verdict: deny}
	p.observe(f, &last, again)
	p.observe(f, &last, again)
	if got := testutil.ToFloat64(p.metrics.requests.WithLabelValues(dirInboundHBONE, "grpc", "pkg.Svc/Get", "7", "denied",
		"L7Policy shop/api", deny.Rule, "shop", "client", "shop", "api")); got != 3 {
		t.Errorf("repeated denied gRPC call counted %v, want 3", got)
	}
}
