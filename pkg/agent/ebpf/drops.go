package ebpf

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/palisade-net/palisade/pkg/datapath"
	"github.com/palisade-net/palisade/pkg/handoff"
)

// Drop is one packet the datapath dropped, as logged, served at
// /debug/drops and reported to the node proxy.
type Drop = handoff.Drop

// dropOf turns an event into a record.
func (m *Manager) dropOf(ev datapath.Event) Drop {
	m.mu.Lock()
	defer m.mu.Unlock()
	d := Drop{
		Time:           ev.Time,
		Direction:      ev.Direction.String(),
		Source:         ev.Src.String(),
		Destination:    ev.Dst.String(),
		SourcePod:      m.podName(ev.SrcIndex),
		DestinationPod: m.podName(ev.DstIndex),
		Protocol:       protoName(ev.Protocol),
		Reason:         ev.Reason.String(),
		Interface:      m.ifnames[ev.Ifindex],
		Length:         ev.Len,
	}
	if ev.Protocol == 6 && ev.Src.Port()|ev.Dst.Port() != 0 {
		d.TCPFlags = tcpFlags(ev.TCPFlags)
	}
	if d.Interface == "" {
		d.Interface = "ifindex " + strconv.FormatUint(uint64(ev.Ifindex), 10)
	}
	if ev.Direction == datapath.FromPod {
		d.Pod = d.SourcePod
	} else {
		d.Pod = d.DestinationPod
	}
	return d
}

func protoName(p uint8) string {
	switch p {
	case 1:
		return "icmp"
	case 6:
		return "tcp"
	case 17:
		return "udp"
	case 58:
		return "icmpv6"
	}
	return strconv.Itoa(int(p))
}

func tcpFlags(f uint8) string {
	names := []string{"FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR"}
	var out []string
	for i, n := range names {
		if f&(1<<i) != 0 {
			out = append(out, n)
		}
	}
	return strings.Join(out, "|")
}

// Log lines: at most logBurst per second; the next line says how many
// were left out.
const logBurst = 20

// dropLog keeps the newest drops and logs them.
type dropLog struct {
	log *slog.Logger
	now func() time.Time

	mu         sync.Mutex
	ring       []Drop
	next       int
	full       bool
	window     time.Time
	inWindow   int
	suppressed int
}

func newDropLog(size int, log *slog.Logger) *dropLog {
	return &dropLog{log: log, now: time.Now, ring: make([]Drop, size)}
}

func (l *dropLog) add(d Drop) {
	l.mu.Lock()
	l.ring[l.next] = d
	l.next = (l.next + 1) % len(l.ring)
	if l.next == 0 {
		l.full = true
	}
	now := l.now()
	if now.Sub(l.window) >= time.Second {
		l.window, l.inWindow = now, 0
	}
	logIt := l.inWindow < logBurst
	suppressed := 0
	if logIt {
		l.inWindow++
		suppressed, l.suppressed = l.suppressed, 0
	} else {
		l.suppressed++
	}
	l.mu.Unlock()
	if !logIt {
		return
	}
	attrs := []any{
		"pod", d.Pod, "direction", d.Direction, "src", d.Source, "dst", d.Destination,
		"protocol", d.Protocol, "reason", d.Reason, "interface", d.Interface,
	}
	if d.SourcePod != "" {
		attrs = append(attrs, "src_pod", d.SourcePod)
	}
	if d.DestinationPod != "" {
		attrs = append(attrs, "dst_pod", d.DestinationPod)
	}
	if d.TCPFlags != "" {
		attrs = append(attrs, "tcp_flags", d.TCPFlags)
	}
	if suppressed > 0 {
		attrs = append(attrs, "not_logged_before", suppressed)
	}
	l.log.Warn("datapath dropped a packet", attrs...)
}

// list returns the kept drops, oldest first.
func (l *dropLog) list() []Drop {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []Drop
	if l.full {
		out = append(out, l.ring[l.next:]...)
	}
	return append(out, l.ring[:l.next]...)
}

// Drops returns the newest drops (up to Options.DropRecords), oldest
// first.
func (m *Manager) Drops() []Drop { return m.drops.list() }

// DropsHandler serves GET /debug/drops: the newest drops as a JSON array,
// oldest first; ?limit=N keeps the newest N.
func (m *Manager) DropsHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed; use GET", http.StatusMethodNotAllowed)
			return
		}
		out := m.Drops()
		if s := r.URL.Query().Get("limit"); s != "" {
			n, err := strconv.Atoi(s)
			if err != nil || n < 0 {
				http.Error(w, fmt.Sprintf("limit %q: want a number >= 0", s), http.StatusBadRequest)
				return
			}
			if n < len(out) {
				out = out[len(out)-n:]
			}
		}
		if out == nil {
			out = []Drop{}
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		_ = json.NewEncoder(w).Encode(out)
	})
}
