package main

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strings"
	"text/tabwriter"
	"time"
)

// Targets (from the benchmark issue) and the published reference.
const (
	targetAddedP99ms = 0.5
	targetIdleRSSMB  = 30.0
	ztunnelAddedP99  = 0.20 // ms, Istio 1.22 docs, two ztunnel hops, 1000 rps, 1 KB
	ztunnelAddedP90  = 0.17
	ztunnelCPUPerKRP = 0.06 // vCPU per 1000 rps of 1 KB (Istio 1.24 docs)
	ztunnelMBPerKRPS = 12.0
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
	Date           time.Time         `json:"date"`
	Machine        machine           `json:"machine"`
	Versions       map[string]string `json:"versions"`
	Load           loadSpec          `json:"load"`
	IperfSeconds   float64           `json:"iperfSeconds"`
	FortioSeconds  float64           `json:"fortioSeconds"`
	OneConnSeconds float64           `json:"oneConnSeconds"`
	Rounds         int               `json:"rounds"`
	HAProxyTLS     string            `json:"haproxyTLS"`
	Scenarios      []*scenario       `json:"scenarios"`
	// RSS in MB of the two hops (client side, server side).
	PalisadeIdleCPU  []float64 `json:"palisadeIdleCpuCores"`
	HAProxyIdleCPU   []float64 `json:"haproxyIdleCpuCores"`
	PalisadeIdleRSS  []float64 `json:"palisadeIdleRssMB"`
	PalisadeAfterRSS []float64 `json:"palisadeIdleAfterLoadRssMB"`
	HAProxyIdleRSS   []float64 `json:"haproxyIdleRssMB"`
	HAProxyAfterRSS  []float64 `json:"haproxyIdleAfterLoadRssMB"`
	Targets          []target  `json:"targets"`
}

func (r *results) get(key string) *scenario {
	for _, s := range r.Scenarios {
		if s.Key == key {
			return s
		}
	}
	return nil
}

func metStr(ok bool) string {
	if ok {
		return "met"
	}
	return "NOT met"
}

func (r *results) evaluate() {
	d, p, h := r.get("direct"), r.get("palisade"), r.get("haproxy")
	r.Targets = []target{{
		Name: "Throughput at least HAProxy's (iperf3, 1 stream)",
		Met:  p.Iperf.Gbps >= h.Iperf.Gbps,
		Result: fmt.Sprintf("Palisade %.2f Gbit/s vs HAProxy %.2f Gbit/s (%+.0f%%)", p.Iperf.Gbps, h.Iperf.Gbps,
			100*(p.Iperf.Gbps/h.Iperf.Gbps-1)),
	}}
	added := p.Fortio.P99 - d.Fortio.P99
	r.Targets = append(r.Targets, target{
		Name: fmt.Sprintf("Added p99 latency within %.1f ms of direct (%d qps, %d B)", targetAddedP99ms, r.Load.QPS, r.Load.Payload),
		Met:  added <= targetAddedP99ms,
		Result: fmt.Sprintf("%+.3f ms (p99 %.3f vs %.3f ms); HAProxy pair %+.3f ms; ztunnel's published two-hop figure +%.2f ms",
			added, p.Fortio.P99, d.Fortio.P99, h.Fortio.P99-d.Fortio.P99, ztunnelAddedP99),
	})
	idle := max(r.PalisadeIdleRSS[0], r.PalisadeIdleRSS[1])
	after := max(r.PalisadeAfterRSS[0], r.PalisadeAfterRSS[1])
	r.Targets = append(r.Targets, target{
		Name: fmt.Sprintf("Node proxy RSS under %.0f MB idle", targetIdleRSSMB),
		Met:  idle < targetIdleRSSMB,
		Result: fmt.Sprintf("%.1f / %.1f MB idle with the benchmark's pods enrolled (node1 / node2); %.1f / %.1f MB idle again after the load (%s)",
			r.PalisadeIdleRSS[0], r.PalisadeIdleRSS[1], r.PalisadeAfterRSS[0], r.PalisadeAfterRSS[1], map[bool]string{true: "also under", false: "over"}[after < targetIdleRSSMB]),
	})
}

