package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat. It
// is 100 on every Linux architecture Palisade targets (the kernel fixes it
// for user space regardless of CONFIG_HZ).
const clockTicks = 100

// procRef names a process whose CPU and memory are measured.
type procRef struct {
	Label string `json:"label"`
	PID   int    `json:"pid"`
}

// cpuTicks returns utime+stime of the whole process (all threads).
func cpuTicks(pid int) (uint64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name may contain spaces and parentheses: fields start
	// after the last ')'.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	f := strings.Fields(string(data[i+1:]))
	// f[0] is field 3 (state); utime is field 14, stime field 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: too few fields", pid)
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: bad utime/stime", pid)
	}
	return ut + st, nil
}

// rssBytes returns VmRSS from /proc/PID/status.
func rssBytes(pid int) (uint64, error) { return statusBytes(pid, "VmRSS") }

// statusBytes reads a "kB" field of /proc/PID/status: VmRSS, or its parts
// RssAnon (heap, stacks: the process's own memory) and RssFile (pages of
// the executable and other mapped files, shared with the page cache).
func statusBytes(pid int, field string) (uint64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			fs := strings.Fields(v) // "12345 kB"
			if len(fs) == 2 && fs[1] == "kB" {
				kb, err := strconv.ParseUint(fs[0], 10, 64)
				return kb << 10, err
			}
		}
	}
	return 0, fmt.Errorf("/proc/%d/status: no %s", pid, field)
}

// ctxSwitches returns the voluntary and involuntary context switches of
// all the process's threads (threads that exited meanwhile are not counted).
func ctxSwitches(pid int) (uint64, error) {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return 0, err
	}
	var total uint64
	for _, t := range tasks {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/status", pid, t.Name()))
		if err != nil {
			continue // thread exited
		}
		for _, line := range strings.Split(string(data), "\n") {
			for _, k := range []string{"voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:"} {
				if v, ok := strings.CutPrefix(line, k); ok {
					n, _ := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
					total += n
				}
			}
		}
	}
	return total, nil
}

// rssMB reads the RSS of each process in MB (MiB, as the kernel counts kB).
func rssMB(procs []procRef) ([]float64, error) { return statusMB(procs, "VmRSS") }

// statusMB reads a memory field of /proc/PID/status of each process, in
// MiB.
func statusMB(procs []procRef, field string) ([]float64, error) {
	out := make([]float64, len(procs))
	for i, p := range procs {
		b, err := statusBytes(p.PID, field)
		if err != nil {
			return nil, fmt.Errorf("%s (pid %d): %w", p.Label, p.PID, err)
		}
		out[i] = float64(b) / (1 << 20)
	}
	return out, nil
}

// sampler measures CPU (utime+stime delta over wall time) and the largest
// RSS of a set of processes while a load runs.
type sampler struct {
	procs  []procRef
	start  []uint64
	csw    []uint64
	t0     time.Time
	maxRSS []uint64
	mu     sync.Mutex
	stop   chan struct{}
	done   chan struct{}
}

// usage is what a sampler measured per process.
type usage struct {
	// CPU is in cores: CPU seconds per wall second.
	CPU []float64 `json:"cpuCores"`
	// MaxRSSMB is the largest VmRSS seen, sampled every 100 ms.
	MaxRSSMB []float64 `json:"maxRssMB"`
	// CtxSwitches counts the context switches of all threads.
	CtxSwitches []uint64 `json:"contextSwitches"`
}

func startSampler(procs []procRef) (*sampler, error) {
	s := &sampler{procs: procs, start: make([]uint64, len(procs)), csw: make([]uint64, len(procs)), maxRSS: make([]uint64, len(procs)),
		stop: make(chan struct{}), done: make(chan struct{})}
	for i, p := range procs {
		t, err := cpuTicks(p.PID)
		if err != nil {
			return nil, fmt.Errorf("%s (pid %d): %w", p.Label, p.PID, err)
		}
		s.start[i] = t
		if s.csw[i], err = ctxSwitches(p.PID); err != nil {
			return nil, err
		}
	}
	s.t0 = time.Now()
	s.sampleRSS()
	go func() {
		defer close(s.done)
		tk := time.NewTicker(100 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-s.stop:
				return
			case <-tk.C:
				s.sampleRSS()
			}
		}
	}()
	return s, nil
}

func (s *sampler) sampleRSS() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, p := range s.procs {
		if b, err := rssBytes(p.PID); err == nil && b > s.maxRSS[i] {
			s.maxRSS[i] = b
		}
	}
}

func (s *sampler) finish() (usage, error) {
	close(s.stop)
	<-s.done
	s.sampleRSS()
	wall := time.Since(s.t0).Seconds()
	u := usage{CPU: make([]float64, len(s.procs)), MaxRSSMB: make([]float64, len(s.procs)), CtxSwitches: make([]uint64, len(s.procs))}
	for i, p := range s.procs {
		t, err := cpuTicks(p.PID)
		if err != nil {
			return u, fmt.Errorf("%s (pid %d) gone during the run: %w", p.Label, p.PID, err)
		}
		u.CPU[i] = float64(t-s.start[i]) / clockTicks / wall
		if cs, err := ctxSwitches(p.PID); err == nil && cs >= s.csw[i] {
			u.CtxSwitches[i] = cs - s.csw[i]
		}
		u.MaxRSSMB[i] = float64(s.maxRSS[i]) / (1 << 20)
	}
	return u, nil
}
