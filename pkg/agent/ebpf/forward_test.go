package ebpf

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/time/rate"

	"github.com/palisade-net/palisade/pkg/handoff"
)

// fakeReporter records the reports it gets and answers each report of a
// batch (named by its first drop's Length) with the next of errs[Length],
// nil once they run out; it blocks while gate is held.
type fakeReporter struct {
	gate    sync.Mutex
	mu      sync.Mutex
	reports [][]handoff.Drop
	errs    map[uint32][]error
}

func (r *fakeReporter) ReportDrops(_ context.Context, drops []handoff.Drop) error {
	r.gate.Lock()
	defer r.gate.Unlock()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reports = append(r.reports, append([]handoff.Drop(nil), drops...))
	key := drops[0].Length
	if len(r.errs[key]) == 0 {
		return nil
	}
	err := r.errs[key][0]
	r.errs[key] = r.errs[key][1:]
	return err
}

func (r *fakeReporter) taken() [][]handoff.Drop {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.reports
	r.reports = nil
	return out
}

func drops(from, n int) []handoff.Drop {
	var out []handoff.Drop
	for i := from; i < from+n; i++ {
		out = append(out, handoff.Drop{Length: uint32(i)})
	}
	return out
}

// fakeClock makes the forwarder's waits instant and counts them.
func fakeClock(f *forwarder) *int {
	now := time.Date(2026, 11, 22, 0, 0, 0, 0, time.UTC)
	sleeps := new(int)
	f.now = func() time.Time { return now }
	f.sleep = func(ctx context.Context, d time.Duration) bool {
		now = now.Add(d)
		*sleeps++
		return ctx.Err() == nil
	}
	return sleeps
}

// TestForwarderQueue: drops reach the reporter in order, in reports of at
// most forwardBatch; while the reporter is slow the queue fills and
// counts what it cannot hold instead of blocking the reader.
func TestForwarderQueue(t *testing.T) {
	rep := &fakeReporter{}
	f := newForwarder(rep, slog.New(slog.DiscardHandler))
	f.limit = rate.NewLimiter(rate.Inf, 0)
	rep.gate.Lock()
	for _, d := range drops(0, forwardQueue+10) {
		f.offer(d)
	}
	if got := f.counts[outQueueFull].Load(); got != 10 {
		t.Fatalf("queue_full = %d, want 10", got)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		f.run(ctx)
	}()
	rep.gate.Unlock()
	var got []handoff.Drop
	deadline := time.Now().Add(10 * time.Second)
	for len(got) < forwardQueue && time.Now().Before(deadline) {
		for i, r := range rep.taken() {
			if len(r) > forwardBatch {
				t.Errorf("report %d holds %d drops, more than %d", i, len(r), forwardBatch)
			}
			got = append(got, r...)
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	<-done
	if len(got) != forwardQueue {
		t.Fatalf("reporter got %d drops, want %d", len(got), forwardQueue)
	}
	for i, d := range got {
		if d.Length != uint32(i) {
			t.Fatalf("drop %d has length %d: out of order", i, d.Length)
		}
	}
	if n := f.counts[outDelivered].Load(); n != forwardQueue {
		t.Errorf("delivered = %d, want %d", n, forwardQueue)
	}
}

// TestForwarderOutcomes: while no proxy is connected a report is retried
// until one takes it, for forwardHold counted from the first report that
// found none; past that, reports fail at once until a proxy takes one. A
// proxy that does not take drops is not waited for; a report that failed
// after it was sent is not sent again. Each outcome is counted, and a
// streak of failures is logged once.
func TestForwarderOutcomes(t *testing.T) {
	noProxy := fmt.Errorf("x: %w", handoff.ErrNoProxy)
	lost := fmt.Errorf("x: %w", handoff.ErrConnLost)
	notTaken := fmt.Errorf("x: %w", handoff.ErrDropsNotTaken)
	var logs bytes.Buffer
	rep := &fakeReporter{errs: map[uint32][]error{}}
	f := newForwarder(rep, slog.New(slog.NewTextHandler(&logs, nil)))
	sleeps := fakeClock(f)
	always := make([]error, 1000)
	for i := range always {
		always[i] = noProxy
	}
	for _, tc := range []struct {
		name    string
		batch   []handoff.Drop
		errs    []error
		reports int    // how often the batch is sent
		sleeps  int    // waits of forwardRetry
		outcome int    // counted as
		log     string // logged, "" for nothing new
	}{
		{"proxy back after two retries", drops(0, 3), []error{noProxy, noProxy}, 3, 2, outDelivered, ""},
		{"connection lost after sending", drops(3, 2), []error{lost, lost}, 1, 0, outFailed, "drop events not delivered"},
		{"proxy does not take drops", drops(5, 4), []error{notTaken, notTaken}, 1, 0, outNoProxy, ""},
		{"refused", drops(9, 1), []error{&handoff.RemoteError{Msg: "no"}}, 1, 0, outFailed, ""},
		{"no proxy for the whole hold", drops(10, 5), always, int(forwardHold/forwardRetry) + 1, int(forwardHold / forwardRetry), outNoProxy, ""},
		{"no proxy still: no second wait", drops(15, 2), always, 1, 0, outNoProxy, ""},
		{"a proxy again", drops(17, 6), nil, 1, 0, outDelivered, "reach the node proxy again"},
		{"no proxy again: waits anew", drops(23, 1), []error{noProxy}, 2, 1, outDelivered, ""},
	} {
		rep.errs[tc.batch[0].Length] = tc.errs
		before := f.counts[tc.outcome].Load()
		*sleeps = 0
		logged := logs.Len()
		f.send(context.Background(), tc.batch)
		reports := rep.taken()
		if len(reports) != tc.reports || *sleeps != tc.sleeps {
			t.Errorf("%s: sent %d times with %d waits, want %d and %d", tc.name, len(reports), *sleeps, tc.reports, tc.sleeps)
		}
		if got := f.counts[tc.outcome].Load() - before; got != uint64(len(tc.batch)) {
			t.Errorf("%s: counted %d as %s, want %d", tc.name, got, forwardOutcomes[tc.outcome], len(tc.batch))
		}
		if out := logs.String()[logged:]; (tc.log == "") != (out == "") || !strings.Contains(out, tc.log) {
			t.Errorf("%s: logged %q, want %q", tc.name, out, tc.log)
		}
	}
	var total uint64
	for i := range f.counts {
		total += f.counts[i].Load()
	}
	if total != 24 {
		t.Errorf("%d drops counted in all, want 24", total)
	}
}

// TestForwarderRateLimit: beyond the burst, drops are counted and not
// queued.
func TestForwarderRateLimit(t *testing.T) {
	f := newForwarder(&fakeReporter{}, slog.New(slog.DiscardHandler))
	f.limit = rate.NewLimiter(rate.Every(time.Hour), 5)
	for _, d := range drops(0, 8) {
		f.offer(d)
	}
	if got, queued := f.counts[outRateLimited].Load(), len(f.q); got != 3 || queued != 5 {
		t.Errorf("rate_limited %d, queued %d, want 3 and 5", got, queued)
	}
}