// table returns the results as rows: a header, then one row per metric with
// one column per scenario.
func (r *results) table() [][]string {
	d, p, h := r.get("direct"), r.get("palisade"), r.get("haproxy")
	all := []*scenario{d, p, h}
	rows := [][]string{{"", d.Title, p.Title, h.Title}}
	row := func(name string, f func(s *scenario) string) {
		out := []string{name}
		for _, s := range all {
			out = append(out, f(s))
		}
		rows = append(rows, out)
	}
	proxies := func(f func(s *scenario) string) func(s *scenario) string {
		return func(s *scenario) string {
			if len(s.Procs) == 0 {
				return "–"
			}
			return f(s)
		}
	}
	pair := func(a []float64, format string) string {
		if len(a) != 2 {
			return "?"
		}
		return fmt.Sprintf(format+" + "+format+" = "+format, a[0], a[1], a[0]+a[1])
	}
	pairPer := func(a []uint64, per float64, format string) string {
		if len(a) != 2 || per <= 0 {
			return "?"
		}
		return fmt.Sprintf(format+" + "+format, float64(a[0])/per, float64(a[1])/per)
	}
	two := func(a []float64) string {
		if len(a) != 2 {
			return "?"
		}
		return fmt.Sprintf("%.1f / %.1f", a[0], a[1])
	}
	row(fmt.Sprintf("iperf3 throughput, 1 stream, %.0f s (Gbit/s)", r.IperfSeconds), func(s *scenario) string { return fmt.Sprintf("%.2f", s.Iperf.Gbps) })
	row("iperf3 TCP retransmits", func(s *scenario) string { return fmt.Sprint(s.Iperf.Retransmits) })
	row("proxy CPU during iperf3 (cores: client hop + server hop)", proxies(func(s *scenario) string { return pair(s.Iperf.Usage.CPU, "%.2f") }))
	row("proxy context switches per MiB (client + server hop)", proxies(func(s *scenario) string {
		mib := s.Iperf.Gbps * 1e9 / 8 * r.IperfSeconds / (1 << 20)
		return pairPer(s.Iperf.Usage.CtxSwitches, mib, "%.1f")
	}))
	row(fmt.Sprintf("fortio: achieved qps (%d target, %d conns, %.0f s in %d rounds)", r.Load.QPS, r.Load.Conns, r.FortioSeconds, r.Rounds), func(s *scenario) string {
		e := ""
		if s.Fortio.Errors > 0 {
			e = fmt.Sprintf(" (%d errors)", s.Fortio.Errors)
		}
		return fmt.Sprintf("%.1f%s", s.Fortio.QPS, e)
	})
	ms := func(name string, f func(fr fortioResult) float64) {
		row(name, func(s *scenario) string {
			lo, hi := math.Inf(1), math.Inf(-1)
			for _, r := range s.FortioRounds {
				lo, hi = min(lo, f(r)), max(hi, f(r))
			}
			if len(s.FortioRounds) < 2 {
				return fmt.Sprintf("%.3f", f(s.Fortio))
			}
			return fmt.Sprintf("%.3f (%.2f–%.2f)", f(s.Fortio), lo, hi)
		})
	}
	rr := fmt.Sprintf(", median of %d rounds (range)", r.Rounds)
	ms("latency p50 (ms)"+rr, func(f fortioResult) float64 { return f.P50 })
	ms("latency p90 (ms)"+rr, func(f fortioResult) float64 { return f.P90 })
	ms("latency p99 (ms)"+rr, func(f fortioResult) float64 { return f.P99 })
	ms("latency p99.9 (ms)"+rr, func(f fortioResult) float64 { return f.P999 })
	row("added latency vs direct, p50 / p90 / p99 (ms)", func(s *scenario) string {
		if s == d {
			return "–"
		}
		return fmt.Sprintf("%+.3f / %+.3f / %+.3f", s.Fortio.P50-d.Fortio.P50, s.Fortio.P90-d.Fortio.P90, s.Fortio.P99-d.Fortio.P99)
	})
	row(fmt.Sprintf("proxy CPU at %d qps (cores: client hop + server hop)", r.Load.QPS), proxies(func(s *scenario) string { return pair(s.Fortio.Usage.CPU, "%.3f") }))
	row("proxy context switches per request (client + server hop)", proxies(func(s *scenario) string {
		return pairPer(s.Fortio.Usage.CtxSwitches, float64(s.Fortio.Requests), "%.1f")
	}))
	if d.FortioOneConn != nil && p.FortioOneConn != nil && h.FortioOneConn != nil {
		row(fmt.Sprintf("same rate over 1 connection (%.0f s): p50 / p99 (ms)", r.OneConnSeconds), func(s *scenario) string {
			return fmt.Sprintf("%.3f / %.3f", s.FortioOneConn.P50, s.FortioOneConn.P99)
		})
		row("added latency vs direct over 1 connection, p50 / p99 (ms)", func(s *scenario) string {
			if s == d {
				return "–"
			}
			return fmt.Sprintf("%+.3f / %+.3f", s.FortioOneConn.P50-d.FortioOneConn.P50, s.FortioOneConn.P99-d.FortioOneConn.P99)
		})
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
	row("proxy CPU idle (cores: client hop + server hop)", proxies(func(s *scenario) string {
		if s == p {
			return pair(r.PalisadeIdleCPU, "%.3f")
		}
		return pair(r.HAProxyIdleCPU, "%.3f")
	}))
	row("proxy RSS idle, before load (MB: client hop / server hop)", proxies(func(s *scenario) string { return two(idle(s)) }))
	row("proxy RSS under load, max (MB)", proxies(func(s *scenario) string {
		m := []float64{max(s.Iperf.Usage.MaxRSSMB[0], s.Fortio.Usage.MaxRSSMB[0]), max(s.Iperf.Usage.MaxRSSMB[1], s.Fortio.Usage.MaxRSSMB[1])}
		return two(m)
	}))
	row("proxy RSS idle, after load (MB)", proxies(func(s *scenario) string { return two(afterIdle(s)) }))
	return rows
}

func (r *results) text() string {
	var b bytes.Buffer
	fmt.Fprintf(&b, "\nPalisade benchmark, %s\n%s\n\n", r.Date.Format("2006-01-02 15:04 MST"), r.Machine.summary())
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	for _, row := range r.table() {
		fmt.Fprintln(tw, strings.Join(row, "\t"))
	}
	tw.Flush()
	fmt.Fprintf(&b, "\nHAProxy negotiated %s; Palisade's node proxies speak TLS 1.3 (Go crypto/tls).\n\nTargets:\n", r.HAProxyTLS)
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
	fmt.Fprintf(&b, "- HAProxy pair negotiated %s with client certificates (ECDSA P-256); Palisade: TLS 1.3 (Go `crypto/tls`), SPIFFE SVIDs (ECDSA P-256)\n", r.HAProxyTLS)
	if m.OtherLabs > 0 {
		fmt.Fprintf(&b, "- Note: %d network namespaces existed when the run started (other labs on the same host share its 2 CPUs; numbers are noisier then)\n", m.OtherLabs)
	}
	b.WriteString("\n")
	rows := r.table()
	for i, row := range rows {
		cells := make([]string, len(row))
		for j, c := range row {
			cells[j] = strings.ReplaceAll(c, "|", "\\|")
		}
		fmt.Fprintf(&b, "| %s |\n", strings.Join(cells, " | "))
		if i == 0 {
			fmt.Fprintf(&b, "|%s\n", strings.Repeat(" --- |", len(row)))
		}
	}
	b.WriteString("\n### Targets\n\n| target | result | status |\n| --- | --- | --- |\n")
	for _, t := range r.Targets {
		st := "**met**"
		if !t.Met {
			st = "**not met**"
		}
		fmt.Fprintf(&b, "| %s | %s | %s |\n", t.Name, t.Result, st)
	}
	p := r.get("palisade")
	perNode := (p.Fortio.Usage.CPU[0] + p.Fortio.Usage.CPU[1]) / 2 / (p.Fortio.QPS / 1000)
	fmt.Fprintf(&b, "\nFor reference, ztunnel's published figures: %.2f vCPU and %.0f MB per 1000 rps of 1 KB per ztunnel; "+
		"two ztunnel hops add %.2f ms at p90 and %.2f ms at p99. Here each Palisade node proxy used %.3f cores per 1000 rps "+
		"(mean of both hops; on this host's CPUs, which also run the load generator and the servers).\n",
		ztunnelCPUPerKRP, ztunnelMBPerKRPS, ztunnelAddedP90, ztunnelAddedP99, perNode)
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
