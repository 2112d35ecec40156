package main

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"math"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// Targets (from the benchmark issue) and the published reference.
const (
	targetAddedP99ms = 0.5
	targetIdleRSSMB  = 30.0
	// The eBPF issue's: the programs cost under 3 % of iperf3 throughput.
	targetEBPFCostPercent = 3.0
	// The L7 issue's targets: L7 adds under 0.1 ms at p99 over the L4
	// tunnel at 1000 qps; 1,000 rules cost under 5 µs per request;
	// 20,000 rps through one node proxy without latency collapse, which
	// the benchmark calls a p99 more than collapseFactor times the same
	// path's p99 at the fixed rate (or any error).
	targetL7AddedP99ms = 0.1
	targetRulesCostNs  = 5000.0
	targetRate         = 20000.0
	collapseFactor     = 10.0
	ztunnelAddedP99    = 0.20 // ms, Istio 1.22 docs, two ztunnel hops, 1000 rps, 1 KB
	ztunnelAddedP90    = 0.17
	ztunnelCPUPerKRP   = 0.06 // vCPU per 1000 rps of 1 KB (Istio 1.24 docs)
	ztunnelMBPerKRPS   = 12.0
)

type machine struct {
	NProc     int     `json:"nproc"`
	CPU       string  `json:"cpu"`
	MemGiB    float64 `json:"memGiB"`
	Kernel    string  `json:"kernel"`
	Go        string  `json:"go"`
	Commit    string  `json:"commit"`
	LoadAvg   string  `json:"loadavgAtStart"`
	OtherLabs int     `json:"otherLabNetns"`
}

func (m machine) summary() string {
	s := fmt.Sprintf("%d CPUs (%s), %.0f GiB, kernel %s, %s, commit %s, load average %s", m.NProc, m.CPU, m.MemGiB, m.Kernel, m.Go, m.Commit, m.LoadAvg)
	if m.OtherLabs > 0 {
		s += fmt.Sprintf(", %d network namespaces of other labs present", m.OtherLabs)
	}
	return s
}

func cmdOut(ctx context.Context, name string, args ...string) string {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(out))
}

func describeMachine(ctx context.Context) machine {
	m := machine{NProc: runtime.NumCPU(), Kernel: cmdOut(ctx, "uname", "-r"), Go: cmdOut(ctx, "go", "version")}
	if n := cmdOut(ctx, "nproc"); n != "?" {
		fmt.Sscan(n, &m.NProc)
	}
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		if mm := regexp.MustCompile(`(?m)^model name\s*:\s*(.+)$`).FindSubmatch(data); mm != nil {
			m.CPU = strings.TrimSpace(string(mm[1]))
		}
	}
	if data, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb float64
		if mm := regexp.MustCompile(`(?m)^MemTotal:\s*(\d+) kB`).FindSubmatch(data); mm != nil {
			fmt.Sscan(string(mm[1]), &kb)
			m.MemGiB = kb / (1 << 20)
		}
	}
	if data, err := os.ReadFile("/proc/loadavg"); err == nil {
		f := strings.Fields(string(data))
		if len(f) >= 3 {
			m.LoadAvg = strings.Join(f[:3], " ")
		}
	}
	m.Commit = cmdOut(ctx, "git", "rev-parse", "--short", "HEAD")
	if st := cmdOut(ctx, "git", "status", "--porcelain", "--untracked-files=no"); st != "" && st != "?" {
		m.Commit += " (with local changes)"
	}
	if entries, err := os.ReadDir("/var/run/netns"); err == nil {
		m.OtherLabs = len(entries)
	}
	return m
}

func toolVersions(ctx context.Context) map[string]string {
	first := func(s string) string { l, _, _ := strings.Cut(s, "\n"); return l }
	return map[string]string{
		"iperf3":  first(cmdOut(ctx, "iperf3", "--version")),
		"haproxy": first(cmdOut(ctx, "haproxy", "-v")),
		"fortio":  first(cmdOut(ctx, "fortio", "version")),
		"openssl": first(cmdOut(ctx, "openssl", "version")),
	}
}

type target struct {
	Name   string `json:"name"`
	Result string `json:"result"`
	Met    bool   `json:"met"`
}

type results struct {
	Date         time.Time         `json:"date"`
	Machine      machine           `json:"machine"`
	Versions     map[string]string `json:"versions"`
	Phases       []string          `json:"phases"`
	Paths        []string          `json:"paths"`
	Full         bool              `json:"full"`
	Load         loadSpec          `json:"load"`
	IperfSeconds float64           `json:"iperfSeconds"`
	// AfterLoadIdleSeconds is the idle time before the RSS readings
	// after load.
	AfterLoadIdleSeconds float64           `json:"afterLoadIdleSeconds"`
	FortioSeconds        float64           `json:"fortioSeconds"`
	OneConnSeconds       float64           `json:"oneConnSeconds"`
	Rounds               int               `json:"rounds"`
	MaxLoad              loadSpec          `json:"maxLoad"`
	MaxSeconds           float64           `json:"maxSeconds"`
	HAProxyTLS           string            `json:"haproxyTLS,omitempty"`
	Scenarios            []*scenario       `json:"scenarios"`
	EBPF                 *ebpfResults      `json:"ebpf,omitempty"`
	Telemetry            *telemetryResults `json:"telemetry,omitempty"`
	// RSS in MB of the two hops (client side, server side).
	PalisadeIdleCPU  []float64 `json:"palisadeIdleCpuCores"`
	HAProxyIdleCPU   []float64 `json:"haproxyIdleCpuCores,omitempty"`
	PalisadeIdleRSS  []float64 `json:"palisadeIdleRssMB"`
	PalisadeAfterRSS []float64 `json:"palisadeIdleAfterLoadRssMB"`
	// PalisadeIdleRSSAnon and PalisadeAfterRSSAnon are the anonymous part
	// of the RSS readings (heap, stacks), without the executable's pages.
	PalisadeIdleRSSAnon  []float64 `json:"palisadeIdleRssAnonMB,omitempty"`
	PalisadeAfterRSSAnon []float64 `json:"palisadeIdleAfterLoadRssAnonMB,omitempty"`
	// PalisadeAfterMaxRSS is read after the maximum-rate runs.
	PalisadeAfterMaxRSS []float64       `json:"palisadeIdleAfterMaxRateRssMB,omitempty"`
	HAProxyIdleRSS      []float64       `json:"haproxyIdleRssMB,omitempty"`
	HAProxyAfterRSS     []float64       `json:"haproxyIdleAfterLoadRssMB,omitempty"`
	PolicySwitches      []policySwitch  `json:"policySwitches,omitempty"`
	GoBench             *goBenchResults `json:"goBenchmarks,omitempty"`
	Enroll              *enrollResults  `json:"enroll,omitempty"`
	Targets             []target        `json:"targets"`
}

