package nodeproxy

import (
	"log/slog"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/palisade-net/palisade/pkg/flowlog"
	"github.com/palisade-net/palisade/pkg/l7"
)

// BenchmarkObserve is the per-request cost of telemetry: the request
// record, the metrics and the flow record (published to the hub and, with
// a FlowLog selecting everything, queued for the file), against telemetry
// off in the same run.
func BenchmarkObserve(b *testing.B) {
	rec := l7.Record{Protocol: "http/1.1", Time: time.Now(), Duration: 300 * time.Microsecond,
		HTTP:    &l7.HTTPRecord{Method: "POST", Path: "/echo", Host: "server.mesh", Status: 200},
		Verdict: l7.Verdict{Allow: true, Policy: "L7Policy mesh/bench-l7", Rule: "spec.ingress[0].toPorts[0].rules.http[9]"}}
	f := &Flow{Direction: dirInboundHBONE, Pod: "mesh/server", Source: "10.244.1.2:40000", Destination: "10.244.2.2:8080",
		src: flowlog.Endpoint{Pod: "client", Namespace: "mesh", Workload: "client", Identity: "spiffe://cluster.local/ns/mesh/sa/client", Address: "10.244.1.2:40000"},
		dst: flowlog.Endpoint{Pod: "server", Namespace: "mesh", Workload: "server", Identity: "spiffe://cluster.local/ns/mesh/sa/server", Address: "10.244.2.2:8080"}}
	for _, tc := range []struct {
		name      string
		telemetry bool
		file      bool
	}{{"off", false, false}, {"on", true, false}, {"on+file", true, true}} {
		b.Run(tc.name, func(b *testing.B) {
			reg := prometheus.NewRegistry()
			fm := flowlog.NewMetrics(reg)
			var file *flowlog.File
			if tc.file {
				var err error
				file, err = flowlog.OpenFile(flowlog.FileConfig{Path: filepath.Join(b.TempDir(), "f.jsonl"), MaxBytes: 64 << 20, MaxFiles: 2, Queue: 1 << 20}, fm, slog.New(slog.DiscardHandler))
				if err != nil {
					b.Fatal(err)
				}
			}
			recs := flowlog.NewPipeline(flowlog.NewHub(2000, fm), file)
			if tc.file {
				recs.SetSelection(mustSelectAll(b))
			}
			p := &Proxy{cfg: Config{Node: "n2"}, metrics: newMetrics(reg), records: recs, log: slog.New(slog.DiscardHandler)}
			p.telemetryOff.Store(!tc.telemetry)
			var last atomic.Pointer[reqCacheEntry]
			b.ReportAllocs()
			for b.Loop() {
				p.observe(f, &last, rec)
			}
			b.StopTimer()
			recs.Close() // the file writer's work counts too: it runs on the same CPUs
		})
	}
}

func mustSelectAll(b *testing.B) *flowlog.Selection {
	sel, problems := flowlog.Compile(toObjects(b, "apiVersion: policy.palisade.dev/v1alpha1\nkind: FlowLog\nmetadata: {name: all}\nspec: {}\n"))
	if len(problems) > 0 {
		b.Fatal(problems)
	}
	return sel
}
