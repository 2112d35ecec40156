package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Go benchmarks of the L7 code, run from the repository as test binaries:
// the policy engine's cost per HTTP request with 10 and 1,000 rules, and
// the HTTP inspectors' cost per request against a plain byte relay.
type goBenchSpec struct {
	Package string `json:"package"`
	Pattern string `json:"pattern"`
	// Required benchmarks fail the run when missing; the others (still in
	// progress in the tree) are skipped with a note.
	Required bool `json:"required"`
}

var goBenchSpecs = []goBenchSpec{
	{"./pkg/policy", `^BenchmarkHTTP(10|1000)Rules(Unindexed)?$`, true},
	// The rule sets the lab's L7 runs use (l7_test.go).
	{"./bench", `^BenchmarkLiveRuleSet$`, true},
	{"./pkg/l7/http1", `^BenchmarkHTTP1(Inspect|Raw)$`, false},
	{"./pkg/l7/h2", `^BenchmarkH2(Inspect|Raw)$`, false},
}

// goBench is one benchmark's result: medians over the runs.
type goBench struct {
	Package     string    `json:"package"`
	Name        string    `json:"name"` // without the -GOMAXPROCS suffix
	NsPerOp     float64   `json:"nsPerOp"`
	NsRuns      []float64 `json:"nsPerOpRuns"`
	BytesPerOp  float64   `json:"bytesPerOp"`
	AllocsPerOp float64   `json:"allocsPerOp"`
}

type goBenchResults struct {
	Count     int          `json:"count"`
	Benchtime string       `json:"benchtime"`
	Results   []goBench    `json:"results"`
	Skipped   []goBenchMsg `json:"skipped,omitempty"`
}

type goBenchMsg struct {
	Package string `json:"package"`
	Reason  string `json:"reason"`
}

func (g *goBenchResults) get(pkg, name string) *goBench {
	if g == nil {
		return nil
	}
	for i := range g.Results {
		if g.Results[i].Package == pkg && g.Results[i].Name == name {
			return &g.Results[i]
		}
	}
	return nil
}

var benchLineRE = regexp.MustCompile(`^(Benchmark\S+?)(?:-\d+)?\s+\d+\s+([\d.]+) ns/op(?:\s+([\d.]+) B/op)?(?:\s+([\d.]+) allocs/op)?`)

// runGoBenchmarks builds each package's test binary into dir and runs the
// benchmarks count times.
func runGoBenchmarks(ctx context.Context, dir string, count int, benchtime time.Duration) (*goBenchResults, error) {
	out := &goBenchResults{Count: count, Benchtime: benchtime.String()}
	for _, spec := range goBenchSpecs {
		res, err := runGoBenchmark(ctx, dir, spec, count, benchtime)
		if err != nil {
			if spec.Required || ctx.Err() != nil {
				return nil, fmt.Errorf("go benchmarks of %s: %w", spec.Package, err)
			}
			logf("go benchmarks of %s skipped: %v", spec.Package, err)
			out.Skipped = append(out.Skipped, goBenchMsg{spec.Package, firstLine(err.Error())})
			continue
		}
		for _, r := range res {
			logf("go benchmark %s %s: %.0f ns/op (runs %v), %.0f B/op, %.0f allocs/op", r.Package, r.Name, r.NsPerOp, r.NsRuns, r.BytesPerOp, r.AllocsPerOp)
		}
		out.Results = append(out.Results, res...)
	}
	return out, nil
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}

func runGoBenchmark(ctx context.Context, dir string, spec goBenchSpec, count int, benchtime time.Duration) ([]goBench, error) {
	bin := filepath.Join(dir, strings.ReplaceAll(strings.TrimPrefix(spec.Package, "./"), "/", "_")+".test")
	logf("go benchmarks: building %s", spec.Package)
	build := exec.CommandContext(ctx, "go", "test", "-c", "-o", bin, spec.Package)
	if out, err := build.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("go test -c %s: %w: %s", spec.Package, err, tail(string(out), 1500))
	}
	logf("go benchmarks: running %s -test.bench '%s' (%d × %s)", spec.Package, spec.Pattern, count, benchtime)
	var stdout, stderr bytes.Buffer
	run := exec.CommandContext(ctx, bin, "-test.run", "^$", "-test.bench", spec.Pattern, "-test.benchmem",
		"-test.count", strconv.Itoa(count), "-test.benchtime", benchtime.String())
	run.Dir = spec.Package // testdata is relative to the package
	run.Stdout, run.Stderr = &stdout, &stderr
	if err := run.Run(); err != nil {
		return nil, fmt.Errorf("%s: %w: %s%s", filepath.Base(bin), err, tail(stdout.String(), 1500), tail(stderr.String(), 500))
	}
	type acc struct {
		ns, b, allocs []float64
	}
	byName := map[string]*acc{}
	var order []string
	for _, line := range strings.Split(stdout.String(), "\n") {
		m := benchLineRE.FindStringSubmatch(strings.TrimSpace(line))
		if m == nil {
			continue
		}
		a := byName[m[1]]
		if a == nil {
			a = &acc{}
			byName[m[1]] = a
			order = append(order, m[1])
		}
		f := func(s string) float64 { v, _ := strconv.ParseFloat(s, 64); return v }
		a.ns = append(a.ns, f(m[2]))
		a.b = append(a.b, f(m[3]))
		a.allocs = append(a.allocs, f(m[4]))
	}
	if len(order) == 0 {
		return nil, errors.New("no benchmark matched " + spec.Pattern)
	}
	var res []goBench
	for _, name := range order {
		a := byName[name]
		res = append(res, goBench{Package: spec.Package, Name: name, NsPerOp: medianOf(a.ns), NsRuns: a.ns,
			BytesPerOp: medianOf(a.b), AllocsPerOp: medianOf(a.allocs)})
	}
	return res, nil
}

func medianOf(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	n := len(s)
	return (s[(n-1)/2] + s[n/2]) / 2
}
