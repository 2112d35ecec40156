// Command bench measures Palisade on a two-node lab against the same traffic
// sent directly and through an HAProxy mutual-TLS pair: single-stream
// iperf3 throughput, fortio latency percentiles at a fixed request rate, and
// the proxies' CPU and memory. It prints a table and writes it into
// docs/benchmarks.md. "make bench" runs it (through scripts/bench.sh) from
// the repository root, as root.
//
// The paths compared (see lab.yaml):
//
//	direct    plain/client (node1) -> plain/server (node2)
//	palisade  mesh/client (node1) -> node proxy node1 =HBONE mTLS=> node proxy node2 -> mesh/server (node2)
//	haproxy   plain/client -> haproxy (client pod) =TLS 1.3, client cert=> haproxy (server pod) -> plain/server
//	l7-10, l7-1000  the Palisade path with an L7Policy of 10 or 1,000 HTTP rules on the server's port
//	same node  mesh/local-client (node2) -> node proxy node2 =HBONE=> node proxy node2 -> mesh/server
//
// Besides the fixed-rate latency runs it measures the highest rate each
// path sustains (fortio at a 20,000 qps target over many connections) and
// runs the policy engine's and the HTTP inspectors' Go benchmarks. The
// enroll phase (enroll.go) builds a second lab, with a real kube-apiserver,
// and measures how long 200 pods on two nodes take to be enrolled after
// their namespace is labelled through the API.
//
// Every packet stays inside the lab's network namespaces; the lab is torn
// down when the run ends, fails or is interrupted.
package main

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/palisade-net/palisade/pkg/lab"
)

//go:embed lab.yaml
var labYAML string

const (
	iperfPort = 5201
	httpPort  = 8080
)

type config struct {
	binDir, toolsDir, stateDir, name string
	doc, results, pprofDir           string
	iperfTime, fortioTime, warmup    time.Duration
	oneConnTime                      time.Duration
	rounds                           int
	settle                           time.Duration
	afterLoadIdle                    time.Duration
	load                             loadSpec
	noDoc                            bool

	phases, paths         map[string]bool
	maxLoad               loadSpec
	maxTime, maxWarmup    time.Duration
	goBenchCount          int
	goBenchTime           time.Duration
	maxResolution         float64
	phasesFlag, pathsFlag string

	kubeBinDir   string
	enrollPods   int
	enrollRounds int
	ebpfRounds   int
	// telemetryRounds are the telemetry phase's off/on pairs.
	telemetryRounds int
}

// Phases and paths that --phases and --paths select from.
var (
	allPhases = []string{"gobench", "enroll", "ebpf", "iperf", "latency", "paced", "one-conn", "max", "telemetry"}
	allPaths  = []string{"direct", "palisade", "haproxy", "l7-10", "l7-1000", "same-node"}
)

// parseSet parses a comma-separated selection ("all" for every value).
func parseSet(flagName, v string, valid []string) (map[string]bool, error) {
	out := map[string]bool{}
	for _, f := range strings.Split(v, ",") {
		f = strings.TrimSpace(f)
		switch {
		case f == "all":
			for _, x := range valid {
				out[x] = true
			}
		case slices.Contains(valid, f):
			out[f] = true
		case f != "":
			return nil, fmt.Errorf("--%s: unknown %q (want a comma-separated list of %s, or all)", flagName, f, strings.Join(valid, ", "))
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("--%s: nothing selected", flagName)
	}
	return out, nil
}

// full reports whether every phase and path is selected (only a full run
// rewrites the results section of the markdown file).
func (c *config) full() bool { return len(c.phases) == len(allPhases) && len(c.paths) == len(allPaths) }

func main() {
	var c config
	flag.StringVar(&c.binDir, "bin-dir", "bin", "directory of palisade-agent, palisade-nodeproxy and lab")
	flag.StringVar(&c.toolsDir, "tools-dir", ".cache/bench-bin", "directory of fortio (make bench-tools)")
	flag.StringVar(&c.stateDir, "state-dir", lab.DefaultStateDir, "lab state directory")
	// Late in sort order on purpose: Palisade's agent, when it looks a
	// pod's netns up by IP, takes the first match in /var/run/netns, and
	// every lab numbers its pods alike (see checkEnrollment).
	flag.StringVar(&c.name, "name", "zbench", "lab name")
	flag.StringVar(&c.doc, "doc", "docs/benchmarks.md", "markdown file whose results section is rewritten")
	flag.BoolVar(&c.noDoc, "no-doc", false, "do not touch the markdown file")
	flag.StringVar(&c.results, "results", ".cache/bench/results.json", "raw results (JSON)")
	flag.StringVar(&c.pprofDir, "pprof", "", "if set, save node proxy CPU profiles of the Palisade runs (the first fortio round of each Palisade path) and a heap profile here")
	flag.DurationVar(&c.iperfTime, "iperf-time", 10*time.Second, "duration of each iperf3 run")
	flag.DurationVar(&c.fortioTime, "fortio-time", 21*time.Second, "measured fortio time per path, split into rounds")
	flag.IntVar(&c.rounds, "rounds", 3, "fortio rounds per path, taking turns across the paths")
	flag.DurationVar(&c.warmup, "warmup", 3*time.Second, "fortio warm-up before each measured run")
	flag.DurationVar(&c.oneConnTime, "one-conn-time", 8*time.Second, "duration of the extra fortio run over a single connection (0: skip)")
	flag.DurationVar(&c.settle, "settle", 5*time.Second, "idle time over which idle CPU and RSS are measured")
	flag.DurationVar(&c.afterLoadIdle, "after-load-idle", 15*time.Second, "idle time after the load before RSS is read again (the node proxies return a load peak's memory after an idle --memory-trim-interval, 5 s)")
	flag.IntVar(&c.load.QPS, "qps", 1000, "fortio request rate")
	flag.IntVar(&c.load.Conns, "conns", 8, "fortio connections")
	flag.IntVar(&c.load.Payload, "payload", 1024, "request body bytes (echoed back)")
	flag.Float64Var(&c.load.Resolution, "fortio-resolution", 0.00001, "fortio histogram resolution (-r, seconds) of the fixed-rate runs: 10 µs buckets below 0.11 ms, growing to 0.5 ms at 2.5-5 ms")
	flag.StringVar(&c.phasesFlag, "phases", "all", "what to measure, comma-separated: "+strings.Join(allPhases, ", ")+" (all: everything)")
	flag.StringVar(&c.pathsFlag, "paths", "all", "paths to measure, comma-separated: "+strings.Join(allPaths, ", ")+" (all: everything); same-node adds the same-node rows of the max phase")
	flag.IntVar(&c.maxLoad.QPS, "max-qps", 20000, "target rate of the maximum-rate runs (0: as fast as possible)")
	flag.IntVar(&c.maxLoad.Conns, "max-conns", 64, "fortio connections of the maximum-rate runs")
	flag.DurationVar(&c.maxTime, "max-time", 15*time.Second, "duration of each maximum-rate run")
	flag.DurationVar(&c.maxWarmup, "max-warmup", 2*time.Second, "warm-up before each maximum-rate run")
	flag.Float64Var(&c.maxResolution, "max-resolution", 0.0001, "fortio histogram resolution (-r, seconds) of the maximum-rate runs")
	flag.IntVar(&c.goBenchCount, "gobench-count", 3, "runs of each Go benchmark (the median is reported)")
	flag.DurationVar(&c.goBenchTime, "gobench-time", time.Second, "-test.benchtime of each Go benchmark run")
	flag.StringVar(&c.kubeBinDir, "kube-bin-dir", ".cache/test-bin", "directory of kube-apiserver and etcd (make kube), for the enroll phase")
	flag.IntVar(&c.enrollPods, "enroll-pods", 200, "pods of the enroll phase, spread over its two nodes")
	flag.IntVar(&c.telemetryRounds, "telemetry-rounds", 6, "maximum-rate rounds of the telemetry phase, each one run with the node proxies' telemetry off and one on (ABBA order)")
	flag.IntVar(&c.ebpfRounds, "ebpf-rounds", 7, "iperf3 rounds of the ebpf phase, each one run without and one with the programs (ABBA order)")
	flag.IntVar(&c.enrollRounds, "enroll-rounds", 3, "label/unlabel rounds of the enroll phase (the median is reported)")
	flag.Parse()
	c.maxLoad.Payload = c.load.Payload

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, c); err != nil {
		fmt.Fprintln(os.Stderr, "bench: FAILED:", err)
		os.Exit(1)
	}
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
}

