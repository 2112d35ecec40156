package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/palisade-net/palisade/pkg/datapath"
	"github.com/palisade-net/palisade/pkg/lab"
	"github.com/palisade-net/palisade/pkg/netns"
)

// The eBPF datapath's numbers (issue 6): the per-packet cost of the
// programs from BPF_PROG_TEST_RUN with repeat (pkg/datapath's
// BenchmarkGuard, beside an empty program), and iperf3 throughput on the
// direct path (plain/client on node1 -> plain/server on node2) without and
// with the programs on both pods' host-side veths, in alternating rounds.
//
// For the throughput runs the benchmark loads the datapath itself (not
// pinned, detached when it is closed): both pods' addresses go into the
// endpoint map and the iperf3 server listens on the HBONE port, so every
// packet takes the guard's longest pass path (parse, two lookups, mark,
// count) while nothing else of Palisade is in the way. The lab's agents are
// not involved (plain is not enrolled).

// ebpfPort is the port of the iperf3 server of the eBPF runs: the HBONE
// port, which the guard lets through between enrolled endpoints.
const ebpfPort = 15008

// ebpfPacketCost is one case of BenchmarkGuard.
type ebpfPacketCost struct {
	Case string `json:"case"`
	// NsPerPacket is the datapath program, BaselineNs an empty tc program
	// in the same runs, OverheadNs their difference (medians over runs).
	NsPerPacket float64 `json:"nsPerPacket"`
	BaselineNs  float64 `json:"baselineNs"`
	OverheadNs  float64 `json:"overheadNs"`
}

// ebpfResults are the eBPF phase's results.
type ebpfResults struct {
	PacketCost []ebpfPacketCost `json:"packetCost"`
	// WithoutGbps and WithGbps are the iperf3 runs (one per round, in
	// order), CostPercent the drop of the medians.
	WithoutGbps []float64 `json:"withoutGbps"`
	WithGbps    []float64 `json:"withGbps"`
	// Retransmits per run, same order.
	WithoutRetransmits []int   `json:"withoutRetransmits"`
	WithRetransmits    []int   `json:"withRetransmits"`
	CostPercent        float64 `json:"costPercent"`
	// PairedCostPercent is the median over rounds of each round's own
	// drop (its run with the programs against its run without).
	PairedCostPercent float64 `json:"pairedCostPercent"`
	// AttachMode is how the programs were attached (tcx or tc).
	AttachMode string `json:"attachMode"`
}

// runEBPF runs the eBPF phase on the benchmark lab: the Go benchmark
// (built into dir, count runs of benchtime) and rounds of iperf3 for d
// each without and with the programs.
func runEBPF(ctx context.Context, l *lab.Lab, dir string, count int, benchtime time.Duration, d time.Duration, rounds int) (*ebpfResults, error) {
	res := &ebpfResults{}
	var err error
	if res.PacketCost, err = runGuardBenchmark(ctx, dir, count, benchtime); err != nil {
		return nil, err
	}
	if err := ebpfThroughput(ctx, l, d, rounds, res); err != nil {
		return nil, err
	}
	return res, nil
}

// metricRE matches one "value unit" pair of a benchmark line.
var metricRE = regexp.MustCompile(`([\d.]+) (\S+)`)

// runGuardBenchmark runs pkg/datapath's BenchmarkGuard and returns the
// medians of its custom metrics per case.
func runGuardBenchmark(ctx context.Context, dir string, count int, benchtime time.Duration) ([]ebpfPacketCost, error) {
	const pkg = "./pkg/datapath"
	bin := filepath.Join(dir, "pkg_datapath.test")
	logf("eBPF: building %s", pkg)
	if out, err := exec.CommandContext(ctx, "go", "test", "-c", "-o", bin, pkg).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("go test -c %s: %w: %s", pkg, err, tail(string(out), 1500))
	}
	logf("eBPF: running BenchmarkGuard (%d × %s)", count, benchtime)
	var stdout, stderr bytes.Buffer
	run := exec.CommandContext(ctx, bin, "-test.run", "^$", "-test.bench", "^BenchmarkGuard$",
		"-test.count", strconv.Itoa(count), "-test.benchtime", benchtime.String())
	run.Dir = pkg
	run.Env = append(run.Environ(), "CI=1") // a skip (no root) must fail the run
	run.Stdout, run.Stderr = &stdout, &stderr
	if err := run.Run(); err != nil {
		return nil, fmt.Errorf("BenchmarkGuard: %w: %s%s", err, tail(stdout.String(), 1500), tail(stderr.String(), 500))
	}
	out, err := parseGuardBenchmark(stdout.String())
	if err != nil {
		return nil, err
	}
	for _, c := range out {
		logf("eBPF: %s %.1f ns/packet (empty program %.1f, overhead %.1f)", c.Case, c.NsPerPacket, c.BaselineNs, c.OverheadNs)
	}
	return out, nil
}