func (r *results) get(key string) *scenario {
	for _, s := range r.Scenarios {
		if s.Key == key {
			return s
		}
	}
	return nil
}

// pick returns the scenarios of keys that exist and have has.
func (r *results) pick(has func(s *scenario) bool, keys ...string) []*scenario {
	var out []*scenario
	for _, k := range keys {
		if s := r.get(k); s != nil && has(s) {
			out = append(out, s)
		}
	}
	return out
}

func hasLatency(s *scenario) bool { return s.has(bursts) }
func hasPaced(s *scenario) bool   { return s.has(paced) }
func hasMax(s *scenario) bool     { return s.Max != nil }

func l7Key(n int) string { return fmt.Sprintf("l7-%d", n) }

func metStr(ok bool) string {
	if ok {
		return "met"
	}
	return "NOT met"
}

func (r *results) evaluate() {
	r.Targets = nil
	d, p, h := r.get("direct"), r.get("palisade"), r.get("haproxy")
	if p != nil && h != nil && p.Iperf != nil && h.Iperf != nil {
		r.Targets = append(r.Targets, target{
			Name: "Throughput at least HAProxy's (iperf3, 1 stream)",
			Met:  p.Iperf.Gbps >= h.Iperf.Gbps,
			Result: fmt.Sprintf("Palisade %.2f Gbit/s vs HAProxy %.2f Gbit/s (%+.0f%%)", p.Iperf.Gbps, h.Iperf.Gbps,
				100*(p.Iperf.Gbps/h.Iperf.Gbps-1)),
		})
	}
	for _, pc := range []pacing{bursts, paced} {
		if d == nil || p == nil || !d.has(pc) || !p.has(pc) {
			continue
		}
		dr, _ := d.runs(pc)
		pr, _ := p.runs(pc)
		added := pr.P99 - dr.P99
		hap := ""
		if h != nil {
			if hr, _ := h.runs(pc); h.has(pc) {
				hap = fmt.Sprintf("; HAProxy pair %+.3f ms", hr.P99-dr.P99)
			}
		}
		r.Targets = append(r.Targets, target{
			Name: fmt.Sprintf("Added p99 latency within %.1f ms of direct (%d qps, %d B, %d conns, %s)", targetAddedP99ms, r.Load.QPS, r.Load.Payload, r.Load.Conns, pc.describe()),
			Met:  added <= targetAddedP99ms,
			Result: fmt.Sprintf("%+.3f ms (p99 %.3f vs %.3f ms)%s; ztunnel's published two-hop figure +%.2f ms",
				added, pr.P99, dr.P99, hap, ztunnelAddedP99),
		})
	}
	if len(r.PalisadeIdleRSS) == 2 && len(r.PalisadeAfterRSS) == 2 {
		idle := max(r.PalisadeIdleRSS[0], r.PalisadeIdleRSS[1])
		after := max(r.PalisadeAfterRSS[0], r.PalisadeAfterRSS[1])
		r.Targets = append(r.Targets, target{
			Name: fmt.Sprintf("Node proxy RSS under %.0f MB idle", targetIdleRSSMB),
			Met:  idle < targetIdleRSSMB,
			Result: fmt.Sprintf("%.1f / %.1f MB idle with the benchmark's pods enrolled (node1 / node2); %.1f / %.1f MB idle again %.0f s after the load (%s)",
				r.PalisadeIdleRSS[0], r.PalisadeIdleRSS[1], r.PalisadeAfterRSS[0], r.PalisadeAfterRSS[1], r.AfterLoadIdleSeconds, map[bool]string{true: "also under", false: "over"}[after < targetIdleRSSMB]),
		})
	}
	r.evaluateL7()
	r.evaluateEnroll()
	if e := r.EBPF; e != nil && len(e.WithGbps) > 0 {
		r.Targets = append(r.Targets, target{
			Name: fmt.Sprintf("eBPF programs cost under %.0f%% of iperf3 throughput", targetEBPFCostPercent),
			Met:  e.CostPercent < targetEBPFCostPercent,
			Result: fmt.Sprintf("%.1f%% by the medians of %d ABBA rounds (%.2f vs %.2f Gbit/s); median of the rounds' own differences %.1f%%",
				e.CostPercent, len(e.WithGbps), medianOf(e.WithoutGbps), medianOf(e.WithGbps), e.PairedCostPercent),
		})
	}
	if t := r.Telemetry; t != nil {
		worst := max(t.QPSCostPercent, t.P50CostPercent, t.P99CostPercent)
		r.Targets = append(r.Targets, target{
			Name: "Metrics plus flow logging at full rate cost under 5% (throughput and latency)",
			Met:  worst < 5 && t.RecordsWritten > 0 && t.RecordsDropped == 0,
			Result: fmt.Sprintf("%.1f%% qps, %+.1f%% p50, %+.1f%% p99 (medians of %d ABBA rounds; median of the rounds' own qps costs %.1f%%); %.0f flow records written, %.0f dropped",
				t.QPSCostPercent, t.P50CostPercent, t.P99CostPercent, len(t.OffQPS), t.PairedQPSCostPercent, t.RecordsWritten, t.RecordsDropped),
		})
	}
}

