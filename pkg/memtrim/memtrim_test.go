package memtrim

import (
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestCheck: the decision, on fake readings.
func TestCheck(t *testing.T) {
	const mib = 1 << 20
	type step struct {
		cpu  time.Duration // CPU used over the 10 s interval
		held uint64        // memory held at the look
		trim bool
	}
	tests := []struct {
		name  string
		start uint64 // memory held at the start
		steps []step
	}{
		{"busy: never", 20 * mib, []step{
			{2 * time.Second, 40 * mib, false},
			{time.Second, 40 * mib, false},
		}},
		{"idle after growth: once", 20 * mib, []step{
			{2 * time.Second, 40 * mib, false},
			{10 * time.Millisecond, 40 * mib, true},
			{10 * time.Millisecond, 21 * mib, false},
			{10 * time.Millisecond, 22 * mib, false},
		}},
		{"idle without growth: never", 20 * mib, []step{
			{0, 23 * mib, false},
			{0, 20 * mib, false},
		}},
		{"baseline follows the memory down", 30 * mib, []step{
			{0, 20 * mib, false},
			{0, 25 * mib, true}, // 5 MiB above the lowest seen
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var cpu time.Duration
			held := tc.start
			trims := 0
			tr := New(Config{})
			tr.cpuTime = func() (time.Duration, error) { return cpu, nil }
			tr.held = func() uint64 { return held }
			tr.free = func() { trims++; held = tc.start }
			if err := tr.start(); err != nil {
				t.Fatal(err)
			}
			for i, s := range tc.steps {
				cpu += s.cpu
				held = s.held
				got, err := tr.check(10 * time.Second)
				if err != nil {
					t.Fatal(err)
				}
				if got != s.trim {
					t.Errorf("step %d: trimmed %v, want %v", i, got, s.trim)
				}
			}
			want := 0
			for _, s := range tc.steps {
				if s.trim {
					want++
				}
			}
			if trims != want {
				t.Errorf("FreeOSMemory called %d times, want %d", trims, want)
			}
		})
	}
}

// sink keeps the test's allocations alive until the test drops them.
var sink [][]byte

// TestTrimReturnsMemory: with the runtime's own readings, memory a peak
// left behind leaves the process's resident set: garbage, and buffers a
// sync.Pool holds (which survive one garbage collection).
func TestTrimReturnsMemory(t *testing.T) {
	const peak = 128 << 20
	for _, pooled := range []bool{false, true} {
		t.Run(map[bool]string{false: "garbage", true: "pooled"}[pooled], func(t *testing.T) {
			tr := New(Config{})
			if err := tr.start(); err != nil {
				t.Fatal(err)
			}
			for range peak >> 20 {
				b := make([]byte, 1<<20)
				for i := range b {
					b[i] = 1 // touch every page
				}
				sink = append(sink, b)
			}
			rssPeak := rss(t)
			var pool sync.Pool
			if pooled {
				for _, b := range sink {
					pool.Put(&b)
				}
			}
			sink = nil
			// An hour of elapsed time makes the CPU the allocation took an
			// idle interval's.
			trimmed, err := tr.check(time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			if !trimmed {
				t.Fatalf("no trim with %d MiB left behind after an idle interval", peak>>20)
			}
			if after := rss(t); after > rssPeak-peak/2 {
				t.Errorf("RSS %d MiB after the trim, %d MiB at the peak: the peak's memory was not returned", after>>20, rssPeak>>20)
			}
			if trimmed, _ := tr.check(time.Hour); trimmed {
				t.Error("trimmed again without new growth")
			}
			runtime.KeepAlive(&pool)
		})
	}
}

// rss reads the process's resident set from /proc/self/statm.
func rss(t *testing.T) uint64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b))
	pages, err := strconv.ParseUint(f[1], 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return pages * uint64(os.Getpagesize())
}
