package ebpf

import (
	"github.com/prometheus/client_golang/prometheus"
)

// The metrics, read from the kernel's maps at scrape time.
var (
	packetsDesc = prometheus.NewDesc("palisade_ebpf_packets_total",
		"Packets seen by the eBPF datapath on the host side of this node's enrolled pods, by pod (namespace/name; "+
			PodUnenrolled+" when the pod-side address is not enrolled, "+PodOther+" for addresses of no pod of this node), "+
			"direction (from_pod, to_pod), verdict (pass, hbone, proxy, drop) and drop reason (none unless dropped).",
		[]string{"pod", "direction", "verdict", "reason"}, nil)
	bytesDesc = prometheus.NewDesc("palisade_ebpf_bytes_total",
		"Bytes of the packets of palisade_ebpf_packets_total, with the same labels.",
		[]string{"pod", "direction", "verdict", "reason"}, nil)
	lostDesc = prometheus.NewDesc("palisade_ebpf_drop_events_lost_total",
		"Drops not reported as events (log, /debug/drops) because the ring buffer was full; they were counted all the same.",
		nil, nil)
	fullDesc = prometheus.NewDesc("palisade_ebpf_counters_full_total",
		"Packets not counted because the counter map was full.",
		nil, nil)
	forwardedDesc = prometheus.NewDesc("palisade_ebpf_drop_events_forwarded_total",
		"Drop events handed to the node proxy for its flow records, by outcome: delivered, no_proxy (no node proxy that takes them was connected, "+
			"after waiting up to 30 s for one), failed (refused, or the proxy went away or timed out before its ack), queue_full (more than 4096 were waiting), "+
			"rate_limited (beyond 200 a second, bursts of 1000). Undelivered ones stay in the agent's log and /debug/drops.",
		[]string{"outcome"}, nil)
	endpointsDesc = prometheus.NewDesc("palisade_ebpf_endpoints",
		"Enrolled addresses of the cluster in the datapath's endpoint map.",
		nil, nil)
)

// Describe implements prometheus.Collector.
func (m *Manager) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{packetsDesc, bytesDesc, lostDesc, fullDesc, forwardedDesc, endpointsDesc} {
		ch <- d
	}
}

type counterLabels struct{ pod, direction, verdict, reason string }

// Collect implements prometheus.Collector. Counters are summed over the
// CPUs and over the indexes that share a pod label. Before the first
// SetEndpoints (the agent's first reconcile) the pods of the indexes are
// not known yet and no packet counter is reported.
func (m *Manager) Collect(ch chan<- prometheus.Metric) {
	st, err := m.dp.Stats()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(lostDesc, err)
	} else {
		ch <- prometheus.MustNewConstMetric(lostDesc, prometheus.CounterValue, float64(st.EventsLost))
		ch <- prometheus.MustNewConstMetric(fullDesc, prometheus.CounterValue, float64(st.CountersFull))
	}
	if m.fwd != nil {
		for i, o := range forwardOutcomes {
			ch <- prometheus.MustNewConstMetric(forwardedDesc, prometheus.CounterValue, float64(m.fwd.counts[i].Load()), o)
		}
	}
	m.mu.Lock()
	synced := m.synced
	ch <- prometheus.MustNewConstMetric(endpointsDesc, prometheus.GaugeValue, float64(len(m.written)))
	m.mu.Unlock()
	if !synced {
		return
	}
	cs, err := m.dp.Counters()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(packetsDesc, err)
		return
	}
	type sum struct{ packets, bytes uint64 }
	agg := map[counterLabels]sum{}
	m.mu.Lock()
	for k, c := range cs {
		l := counterLabels{m.podLabel(k.Index), k.Direction.String(), k.Verdict.String(), k.Reason.String()}
		s := agg[l]
		s.packets += c.Packets
		s.bytes += c.Bytes
		agg[l] = s
	}
	m.mu.Unlock()
	for l, s := range agg {
		ch <- prometheus.MustNewConstMetric(packetsDesc, prometheus.CounterValue, float64(s.packets), l.pod, l.direction, l.verdict, l.reason)
		ch <- prometheus.MustNewConstMetric(bytesDesc, prometheus.CounterValue, float64(s.bytes), l.pod, l.direction, l.verdict, l.reason)
	}
}

var _ prometheus.Collector = (*Manager)(nil)
