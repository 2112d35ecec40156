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

	"github.com/palisade-net/palisade/pkg/handoff"
)

// fakeReporter records the reports it gets and answers each with the
// next of errs (nil once they run out); it blocks while gate is held.
type fakeReporter struct {
	mu      sync.Mutex
	batches [][]handoff.Drop
	errs    []error
	gate    sync.Mutex
}

func (r *fakeReporter) ReportDrops(_ context.Context, drops []handoff.Drop) error {
	r.gate.Lock()
	defer r.gate.Unlock()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.batches = append(r.batches, append([]handoff.Drop(nil), drops...))
	if len(r.errs) == 0 {
		return nil
	}
	err := r.errs[0]
	r.errs = r.errs[1:]
	return err
}

// distinct returns the reports without their retries (a report that
// starts with the drop the one before started with), and how many reports
// there were.
func (r *fakeReporter) distinct() ([][]handoff.Drop, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out [][]handoff.Drop
	for _, b := range r.batches {
		if len(out) > 0 && b[0] == out[len(out)-1][0] {
			continue
		}
		out = append(out, b)
	}
	return out, len(r.batches)
}

func count(batches [][]handoff.Drop) int {
	n := 0
	for _, b := range batches {
		n += len(b)
	}
	return n
}

// TestForwarder: drops reach the reporter in order and in batches of at
// most forwardBatch; a full queue counts what it cannot hold instead of
// blocking; while no proxy is connected a batch is retried for f.hold;
// failed reports are counted by outcome, never resent once sent, and
// logged once per streak of failures.
func TestForwarder(t *testing.T) {
	var logs bytes.Buffer
	noProxy := fmt.Errorf("x: %w", handoff.ErrNoProxy)
	rep := &fakeReporter{errs: []error{
		noProxy, noProxy, // retried, then delivered
		fmt.Errorf("x: %w", handoff.ErrConnLost),             // sent, not resent
		noProxy, noProxy, noProxy, noProxy, noProxy, noProxy, // held too long
		&handoff.RemoteError{Msg: "refused"},
	}}
	f := newForwarder(rep, slog.New(slog.NewTextHandler(&logs, nil)))
	f.hold, f.retry = 20*time.Millisecond, 5*time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})

	// While the reporter is held, the queue fills and then overflows.
	rep.gate.Lock()
	total := forwardQueue + 10
	for i := range total {
		f.offer(handoff.Drop{Length: uint32(i)})
	}
	if got := f.counts[3].Load(); got != 10 {
		t.Fatalf("queue_full = %d, want 10", got)
	}
	go func() {
		defer close(done)
		f.run(ctx)
	}()
	rep.gate.Unlock()
	deadline := time.Now().Add(10 * time.Second)
	for {
		d, _ := rep.distinct()
		if count(d) >= forwardQueue {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("reporter got %d drops, want %d", count(d), forwardQueue)
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	<-done

	// Reports: batch 0 three times (two retries), batch 1 once (lost
	// connection), batch 2 until the hold ran out, batch 3 once (refused),
	// then the rest.
	distinct, reports := rep.distinct()
	var sent []handoff.Drop
	for i, b := range distinct {
		if len(b) > forwardBatch {
			t.Errorf("batch %d holds %d drops, more than %d", i, len(b), forwardBatch)
		}
		sent = append(sent, b...)
	}
	if len(sent) != forwardQueue {
		t.Fatalf("reporter got %d distinct drops, want %d", len(sent), forwardQueue)
	}
	for i, d := range sent {
		if d.Length != uint32(i) {
			t.Fatalf("drop %d has length %d: out of order", i, d.Length)
		}
	}
	if len(distinct) < 5 || reports-len(distinct) < 3 {
		t.Fatalf("%d reports of %d batches, want at least 5 batches and 3 retries", reports, len(distinct))
	}
	size := func(i int) uint64 { return uint64(len(distinct[i])) }
	if got := f.counts[1].Load(); got != size(2) {
		t.Errorf("no_proxy = %d, want %d (the batch held too long)", got, size(2))
	}
	if got := f.counts[2].Load(); got != size(1)+size(3) {
		t.Errorf("failed = %d, want %d", got, size(1)+size(3))
	}
	if got := f.counts[0].Load(); got != uint64(forwardQueue)-size(1)-size(2)-size(3) {
		t.Errorf("delivered = %d, want %d", got, uint64(forwardQueue)-size(1)-size(2)-size(3))
	}
	out := logs.String()
	if n := strings.Count(out, "drop events not delivered"); n != 1 {
		t.Errorf("%d warnings for one streak of failures, want 1:\n%s", n, out)
	}
	if !strings.Contains(out, "drop events reach the node proxy again") {
		t.Errorf("no note of the recovery:\n%s", out)
	}
}