// evaluateL7 adds the targets of the L7 issue.
func (r *results) evaluateL7() {
	p := r.get("palisade")
	for _, pc := range []pacing{bursts, paced} {
		l7 := r.pick(func(s *scenario) bool { return s.has(pc) }, l7Key(10), l7Key(1000))
		if p == nil || !p.has(pc) || len(l7) == 0 {
			continue
		}
		pr, _ := p.runs(pc)
		met := true
		var parts []string
		for _, s := range l7 {
			sr, _ := s.runs(pc)
			add := sr.P99 - pr.P99
			met = met && add < targetL7AddedP99ms
			parts = append(parts, fmt.Sprintf("×%d rules %+.3f ms (p99 %.3f vs %.3f ms)", s.Rules, add, sr.P99, pr.P99))
		}
		r.Targets = append(r.Targets, target{
			Name:   fmt.Sprintf("L7 adds under %.1f ms at p99 over the L4 tunnel (%d qps, %d conns, %s)", targetL7AddedP99ms, r.Load.QPS, r.Load.Conns, pc.describe()),
			Met:    met,
			Result: strings.Join(parts, "; ") + fmt.Sprintf("; medians of %d rounds", r.Rounds),
		})
	}
	if g := r.GoBench; g != nil {
		var parts []string
		worst := 0.0
		for _, b := range g.Results {
			switch {
			case b.Package == "./pkg/policy" && strings.HasPrefix(b.Name, "BenchmarkHTTP1000Rules/"):
				parts = append(parts, fmt.Sprintf("%s %.0f ns", strings.TrimPrefix(b.Name, "BenchmarkHTTP1000Rules/"), b.NsPerOp))
			case b.Name == "BenchmarkLiveRuleSet/rules-1000":
				parts = append(parts, fmt.Sprintf("the lab's 1,000-rule set %.0f ns", b.NsPerOp))
			default:
				continue
			}
			worst = max(worst, b.NsPerOp)
		}
		if len(parts) > 0 {
			res := "engine only, per request: " + strings.Join(parts, ", ")
			var un []string
			for _, b := range g.Results {
				if strings.HasPrefix(b.Name, "BenchmarkHTTP1000RulesUnindexed/") {
					un = append(un, fmt.Sprintf("%.1f µs", b.NsPerOp/1e3))
				}
			}
			if len(un) > 0 {
				res += fmt.Sprintf("; 1,000 rules none of which has a literal path prefix (every rule tried): %s", strings.Join(un, " / "))
			}
			r.Targets = append(r.Targets, target{
				Name:   fmt.Sprintf("1,000 HTTP rules cost under %.0f µs per request (Go benchmark)", targetRulesCostNs/1e3),
				Met:    worst < targetRulesCostNs,
				Result: res,
			})
		}
	}
	big := l7Key(1000)
	runs := r.pick(hasMax, big, "same-node-"+big)
	if len(runs) == 0 {
		return
	}
	met := true
	var parts []string
	for _, s := range runs {
		sustained := s.Max.QPS >= 0.99*targetRate && s.Max.Errors == 0
		met = met && sustained
		part := fmt.Sprintf("%s: %.0f rps, p50 %.2f / p99 %.2f ms, %d errors", s.Title, s.Max.QPS, s.Max.P50, s.Max.P99, s.Max.Errors)
		if ref := r.get(big); ref != nil && hasLatency(ref) {
			ratio := s.Max.P99 / ref.Fortio.P99
			collapsed := ratio > collapseFactor
			met = met && !collapsed
			whose := "its p99"
			if s.SameNode {
				whose = "the cross-node path's p99"
			}
			part += fmt.Sprintf(", p99 %.1f× %s at %d qps (collapse: over %.0f×)", ratio, whose, r.Load.QPS, collapseFactor)
		}
		if l4 := r.get(map[bool]string{true: "same-node-l4", false: "palisade"}[s.SameNode]); l4 != nil && hasMax(l4) {
			part += fmt.Sprintf(", %.0f%% of the L4 tunnel's %.0f rps", 100*s.Max.QPS/l4.Max.QPS, l4.Max.QPS)
		}
		parts = append(parts, part)
	}
	res := strings.Join(parts, "; ")
	if r.MaxLoad.QPS != 0 && r.MaxLoad.QPS < targetRate {
		res += fmt.Sprintf("; the runs asked for only %d qps", r.MaxLoad.QPS)
		met = false
	}
	if d := r.get("direct"); d != nil && hasMax(d) && d.Max.QPS < 0.99*targetRate {
		res += fmt.Sprintf("; this host's ceiling: even direct (no proxy) reached only %.0f rps, with %.2f of %d cores busy (the load generator, the servers, the proxies and the kernel's network processing share them)",
			d.Max.QPS, d.Max.Host.Busy, r.Machine.NProc)
	}
	r.Targets = append(r.Targets, target{
		Name:   fmt.Sprintf("Sustained %s rps through one node proxy without latency collapse (L7 ×1,000, %d conns)", thousands(targetRate), r.MaxLoad.Conns),
		Met:    met,
		Result: res,
	})
}

