package nodeproxy

import (
	"sync"
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
	BytesSent    int64     `json:"bytesSent"`     // towards the destination
	BytesRecv    int64     `json:"bytesReceived"` // from the destination
}

// flowRing keeps the last N flows.
type flowRing struct {
	mu   sync.Mutex
	buf  []Flow
	next int
	full bool
}

func newFlowRing(n int) *flowRing { return &flowRing{buf: make([]Flow, n)} }

func (r *flowRing) add(f Flow) {
	r.mu.Lock()
	r.buf[r.next] = f
	r.next++
	if r.next == len(r.buf) {
		r.next, r.full = 0, true
	}
	r.mu.Unlock()
}

// list returns the flows oldest first.
func (r *flowRing) list() []Flow {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []Flow
	if r.full {
		out = append(out, r.buf[r.next:]...)
	}
	return append(out, r.buf[:r.next]...)
}
