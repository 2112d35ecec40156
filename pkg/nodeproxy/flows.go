package nodeproxy

import (
	"sync"

	"github.com/palisade-net/palisade/pkg/flowlog"
	"time"
)

// Flow records one proxied connection: who talked to whom, how it was
// carried, and the verdict. The node proxy keeps the most recent ones for
// its admin endpoint; richer flow logging builds on this record.
type Flow struct {
	Start        time.Time `json:"start"`
	Duration     string    `json:"duration,omitempty"`
	Direction    string    `json:"direction"` // outbound, inbound-hbone, inbound-plaintext
	Pod          string    `json:"pod"`       // the local pod, namespace/name
	Source       string    `json:"source"`
	Destination  string    `json:"destination"`
	Service      string    `json:"service,omitempty"`
	SrcIdentity  string    `json:"sourceIdentity,omitempty"`
	DstIdentity  string    `json:"destinationIdentity,omitempty"`
	PeerIdentity string    `json:"peerIdentity,omitempty"` // verified from the peer's certificate
	Transport    string    `json:"transport"`              // hbone or plaintext
	Verdict      string    `json:"verdict"`                // allowed, denied, failed
	Reason       string    `json:"reason,omitempty"`
	Policy       string    `json:"policy,omitempty"`   // the policy that decided the connection
	Rule         string    `json:"rule,omitempty"`     // its rule
	Protocol     string    `json:"protocol,omitempty"` // the L7 inspector the connection ran through
	BytesSent    int64     `json:"bytesSent"`          // towards the destination
	BytesRecv    int64     `json:"bytesReceived"`      // from the destination

	// src and dst describe both sides for flow records and metric labels.
	src, dst flowlog.Endpoint
	elapsed  time.Duration
	// series are the connection's metric series once it is counted open.
	series *connSeries
}

// ring keeps the last N records.
type ring[T any] struct {
	mu   sync.Mutex
	buf  []T
	next int
	full bool
}

func newRing[T any](n int) *ring[T] { return &ring[T]{buf: make([]T, n)} }

func (r *ring[T]) add(v T) {
	r.mu.Lock()
	r.buf[r.next] = v
	r.next++
	if r.next == len(r.buf) {
		r.next, r.full = 0, true
	}
	r.mu.Unlock()
}

// list returns the records oldest first.
func (r *ring[T]) list() []T {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []T
	if r.full {
		out = append(out, r.buf[r.next:]...)
	}
	return append(out, r.buf[:r.next]...)
}
