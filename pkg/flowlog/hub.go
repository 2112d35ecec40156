package flowlog

import (
	"fmt"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
)

// Filter selects records for one reader of the stream (kubectl palisade
// observe). Every non-empty field narrows the selection.
type Filter struct {
	// Namespace matches either side's namespace.
	Namespace string
	// Pod matches either side's pod, "name" or "namespace/name".
	Pod string
	// Verdicts, Protocols and Types match the record's fields.
	Verdicts, Protocols, Types []string
}

// ParseFilter reads a Filter from URL query parameters: namespace, pod,
// verdict, protocol, type (the last three may repeat or hold
// comma-separated lists).
func ParseFilter(q url.Values) (Filter, error) {
	f := Filter{Namespace: q.Get("namespace"), Pod: q.Get("pod")}
	list := func(key string, allowed []string) ([]string, error) {
		var out []string
		for _, v := range q[key] {
			for s := range strings.SplitSeq(v, ",") {
				if s = strings.TrimSpace(s); s == "" {
					continue
				}
				if !slices.Contains(allowed, s) {
					return nil, fmt.Errorf("%s: unknown value %q (one of %s)", key, s, strings.Join(allowed, ", "))
				}
				out = append(out, s)
			}
		}
		return out, nil
	}
	var err error
	if f.Verdicts, err = list("verdict", verdicts); err != nil {
		return f, err
	}
	if f.Protocols, err = list("protocol", protocols); err != nil {
		return f, err
	}
	if f.Types, err = list("type", types); err != nil {
		return f, err
	}
	return f, nil
}

// Query returns f as URL query parameters (the inverse of ParseFilter).
func (f Filter) Query() url.Values {
	q := url.Values{}
	if f.Namespace != "" {
		q.Set("namespace", f.Namespace)
	}
	if f.Pod != "" {
		q.Set("pod", f.Pod)
	}
	if len(f.Verdicts) > 0 {
		q.Set("verdict", strings.Join(f.Verdicts, ","))
	}
	if len(f.Protocols) > 0 {
		q.Set("protocol", strings.Join(f.Protocols, ","))
	}
	if len(f.Types) > 0 {
		q.Set("type", strings.Join(f.Types, ","))
	}
	return q
}

// Matches reports whether f selects r.
func (f *Filter) Matches(r *Record) bool {
	if len(f.Verdicts) > 0 && !slices.Contains(f.Verdicts, r.Verdict) {
		return false
	}
	if len(f.Protocols) > 0 && !slices.Contains(f.Protocols, r.Protocol) {
		return false
	}
	if len(f.Types) > 0 && !slices.Contains(f.Types, r.Type) {
		return false
	}
	if f.Namespace != "" && r.Source.Namespace != f.Namespace && r.Destination.Namespace != f.Namespace {
		return false
	}
	if f.Pod != "" && !podIs(&r.Source, f.Pod) && !podIs(&r.Destination, f.Pod) {
		return false
	}
	return true
}

func podIs(e *Endpoint, pod string) bool {
	if e.Pod == "" {
		return false
	}
	if ns, name, ok := strings.Cut(pod, "/"); ok {
		return e.Namespace == ns && e.Pod == name
	}
	return e.Pod == pod
}

// Hub fans records out to stream subscribers and keeps the most recent
// ones. Publish never blocks: a subscriber whose buffer is full loses the
// record, which is counted and reported to it by a TypeLost marker.
type Hub struct {
	m *Metrics

	mu     sync.RWMutex
	subs   map[*Subscription]struct{}
	recent []*Record
	next   int
	full   bool
}

// NewHub returns a hub that keeps the newest `recent` records.
func NewHub(recent int, m *Metrics) *Hub {
	if recent < 1 {
		recent = 1
	}
	return &Hub{m: m, subs: map[*Subscription]struct{}{}, recent: make([]*Record, recent)}
}

// Subscription is one stream reader.
type Subscription struct {
	// C delivers the records the filter selects.
	C      chan *Record
	filter Filter
	lost   atomic.Int64
}

// TakeLost returns how many records this subscriber lost since the last
// call, and resets the count.
func (s *Subscription) TakeLost() int64 { return s.lost.Swap(0) }

// Subscribe registers a reader with a buffer of buf records and returns
// it with the kept records f selects (at most limit, the newest; limit 0:
// none), taken under the same lock so that no record is both in the
// snapshot and delivered live.
func (h *Hub) Subscribe(f Filter, buf, limit int) (*Subscription, []*Record) {
	s := &Subscription{C: make(chan *Record, buf), filter: f}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.subs[s] = struct{}{}
	if limit <= 0 {
		return s, nil
	}
	return s, h.recentLocked(f, limit)
}

// Unsubscribe removes s.
func (h *Hub) Unsubscribe(s *Subscription) {
	h.mu.Lock()
	delete(h.subs, s)
	h.mu.Unlock()
}

// Publish keeps r among the recent records and sends it to every
// subscriber whose filter selects it. r must not be changed afterwards.
func (h *Hub) Publish(r *Record) {
	h.mu.Lock()
	h.recent[h.next] = r
	h.next++
	if h.next == len(h.recent) {
		h.next, h.full = 0, true
	}
	for s := range h.subs {
		if !s.filter.Matches(r) {
			continue
		}
		select {
		case s.C <- r:
			h.m.streamWritten.Inc()
		default:
			s.lost.Add(1)
			h.m.streamDropped.Inc()
		}
	}
	h.mu.Unlock()
}

// Recent returns the kept records f selects, oldest first, at most limit
// (the newest; limit ≤ 0: all).
func (h *Hub) Recent(f Filter, limit int) []*Record {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.recentLocked(f, limit)
}

func (h *Hub) recentLocked(f Filter, limit int) []*Record {
	var out []*Record
	keep := func(rs []*Record) {
		for _, r := range rs {
			if f.Matches(r) {
				out = append(out, r)
			}
		}
	}
	if h.full {
		keep(h.recent[h.next:])
	}
	keep(h.recent[:h.next])
	if limit > 0 && len(out) > limit {
		out = out[len(out)-limit:]
	}
	return out
}
