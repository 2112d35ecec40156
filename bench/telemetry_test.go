package main

import (
	"slices"
	"strings"
	"testing"
)

func TestTelemetrySummary(t *testing.T) {
	r := &telemetryResults{
		OffQPS: []float64{10000, 10200, 9800}, OnQPS: []float64{9700, 9900, 9500},
		OffP50: []float64{2, 2, 2}, OnP50: []float64{2.1, 2.1, 2.1},
		OffP99: []float64{10, 10, 10}, OnP99: []float64{9, 9, 9},
		RecordsWritten: 123, RecordsDropped: 0,
	}
	r.summarize()
	if r.QPSCostPercent != 3 || r.P50CostPercent < 4.99 || r.P50CostPercent > 5.01 || r.P99CostPercent != -10 {
		t.Fatalf("costs %v %v %v, want 3, 5, -10", r.QPSCostPercent, r.P50CostPercent, r.P99CostPercent)
	}
	// The rounds' own costs: 3.0, 2.94, 3.06 %.
	if r.PairedQPSCostPercent < 2.99 || r.PairedQPSCostPercent > 3.01 {
		t.Errorf("paired qps cost %v, want 3.0 (the median of the rounds' own costs)", r.PairedQPSCostPercent)
	}
	res := &results{Telemetry: r, MaxLoad: loadSpec{QPS: 20000, Conns: 64}}
	res.evaluate()
	if len(res.Targets) != 1 || res.Targets[0].Met {
		t.Errorf("targets %+v: a 5%% p50 cost must not meet the under-5%% target", res.Targets)
	}
	md := r.markdown(res.MaxLoad)
	for _, want := range []string{"| off | 10000 |", "| on | 9700 |", "3.0% throughput", "3 rounds", "own throughput costs 3.0%", "written during the on rounds: 123"} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}

	// Within 5%, but without flow records written the flow logging was
	// not measured: not met; met once records were written.
	ok := &telemetryResults{QPSCostPercent: 1, P50CostPercent: 1, P99CostPercent: 1}
	res = &results{Telemetry: ok, MaxLoad: res.MaxLoad}
	res.evaluate()
	if len(res.Targets) != 1 || res.Targets[0].Met {
		t.Errorf("targets %+v: no flow records written must not meet the target", res.Targets)
	}
	ok.RecordsWritten = 1
	res.evaluate()
	if len(res.Targets) != 1 || !res.Targets[0].Met {
		t.Errorf("targets %+v: a 1%% cost with flow records written and none dropped must meet the target", res.Targets)
	}
}

// TestTelemetryRulesMeasured: the telemetry phase runs on the path of the
// L7 scenario with telemetryRules rules, so that rule set must be measured.
func TestTelemetryRulesMeasured(t *testing.T) {
	if !slices.Contains(ruleSets, telemetryRules) {
		t.Errorf("ruleSets %v lacks telemetryRules (%d)", ruleSets, telemetryRules)
	}
}
