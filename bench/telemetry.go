package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/palisade-net/palisade/pkg/lab"
)

// The telemetry phase (issue 7): what the per-connection and per-request
// metrics and the flow records cost at full rate. On the Palisade path with
// the 10-rule L7 policy (every request parsed, judged, counted and
// recorded) and a FlowLog that selects every flow (so every request and
// connection is also written to each node proxy's flow log file), fortio
// runs the maximum-rate load in rounds of one run with the node proxies'
// telemetry off and one on (admin PUT /telemetry?enabled=...), in ABBA
// order.

// flowLogAll selects every flow.
const flowLogAll = `---
apiVersion: policy.palisade.dev/v1alpha1
kind: FlowLog
metadata: {name: bench-all}
spec: {}
`

// telemetryRules is the L7 rule set of the telemetry runs.
const telemetryRules = 10

// telemetryResults are the telemetry phase's results, one entry per round
// in order (OffQPS[i] and OnQPS[i] are round i's pair).
type telemetryResults struct {
	OffQPS []float64 `json:"offQps"`
	OnQPS  []float64 `json:"onQps"`
	OffP50 []float64 `json:"offP50ms"`
	OnP50  []float64 `json:"onP50ms"`
	OffP99 []float64 `json:"offP99ms"`
	OnP99  []float64 `json:"onP99ms"`
	// Cost of telemetry on the medians, in percent (positive: worse).
	QPSCostPercent float64 `json:"qpsCostPercent"`
	P50CostPercent float64 `json:"p50CostPercent"`
	P99CostPercent float64 `json:"p99CostPercent"`
	// PairedQPSCostPercent is the median of the rounds' own throughput
	// costs: less swayed by a drift of the host than the medians' cost.
	PairedQPSCostPercent float64 `json:"pairedQpsCostPercent"`
	// Flow records the node proxies wrote to their files and dropped
	// during the "on" rounds.
	RecordsWritten float64 `json:"recordsWritten"`
	RecordsDropped float64 `json:"recordsDropped"`
}

// setTelemetry switches every node proxy's telemetry.
func setTelemetry(ctx context.Context, l *lab.Lab, on bool) error {
	v := map[bool]string{true: "on", false: "off"}[on]
	for _, n := range l.Status().Nodes {
		out, err := l.NodeCommand(ctx, n.Name, "curl", "-sS", "-f", "--max-time", "5", "-X", "PUT",
			"http://127.0.0.1:15000/telemetry?enabled="+v).CombinedOutput()
		if err != nil {
			return fmt.Errorf("node proxy %s: telemetry %s: %v: %s", n.Name, v, err, out)
		}
		// A pointer, so that an answer without "enabled" is not taken
		// for "enabled": false.
		var got struct {
			Enabled *bool `json:"enabled"`
		}
		if err := json.Unmarshal(out, &got); err != nil || got.Enabled == nil || *got.Enabled != on {
			return fmt.Errorf("node proxy %s: telemetry %s answered %s", n.Name, v, out)
		}
	}
	return nil
}

// flowRecordCounts sums palisade_flow_records_total{sink="file"} over the
// node proxies.
func flowRecordCounts(ctx context.Context, l *lab.Lab) (written, dropped float64, err error) {
	err = scrapeNodeProxyMetrics(ctx, l, func(_, name string, lv map[string]string, v float64) {
		if name != "palisade_flow_records_total" || lv["sink"] != "file" {
			return
		}
		switch lv["outcome"] {
		case "written":
			written += v
		case "dropped":
			dropped += v
		}
	})
	if err != nil {
		return 0, 0, err
	}
	return written, dropped, nil
}

func costPercent(off, on float64, higherIsBetter bool) float64 {
	if off == 0 {
		return 0
	}
	if higherIsBetter {
		return (off - on) / off * 100
	}
	return (on - off) / off * 100
}

func (r *telemetryResults) summarize() {
	r.QPSCostPercent = costPercent(medianOf(r.OffQPS), medianOf(r.OnQPS), true)
	r.P50CostPercent = costPercent(medianOf(r.OffP50), medianOf(r.OnP50), false)
	r.P99CostPercent = costPercent(medianOf(r.OffP99), medianOf(r.OnP99), false)
	var paired []float64
	for i := range min(len(r.OffQPS), len(r.OnQPS)) {
		paired = append(paired, costPercent(r.OffQPS[i], r.OnQPS[i], true))
	}
	r.PairedQPSCostPercent = medianOf(paired)
}

func (r *telemetryResults) markdown(load loadSpec) string {
	var b strings.Builder
	b.WriteString("### Telemetry: metrics and flow records at full rate\n\n")
	fmt.Fprintf(&b, "Palisade path with the %d-rule L7 policy and a FlowLog selecting every flow (each request counted in "+
		"`palisade_l7_requests_total` and its histogram, and written to both node proxies' flow log files), fortio at a %d qps "+
		"target over %d connections, %d rounds of one run with the node proxies' telemetry off and one on, in ABBA order:\n\n",
		telemetryRules, load.QPS, load.Conns, len(r.OffQPS))
	b.WriteString("| telemetry | qps (median) | p50 ms | p99 ms | rounds (qps) |\n|---|---:|---:|---:|---|\n")
	fmt.Fprintf(&b, "| off | %.0f | %.2f | %.2f | %s |\n", medianOf(r.OffQPS), medianOf(r.OffP50), medianOf(r.OffP99), joinFloats(r.OffQPS, "%.0f"))
	fmt.Fprintf(&b, "| on | %.0f | %.2f | %.2f | %s |\n", medianOf(r.OnQPS), medianOf(r.OnP50), medianOf(r.OnP99), joinFloats(r.OnQPS, "%.0f"))
	fmt.Fprintf(&b, "\nCost of telemetry: %.1f%% throughput, %+.1f%% p50, %+.1f%% p99 (target: under 5%%); "+
		"median of the rounds' own throughput costs %.1f%%. Flow records written during the on rounds: %.0f, dropped: %.0f.\n",
		r.QPSCostPercent, r.P50CostPercent, r.P99CostPercent, r.PairedQPSCostPercent, r.RecordsWritten, r.RecordsDropped)
	return b.String()
}

// joinFloats formats v with format, comma-separated.
func joinFloats(v []float64, format string) string {
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = fmt.Sprintf(format, x)
	}
	return strings.Join(s, ", ")
}
