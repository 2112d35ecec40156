package identity

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Renewal and retry parameters shared by every provider (see the package
// documentation).
const (
	// MinRetryBackoff is the first delay after a failed fetch.
	MinRetryBackoff = 500 * time.Millisecond
	// MaxRetryBackoff caps the delay between failed fetches.
	MaxRetryBackoff = 150 * time.Second
	// MaxConcurrentFetches bounds how many SVID fetches run at once.
	MaxConcurrentFetches = 8

	// fetchTimeout bounds one fetch attempt.
	fetchTimeout = 30 * time.Second
)

// ErrClosed is returned by a provider after Close.
var ErrClosed = errors.New("identity: provider closed")

// fetchFunc obtains a fresh SVID for id. The cache calls it for the first SVID
// of an identity and again at each renewal.
type fetchFunc func(ctx context.Context, id spiffeid.ID) (*x509svid.SVID, error)

// svidCache keeps one current SVID per identity, fetches it on first use,
// renews it at half of its remaining lifetime, retries failed fetches with
// exponential back-off and keeps serving the old SVID while it is valid.
// Fetches of different identities run concurrently, at most
// MaxConcurrentFetches at a time; one identity has at most one fetch in
// flight, so callers never stampede the issuer.
//
// It is the shared core of DevProvider and of a future SPIRE provider, whose
// fetchFunc waits for its subscription to deliver an SVID.
type svidCache struct {
	fetch      fetchFunc
	log        *slog.Logger
	now        func() time.Time
	sem        chan struct{}
	minBackoff time.Duration
	maxBackoff time.Duration

	wg sync.WaitGroup

	mu      sync.Mutex
	entries map[spiffeid.ID]*cacheEntry
	closed  bool
}

type cacheEntry struct {
	id      spiffeid.ID
	ctx     context.Context // ends when the entry is released or the cache closed
	cancel  context.CancelFunc
	svid    *x509svid.SVID // current SVID, nil until the first fetch succeeds
	renewAt time.Time
	lastErr error
	updates uint64 // successful fetches since the entry was created
	backoff time.Duration
	// fetching is true while a fetch goroutine runs for this entry.
	fetching bool
	timer    *time.Timer
	// changed is closed (and replaced) whenever svid or lastErr changes.
	changed chan struct{}
}

func newSVIDCache(fetch fetchFunc, log *slog.Logger) *svidCache {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &svidCache{
		fetch:      fetch,
		log:        log,
		now:        time.Now,
		sem:        make(chan struct{}, MaxConcurrentFetches),
		minBackoff: MinRetryBackoff,
		maxBackoff: MaxRetryBackoff,
		entries:    make(map[spiffeid.ID]*cacheEntry),
	}
}

// get returns a valid SVID for id, starting a fetch on first use and waiting
// for it until ctx ends.
func (c *svidCache) get(ctx context.Context, id spiffeid.ID) (*x509svid.SVID, error) {
	if id.IsZero() {
		return nil, errors.New("identity: empty SPIFFE ID")
	}
	for {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return nil, ErrClosed
		}
		e := c.entries[id]
		if e == nil {
			e = c.newEntryLocked(id)
		}
		if s := e.svid; s != nil && c.now().Before(s.Certificates[0].NotAfter) {
			c.mu.Unlock()
			return s, nil
		}
		changed := e.changed
		c.mu.Unlock()

		select {
		case <-changed:
		case <-ctx.Done():
			c.mu.Lock()
			lastErr := e.lastErr
			c.mu.Unlock()
			if lastErr != nil {
				return nil, fmt.Errorf("identity: no SVID for %s: %w (last fetch error: %v)", id, ctx.Err(), lastErr)
			}
			return nil, fmt.Errorf("identity: waiting for SVID for %s: %w", id, ctx.Err())
		}
	}
}

func (c *svidCache) newEntryLocked(id spiffeid.ID) *cacheEntry {
	ctx, cancel := context.WithCancel(context.Background())
	e := &cacheEntry{id: id, ctx: ctx, cancel: cancel, changed: make(chan struct{})}
	c.entries[id] = e
	c.startFetchLocked(e)
	return e
}

