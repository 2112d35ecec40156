package main

import (
	"strings"
	"testing"
)

func TestParseGuardBenchmark(t *testing.T) {
	out := `goos: linux
BenchmarkGuard/v4-hbone-2         	       2	    467116 ns/op	        39.00 baseline-ns/pkt	       157.0 ns/pkt	       118.0 overhead-ns/pkt
BenchmarkGuard/arp-2                       	       2	    183972 ns/op	        38.50 baseline-ns/pkt	        39.50 ns/pkt	         1.000 overhead-ns/pkt
BenchmarkGuard/v4-hbone-2         	       2	    467116 ns/op	        41.00 baseline-ns/pkt	       161.0 ns/pkt	       120.0 overhead-ns/pkt
BenchmarkGuard/v4-hbone-2         	       2	    467116 ns/op	        40.00 baseline-ns/pkt	       159.0 ns/pkt	       119.0 overhead-ns/pkt
PASS
`
	got, err := parseGuardBenchmark(out)
	if err != nil {
		t.Fatal(err)
	}
	want := []ebpfPacketCost{{"v4-hbone", 159, 40, 119}, {"arp", 39.5, 38.5, 1}}
	if len(got) != len(want) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("case %d: %+v, want %+v", i, got[i], want[i])
		}
	}
	if _, err := parseGuardBenchmark("PASS\n"); err == nil {
		t.Error("no benchmark line: want an error")
	}
	if _, err := parseGuardBenchmark("BenchmarkGuard/x-2  1  5 ns/op\n"); err == nil || !strings.Contains(err.Error(), "ns/pkt") {
		t.Errorf("line without ns/pkt: %v", err)
	}
	md := (&ebpfResults{PacketCost: want, WithoutGbps: []float64{10, 12}, WithGbps: []float64{9.9, 11.9}, CostPercent: 0.9, PairedCostPercent: 0.95, AttachMode: "tcx"}).markdown()
	for _, s := range []string{"| v4-hbone | 159.0 | 40.0 | 119.0 |", "| without the programs | 11.00 | 10.00, 12.00 |", "0.9% by the medians", "differences is 0.9% (target: under 3%)", "(tcx)", "2 rounds"} {
		if !strings.Contains(md, s) {
			t.Errorf("markdown lacks %q:\n%s", s, md)
		}
	}
}
