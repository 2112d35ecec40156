package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/palisade-net/palisade/pkg/lab"
)

// runCmd runs args in a pod and returns stdout; stderr is folded into the
// error.
func runCmd(ctx context.Context, l *lab.Lab, pod string, args ...string) ([]byte, error) {
	var stdout, stderr bytes.Buffer
	cmd := l.Command(ctx, pod, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("%s in %s: %w\nstdout: %s\nstderr: %s", strings.Join(args, " "), pod, err,
			tail(stdout.String(), 2000), tail(stderr.String(), 2000))
	}
	return stdout.Bytes(), nil
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// iperfResult is one iperf3 run.
type iperfResult struct {
	Gbps        float64 `json:"gbps"`
	Retransmits int     `json:"retransmits"`
	Usage       usage   `json:"proxies"`
}

// runIperf runs a single-stream iperf3 client in the client pod.
func runIperf(ctx context.Context, l *lab.Lab, pod, host string, port int, d time.Duration, procs []procRef) (iperfResult, error) {
	var r iperfResult
	s, err := startSampler(procs)
	if err != nil {
		return r, err
	}
	out, err := runCmd(ctx, l, pod, "iperf3", "--client", host, "--port", strconv.Itoa(port),
		"--time", strconv.Itoa(int(d.Seconds())), "--parallel", "1", "--json")
	u, serr := s.finish()
	if err != nil {
		return r, err
	}
	if serr != nil {
		return r, serr
	}
	var res struct {
		Error string `json:"error"`
		End   struct {
			SumSent struct {
				Retransmits int `json:"retransmits"`
			} `json:"sum_sent"`
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		return r, fmt.Errorf("iperf3 output: %w: %s", err, tail(string(out), 500))
	}
	if res.Error != "" {
		return r, fmt.Errorf("iperf3: %s", res.Error)
	}
	if res.End.SumReceived.BitsPerSecond <= 0 {
		return r, fmt.Errorf("iperf3 measured nothing: %s", tail(string(out), 500))
	}
	r.Gbps = res.End.SumReceived.BitsPerSecond / 1e9
	r.Retransmits = res.End.SumSent.Retransmits
	r.Usage = u
	return r, nil
}

// fortioResult is one fortio load run. Latencies are in milliseconds.
type fortioResult struct {
	QPS      float64 `json:"qps"`
	Requests int64   `json:"requests"`
	Errors   int64   `json:"errors"` // responses other than 200, and failed requests
	P50      float64 `json:"p50ms"`
	P90      float64 `json:"p90ms"`
	P99      float64 `json:"p99ms"`
	P999     float64 `json:"p99_9ms"`
	Avg      float64 `json:"avgms"`
	Max      float64 `json:"maxms"`
	Usage    usage   `json:"proxies"`
	// LoadGenCPU is the fortio client's CPU (cores) over the measured run,
	// ServerCPU the fortio server's (0 when not sampled), Host the whole
	// machine's.
	LoadGenCPU float64 `json:"loadGenCpuCores"`
	ServerCPU  float64 `json:"serverCpuCores,omitempty"`
	Host       hostCPU `json:"host"`
	// L7Allowed and L7Denied are the requests the server-side node proxy
	// judged during the run.
	L7Allowed int64 `json:"l7Allowed"`
	L7Denied  int64 `json:"l7Denied"`
}

type loadSpec struct {
	QPS     int
	Conns   int
	Payload int
	// Resolution is fortio's histogram resolution in seconds (-r): the
	// width of its lowest buckets, within which percentiles are
	// interpolated.
	Resolution float64
	// Uniform spreads the connections' requests evenly over each period
	// (fortio -uniform) instead of sending one on every connection at the
	// same moment (fortio's default: bursts of Conns requests at once).
	Uniform bool
}

func (ls loadSpec) args(d time.Duration, url string, jsonOut bool) []string {
	a := []string{"fortio", "load", "-qps", strconv.Itoa(ls.QPS), "-c", strconv.Itoa(ls.Conns),
		"-t", d.String(), "-payload-size", strconv.Itoa(ls.Payload), "-p", "50,90,99,99.9",
		"-loglevel", "warning"}
	if ls.Resolution > 0 {
		a = append(a, "-r", strconv.FormatFloat(ls.Resolution, 'g', -1, 64))
	}
	if ls.Uniform {
		a = append(a, "-uniform")
	}
	if jsonOut {
		a = append(a, "-json", "-")
	}
	return append(a, url)
}

// runFortio warms up, then runs the measured load (HTTP/1.1 keep-alive, a
// POST with Payload bytes that fortio's echo server returns), sampling the
// proxies, the fortio server (when server.PID is set), the fortio client
// and the host's CPU.
func runFortio(ctx context.Context, l *lab.Lab, pod, url string, ls loadSpec, warmup, d time.Duration, procs []procRef, server procRef) (fortioResult, error) {
	var r fortioResult
	if warmup > 0 {
		if _, err := runCmd(ctx, l, pod, ls.args(warmup, url, false)...); err != nil {
			return r, fmt.Errorf("warm-up: %w", err)
		}
	}
	sampled := procs
	if server.PID != 0 {
		sampled = append(slices.Clone(procs), server)
	}
	s, err := startSampler(sampled)
	if err != nil {
		return r, err
	}
	host0, herr := readHostCPU()
	args := ls.args(d, url, true)
	var stdout, stderr bytes.Buffer
	cmd := l.Command(ctx, pod, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	t0 := time.Now()
	err = cmd.Run()
	wall := time.Since(t0).Seconds()
	u, serr := s.finish()
	host1, herr1 := readHostCPU()
	if err != nil {
		return r, fmt.Errorf("%s in %s: %w\nstdout: %s\nstderr: %s", strings.Join(args, " "), pod, err,
			tail(stdout.String(), 2000), tail(stderr.String(), 2000))
	}
	if serr != nil {
		return r, serr
	}
	if herr == nil && herr1 == nil {
		r.Host = host1.since(host0)
	}
	// "ip netns exec" execs fortio: the child's rusage is fortio's.
	if ps := cmd.ProcessState; ps != nil && wall > 0 {
		r.LoadGenCPU = (ps.UserTime() + ps.SystemTime()).Seconds() / wall
	}
	if server.PID != 0 {
		r.ServerCPU = u.CPU[len(u.CPU)-1]
		u.CPU, u.MaxRSSMB, u.CtxSwitches = u.CPU[:len(procs)], u.MaxRSSMB[:len(procs)], u.CtxSwitches[:len(procs)]
	}
	// stdout is the JSON document (fortio logs to stderr).
	out := stdout.Bytes()
	if i := bytes.IndexByte(out, '{'); i > 0 {
		out = out[i:]
	}
	var res struct {
		ActualQPS         float64
		RetCodes          map[string]int64
		DurationHistogram struct {
			Count       int64
			Avg, Max    float64
			Percentiles []struct {
				Percentile float64
				Value      float64
			}
		}
		ErrorsDurationHistogram struct {
			Count int64
		}
	}
	if err := json.Unmarshal(out, &res); err != nil {
		return r, fmt.Errorf("fortio output: %w: %s", err, tail(string(out), 500))
	}
	r.QPS = res.ActualQPS
	r.Requests = res.DurationHistogram.Count
	r.Errors = res.ErrorsDurationHistogram.Count
	for code, n := range res.RetCodes {
		if code != "200" {
			r.Errors += n
		}
	}
	r.Avg = res.DurationHistogram.Avg * 1e3
	r.Max = res.DurationHistogram.Max * 1e3
	for _, p := range res.DurationHistogram.Percentiles {
		v := p.Value * 1e3
		switch p.Percentile {
		case 50:
			r.P50 = v
		case 90:
			r.P90 = v
		case 99:
			r.P99 = v
		case 99.9:
			r.P999 = v
		}
	}
	if r.Requests == 0 || r.P99 == 0 {
		return r, fmt.Errorf("fortio measured nothing: %s", tail(string(out), 500))
	}
	r.Usage = u
	return r, nil
}

// hostCPU is the whole machine's CPU time over a run, in cores (CPU
// seconds per second), from /proc/stat.
type hostCPU struct {
	Busy    float64 `json:"busyCores"`    // everything but idle and iowait
	Softirq float64 `json:"softirqCores"` // of Busy: softirq (network processing)
	Steal   float64 `json:"stealCores"`   // taken by the hypervisor for other guests
}

type hostTicks struct {
	total, idle, softirq, steal uint64
	t                           time.Time
}

func readHostCPU() (hostTicks, error) {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return hostTicks{}, err
	}
	line, _, _ := strings.Cut(string(data), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return hostTicks{}, fmt.Errorf("/proc/stat: unexpected first line %q", line)
	}
	var v [8]uint64
	for i := range v {
		v[i], _ = strconv.ParseUint(f[i+1], 10, 64)
	}
	// user nice system idle iowait irq softirq steal
	var total uint64
	for _, x := range v {
		total += x
	}
	return hostTicks{total: total, idle: v[3] + v[4], softirq: v[6], steal: v[7], t: time.Now()}, nil
}

func (h hostTicks) since(h0 hostTicks) hostCPU {
	wall := h.t.Sub(h0.t).Seconds()
	if wall <= 0 {
		return hostCPU{}
	}
	c := func(a, b uint64) float64 { return float64(a-b) / clockTicks / wall }
	return hostCPU{
		Busy:    c(h.total-h.idle-h.steal, h0.total-h0.idle-h0.steal),
		Softirq: c(h.softirq, h0.softirq),
		Steal:   c(h.steal, h0.steal),
	}
}

// aggregate combines rounds of the same load: the median of each percentile
// over the rounds, summed counts, mean rate and CPU, largest RSS.
func aggregate(rounds []fortioResult) fortioResult {
	var out fortioResult
	if len(rounds) == 0 {
		return out
	}
	median := func(f func(r fortioResult) float64) float64 {
		v := make([]float64, len(rounds))
		for i, r := range rounds {
			v[i] = f(r)
		}
		sort.Float64s(v)
		n := len(v)
		return (v[(n-1)/2] + v[n/2]) / 2
	}
	out.P50 = median(func(r fortioResult) float64 { return r.P50 })
	out.P90 = median(func(r fortioResult) float64 { return r.P90 })
	out.P99 = median(func(r fortioResult) float64 { return r.P99 })
	out.P999 = median(func(r fortioResult) float64 { return r.P999 })
	n := float64(len(rounds))
	procs := len(rounds[0].Usage.CPU)
	out.Usage = usage{CPU: make([]float64, procs), MaxRSSMB: make([]float64, procs), CtxSwitches: make([]uint64, procs)}
	for _, r := range rounds {
		out.QPS += r.QPS / n
		out.Requests += r.Requests
		out.L7Allowed += r.L7Allowed
		out.L7Denied += r.L7Denied
		out.Errors += r.Errors
		out.Avg += r.Avg / n
		out.Max = max(out.Max, r.Max)
		out.LoadGenCPU += r.LoadGenCPU / n
		out.ServerCPU += r.ServerCPU / n
		out.Host.Busy += r.Host.Busy / n
		out.Host.Softirq += r.Host.Softirq / n
		out.Host.Steal += r.Host.Steal / n
		for i := 0; i < procs && i < len(r.Usage.CPU); i++ {
			out.Usage.CPU[i] += r.Usage.CPU[i] / n
			out.Usage.MaxRSSMB[i] = max(out.Usage.MaxRSSMB[i], r.Usage.MaxRSSMB[i])
			out.Usage.CtxSwitches[i] += r.Usage.CtxSwitches[i]
		}
	}
	return out
}