// parseGuardBenchmark takes the medians of BenchmarkGuard's custom
// metrics per case from its output.
func parseGuardBenchmark(output string) ([]ebpfPacketCost, error) {
	type acc struct{ ns, base, over []float64 }
	byCase := map[string]*acc{}
	var order []string
	for _, line := range strings.Split(output, "\n") {
		fields := strings.Fields(line)
		if len(fields) < 2 || !strings.HasPrefix(fields[0], "BenchmarkGuard/") {
			continue
		}
		name := strings.TrimPrefix(fields[0], "BenchmarkGuard/")
		if i := strings.LastIndex(name, "-"); i > 0 {
			if _, err := strconv.Atoi(name[i+1:]); err == nil {
				name = name[:i] // the -GOMAXPROCS suffix
			}
		}
		a := byCase[name]
		if a == nil {
			a = &acc{}
			byCase[name] = a
			order = append(order, name)
		}
		for _, m := range metricRE.FindAllStringSubmatch(strings.Join(fields[2:], " "), -1) {
			v, _ := strconv.ParseFloat(m[1], 64)
			switch m[2] {
			case "ns/pkt":
				a.ns = append(a.ns, v)
			case "baseline-ns/pkt":
				a.base = append(a.base, v)
			case "overhead-ns/pkt":
				a.over = append(a.over, v)
			}
		}
	}
	if len(order) == 0 {
		return nil, fmt.Errorf("BenchmarkGuard reported nothing: %s", tail(output, 1500))
	}
	var out []ebpfPacketCost
	for _, name := range order {
		a := byCase[name]
		if len(a.ns) == 0 {
			return nil, fmt.Errorf("BenchmarkGuard/%s: no ns/pkt in its output", name)
		}
		out = append(out, ebpfPacketCost{Case: name, NsPerPacket: medianOf(a.ns), BaselineNs: medianOf(a.base), OverheadNs: medianOf(a.over)})
	}
	return out, nil
}

// ebpfThroughput fills the iperf3 rounds of res.
func ebpfThroughput(ctx context.Context, l *lab.Lab, d time.Duration, rounds int, res *ebpfResults) error {
	client, err := l.Pod("plain", "client")
	if err != nil {
		return err
	}
	server, err := l.Pod("plain", "server")
	if err != nil {
		return err
	}
	stop, err := startEBPFIperfServer(ctx, l)
	if err != nil {
		return err
	}
	defer stop()

	dp, err := datapath.Load(datapath.DefaultConfig(), datapath.Options{})
	if err != nil {
		return fmt.Errorf("eBPF: %w", err)
	}
	defer dp.Close()
	for i, ip := range []netip.Addr{client.IP, server.IP} {
		if err := dp.SetEndpoint(ip, datapath.Endpoint{Index: uint32(i + 1), Mode: datapath.ModePermissive}); err != nil {
			return fmt.Errorf("eBPF: %w", err)
		}
	}
	type veth struct {
		ns    *netns.Handle
		iface string
	}
	var veths []veth
	for _, p := range []lab.PodInfo{client, server} {
		name, err := l.NodeNetns(p.Node)
		if err != nil {
			return err
		}
		h, err := netns.Open("/var/run/netns/" + name)
		if err != nil {
			return err
		}
		defer h.Close()
		veths = append(veths, veth{h, p.HostVeth})
	}
	attach := func() error {
		for _, v := range veths {
			mode, err := dp.Attach(v.ns, v.iface, datapath.AttachAuto)
			if err != nil {
				return fmt.Errorf("eBPF: %w", err)
			}
			res.AttachMode = mode.String()
		}
		return nil
	}
	detach := func() error {
		var errs []error
		for _, v := range veths {
			errs = append(errs, dp.Detach(v.ns, v.iface))
		}
		return errors.Join(errs...)
	}
	defer detach()

	hbone := datapath.CounterKey{Index: 1, Direction: datapath.FromPod, Verdict: datapath.VerdictHBONE}
	for round := 1; round <= rounds; round++ {
		// ABBA order: a drift of the host over the runs (another tenant's
		// load coming or going) weighs on both sides alike.
		order := []bool{false, true}
		if round%2 == 0 {
			order = []bool{true, false}
		}
		for _, with := range order {
			what := "without"
			if with {
				what = "with"
				if err := attach(); err != nil {
					return err
				}
			}
			before, err := dp.Counters()
			if err != nil {
				return err
			}
			logf("eBPF: iperf3 round %d/%d %s the programs, %s", round, rounds, what, d)
			r, err := runIperf(ctx, l, "plain/client", server.IP.String(), ebpfPort, d, nil)
			if err != nil {
				return fmt.Errorf("eBPF: iperf3 %s the programs: %w", what, err)
			}
			after, err := dp.Counters()
			if err != nil {
				return err
			}
			// The programs saw the run's packets exactly when attached.
			counted := after[hbone].Packets - before[hbone].Packets
			if with {
				if err := detach(); err != nil {
					return fmt.Errorf("eBPF: %w", err)
				}
				if counted == 0 {
					return errors.New("eBPF: the programs counted no HBONE packet of the client during the run with them")
				}
				res.WithGbps = append(res.WithGbps, r.Gbps)
				res.WithRetransmits = append(res.WithRetransmits, r.Retransmits)
			} else {
				if counted != 0 {
					return fmt.Errorf("eBPF: the programs counted %d packets during the run without them", counted)
				}
				res.WithoutGbps = append(res.WithoutGbps, r.Gbps)
				res.WithoutRetransmits = append(res.WithoutRetransmits, r.Retransmits)
			}
			logf("eBPF: %s the programs: %.2f Gbit/s, %d retransmits", what, r.Gbps, r.Retransmits)
		}
	}
	without, with := medianOf(res.WithoutGbps), medianOf(res.WithGbps)
	res.CostPercent = costPercent(without, with, true)
	var paired []float64
	for i := range min(len(res.WithoutGbps), len(res.WithGbps)) {
		if w := res.WithoutGbps[i]; w > 0 {
			paired = append(paired, costPercent(w, res.WithGbps[i], true))
		}
	}
	res.PairedCostPercent = medianOf(paired)
	logf("eBPF: iperf3 median %.2f Gbit/s without, %.2f with the programs (%s): %.1f%% cost (median of the rounds' own differences %.1f%%)",
		without, with, res.AttachMode, res.CostPercent, res.PairedCostPercent)
	return nil
}

