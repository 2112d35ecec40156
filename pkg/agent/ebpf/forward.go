package ebpf

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/palisade-net/palisade/pkg/handoff"
)

// DropReporter takes drops for the node proxy's flow records
// (*handoff.Server).
type DropReporter interface {
	ReportDrops(ctx context.Context, drops []handoff.Drop) error
}

// Forwarding outcomes, the outcome label of
// palisade_ebpf_drop_events_forwarded_total.
const (
	forwardDelivered = "delivered" // the node proxy acknowledged them
	forwardNoProxy   = "no_proxy"  // no node proxy (that takes them) was connected
	forwardFailed    = "failed"    // the proxy refused them or went away before its ack
	forwardQueueFull = "queue_full"
)

var forwardOutcomes = []string{forwardDelivered, forwardNoProxy, forwardFailed, forwardQueueFull}

const (
	// forwardQueue is how many drops wait for the node proxy; beyond,
	// they are counted (queue_full) and kept only in the agent's log and
	// /debug/drops.
	forwardQueue = 4096
	// forwardBatch is the most drops sent in one report.
	forwardBatch = 4 * handoff.MaxDropsPerMessage
	// forwardTimeout bounds one report (the handoff server disconnects a
	// proxy that does not ack within its own, longer, timeout).
	forwardTimeout = 5 * time.Second
	// forwardHold is how long drops wait for a node proxy when none is
	// connected (the proxy or the agent is restarting: a restarted agent
	// reads the drops the kernel kept while it was down before the proxy
	// is back), retried every forwardRetry.
	forwardHold  = 30 * time.Second
	forwardRetry = 200 * time.Millisecond
)

// forwarder sends drops to the node proxy from a bounded queue, so that a
// slow or absent proxy never holds up reading the ring buffer.
type forwarder struct {
	to  DropReporter
	log *slog.Logger
	q   chan handoff.Drop
	// hold and retry are forwardHold and forwardRetry (shorter in tests).
	hold, retry time.Duration
	// counts by outcome, in forwardOutcomes order.
	counts [4]atomic.Uint64
	// warned is set while reports fail, so that a failure is logged once
	// per streak.
	warned bool
}

func newForwarder(to DropReporter, log *slog.Logger) *forwarder {
	return &forwarder{to: to, log: log, q: make(chan handoff.Drop, forwardQueue), hold: forwardHold, retry: forwardRetry}
}

// offer queues d without waiting.
func (f *forwarder) offer(d handoff.Drop) {
	select {
	case f.q <- d:
	default:
		f.counts[3].Add(1)
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

// send reports batch, waiting up to f.hold for a node proxy while none is
// connected. Drops whose report failed after it was sent are not sent
// again: the proxy may have recorded them before its ack was lost.
func (f *forwarder) send(ctx context.Context, batch []handoff.Drop) {
	var err error
	for start := time.Now(); ; {
		rctx, cancel := context.WithTimeout(ctx, forwardTimeout)
		err = f.to.ReportDrops(rctx, batch)
		cancel()
		if !errors.Is(err, handoff.ErrNoProxy) || errors.Is(err, handoff.ErrConnLost) || time.Since(start) >= f.hold {
			break
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(f.retry):
		}
	}
	n := uint64(len(batch))
	switch {
	case err == nil:
		f.counts[0].Add(n)
		if f.warned {
			f.log.Info("drop events reach the node proxy again")
			f.warned = false
		}
		return
	case errors.Is(err, handoff.ErrConnLost):
		f.counts[2].Add(n)
	case errors.Is(err, handoff.ErrNoProxy):
		f.counts[1].Add(n)
	default:
		f.counts[2].Add(n)
	}
	if !f.warned && ctx.Err() == nil {
		f.log.Warn("drop events not delivered to the node proxy's flow records (they stay in this agent's log and /debug/drops)", "drops", n, "error", err)
		f.warned = true
	}
}
