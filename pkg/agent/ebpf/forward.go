package ebpf

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/palisade-net/palisade/pkg/handoff"
)

// DropReporter takes drops for the node proxy's flow records
// (*handoff.Server).
type DropReporter interface {
	ReportDrops(ctx context.Context, drops []handoff.Drop) error
}

// Forwarding outcomes: indexes of forwarder.counts, named in
// forwardOutcomes (the outcome label of
// palisade_ebpf_drop_events_forwarded_total).
const (
	outDelivered   = iota // the node proxy acknowledged them
	outNoProxy            // no node proxy (that takes them) was connected
	outFailed             // the proxy refused them, or went away or timed out before its ack
	outQueueFull          // more were waiting than forwardQueue
	outRateLimited        // beyond forwardRate
	numOutcomes
)

var forwardOutcomes = [numOutcomes]string{
	outDelivered:   "delivered",
	outNoProxy:     "no_proxy",
	outFailed:      "failed",
	outQueueFull:   "queue_full",
	outRateLimited: "rate_limited",
}

const (
	// forwardRate and forwardBurst bound the drops per second that become
	// flow records: a pod flooding plaintext must not crowd the
	// connection and request records out of the node proxy's recent
	// records, stream readers and flow log. Every drop is counted in the
	// kernel all the same.
	forwardRate  = 200
	forwardBurst = 1000
	// forwardQueue is how many drops wait for the node proxy; beyond,
	// they are counted (queue_full) and kept only in the agent's log and
	// /debug/drops.
	forwardQueue = 4096
	// forwardBatch is the most drops sent in one report.
	forwardBatch = 4 * handoff.MaxDropsPerMessage
	// forwardTimeout bounds one report; what was not sent by then is
	// abandoned.
	forwardTimeout = 5 * time.Second
	// forwardHold is how long drops wait for a node proxy when none is
	// connected (the proxy or the agent is restarting: a restarted agent
	// reads the drops the kernel kept while it was down before the proxy
	// is back), retried every forwardRetry. It counts from the first
	// report that found no proxy, across reports: once it has passed,
	// reports fail at once until a proxy takes one.
	forwardHold  = 30 * time.Second
	forwardRetry = 200 * time.Millisecond
)

// forwarder sends drops to the node proxy from a bounded queue, so that a
// slow or absent proxy never holds up reading the ring buffer.
type forwarder struct {
	to    DropReporter
	log   *slog.Logger
	q     chan handoff.Drop
	limit *rate.Limiter
	// hold and retry are forwardHold and forwardRetry; now and sleep the
	// clock (replaced in tests).
	hold, retry time.Duration
	now         func() time.Time
	sleep       func(ctx context.Context, d time.Duration) bool
	// noProxySince is when a report first found no proxy, zero while
	// proxies take them (run's goroutine only).
	noProxySince time.Time
	// counts by outcome (out* indexes).
	counts [numOutcomes]atomic.Uint64
	// warned is set while reports fail, so that a failure is logged once
	// per streak (run's goroutine only).
	warned bool
}

func newForwarder(to DropReporter, log *slog.Logger) *forwarder {
	return &forwarder{
		to: to, log: log, q: make(chan handoff.Drop, forwardQueue),
		limit: rate.NewLimiter(forwardRate, forwardBurst),
		hold:  forwardHold, retry: forwardRetry, now: time.Now, sleep: sleepCtx,
	}
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// offer queues d without waiting.
func (f *forwarder) offer(d handoff.Drop) {
	if !f.limit.Allow() {
		f.counts[outRateLimited].Add(1)
		return
	}
	select {
	case f.q <- d:
	default:
		f.counts[outQueueFull].Add(1)
	}
}

// run sends what is queued until ctx ends: whatever has gathered (up to
// forwardBatch) goes in one report.
func (f *forwarder) run(ctx context.Context) {
	batch := make([]handoff.Drop, 0, forwardBatch)
	for {
		batch = batch[:0]
		select {
		case <-ctx.Done():
			return
		case d := <-f.q:
			batch = append(batch, d)
		}
	gather:
		for len(batch) < forwardBatch {
			select {
			case d := <-f.q:
				batch = append(batch, d)
			default:
				break gather
			}
		}
		f.send(ctx, batch)
	}
}

// send reports batch, retrying while no proxy is connected (see
// forwardHold). Drops whose report failed after it was sent are not sent
// again: the proxy may have recorded them before its ack was lost.
func (f *forwarder) send(ctx context.Context, batch []handoff.Drop) {
	var err error
	for {
		rctx, cancel := context.WithTimeout(ctx, forwardTimeout)
		err = f.to.ReportDrops(rctx, batch)
		cancel()
		if err == nil || !errors.Is(err, handoff.ErrNoProxy) || errors.Is(err, handoff.ErrConnLost) {
			break
		}
		now := f.now()
		if f.noProxySince.IsZero() {
			f.noProxySince = now
		}
		if now.Sub(f.noProxySince) >= f.hold || !f.sleep(ctx, f.retry) {
			break
		}
	}
	n := uint64(len(batch))
	if err == nil {
		f.counts[outDelivered].Add(n)
		f.noProxySince = time.Time{}
		if f.warned {
			f.log.Info("drop events reach the node proxy again")
			f.warned = false
		}
		return
	}
	switch {
	case errors.Is(err, handoff.ErrConnLost):
		f.counts[outFailed].Add(n)
	case errors.Is(err, handoff.ErrNoProxy), errors.Is(err, handoff.ErrDropsNotTaken):
		f.counts[outNoProxy].Add(n)
	default:
		f.counts[outFailed].Add(n)
	}
	if !f.warned && ctx.Err() == nil {
		f.log.Warn("drop events not delivered to the node proxy's flow records (they stay in this agent's log and /debug/drops)", "drops", n, "error", err)
		f.warned = true
	}
}