func thousands(v float64) string {
	s := strconv.FormatFloat(v, 'f', 0, 64)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

// table is one rendered table: a header row, then rows.
type table struct {
	Title string
	Intro string
	Rows  [][]string
}

func (r *results) tables() []table {
	var out []table
	if t := r.mainTable(); t != nil {
		out = append(out, *t)
	}
	if t := r.l7Table(); t != nil {
		out = append(out, *t)
	}
	if t := r.pacedTable(); t != nil {
		out = append(out, *t)
	}
	if t := r.maxTable(); t != nil {
		out = append(out, *t)
	}
	out = append(out, r.enrollTables()...)
	if t := r.goBenchTable(); t != nil {
		out = append(out, *t)
	}
	return out
}

func pair(a []float64, format string) string {
	if len(a) != 2 {
		return "?"
	}
	return fmt.Sprintf(format+" + "+format+" = "+format, a[0], a[1], a[0]+a[1])
}

func pairPer(a []uint64, per float64, format string) string {
	if len(a) != 2 || per <= 0 {
		return "?"
	}
	return fmt.Sprintf(format+" + "+format, float64(a[0])/per, float64(a[1])/per)
}

func two(a []float64) string {
	if len(a) != 2 {
		return "?"
	}
	return fmt.Sprintf("%.1f / %.1f", a[0], a[1])
}

// grid builds rows with one column per scenario.
type grid struct {
	cols []*scenario
	rows [][]string
}

func newGrid(corner string, cols []*scenario, title func(s *scenario) string) *grid {
	g := &grid{cols: cols}
	head := []string{corner}
	for _, s := range cols {
		head = append(head, title(s))
	}
	g.rows = append(g.rows, head)
	return g
}

func (g *grid) row(name string, f func(s *scenario) string) {
	out := []string{name}
	for _, s := range g.cols {
		out = append(out, f(s))
	}
	g.rows = append(g.rows, out)
}

func (g *grid) any(f func(s *scenario) bool) bool {
	return slices.ContainsFunc(g.cols, f)
}

func proxies(f func(s *scenario) string) func(s *scenario) string {
	return func(s *scenario) string {
		if len(s.Procs) == 0 {
			return "–"
		}
		return f(s)
	}
}

// latencyRows adds the fixed-rate latency rows: medians over the rounds
// with their range.
func (r *results) latencyRows(g *grid, pc pacing) {
	ms := func(name string, f func(fr fortioResult) float64) {
		g.row(name, func(s *scenario) string {
			all, rounds := s.runs(pc)
			if len(rounds) == 0 {
				return "–"
			}
			lo, hi := math.Inf(1), math.Inf(-1)
			for _, r := range rounds {
				lo, hi = min(lo, f(r)), max(hi, f(r))
			}
			if len(rounds) < 2 {
				return fmt.Sprintf("%.3f", f(all))
			}
			return fmt.Sprintf("%.3f (%.2f–%.2f)", f(all), lo, hi)
		})
	}
	rr := fmt.Sprintf(", median of %d rounds (range)", r.Rounds)
	ms("latency p50 (ms)"+rr, func(f fortioResult) float64 { return f.P50 })
	ms("latency p90 (ms)"+rr, func(f fortioResult) float64 { return f.P90 })
	ms("latency p99 (ms)"+rr, func(f fortioResult) float64 { return f.P99 })
	ms("latency p99.9 (ms)"+rr, func(f fortioResult) float64 { return f.P999 })
}

func achieved(f fortioResult) string {
	e := ""
	if f.Errors > 0 {
		e = fmt.Sprintf(" (%d errors)", f.Errors)
	}
	return fmt.Sprintf("%.1f%s", f.QPS, e)
}

// mainTable is the three-way comparison: direct, Palisade, HAProxy.
func (r *results) mainTable() *table {
	cols := r.pick(func(s *scenario) bool { return s.Iperf != nil || hasLatency(s) || s.FortioOneConn != nil }, "direct", "palisade", "haproxy")
	if len(cols) == 0 {
		return nil
	}
	d, p := r.get("direct"), r.get("palisade")
	g := newGrid("", cols, func(s *scenario) string { return s.Title })
	if g.any(func(s *scenario) bool { return s.Iperf != nil }) {
		iperf := func(f func(s *scenario) string) func(s *scenario) string {
			return func(s *scenario) string {
				if s.Iperf == nil {
					return "–"
				}
				return f(s)
			}
		}
		g.row(fmt.Sprintf("iperf3 throughput, 1 stream, %.0f s (Gbit/s)", r.IperfSeconds), iperf(func(s *scenario) string { return fmt.Sprintf("%.2f", s.Iperf.Gbps) }))
		g.row("iperf3 TCP retransmits", iperf(func(s *scenario) string { return fmt.Sprint(s.Iperf.Retransmits) }))
		g.row("proxy CPU during iperf3 (cores: client hop + server hop)", iperf(proxies(func(s *scenario) string { return pair(s.Iperf.Usage.CPU, "%.2f") })))
		g.row("proxy context switches per MiB (client + server hop)", iperf(proxies(func(s *scenario) string {
			mib := s.Iperf.Gbps * 1e9 / 8 * r.IperfSeconds / (1 << 20)
			return pairPer(s.Iperf.Usage.CtxSwitches, mib, "%.1f")
		})))
	}
	if g.any(hasLatency) {
		g.row(fmt.Sprintf("fortio: achieved qps (%d target, %d conns, %.0f s in %d rounds)", r.Load.QPS, r.Load.Conns, r.FortioSeconds, r.Rounds), func(s *scenario) string {
			if !hasLatency(s) {
				return "–"
			}
			return achieved(s.Fortio)
		})
		r.latencyRows(g, bursts)
		if d != nil && hasLatency(d) {
			g.row("added latency vs direct, p50 / p90 / p99 (ms)", func(s *scenario) string {
				if s == d || !hasLatency(s) {
					return "–"
				}
				return fmt.Sprintf("%+.3f / %+.3f / %+.3f", s.Fortio.P50-d.Fortio.P50, s.Fortio.P90-d.Fortio.P90, s.Fortio.P99-d.Fortio.P99)
			})
		}
		g.row(fmt.Sprintf("proxy CPU at %d qps (cores: client hop + server hop)", r.Load.QPS), proxies(func(s *scenario) string {
			if !hasLatency(s) {
				return "–"
			}
			return pair(s.Fortio.Usage.CPU, "%.3f")
		}))
		g.row("proxy context switches per request (client + server hop)", proxies(func(s *scenario) string {
			if !hasLatency(s) {
				return "–"
			}
			return pairPer(s.Fortio.Usage.CtxSwitches, float64(s.Fortio.Requests), "%.1f")
		}))
	}
	if !g.any(func(s *scenario) bool { return s.FortioOneConn == nil }) {
		g.row(fmt.Sprintf("same rate over 1 connection (%.0f s): p50 / p99 (ms)", r.OneConnSeconds), func(s *scenario) string {
			return fmt.Sprintf("%.3f / %.3f", s.FortioOneConn.P50, s.FortioOneConn.P99)
		})
		if d != nil {
			g.row("added latency vs direct over 1 connection, p50 / p99 (ms)", func(s *scenario) string {
				if s == d {
					return "–"
				}
				return fmt.Sprintf("%+.3f / %+.3f", s.FortioOneConn.P50-d.FortioOneConn.P50, s.FortioOneConn.P99-d.FortioOneConn.P99)
			})
		}
	}
	idleCPU := func(s *scenario) []float64 {
		if s == p {
			return r.PalisadeIdleCPU
		}
		return r.HAProxyIdleCPU
	}
	idle := func(s *scenario) []float64 {
		if s == p {
			return r.PalisadeIdleRSS
		}
		return r.HAProxyIdleRSS
	}
	afterIdle := func(s *scenario) []float64 {
		if s == p {
			return r.PalisadeAfterRSS
		}
		return r.HAProxyAfterRSS
	}
	g.row("proxy CPU idle (cores: client hop + server hop)", proxies(func(s *scenario) string { return pair(idleCPU(s), "%.3f") }))
	g.row("proxy RSS idle, before load (MB: client hop / server hop)", proxies(func(s *scenario) string { return two(idle(s)) }))
	g.row("proxy RSS under load, max (MB)", proxies(func(s *scenario) string {
		m := []float64{0, 0}
		for _, u := range []usage{s.Fortio.Usage, maybeIperf(s).Usage} {
			for i := range m {
				if i < len(u.MaxRSSMB) {
					m[i] = max(m[i], u.MaxRSSMB[i])
				}
			}
		}
		return two(m)
	}))
	g.row(fmt.Sprintf("proxy RSS idle %.0f s after load (MB)", r.AfterLoadIdleSeconds), proxies(func(s *scenario) string { return two(afterIdle(s)) }))
	if len(r.PalisadeIdleRSSAnon) == 2 && len(r.PalisadeAfterRSSAnon) == 2 {
		g.row("of which anonymous (heap, stacks; the rest is the executable's pages), before → after load (MB)", proxies(func(s *scenario) string {
			if s != p {
				return "–"
			}
			return two(r.PalisadeIdleRSSAnon) + " → " + two(r.PalisadeAfterRSSAnon)
		}))
	}
	return &table{Rows: g.rows}
}

func maybeIperf(s *scenario) iperfResult {
	if s.Iperf == nil {
		return iperfResult{}
	}
	return *s.Iperf
}

// l7Table compares the Palisade path without L7 policy and with each rule
// set at the fixed rate, direct alongside.
func (r *results) l7Table() *table {
	cols := r.pick(hasLatency, withL7("direct", "palisade")...)
	if !slices.ContainsFunc(cols, func(s *scenario) bool { return s.Rules > 0 }) {
		return nil
	}
	d, p := r.get("direct"), r.get("palisade")
	g := newGrid("", cols, titledL4("Palisade L4 (no L7 policy)"))
	g.row(fmt.Sprintf("fortio: achieved qps (%d target, %d conns, POST %s, %.0f s in %d rounds)", r.Load.QPS, r.Load.Conns, echoPath, r.FortioSeconds, r.Rounds),
		func(s *scenario) string { return achieved(s.Fortio) })
	r.latencyRows(g, bursts)
	if p != nil && hasLatency(p) {
		g.row("added latency vs Palisade L4, p50 / p90 / p99 (ms)", func(s *scenario) string {
			if !s.Palisade || s == p {
				return "–"
			}
			return fmt.Sprintf("%+.3f / %+.3f / %+.3f", s.Fortio.P50-p.Fortio.P50, s.Fortio.P90-p.Fortio.P90, s.Fortio.P99-p.Fortio.P99)
		})
	}
	if d != nil && hasLatency(d) {
		g.row("added latency vs direct, p99 (ms)", func(s *scenario) string {
			if s == d {
				return "–"
			}
			return fmt.Sprintf("%+.3f", s.Fortio.P99-d.Fortio.P99)
		})
	}
	g.row(fmt.Sprintf("proxy CPU at %d qps (cores: client hop + server hop)", r.Load.QPS), proxies(func(s *scenario) string { return pair(s.Fortio.Usage.CPU, "%.3f") }))
	g.row("server-hop node proxy CPU per request (µs)", proxies(func(s *scenario) string {
		if len(s.Fortio.Usage.CPU) != 2 || s.Fortio.QPS <= 0 {
			return "?"
		}
		return fmt.Sprintf("%.1f", s.Fortio.Usage.CPU[1]/s.Fortio.QPS*1e6)
	}))
	g.row("requests judged by the L7 policy (measured runs): allowed / denied", func(s *scenario) string {
		if !s.Palisade {
			return "–"
		}
		return fmt.Sprintf("%d / %d", s.Fortio.L7Allowed, s.Fortio.L7Denied)
	})
	if len(r.PolicySwitches) > 0 {
		g.row("policy in force after lab.Apply, median (s)", func(s *scenario) string {
			var v []float64
			for _, sw := range r.PolicySwitches {
				if s.Palisade && sw.Rules == s.Rules {
					v = append(v, sw.Seconds)
				}
			}
			if len(v) == 0 {
				return "–"
			}
			return fmt.Sprintf("%.2f (%d switches)", medianOf(v), len(v))
		})
	}
	return &table{Title: "L7 policy", Intro: fmt.Sprintf("HTTP/1.1 through the L4 tunnel and with an L7Policy of 10 and of 1,000 HTTP rules on the server's port, the allowing rule last; the same rounds as the table above (%d qps, %d connections, %d B POST bodies).",
		r.Load.QPS, r.Load.Conns, r.Load.Payload), Rows: g.rows}
}

// withL7 returns keys followed by the keys of the L7 paths.
func withL7(keys ...string) []string {
	for _, n := range ruleSets {
		keys = append(keys, l7Key(n))
	}
	return keys
}

// titledL4 titles the columns, the L4 Palisade path as l4.
func titledL4(l4 string) func(s *scenario) string {
	return func(s *scenario) string {
		if s.Key == "palisade" {
			return l4
		}
		return s.Title
	}
}

// pacedTable shows the fixed-rate runs with evenly paced requests, every
// path side by side.
func (r *results) pacedTable() *table {
	cols := r.pick(hasPaced, withL7("direct", "palisade", "haproxy")...)
	if len(cols) == 0 {
		return nil
	}
	d, p := r.get("direct"), r.get("palisade")
	g := newGrid("", cols, titledL4("Palisade L4 (HBONE)"))
	g.row(fmt.Sprintf("fortio -uniform: achieved qps (%d target, %d conns, %.0f s in %d rounds)", r.Load.QPS, r.Load.Conns, r.FortioSeconds, r.Rounds),
		func(s *scenario) string { return achieved(s.Paced.All) })
	r.latencyRows(g, paced)
	if d != nil && hasPaced(d) {
		g.row("added latency vs direct, p50 / p90 / p99 (ms)", func(s *scenario) string {
			if s == d {
				return "–"
			}
			a, b := s.Paced.All, d.Paced.All
			return fmt.Sprintf("%+.3f / %+.3f / %+.3f", a.P50-b.P50, a.P90-b.P90, a.P99-b.P99)
		})
	}
	if p != nil && hasPaced(p) {
		g.row("added latency vs Palisade L4, p50 / p99 (ms)", func(s *scenario) string {
			if !s.Palisade || s == p {
				return "–"
			}
			a, b := s.Paced.All, p.Paced.All
			return fmt.Sprintf("%+.3f / %+.3f", a.P50-b.P50, a.P99-b.P99)
		})
	}
	g.row(fmt.Sprintf("proxy CPU at %d qps (cores: client hop + server hop)", r.Load.QPS), proxies(func(s *scenario) string { return pair(s.Paced.All.Usage.CPU, "%.3f") }))
	return &table{Title: "Latency with evenly paced requests", Intro: fmt.Sprintf("The same rate, connections and bodies as above, but fortio spreads the %d connections' requests evenly over each period "+
		"(`-uniform`) instead of sending one on every connection at the same moment: arrivals like those of an open-loop load generator "+
		"(Istio's published latency figures come from Nighthawk in open-loop mode). The rounds of all paths take turns as above.", r.Load.Conns), Rows: g.rows}
}

// maxTable shows the maximum-rate runs.
func (r *results) maxTable() *table {
	big := l7Key(1000)
	cols := r.pick(hasMax, "direct", "palisade", big, "same-node-l4", "same-node-"+big)
	if len(cols) == 0 {
		return nil
	}
	g := newGrid("", cols, func(s *scenario) string {
		if s.Key == "palisade" {
			return "Palisade L4"
		}
		return s.Title
	})
	target, asking := "as fast as possible", "as many requests as it can send"
	if r.MaxLoad.QPS > 0 {
		target = fmt.Sprintf("%s qps target", thousands(float64(r.MaxLoad.QPS)))
		asking = fmt.Sprintf("%s qps", thousands(float64(r.MaxLoad.QPS)))
	}
	g.row(fmt.Sprintf("achieved rps (%s, %d conns, %.0f s)", target, r.MaxLoad.Conns, r.MaxSeconds), func(s *scenario) string {
		e := ""
		if s.Max.Errors > 0 {
			e = fmt.Sprintf(" (%d errors)", s.Max.Errors)
		}
		return fmt.Sprintf("%.0f%s", s.Max.QPS, e)
	})
	g.row(fmt.Sprintf("%s rps sustained", thousands(targetRate)), func(s *scenario) string {
		if s.Max.QPS >= 0.99*targetRate && s.Max.Errors == 0 {
			return "yes"
		}
		return fmt.Sprintf("no (%.0f%%)", 100*s.Max.QPS/targetRate)
	})
	g.row("latency p50 / p90 / p99 / p99.9 (ms)", func(s *scenario) string {
		return fmt.Sprintf("%.2f / %.2f / %.2f / %.2f", s.Max.P50, s.Max.P90, s.Max.P99, s.Max.P999)
	})
	g.row("latency max (ms)", func(s *scenario) string { return fmt.Sprintf("%.1f", s.Max.Max) })
	ref := r.get(big)
	if ref != nil && hasLatency(ref) {
		g.row(fmt.Sprintf("p99 relative to the same path's at %d qps", r.Load.QPS), func(s *scenario) string {
			base := s
			if s.SameNode {
				base = ref // no fixed-rate run of its own
			}
			if !hasLatency(base) {
				return "–"
			}
			suffix := ""
			if base != s {
				suffix = " (vs cross-node)"
			}
			return fmt.Sprintf("%.1f×%s", s.Max.P99/base.Fortio.P99, suffix)
		})
	}
	g.row("node proxy CPU (cores: node1 + node2)", proxies(func(s *scenario) string { return pair(s.Max.Usage.CPU, "%.2f") }))
	g.row("node proxy CPU per request, both hops (µs)", proxies(func(s *scenario) string {
		if s.Max.QPS <= 0 {
			return "?"
		}
		return fmt.Sprintf("%.1f", sum(s.Max.Usage.CPU)/s.Max.QPS*1e6)
	}))
	g.row("node proxy RSS under load, max (MB: node1 / node2)", proxies(func(s *scenario) string { return two(s.Max.Usage.MaxRSSMB) }))
	g.row(fmt.Sprintf("host CPU busy (cores of %d): total; softirq; steal", r.Machine.NProc), func(s *scenario) string {
		return fmt.Sprintf("%.2f; %.2f; %.2f", s.Max.Host.Busy, s.Max.Host.Softirq, s.Max.Host.Steal)
	})
	g.row("by process (cores, their kernel time included): load generator / fortio server / node proxies / rest", func(s *scenario) string {
		px := sum(s.Max.Usage.CPU)
		rest := max(s.Max.Host.Busy-s.Max.LoadGenCPU-s.Max.ServerCPU-px, 0)
		return fmt.Sprintf("%.2f / %.2f / %.2f / %.2f", s.Max.LoadGenCPU, s.Max.ServerCPU, px, rest)
	})
	g.row("what limits the rate", func(s *scenario) string { return r.limit(s) })
	if g.any(func(s *scenario) bool { return s.Rules > 0 }) {
		g.row("requests judged by the L7 policy: allowed / denied", func(s *scenario) string {
			if !s.Palisade {
				return "–"
			}
			return fmt.Sprintf("%d / %d", s.Max.L7Allowed, s.Max.L7Denied)
		})
	}
	intro := fmt.Sprintf("fortio asking for %s over %d connections for %.0f s (after a warm-up), %d B POST bodies; the same-node columns run the client on node2, next to the server, so one node proxy does both hops. All processes share the host's %d CPUs.",
		asking, r.MaxLoad.Conns, r.MaxSeconds, r.MaxLoad.Payload, r.Machine.NProc)
	if len(r.PalisadeAfterMaxRSS) == 2 {
		intro += fmt.Sprintf(" Node proxy RSS idle %.0f s after these runs (policy removed): %.1f / %.1f MB.", r.AfterLoadIdleSeconds, r.PalisadeAfterMaxRSS[0], r.PalisadeAfterMaxRSS[1])
	}
	return &table{Title: "Maximum rate", Intro: intro, Rows: g.rows}
}

func sum(a []float64) float64 {
	var t float64
	for _, v := range a {
		t += v
	}
	return t
}

// limit names what bounded a maximum-rate run: the target itself, the
// host's CPUs (and who used them), or neither (the closed loop of fortio's
// connections waiting for the answers: per-request latency).
func (r *results) limit(s *scenario) string {
	m := s.Max
	if r.MaxLoad.QPS > 0 && m.QPS >= 0.99*float64(r.MaxLoad.QPS) {
		return "the target rate"
	}
	n := float64(r.Machine.NProc)
	if m.Host.Busy >= 0.9*n {
		users := []struct {
			name string
			v    float64
		}{{"node proxies", sum(m.Usage.CPU)}, {"fortio server", m.ServerCPU}, {"load generator", m.LoadGenCPU}}
		slices.SortFunc(users, func(a, b struct {
			name string
			v    float64
		}) int {
			return cmp.Compare(b.v, a.v)
		})
		return fmt.Sprintf("CPU: %.2f of %.0f cores busy, most by the %s (%.2f)", m.Host.Busy, n, users[0].name, users[0].v)
	}
	return fmt.Sprintf("not CPU (%.2f of %.0f cores busy): per-request latency, %d connections each waiting for its answer", m.Host.Busy, n, r.MaxLoad.Conns)
}

// goBenchDesc describes the Go benchmarks shown.
var goBenchDesc = map[string]string{
	"BenchmarkHTTP10Rules/match-near-end":            "policy engine, 10 HTTP rules, request matching the 9th",
	"BenchmarkHTTP10Rules/no-match":                  "policy engine, 10 HTTP rules, request matching none",
	"BenchmarkHTTP1000Rules/match-near-end":          "policy engine, 1,000 HTTP rules, request matching the 999th",
	"BenchmarkHTTP1000Rules/no-match":                "policy engine, 1,000 HTTP rules, request matching none",
	"BenchmarkHTTP1000Rules/no-match-unknown-prefix": "policy engine, 1,000 HTTP rules, path sharing no rule's prefix",
	"BenchmarkHTTP1000RulesUnindexed/match-near-end": "policy engine, 1,000 rules without literal path prefix, matching the 999th",
	"BenchmarkHTTP1000RulesUnindexed/no-match":       "policy engine, 1,000 rules without literal path prefix, matching none",
	"BenchmarkLiveRuleSet/rules-10":                  "policy engine, the lab's 10-rule set, fortio's POST /echo (allowed by the last rule)",
	"BenchmarkLiveRuleSet/rules-1000":                "policy engine, the lab's 1,000-rule set, fortio's POST /echo (allowed by the last rule)",
	"BenchmarkHTTP1Inspect":                          "HTTP/1.1 inspector: keep-alive GET, 1 KiB response, client + proxy + server",
	"BenchmarkHTTP1Raw":                              "the same through a plain byte relay",
	"BenchmarkH2Inspect":                             "HTTP/2 inspector: GET on a kept h2c connection, 1 KiB response",
	"BenchmarkH2Raw":                                 "the same through a plain byte relay",
}

func (r *results) goBenchTable() *table {
	g := r.GoBench
	if g == nil || (len(g.Results) == 0 && len(g.Skipped) == 0) {
		return nil
	}
	rows := [][]string{{"Go benchmark", "what", fmt.Sprintf("ns/op (median of %d)", g.Count), "range", "B/op", "allocs/op"}}
	for _, b := range g.Results {
		lo, hi := slices.Min(b.NsRuns), slices.Max(b.NsRuns)
		rows = append(rows, []string{fmt.Sprintf("`%s` %s", b.Package, b.Name), goBenchDesc[b.Name], fmt.Sprintf("%.0f", b.NsPerOp),
			fmt.Sprintf("%.0f–%.0f", lo, hi), fmt.Sprintf("%.0f", b.BytesPerOp), fmt.Sprintf("%.0f", b.AllocsPerOp)})
	}
	for _, pr := range [][3]string{{"./pkg/l7/http1", "BenchmarkHTTP1Inspect", "BenchmarkHTTP1Raw"}, {"./pkg/l7/h2", "BenchmarkH2Inspect", "BenchmarkH2Raw"}} {
		in, raw := g.get(pr[0], pr[1]), g.get(pr[0], pr[2])
		if in != nil && raw != nil {
			rows = append(rows, []string{fmt.Sprintf("`%s` %s − %s", pr[0], pr[1], pr[2]), "inspection overhead per request",
				fmt.Sprintf("%+.0f", in.NsPerOp-raw.NsPerOp), "", fmt.Sprintf("%+.0f", in.BytesPerOp-raw.BytesPerOp), fmt.Sprintf("%+.0f", in.AllocsPerOp-raw.AllocsPerOp)})
		}
	}
	for _, s := range g.Skipped {
		rows = append(rows, []string{"`" + s.Package + "`", "skipped: " + s.Reason, "–", "", "", ""})
	}
	return &table{Title: "Per-request cost (Go benchmarks)", Intro: fmt.Sprintf("`go test -bench` in the repository, %d runs of %s each, on the same host before the lab is built.", g.Count, g.Benchtime), Rows: rows}
}

func (r *results) text() string {
	var b bytes.Buffer
	fmt.Fprintf(&b, "\nPalisade benchmark, %s\n%s\n", r.Date.Format("2006-01-02 15:04 MST"), r.Machine.summary())
	if !r.Full {
		fmt.Fprintf(&b, "Partial run: phases %s; paths %s\n", strings.Join(r.Phases, ","), strings.Join(r.Paths, ","))
	}
	for _, t := range r.tables() {
		b.WriteString("\n")
		if t.Title != "" {
			fmt.Fprintf(&b, "%s\n", t.Title)
		}
		tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
		for _, row := range t.Rows {
			fmt.Fprintln(tw, strings.Join(row, "\t"))
		}
		tw.Flush()
	}
	if r.HAProxyTLS != "" {
		fmt.Fprintf(&b, "\nHAProxy negotiated %s; Palisade's node proxies speak TLS 1.3 (Go crypto/tls).\n", r.HAProxyTLS)
	}
	b.WriteString("\nTargets:\n")
	for _, t := range r.Targets {
		fmt.Fprintf(&b, "  [%s] %s: %s\n", metStr(t.Met), t.Name, t.Result)
	}
	return b.String()
}

func (r *results) markdown() string {
	var b bytes.Buffer
	m := r.Machine
	fmt.Fprintf(&b, "## Latest run\n\n")
	fmt.Fprintf(&b, "- Date: %s\n", r.Date.Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(&b, "- Machine: `nproc` = %d (%s), %.0f GiB RAM, kernel %s, load average at start %s\n", m.NProc, m.CPU, m.MemGiB, m.Kernel, m.LoadAvg)
	fmt.Fprintf(&b, "- Go: %s; Palisade commit %s\n", m.Go, m.Commit)
	fmt.Fprintf(&b, "- Tools: %s; %s; fortio %s; %s\n", r.Versions["iperf3"], r.Versions["haproxy"], r.Versions["fortio"], r.Versions["openssl"])
	if r.HAProxyTLS != "" {
		fmt.Fprintf(&b, "- HAProxy pair negotiated %s with client certificates (ECDSA P-256); Palisade: TLS 1.3 (Go `crypto/tls`), SPIFFE SVIDs (ECDSA P-256)\n", r.HAProxyTLS)
	}
	fmt.Fprintf(&b, "- fortio histogram resolution (`-r`): %g s at the fixed rate, %g s in the maximum-rate runs\n", r.Load.Resolution, r.MaxLoad.Resolution)
	if m.OtherLabs > 0 {
		fmt.Fprintf(&b, "- Note: %d network namespaces existed when the run started (other labs on the same host share its 2 CPUs; numbers are noisier then)\n", m.OtherLabs)
	}
	for _, t := range r.tables() {
		b.WriteString("\n")
		if t.Title != "" {
			fmt.Fprintf(&b, "### %s\n\n", t.Title)
		}
		if t.Intro != "" {
			fmt.Fprintf(&b, "%s\n\n", t.Intro)
		}
		for i, row := range t.Rows {
			cells := make([]string, len(row))
			for j, c := range row {
				cells[j] = strings.ReplaceAll(c, "|", "\\|")
			}
			fmt.Fprintf(&b, "| %s |\n", strings.Join(cells, " | "))
			if i == 0 {
				fmt.Fprintf(&b, "|%s\n", strings.Repeat(" --- |", len(row)))
			}
		}
	}
	if r.EBPF != nil {
		b.WriteString("\n")
		b.WriteString(r.EBPF.markdown())
	}
	if r.Telemetry != nil {
		b.WriteString("\n")
		b.WriteString(r.Telemetry.markdown(r.MaxLoad))
	}
	b.WriteString("\n### Targets\n\n| target | result | status |\n| --- | --- | --- |\n")
	for _, t := range r.Targets {
		st := "**met**"
		if !t.Met {
			st = "**not met**"
		}
		fmt.Fprintf(&b, "| %s | %s | %s |\n", t.Name, strings.ReplaceAll(t.Result, "|", "\\|"), st)
	}
	if p := r.get("palisade"); p != nil && hasLatency(p) && len(p.Fortio.Usage.CPU) == 2 && p.Fortio.QPS > 0 {
		perNode := (p.Fortio.Usage.CPU[0] + p.Fortio.Usage.CPU[1]) / 2 / (p.Fortio.QPS / 1000)
		fmt.Fprintf(&b, "\nFor reference, ztunnel's published figures: %.2f vCPU and %.0f MB per 1000 rps of 1 KB per ztunnel; "+
			"two ztunnel hops add %.2f ms at p90 and %.2f ms at p99. Here each Palisade node proxy used %.3f cores per 1000 rps "+
			"(mean of both hops; on this host's CPUs, which also run the load generator and the servers).\n",
			ztunnelCPUPerKRP, ztunnelMBPerKRPS, ztunnelAddedP90, ztunnelAddedP99, perNode)
	}
	return b.String()
}

const (
	docBegin = "<!-- BEGIN bench results: generated by make bench, edits between these markers are overwritten -->"
	docEnd   = "<!-- END bench results -->"
)

// updateDoc replaces the generated section of the markdown file, keeping
// everything outside the markers; a file without markers gets the section
// appended.
func updateDoc(path, section string) error {
	block := docBegin + "\n" + section + docEnd + "\n"
	old, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	s := string(old)
	i, j := strings.Index(s, docBegin), strings.Index(s, docEnd)
	switch {
	case i >= 0 && j > i:
		s = s[:i] + block + strings.TrimPrefix(s[j+len(docEnd):], "\n")
	case s == "":
		s = "# Benchmarks\n\nRun `sudo make bench`.\n\n" + block
	default:
		s = strings.TrimRight(s, "\n") + "\n\n" + block
	}
	return os.WriteFile(path, []byte(s), 0o644)
}