func run(ctx context.Context, c config) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("needs root (network namespaces); run: sudo make bench")
	}
	if c.rounds < 1 || c.fortioTime/time.Duration(c.rounds) < time.Second {
		return errors.New("--rounds must be at least 1 and each round at least 1s of --fortio-time")
	}
	if c.phases, err = parseSet("phases", c.phasesFlag, allPhases); err != nil {
		return err
	}
	if c.paths, err = parseSet("paths", c.pathsFlag, allPaths); err != nil {
		return err
	}
	if !c.full() && !c.noDoc {
		logf("partial run (--phases %s --paths %s): %s will not be touched", c.phasesFlag, c.pathsFlag, c.doc)
		c.noDoc = true
	}
	c.maxLoad.Resolution = c.maxResolution
	if c.enrollPods < 2 || c.enrollRounds < 1 {
		return errors.New("--enroll-pods must be at least 2 and --enroll-rounds at least 1")
	}
	if c.ebpfRounds < 1 || c.telemetryRounds < 1 {
		return errors.New("--ebpf-rounds and --telemetry-rounds must be at least 1")
	}
	for _, p := range []*string{&c.binDir, &c.toolsDir, &c.doc, &c.results, &c.pprofDir, &c.kubeBinDir} {
		if *p != "" {
			if *p, err = filepath.Abs(*p); err != nil {
				return err
			}
		}
	}
	// Pods find fortio on PATH (lab.yaml); the lab passes our PATH on.
	os.Setenv("PATH", c.toolsDir+string(os.PathListSeparator)+os.Getenv("PATH"))
	// The lab's server pods run iperf3 and fortio (lab.yaml); the enroll
	// phase runs a lab of its own and only checks rules.
	needLab := c.phases["iperf"] || c.phases["latency"] || c.phases["paced"] || c.phases["one-conn"] || c.phases["max"] || c.phases["ebpf"] || c.phases["telemetry"]
	var tools []string
	if needLab {
		tools = append(tools, "fortio", "iperf3", "curl")
		if c.paths["haproxy"] {
			tools = append(tools, "haproxy", "openssl")
		}
	}
	if needLab || c.phases["enroll"] {
		tools = append(tools, "iptables-save")
	}
	if c.phases["enroll"] {
		if err := checkKubeBinaries(c.kubeBinDir); err != nil {
			return err
		}
	}
	if c.phases["gobench"] {
		tools = append(tools, "go")
	}
	for _, t := range tools {
		if _, err := exec.LookPath(t); err != nil {
			return fmt.Errorf("%s not found (make bench installs it: PALISADE_BENCH_DEPS=1 scripts/install-deps.sh, make bench-tools)", t)
		}
	}
	machine := describeMachine(ctx)
	logf("machine: %s", machine.summary())

	tmp, err := os.MkdirTemp("", "palisade-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)

	res := &results{Date: time.Now().UTC(), Machine: machine, Load: c.load,
		IperfSeconds: c.iperfTime.Seconds(), FortioSeconds: c.fortioTime.Seconds(), Rounds: c.rounds, OneConnSeconds: c.oneConnTime.Seconds(),
		MaxLoad: c.maxLoad, MaxSeconds: c.maxTime.Seconds(), AfterLoadIdleSeconds: c.afterLoadIdle.Seconds(),
		Phases: sortedKeys(c.phases), Paths: sortedKeys(c.paths), Full: c.full()}
	res.Versions = toolVersions(ctx)

	// The Go benchmarks first: they need no lab, fail fast when the tree
	// does not build, and run while the host is as quiet as it gets.
	if c.phases["gobench"] {
		if res.GoBench, err = runGoBenchmarks(ctx, tmp, c.goBenchCount, c.goBenchTime); err != nil {
			return err
		}
	}
	// Enrollment on a lab of its own with a real API server, before the
	// main lab exists.
	if c.phases["enroll"] {
		if res.Enroll, err = runEnroll(ctx, c); err != nil {
			return err
		}
	}
	if !needLab {
		return finish(c, res)
	}

	objs, err := lab.Decode(labYAML)
	if err != nil {
		return fmt.Errorf("bench lab YAML: %w", err)
	}
	lcfg := lab.Config{
		Name: c.name, StateDir: c.stateDir, BinDir: c.binDir, LabBin: filepath.Join(c.binDir, "lab"),
		Objects: objs, Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}
	l, err := upLab(ctx, lcfg)
	if err != nil {
		return err
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if derr := l.Down(dctx); derr != nil {
			err = errors.Join(err, fmt.Errorf("lab down: %w", derr))
		} else {
			logf("lab %q is down", c.name)
		}
	}()

	if c.phases["ebpf"] {
		if res.EBPF, err = runEBPF(ctx, l, tmp, c.goBenchCount, c.goBenchTime, c.iperfTime, c.ebpfRounds); err != nil {
			return err
		}
	}

	st := l.Status()
	nodeProxies := []procRef{}
	for _, n := range st.Nodes {
		if n.NodeProxyPID == 0 {
			return fmt.Errorf("node %s has no running node proxy", n.Name)
		}
		nodeProxies = append(nodeProxies, procRef{"palisade node proxy " + n.Name, n.NodeProxyPID})
	}
	serverIP, err := l.PodIP("plain", "server")
	if err != nil {
		return err
	}
	meshServerIP, err := l.PodIP("mesh", "server")
	if err != nil {
		return err
	}
	plainFortio, err := fortioServer(l, "plain", "server")
	if err != nil {
		return err
	}
	meshFortio, err := fortioServer(l, "mesh", "server")
	if err != nil {
		return err
	}

	logf("idle %s: node proxies' idle CPU and RSS", c.settle)
	if res.PalisadeIdleCPU, err = idleCPU(ctx, nodeProxies, c.settle); err != nil {
		return err
	}
	if res.PalisadeIdleRSS, err = rssMB(nodeProxies); err != nil {
		return err
	}
	if res.PalisadeIdleRSSAnon, err = statusMB(nodeProxies, "RssAnon"); err != nil {
		return err
	}

	var hp *haproxyPair
	if c.paths["haproxy"] && (c.phases["iperf"] || c.phases["latency"] || c.phases["paced"] || c.phases["one-conn"]) {
		logf("generating certificates and starting the HAProxy pair")
		certs, err := makeCerts(ctx, tmp)
		if err != nil {
			return err
		}
		hp, err = startHAProxyPair(ctx, l, tmp, certs, "plain/client", "plain/server", serverIP.String())
		if err != nil {
			return err
		}
		defer hp.stop()
		res.HAProxyTLS = hp.tls
		if res.HAProxyIdleCPU, err = idleCPU(ctx, hp.procs, c.settle); err != nil {
			return err
		}
		if res.HAProxyIdleRSS, err = rssMB(hp.procs); err != nil {
			return err
		}
	}

	url := func(ip fmt.Stringer, port int) string { return fmt.Sprintf("http://%s:%d%s", ip, port, echoPath) }
	meshURL := url(meshServerIP, httpPort)
	direct := &scenario{Key: "direct", Title: "direct", Client: "plain/client",
		IperfHost: serverIP.String(), IperfPort: iperfPort, URL: url(serverIP, httpPort), Server: plainFortio}
	palisade := &scenario{Key: "palisade", Title: "Palisade (HBONE)", Client: "mesh/client",
		IperfHost: meshServerIP.String(), IperfPort: iperfPort, URL: meshURL, Procs: nodeProxies, Server: meshFortio,
		Palisade: true, ClientNode: "node1", ServerNode: "node2"}
	var scenarios []*scenario // the three-way comparison: iperf3, latency, one connection
	for _, s := range []*scenario{direct, palisade} {
		if c.paths[s.Key] {
			scenarios = append(scenarios, s)
		}
	}
	if hp != nil {
		scenarios = append(scenarios, &scenario{Key: "haproxy", Title: "HAProxy mTLS pair", Client: "plain/client",
			IperfHost: "127.0.0.1", IperfPort: hapIperfLocal,
			URL: fmt.Sprintf("http://127.0.0.1:%d%s", hapHTTPLocal, echoPath), Procs: hp.procs, Server: plainFortio})
	}
	// The Palisade path with each L7 rule set (fortio only).
	var l7s []*scenario
	l7ByRules := map[int]*scenario{}
	for _, n := range ruleSets {
		s := &scenario{Key: fmt.Sprintf("l7-%d", n), Title: fmt.Sprintf("Palisade L7 ×%d", n), Client: "mesh/client",
			URL: meshURL, Procs: nodeProxies, Server: meshFortio, Palisade: true, ClientNode: "node1", ServerNode: "node2", Rules: n}
		l7ByRules[n] = s
		if c.paths[s.Key] {
			l7s = append(l7s, s)
		}
	}
	pol := newPolicyCtl(l, "mesh/client", "node2", fmt.Sprintf("http://%s:%d", meshServerIP, httpPort))

	// check runs one measurement with the scenario's policy in force and
	// verifies from the node proxies' counters that it took the path it
	// claims: through both node proxies over HBONE for Palisade, with every
	// request judged and allowed by the L7 policy when there is one and
	// none judged without; through no node proxy otherwise. fn returns the
	// fortio result (nil for other runs), which gets the L7 counts.
	check := func(s *scenario, what string, minConns int, fn func() (*fortioResult, error)) error {
		if s.Palisade {
			if err := pol.ensure(ctx, s.Rules); err != nil {
				return fmt.Errorf("%s, %s: %w", s.Title, what, err)
			}
		}
		before, err := palisadeCounters(ctx, l)
		if err != nil {
			return err
		}
		fr, err := fn()
		if err != nil {
			return fmt.Errorf("%s, %s: %w", s.Title, what, err)
		}
		after, err := palisadeCounters(ctx, l)
		if err != nil {
			return err
		}
		var n int64
		if fr != nil {
			n = fr.Requests
		}
		allowed, denied, err := checkCounters(s, before, after, minConns, n)
		if err != nil {
			return fmt.Errorf("%s, %s: %w; results discarded", s.Title, what, err)
		}
		if s.Palisade && s.Rules > 0 {
			if err := pol.recheck(ctx); err != nil {
				return fmt.Errorf("%s, %s: after the run: %w; results discarded", s.Title, what, err)
			}
		}
		if fr != nil {
			fr.L7Allowed, fr.L7Denied = allowed, denied
		}
		return nil
	}
	// Nothing else captured our pods meanwhile (see checkEnrollment).
	recheck := func(phase string) error {
		if err := checkEnrollment(ctx, l); err != nil {
			return fmt.Errorf("after the %s: %w; results discarded: run the benchmark while no other lab is up", phase, err)
		}
		return nil
	}

	// Throughput, one path after the other.
	if c.phases["iperf"] {
		for _, s := range scenarios {
			var prof *profiler
			if s.Key == "palisade" && c.pprofDir != "" {
				prof = &profiler{l: l, dir: c.pprofDir}
			}
			logf("%s: iperf3, 1 stream, %s", s.Title, c.iperfTime)
			err := check(s, "iperf3", 2, func() (*fortioResult, error) {
				prof.start(ctx, "iperf", c.iperfTime)
				r, err := runIperf(ctx, l, s.Client, s.IperfHost, s.IperfPort, c.iperfTime, s.Procs)
				s.Iperf = &r
				prof.wait()
				return nil, errors.Join(err, prof.err())
			})
			if err != nil {
				return err
			}
			logf("%s: %.2f Gbit/s", s.Title, s.Iperf.Gbps)
		}
		if err := recheck("iperf3 runs"); err != nil {
			return err
		}
	}

	// Latency: the measured time is split into rounds that take turns
	// across the paths (the L7 ones included: each switches the policy and
	// waits until it is in force), so that a disturbance on this shared
	// host (other processes, other labs) spreads over all of them;
	// percentiles are the median over the rounds.
	latency := append(slices.Clone(scenarios), l7s...)
	fixedRate := func(pc pacing) error {
		load := c.load
		load.Uniform = pc == paced
		for _, s := range latency {
			logf("%s: fortio warm-up %s (%s)", s.Title, c.warmup, pc)
			if err := check(s, "fortio warm-up", load.Conns, func() (*fortioResult, error) {
				_, err := runCmd(ctx, l, s.Client, load.args(c.warmup, s.URL, false)...)
				return nil, err
			}); err != nil {
				return err
			}
		}
		round := c.fortioTime / time.Duration(c.rounds)
		for i := range c.rounds {
			for _, s := range latency {
				var prof *profiler
				if s.Palisade && c.pprofDir != "" && i == 0 && pc == bursts {
					prof = &profiler{l: l, dir: c.pprofDir}
				}
				var r fortioResult
				err := check(s, "fortio", load.Conns, func() (*fortioResult, error) {
					prof.start(ctx, "fortio-"+s.Key, round)
					var err error
					r, err = runFortio(ctx, l, s.Client, s.URL, load, 0, round, s.Procs, procRef{})
					prof.wait()
					return &r, errors.Join(err, prof.err())
				})
				if err != nil {
					return err
				}
				s.addRound(pc, r)
				logf("%s: %s round %d/%d: fortio %d qps, %d connections, %d B bodies, %s: %.0f qps, p50 %.3f ms, p99 %.3f ms, p99.9 %.3f ms",
					s.Title, pc, i+1, c.rounds, load.QPS, load.Conns, load.Payload, round, r.QPS, r.P50, r.P99, r.P999)
			}
		}
		return nil
	}
	for _, pc := range []pacing{bursts, paced} {
		if c.phases[pc.phase()] {
			if err := fixedRate(pc); err != nil {
				return err
			}
		}
	}
	if c.phases["one-conn"] && c.oneConnTime > 0 {
		one := c.load
		one.Conns = 1
		for _, s := range scenarios {
			logf("%s: fortio %d qps over 1 connection, %s", s.Title, one.QPS, c.oneConnTime)
			if err := check(s, "fortio over 1 connection", 1, func() (*fortioResult, error) {
				r, err := runFortio(ctx, l, s.Client, s.URL, one, time.Second, c.oneConnTime, s.Procs, procRef{})
				s.FortioOneConn = &r
				return &r, err
			}); err != nil {
				return err
			}
		}
	}
	if c.phases["latency"] || c.phases["paced"] || c.phases["one-conn"] {
		if err := recheck("fortio runs"); err != nil {
			return err
		}
	}

	// Idle again after the fixed-rate load, without L7 policy as before it.
	if err := pol.ensure(ctx, 0); err != nil {
		return err
	}
	logf("idle %s before reading RSS after load", c.afterLoadIdle)
	sleep(ctx, c.afterLoadIdle)
	if res.PalisadeAfterRSS, err = rssMB(nodeProxies); err != nil {
		return err
	}
	if res.PalisadeAfterRSSAnon, err = statusMB(nodeProxies, "RssAnon"); err != nil {
		return err
	}
	if hp != nil {
		if res.HAProxyAfterRSS, err = rssMB(hp.procs); err != nil {
			return err
		}
	}

	// The highest rate: L4 paths first, then the L7 ones (one policy
	// switch).
	var maxOnly []*scenario // not in the other phases
	if c.phases["max"] {
		var maxRuns []*scenario
		if c.paths["direct"] {
			maxRuns = append(maxRuns, direct)
		}
		if c.paths["palisade"] {
			maxRuns = append(maxRuns, palisade)
		}
		local := func(n int) *scenario {
			title := "same node: Palisade L4"
			if n > 0 {
				title = fmt.Sprintf("same node: Palisade L7 ×%d", n)
			}
			return &scenario{Key: fmt.Sprintf("same-node-%s", map[bool]string{true: fmt.Sprintf("l7-%d", n), false: "l4"}[n > 0]),
				Title: title, Client: "mesh/local-client", URL: meshURL, Procs: nodeProxies, Server: meshFortio,
				Palisade: true, ClientNode: "node2", ServerNode: "node2", Rules: n, SameNode: true}
		}
		big := ruleSets[len(ruleSets)-1]
		if c.paths["same-node"] {
			maxRuns = append(maxRuns, local(0))
		}
		if s := l7ByRules[big]; c.paths[s.Key] {
			maxRuns = append(maxRuns, s)
		}
		if c.paths["same-node"] {
			maxRuns = append(maxRuns, local(big))
		}
		for _, s := range maxRuns {
			logf("%s: fortio at a %d qps target, %d connections, %s (after %s warm-up)", s.Title, c.maxLoad.QPS, c.maxLoad.Conns, c.maxTime, c.maxWarmup)
			err := check(s, "maximum rate", c.maxLoad.Conns, func() (*fortioResult, error) {
				r, err := runFortio(ctx, l, s.Client, s.URL, c.maxLoad, c.maxWarmup, c.maxTime, s.Procs, s.Server)
				s.Max = &r
				return &r, err
			})
			if err != nil {
				return err
			}
			r := s.Max
			logf("%s: %.0f qps (target %d), p50 %.2f ms, p99 %.2f ms, p99.9 %.2f ms, %d errors; CPU (cores): host busy %.2f of %d (softirq %.2f, steal %.2f), fortio client %.2f, server %.2f, node proxies %.2f + %.2f",
				s.Title, r.QPS, c.maxLoad.QPS, r.P50, r.P99, r.P999, r.Errors, r.Host.Busy, machine.NProc, r.Host.Softirq, r.Host.Steal,
				r.LoadGenCPU, r.ServerCPU, cpuAt(r.Usage.CPU, 0), cpuAt(r.Usage.CPU, 1))
			if !slices.Contains(scenarios, s) && !slices.Contains(l7s, s) {
				maxOnly = append(maxOnly, s)
			}
		}
		if err := recheck("maximum-rate runs"); err != nil {
			return err
		}
	}

	if c.phases["max"] {
		if err := pol.ensure(ctx, 0); err != nil {
			return err
		}
		logf("idle %s before reading RSS after the maximum-rate runs", c.afterLoadIdle)
		sleep(ctx, c.afterLoadIdle)
		if res.PalisadeAfterMaxRSS, err = rssMB(nodeProxies); err != nil {
			return err
		}
	}

	if c.phases["telemetry"] {
		// The path of the L7 scenario with telemetryRules rules. Only its
		// path fields are used: the runs' results go to tr, not to s.
		l7, ok := l7ByRules[telemetryRules]
		if !ok {
			return fmt.Errorf("telemetry: no L7 scenario with %d rules (rule sets %v)", telemetryRules, ruleSets)
		}
		s := *l7
		s.Key, s.Title = "telemetry", fmt.Sprintf("Palisade L7 ×%d, FlowLog of every flow", telemetryRules)
		// The policy is put in force (and verified from the request
		// records) with telemetry on; it does not change during the rounds.
		pol.setExtra(flowLogAll)
		if err := setTelemetry(ctx, l, true); err != nil {
			return err
		}
		if err := pol.ensure(ctx, telemetryRules); err != nil {
			return err
		}
		tr := &telemetryResults{}
		w0, d0, err := flowRecordCounts(ctx, l)
		if err != nil {
			return err
		}
		for round := range c.telemetryRounds {
			// ABBA order, as in the eBPF phase: a drift of the host over
			// the runs weighs on both sides alike.
			order := []bool{false, true}
			if round%2 == 1 {
				order = []bool{true, false}
			}
			for _, on := range order {
				if err := setTelemetry(ctx, l, on); err != nil {
					return err
				}
				logf("telemetry %v, round %d/%d: fortio at a %d qps target, %d connections, %s", on, round+1, c.telemetryRounds, c.maxLoad.QPS, c.maxLoad.Conns, c.maxTime)
				var r fortioResult
				measure := func() (*fortioResult, error) {
					var err error
					r, err = runFortio(ctx, l, s.Client, s.URL, c.maxLoad, c.maxWarmup, c.maxTime, s.Procs, s.Server)
					return &r, err
				}
				if on {
					// The node proxies' counters show the path taken.
					err = check(&s, "telemetry on", c.maxLoad.Conns, measure)
				} else {
					// No counters without telemetry: every request must
					// be answered (fortio's POST /echo is what the
					// policy's last rule allows; anything else is a 403).
					_, err = measure()
					if err == nil && (r.Errors > 0 || r.Requests == 0) {
						err = fmt.Errorf("telemetry off: %d errors in %d requests", r.Errors, r.Requests)
					}
				}
				if err != nil {
					setTelemetry(ctx, l, true)
					return err
				}
				logf("telemetry %v: %.0f qps, p50 %.2f ms, p99 %.2f ms", on, r.QPS, r.P50, r.P99)
				if on {
					tr.OnQPS, tr.OnP50, tr.OnP99 = append(tr.OnQPS, r.QPS), append(tr.OnP50, r.P50), append(tr.OnP99, r.P99)
				} else {
					tr.OffQPS, tr.OffP50, tr.OffP99 = append(tr.OffQPS, r.QPS), append(tr.OffP50, r.P50), append(tr.OffP99, r.P99)
				}
			}
		}
		w1, d1, err := flowRecordCounts(ctx, l)
		if err != nil {
			return err
		}
		tr.RecordsWritten, tr.RecordsDropped = w1-w0, d1-d0
		tr.summarize()
		if err := recheck("telemetry runs"); err != nil {
			return err
		}
		res.Telemetry = tr
		logf("telemetry cost: %.1f%% qps (paired %.1f%%), %+.1f%% p50, %+.1f%% p99; flow records written %.0f, dropped %.0f",
			tr.QPSCostPercent, tr.PairedQPSCostPercent, tr.P50CostPercent, tr.P99CostPercent, tr.RecordsWritten, tr.RecordsDropped)
		pol.setExtra("")
		if err := pol.ensure(ctx, 0); err != nil {
			return err
		}
	}

	if c.pprofDir != "" {
		p := &profiler{l: l, dir: c.pprofDir}
		if err := p.heap(ctx); err != nil {
			return err
		}
		logf("profiles in %s (go tool pprof -top bin/palisade-nodeproxy FILE)", c.pprofDir)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	res.Scenarios = append(scenarios, l7s...)
	res.Scenarios = append(res.Scenarios, maxOnly...)
	res.PolicySwitches = pol.Switches
	return finish(c, res)
}

// finish evaluates the targets, prints the table and writes the results.
func finish(c config, res *results) error {
	res.evaluate()
	fmt.Println(res.text())
	if err := os.MkdirAll(filepath.Dir(c.results), 0o755); err != nil {
		return err
	}
	data, _ := json.MarshalIndent(res, "", "  ")
	if err := os.WriteFile(c.results, append(data, '\n'), 0o644); err != nil {
		return err
	}
	logf("raw results in %s", c.results)
	if !c.noDoc {
		if err := updateDoc(c.doc, res.markdown()); err != nil {
			return err
		}
		logf("results written to %s", c.doc)
	}
	return nil
}

func sortedKeys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func cpuAt(a []float64, i int) float64 {
	if i < len(a) {
		return a[i]
	}
	return 0
}

// fortioServer finds the fortio server process of a pod.
func fortioServer(l *lab.Lab, ns, name string) (procRef, error) {
	p, err := l.Pod(ns, name)
	if err != nil {
		return procRef{}, err
	}
	for _, pid := range p.PIDs {
		if pid == 0 {
			continue
		}
		comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		if err == nil && strings.TrimSpace(string(comm)) == "fortio" {
			return procRef{fmt.Sprintf("fortio server %s/%s", ns, name), pid}, nil
		}
	}
	return procRef{}, fmt.Errorf("no fortio process among the containers of %s/%s (pids %v)", ns, name, p.PIDs)
}

// upLab builds the lab and checks that its pods are enrolled as intended,
// rebuilding it (up to three times) when Palisade's agent picked another
// lab's namespace for one of them (see checkEnrollment).
func upLab(ctx context.Context, cfg lab.Config) (*lab.Lab, error) {
	for attempt := 1; ; attempt++ {
		logf("building lab %q (%d pods)", cfg.Name, len(cfg.Objects.Pods))
		l, err := lab.Up(ctx, cfg)
		if errors.Is(err, lab.ErrExists) {
			logf("a lab %q is left from an earlier run; tearing it down", cfg.Name)
			if derr := lab.Destroy(ctx, cfg.Name, cfg.StateDir, cfg.Logger); derr != nil {
				return nil, fmt.Errorf("remove stale lab: %w", derr)
			}
			l, err = lab.Up(ctx, cfg)
		}
		if err != nil {
			return nil, err
		}
		err = checkEnrollment(ctx, l)
		if err == nil {
			return l, nil
		}
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
		derr := l.Down(dctx)
		cancel()
		if derr != nil {
			return nil, errors.Join(err, fmt.Errorf("lab down: %w", derr))
		}
		if !errors.Is(err, errInterference) || attempt == 3 || ctx.Err() != nil {
			return nil, err
		}
		logf("attempt %d: %v; rebuilding the lab", attempt, err)
	}
}

// idleCPU measures the processes' CPU while nothing is sent.
func idleCPU(ctx context.Context, procs []procRef, d time.Duration) ([]float64, error) {
	s, err := startSampler(procs)
	if err != nil {
		return nil, err
	}
	sleep(ctx, d)
	u, err := s.finish()
	return u.CPU, err
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// scenario is one path and what was measured on it.
type scenario struct {
	Key       string    `json:"key"`
	Title     string    `json:"title"`
	Client    string    `json:"client"`
	IperfHost string    `json:"iperfHost,omitempty"`
	IperfPort int       `json:"iperfPort,omitempty"`
	URL       string    `json:"url"`
	Procs     []procRef `json:"proxies,omitempty"`
	// Server is the fortio server process (sampled in the maximum-rate
	// runs).
	Server procRef `json:"server"`
	// Palisade paths go through node proxies: from ClientNode's (outbound)
	// to ServerNode's (inbound HBONE), with an L7Policy of Rules HTTP rules
	// on the server's port (0: none, the L4 tunnel). SameNode: both hops in
	// one node proxy.
	Palisade   bool   `json:"palisade"`
	ClientNode string `json:"clientNode,omitempty"`
	ServerNode string `json:"serverNode,omitempty"`
	Rules      int    `json:"l7Rules"`
	SameNode   bool   `json:"sameNode,omitempty"`

	Iperf *iperfResult `json:"iperf3,omitempty"`
	// Fortio aggregates FortioRounds: median percentiles, summed counts.
	Fortio       fortioResult   `json:"fortio"`
	FortioRounds []fortioResult `json:"fortioRounds,omitempty"`
	// Paced is the same fixed rate with evenly paced requests.
	Paced *fixedRuns `json:"paced,omitempty"`
	// FortioOneConn is the same rate over a single connection.
	FortioOneConn *fortioResult `json:"fortioOneConn,omitempty"`
	// Max is the maximum-rate run.
	Max *fortioResult `json:"max,omitempty"`
}

// fixedRuns are the rounds of one fixed-rate phase and their aggregate.
type fixedRuns struct {
	All    fortioResult   `json:"fortio"`
	Rounds []fortioResult `json:"rounds,omitempty"`
}

// pacing tells the two fixed-rate phases apart: fortio's default, where
// every connection sends at the same moment (bursts of --conns requests),
// and evenly paced requests (fortio -uniform), the arrivals of an open-loop
// load generator such as the Nighthawk runs behind Istio's published
// latency figures.
type pacing int

const (
	bursts pacing = iota
	paced
)

func (pc pacing) String() string { return [...]string{"bursts", "paced"}[pc] }

// describe names the pacing in target lines.
func (pc pacing) describe() string {
	return [...]string{"fortio's default: all connections send at once", "evenly paced requests"}[pc]
}

// phase is the --phases name of the runs.
func (pc pacing) phase() string { return [...]string{"latency", "paced"}[pc] }

// addRound records one round of pc's runs and aggregates the rounds so
// far. The bursty runs live in Fortio and FortioRounds (the results file
// kept its keys), the paced ones in Paced.
func (s *scenario) addRound(pc pacing, r fortioResult) {
	if pc == bursts {
		s.FortioRounds = append(s.FortioRounds, r)
		s.Fortio = aggregate(s.FortioRounds)
		return
	}
	if s.Paced == nil {
		s.Paced = &fixedRuns{}
	}
	s.Paced.Rounds = append(s.Paced.Rounds, r)
	s.Paced.All = aggregate(s.Paced.Rounds)
}

// has reports whether pc's runs were made on the scenario.
func (s *scenario) has(pc pacing) bool {
	_, rounds := s.runs(pc)
	return len(rounds) > 0
}

// runs returns pc's aggregate and rounds (none when not run).
func (s *scenario) runs(pc pacing) (fortioResult, []fortioResult) {
	if pc == bursts {
		return s.Fortio, s.FortioRounds
	}
	if s.Paced == nil {
		return fortioResult{}, nil
	}
	return s.Paced.All, s.Paced.Rounds
}

// checkEnrollment makes sure the traffic paths are what they claim: the
// mesh pods carry Palisade's redirect rules and are served by their node's
// proxy in their own netns, and no other process listens on Palisade's
// ports there; the plain pods carry no rules and no such listeners.
//
// This matters on a shared host: every lab numbers its pods alike
// (10.244.i.N), and an agent that looks a pod's netns up by IP (as
// Palisade's does when it has no CNI hint yet, or after a restart) may pick
// another lab's namespace that holds the same address.
func checkEnrollment(ctx context.Context, l *lab.Lab) error {
	st := l.Status()
	ours := map[int]bool{}
	for _, n := range st.Nodes {
		ours[n.NodeProxyPID] = true
	}
	pidRE := regexp.MustCompile(`pid=(\d+)`)
	for _, p := range st.Pods {
		target := p.Namespace + "/" + p.Name
		mesh := p.Namespace == "mesh"
		out, err := l.Exec(ctx, target, "iptables-save", "-t", "nat")
		if err != nil {
			return fmt.Errorf("read rules of %s: %w: %s", target, err, out)
		}
		hasRules := strings.Contains(string(out), "PALISADE_")
		switch {
		case mesh && !hasRules:
			return fmt.Errorf("%w: pod %s is enrolled but has no Palisade redirect rules in its netns %s: its traffic would bypass Palisade (agent log: %s)",
				errInterference, target, p.Netns, agentLog(l, p.Node))
		case !mesh && hasRules:
			return fmt.Errorf("%w: pod %s is not enrolled but its netns %s carries Palisade redirect rules", errInterference, target, p.Netns)
		}
		out, err = l.Exec(ctx, target, "ss", "-Hltnp")
		if err != nil {
			return fmt.Errorf("list listeners of %s: %w: %s", target, err, out)
		}
		for _, line := range strings.Split(string(out), "\n") {
			f := strings.Fields(line)
			if len(f) < 4 {
				continue
			}
			local := f[3]
			if !strings.HasSuffix(local, ":15001") && !strings.HasSuffix(local, ":15006") && !strings.HasSuffix(local, ":15008") {
				continue
			}
			for _, m := range pidRE.FindAllStringSubmatch(line, -1) {
				var pid int
				fmt.Sscan(m[1], &pid)
				if !mesh || !ours[pid] {
					return fmt.Errorf("%w: pid %d (not this lab's node proxy) listens on %s in pod %s", errInterference, pid, local, target)
				}
			}
		}
		if !mesh {
			continue
		}
		ino, err := inodeOf("/var/run/netns/" + p.Netns)
		if err != nil {
			return err
		}
		out, err = l.NodeCommand(ctx, p.Node, "curl", "-sS", "-f", "--max-time", "5", "http://127.0.0.1:15000/config_dump").Output()
		if err != nil {
			return fmt.Errorf("node proxy %s config_dump: %w", p.Node, err)
		}
		var dump struct {
			Workloads []struct {
				Namespace  string `json:"namespace"`
				Name       string `json:"name"`
				NetnsInode uint64 `json:"netnsInode"`
			} `json:"workloads"`
		}
		if err := json.Unmarshal(out, &dump); err != nil {
			return fmt.Errorf("node proxy %s config_dump: %w", p.Node, err)
		}
		found := false
		for _, w := range dump.Workloads {
			if w.Namespace == p.Namespace && w.Name == p.Name {
				found = true
				if w.NetnsInode != ino {
					return fmt.Errorf("%w: node proxy %s serves %s in netns inode %d, but the pod's netns %s is inode %d: the agent enrolled another namespace holding the pod's IP (agent log: %s)",
						errInterference, p.Node, target, w.NetnsInode, p.Netns, ino, agentLog(l, p.Node))
				}
			}
		}
		if !found {
			return fmt.Errorf("node proxy %s does not serve %s", p.Node, target)
		}
	}
	return nil
}

// errInterference marks a lab whose pods another lab's Palisade (or ours,
// in another lab's pods) got mixed up with.
var errInterference = errors.New("lab interference")

func agentLog(l *lab.Lab, node string) string {
	n, err := l.Node(node)
	if err != nil {
		return "?"
	}
	return n.AgentLog
}

func inodeOf(path string) (uint64, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("stat %s: %w", path, err)
	}
	return st.Ino, nil
}

// counters are the node proxies' connection counters, by node and
// direction ("node1/outbound"), and their L7 request counters, by node,
// direction and verdict, summed over protocols ("node2/l7/inbound-hbone/allowed").
type counters map[string]float64

var labelRE = regexp.MustCompile(`(\w+)="([^"]*)"`)

// scrapeNodeProxyMetrics reads every node proxy's /metrics and calls fn
// for each sample that has labels, with the node's name, the metric name,
// the labels and the value.
func scrapeNodeProxyMetrics(ctx context.Context, l *lab.Lab, fn func(node, name string, labels map[string]string, value float64)) error {
	for _, n := range l.Status().Nodes {
		data, err := l.NodeCommand(ctx, n.Name, "curl", "-sS", "-f", "--max-time", "5", "http://127.0.0.1:15020/metrics").Output()
		if err != nil {
			return fmt.Errorf("node proxy %s metrics: %w", n.Name, err)
		}
		for _, line := range strings.Split(string(data), "\n") {
			name, rest, ok := strings.Cut(line, "{")
			if !ok {
				continue
			}
			lbls, val, ok := strings.Cut(rest, "} ")
			if !ok {
				continue
			}
			lv := map[string]string{}
			for _, m := range labelRE.FindAllStringSubmatch(lbls, -1) {
				lv[m[1]] = m[2]
			}
			var v float64
			fmt.Sscan(val, &v)
			fn(n.Name, name, lv, v)
		}
	}
	return nil
}

func palisadeCounters(ctx context.Context, l *lab.Lab) (counters, error) {
	out := counters{}
	err := scrapeNodeProxyMetrics(ctx, l, func(node, name string, lv map[string]string, v float64) {
		switch name {
		case "palisade_tcp_connections_opened_total":
			out[node+"/"+lv["direction"]] += v
		case "palisade_l7_requests_total":
			out[node+"/l7/"+lv["direction"]+"/"+lv["verdict"]] += v
		}
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// checkCounters verifies that a Palisade run went from the client's node
// proxy over HBONE to the server's, with the L7 policy judging (and
// allowing) every request when the path has one and judging none when it
// has not, and that the other runs did not touch any node proxy. It
// returns the L7 requests the server side allowed and denied.
func checkCounters(s *scenario, before, after counters, minConns int, requests int64) (allowed, denied int64, err error) {
	delta := func(k string) float64 { return after[k] - before[k] }
	if !s.Palisade {
		for k := range after {
			if d := delta(k); d != 0 {
				return 0, 0, fmt.Errorf("the %s run went through a Palisade node proxy (%s +%.0f)", s.Key, k, d)
			}
		}
		return 0, 0, nil
	}
	out, in := delta(s.ClientNode+"/outbound"), delta(s.ServerNode+"/inbound-hbone")
	if out < float64(minConns) || in < float64(minConns) {
		return 0, 0, fmt.Errorf("traffic did not go through Palisade: %s outbound +%.0f, %s inbound-hbone +%.0f connections (want >= %d; counters before %v, after %v)",
			s.ClientNode, out, s.ServerNode, in, minConns, before, after)
	}
	allowed = int64(delta(s.ServerNode + "/l7/inbound-hbone/allowed"))
	denied = int64(delta(s.ServerNode + "/l7/inbound-hbone/denied"))
	switch {
	case s.Rules > 0 && (allowed < max(requests, 1) || denied != 0):
		return allowed, denied, fmt.Errorf("the L7 policy did not judge the run as expected: node proxy %s allowed %d and denied %d requests, fortio sent %d (want all allowed)",
			s.ServerNode, allowed, denied, requests)
	case s.Rules == 0 && allowed+denied != 0:
		return allowed, denied, fmt.Errorf("an L7 policy judged %d requests during a run without one (node proxy %s)", allowed+denied, s.ServerNode)
	}
	return allowed, denied, nil
}

// profiler collects CPU profiles of both node proxies during a run; a nil
// profiler does nothing.
type profiler struct {
	l    *lab.Lab
	dir  string
	cmds []*exec.Cmd
	errs []error
}

func (p *profiler) start(ctx context.Context, tag string, d time.Duration) {
	if p == nil {
		return
	}
	if err := os.MkdirAll(p.dir, 0o755); err != nil {
		p.errs = append(p.errs, err)
		return
	}
	secs := max(int(d.Seconds())-1, 1)
	for _, n := range p.l.Status().Nodes {
		file := filepath.Join(p.dir, fmt.Sprintf("cpu-%s-%s.pprof", tag, n.Name))
		cmd := p.l.NodeCommand(ctx, n.Name, "curl", "-sS", "-f", "-o", file,
			fmt.Sprintf("http://127.0.0.1:15000/debug/pprof/profile?seconds=%d", secs))
		if err := cmd.Start(); err != nil {
			p.errs = append(p.errs, err)
			continue
		}
		p.cmds = append(p.cmds, cmd)
	}
}

func (p *profiler) wait() {
	if p == nil {
		return
	}
	for _, c := range p.cmds {
		if err := c.Wait(); err != nil {
			p.errs = append(p.errs, fmt.Errorf("pprof: %w", err))
		}
	}
	p.cmds = nil
}

func (p *profiler) err() error {
	if p == nil {
		return nil
	}
	return errors.Join(p.errs...)
}

func (p *profiler) heap(ctx context.Context) error {
	if err := os.MkdirAll(p.dir, 0o755); err != nil {
		return err
	}
	for _, n := range p.l.Status().Nodes {
		file := filepath.Join(p.dir, fmt.Sprintf("heap-%s.pprof", n.Name))
		if out, err := p.l.NodeCommand(ctx, n.Name, "curl", "-sS", "-f", "-o", file, "http://127.0.0.1:15000/debug/pprof/heap").CombinedOutput(); err != nil {
			return fmt.Errorf("heap profile %s: %w: %s", n.Name, err, out)
		}
	}
	return nil
}
