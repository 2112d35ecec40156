package handoff

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"
)

// Drop is one packet the node's eBPF datapath dropped, as the agent reports
// it: in its /debug/drops records and, in "drops" messages, to the node
// proxy, which turns it into a flow record.
type Drop struct {
	Time time.Time `json:"time"`
	// Pod is this node's pod (namespace/name) on whose interface the packet
	// was dropped: the sender (direction from_pod) or the receiver (to_pod);
	// "" when that address is not an enrolled pod.
	Pod string `json:"pod"`
	// Direction is from_pod (leaving the pod) or to_pod.
	Direction string `json:"direction"`
	// Source and Destination are address:port (port 0 when the packet had
	// no readable TCP or UDP header).
	Source      string `json:"source"`
	Destination string `json:"destination"`
	// SourcePod and DestinationPod name the enrolled pods (of any node)
	// the addresses belong to, "" for others.
	SourcePod      string `json:"sourcePod,omitempty"`
	DestinationPod string `json:"destinationPod,omitempty"`
	// Protocol is tcp, udp, icmp, icmpv6 or the IP protocol number.
	Protocol string `json:"protocol"`
	// TCPFlags are the set flags, as FIN|SYN|RST|PSH|ACK|URG|ECE|CWR.
	TCPFlags string `json:"tcpFlags,omitempty"`
	// Reason is the datapath's drop reason (plaintext_between_enrolled,
	// strict_plaintext_inbound, ...).
	Reason string `json:"reason"`
	// Interface is the node's side of the pod's veth.
	Interface string `json:"interface"`
	// Length is the packet's length in bytes.
	Length uint32 `json:"length"`
}

// ErrDropsNotTaken is returned by ReportDrops when the newest node proxy's
// hello did not list the "drops" feature (an older proxy, which would close
// the connection on a message type it does not know).
var ErrDropsNotTaken = errors.New("the newest node proxy does not take drop reports")

// errAbandoned finishes a drop report its caller stopped waiting for
// before it was sent.
var errAbandoned = errors.New("drop report abandoned before it was sent")

// MaxDropsPerMessage bounds the drops of one "drops" message; ReportDrops
// splits longer lists (and lists whose encoding exceeds MaxMessageSize).
const MaxDropsPerMessage = 64

// ReportDrops sends drops to the newest connected node proxy, for its flow
// records, and waits for its ack. Only a proxy whose hello listed the
// "drops" feature gets them (ErrDropsNotTaken otherwise). When ctx ends
// first, the messages not sent yet are abandoned (the queue they share
// with workload adds does not grow behind a slow proxy); those already
// sent may still be recorded. Drops are not recorded: with no proxy
// connected (an error wrapping ErrNoProxy) or when the connection goes
// away first (ErrConnLost) they are not delivered, and the caller counts
// them; the agent's own log and /debug/drops keep them either way.
func (s *Server) ReportDrops(ctx context.Context, drops []Drop) error {
	if len(drops) == 0 {
		return nil
	}
	var ops []*op
	for len(drops) > 0 {
		n := min(len(drops), MaxDropsPerMessage)
		for {
			m := message{Version: ProtocolVersion, Type: typeDrops, ID: math.MaxUint64, Drops: drops[:n]}
			if _, err := encode(&m); err == nil {
				break
			} else if n == 1 {
				return fmt.Errorf("handoff: drops: %w", err)
			}
			n /= 2
		}
		ops = append(ops, &op{
			msg:    message{Version: ProtocolVersion, Type: typeDrops, Drops: drops[:n]},
			desc:   fmt.Sprintf("drops (%d)", n),
			result: make(chan error, 1),
		})
		drops = drops[n:]
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return fmt.Errorf("handoff: drops: %w", ErrClosed)
	}
	sc := s.newestLocked()
	if sc == nil {
		s.mu.Unlock()
		return fmt.Errorf("handoff: drops: %w", ErrNoProxy)
	}
	if !sc.takesDrops {
		s.mu.Unlock()
		return fmt.Errorf("handoff: drops (proxy connection %d): %w", sc.id, ErrDropsNotTaken)
	}
	for _, o := range ops {
		sc.enqueue(o)
	}
	s.mu.Unlock()
	var errs []error
	for _, o := range ops {
		select {
		case err := <-o.result:
			if err != nil {
				errs = append(errs, err)
			}
		case <-ctx.Done():
			for _, o := range ops {
				o.abandoned.Store(true)
			}
			return fmt.Errorf("handoff: drops: waiting for ack: %w", context.Cause(ctx))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("handoff: drops on proxy connection %d: %w", sc.id, err)
	}
	return nil
}