// startEBPFIperfServer runs an iperf3 server on ebpfPort in plain/server
// until the returned function is called.
func startEBPFIperfServer(ctx context.Context, l *lab.Lab) (func(), error) {
	cmd := l.Command(ctx, "plain/server", "iperf3", "--server", "--port", strconv.Itoa(ebpfPort))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("eBPF: iperf3 server: %w", err)
	}
	stop := func() {
		cmd.Process.Kill()
		cmd.Wait()
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, err := l.Exec(ctx, "plain/server", "ss", "-ltnH", "sport = :"+strconv.Itoa(ebpfPort))
		if err == nil && len(bytes.TrimSpace(got)) > 0 {
			return stop, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			stop()
			return nil, fmt.Errorf("eBPF: iperf3 server on %d not listening: %s", ebpfPort, tail(out.String(), 500))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// markdown renders the results for docs/benchmarks.md.
func (r *ebpfResults) markdown() string {
	var b strings.Builder
	b.WriteString("### eBPF datapath\n\n")
	b.WriteString("Per-packet cost of the tc program (`BPF_PROG_TEST_RUN` with repeat, `pkg/datapath` BenchmarkGuard, " +
		"2,000 enrolled addresses in the endpoint map), beside an empty tc program in the same runs:\n\n")
	b.WriteString("| packet | ns/packet | empty program | overhead |\n|---|---:|---:|---:|\n")
	for _, c := range r.PacketCost {
		fmt.Fprintf(&b, "| %s | %.1f | %.1f | %.1f |\n", c.Case, c.NsPerPacket, c.BaselineNs, c.OverheadNs)
	}
	fmt.Fprintf(&b, "\niperf3, one stream, plain/client (node1) → plain/server (node2) on the HBONE port with both addresses enrolled "+
		"(every packet takes the guard's longest pass path), without and with the programs on both host-side veths (%s), "+
		"%d rounds, each one run without and one with them, in ABBA order:\n\n", r.AttachMode, len(r.WithGbps))
	b.WriteString("| | Gbit/s (median) | runs | retransmits |\n|---|---:|---|---|\n")
	fmt.Fprintf(&b, "| without the programs | %.2f | %s | %v |\n", medianOf(r.WithoutGbps), joinFloats(r.WithoutGbps, "%.2f"), r.WithoutRetransmits)
	fmt.Fprintf(&b, "| with the programs | %.2f | %s | %v |\n", medianOf(r.WithGbps), joinFloats(r.WithGbps, "%.2f"), r.WithRetransmits)
	fmt.Fprintf(&b, "\nThroughput cost of the programs: %.1f%% by the medians; the median of the rounds' own differences is %.1f%% (target: under %.0f%%).\n",
		r.CostPercent, r.PairedCostPercent, targetEBPFCostPercent)
	return b.String()
}