func (c *svidCache) startFetchLocked(e *cacheEntry) {
	e.fetching = true
	e.timer = nil
	c.wg.Add(1)
	go c.runFetch(e)
}

// refresh is the timer callback for renewals and retries.
func (c *svidCache) refresh(e *cacheEntry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e.ctx.Err() != nil || e.fetching {
		return
	}
	c.startFetchLocked(e)
}

func (c *svidCache) runFetch(e *cacheEntry) {
	defer c.wg.Done()

	var (
		s   *x509svid.SVID
		err error
	)
	select {
	case c.sem <- struct{}{}:
		ctx, cancel := context.WithTimeout(e.ctx, fetchTimeout)
		s, err = c.fetch(ctx, e.id)
		cancel()
		<-c.sem
	case <-e.ctx.Done():
		err = e.ctx.Err()
	}
	if err == nil {
		err = checkSVID(s, e.id)
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	e.fetching = false
	if e.ctx.Err() != nil {
		return // released or closed meanwhile
	}
	now := c.now()
	if err != nil {
		e.lastErr = err
		if e.backoff == 0 {
			e.backoff = c.minBackoff
		} else {
			e.backoff = min(2*e.backoff, c.maxBackoff)
		}
		attrs := []any{"id", e.id.String(), "err", err, "retry_in", e.backoff}
		if e.svid != nil && now.Before(e.svid.Certificates[0].NotAfter) {
			attrs = append(attrs, "keeping_until", e.svid.Certificates[0].NotAfter)
		}
		c.log.Warn("SVID fetch failed", attrs...)
		e.timer = time.AfterFunc(e.backoff, func() { c.refresh(e) })
		e.notifyLocked()
		return
	}
	notAfter := s.Certificates[0].NotAfter
	e.svid = s
	e.updates++
	e.lastErr = nil
	e.backoff = 0
	e.renewAt = now.Add(notAfter.Sub(now) / 2)
	c.log.Debug("SVID updated", "id", e.id.String(), "not_after", notAfter, "renew_at", e.renewAt)
	e.timer = time.AfterFunc(e.renewAt.Sub(now), func() { c.refresh(e) })
	e.notifyLocked()
}

func (e *cacheEntry) notifyLocked() {
	close(e.changed)
	e.changed = make(chan struct{})
}

func checkSVID(s *x509svid.SVID, id spiffeid.ID) error {
	switch {
	case s == nil || len(s.Certificates) == 0 || s.PrivateKey == nil:
		return fmt.Errorf("identity: fetch for %s returned an incomplete SVID", id)
	case s.ID != id:
		return fmt.Errorf("identity: fetch for %s returned an SVID for %s", id, s.ID)
	}
	return nil
}

// release forgets id: its renewal stops, and a later get starts afresh.
func (c *svidCache) release(id spiffeid.ID) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.entries[id]
	if e == nil {
		return
	}
	delete(c.entries, id)
	c.dropLocked(e)
}

func (c *svidCache) dropLocked(e *cacheEntry) {
	e.cancel()
	if e.timer != nil {
		e.timer.Stop()
		e.timer = nil
	}
	e.notifyLocked()
}

// close stops every renewal and waits for fetches in flight to return.
func (c *svidCache) close() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	for id, e := range c.entries {
		delete(c.entries, id)
		c.dropLocked(e)
	}
	c.mu.Unlock()
	c.wg.Wait()
}

// len returns how many identities currently have an entry.
func (c *svidCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}

// status describes every identity in use, sorted by ID.
func (c *svidCache) status() []SVIDStatus {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	out := make([]SVIDStatus, 0, len(c.entries))
	for id, e := range c.entries {
		st := svidStatus(id.String(), e.svid, now)
		st.Updates = e.updates
		if e.lastErr != nil {
			st.Reason = e.lastErr.Error()
		}
		out = append(out, st)
	}
	sortSVIDs(out)
	return out
}
