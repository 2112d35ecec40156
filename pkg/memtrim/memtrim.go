// Package memtrim gives the memory a load peak left behind back to the
// operating system once the process is idle.
//
// Go keeps heap memory it no longer needs for a while: the heap goal set
// under load stays until the next garbage collection, which an idle
// process runs only every two minutes, and the background scavenger
// returns memory slowly above that goal. A node proxy that served a burst
// of connections therefore sits well above its idle size for minutes.
// The trimmer watches the process's CPU time; when the process was idle
// for a whole interval and holds noticeably more memory than after its
// last trim, it collects garbage and returns the free memory at once
// (debug.FreeOSMemory; a few milliseconds for a proxy's heap). Under load it
// does nothing, so the data path never pays for it.
package memtrim

import (
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"syscall"
	"time"
)

// Defaults of Config.
const (
	DefaultInterval  = 5 * time.Second
	DefaultIdleCPU   = 0.02
	DefaultMinGrowth = 4 << 20
)

// Config configures a Trimmer. Zero fields take the defaults.
type Config struct {
	// Interval is how often the trimmer looks.
	Interval time.Duration
	// IdleCPU is the CPU use, in cores, below which an interval counts as
	// idle.
	IdleCPU float64
	// MinGrowth is how many bytes the memory the Go runtime holds must
	// have grown since the last trim (or the start) for a trim to be
	// worth its garbage collection.
	MinGrowth uint64
	// Logger, if not nil, gets a line per trim.
	Logger *slog.Logger
}

// Trimmer returns memory to the operating system when the process is
// idle. Its methods are not safe for concurrent use; Run is meant to be
// its only caller.
type Trimmer struct {
	cfg Config

	// Sources, replaceable in tests.
	cpuTime func() (time.Duration, error)
	held    func() uint64
	free    func()

	lastCPU  time.Duration
	baseline uint64 // memory held after the last trim, or its lowest since
}

// New returns a Trimmer with cfg's defaults filled in.
func New(cfg Config) *Trimmer {
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.IdleCPU <= 0 {
		cfg.IdleCPU = DefaultIdleCPU
	}
	if cfg.MinGrowth == 0 {
		cfg.MinGrowth = DefaultMinGrowth
	}
	return &Trimmer{cfg: cfg, cpuTime: processCPUTime, held: heldBytes, free: freeOSMemory}
}

// freeOSMemory collects garbage twice and returns the free memory: a
// sync.Pool keeps what it holds through one collection (as its victim
// cache), and the proxy's pools of relay and frame buffers are the bulk of
// what a load peak leaves behind.
func freeOSMemory() {
	runtime.GC()
	debug.FreeOSMemory()
}

// Run looks every interval until ctx ends.
func (t *Trimmer) Run(ctx context.Context) error {
	if err := t.start(); err != nil {
		return err
	}
	tick := time.NewTicker(t.cfg.Interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			if _, err := t.check(t.cfg.Interval); err != nil {
				return err
			}
		}
	}
}

// start takes the first CPU reading and memory baseline.
func (t *Trimmer) start() error {
	cpu, err := t.cpuTime()
	if err != nil {
		return fmt.Errorf("memtrim: %w", err)
	}
	t.lastCPU = cpu
	t.baseline = t.held()
	return nil
}

// check looks once, elapsed after the last look, and reports whether it
// trimmed.
func (t *Trimmer) check(elapsed time.Duration) (bool, error) {
	cpu, err := t.cpuTime()
	if err != nil {
		return false, fmt.Errorf("memtrim: %w", err)
	}
	used := float64(cpu-t.lastCPU) / float64(elapsed)
	t.lastCPU = cpu
	held := t.held()
	if held < t.baseline {
		t.baseline = held
	}
	if used >= t.cfg.IdleCPU || held < t.baseline+t.cfg.MinGrowth {
		return false, nil
	}
	t.free()
	after := t.held()
	t.baseline = after
	// The trim's own CPU time is not the workload's.
	if cpu, err := t.cpuTime(); err == nil {
		t.lastCPU = cpu
	}
	if t.cfg.Logger != nil {
		t.cfg.Logger.Info("returned idle memory to the operating system",
			"held_mb_before", mb(held), "held_mb_after", mb(after))
	}
	return true, nil
}

func mb(b uint64) string { return fmt.Sprintf("%.1f", float64(b)/(1<<20)) }

// processCPUTime is the user and system CPU time the process has used:
// most of a proxy's work happens in system calls, so both count.
func processCPUTime() (time.Duration, error) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, fmt.Errorf("getrusage: %w", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
}

// heldBytes is the memory the Go runtime has mapped and not returned to
// the operating system: what it contributes to the resident set.
func heldBytes() uint64 {
	s := []metrics.Sample{
		{Name: "/memory/classes/total:bytes"},
		{Name: "/memory/classes/heap/released:bytes"},
	}
	metrics.Read(s)
	total, released := s[0].Value.Uint64(), s[1].Value.Uint64()
	if released > total {
		return 0
	}
	return total - released
}
