package nodeproxy

import "github.com/prometheus/client_golang/prometheus"

// metrics are the node proxy's Prometheus series. Label values are bounded:
// direction is one of three values, reason one of a fixed set.
type metrics struct {
	opened *prometheus.CounterVec
	closed *prometheus.CounterVec
	failed *prometheus.CounterVec
	sent   *prometheus.CounterVec
	recv   *prometheus.CounterVec
	pods   prometheus.Gauge

	requests       *prometheus.CounterVec
	l7Errors       *prometheus.CounterVec
	revoked        prometheus.Counter
	policyProblems prometheus.Gauge

	// byDir holds the per-direction counters resolved once, so the
	// per-connection path does no label hashing.
	byDir map[string]*dirMetrics
}

// Connection directions, the only values of the direction label.
const (
	dirOutbound     = "outbound"
	dirInboundHBONE = "inbound-hbone"
	dirInboundPlain = "inbound-plaintext"
)

type dirMetrics struct {
	opened, closed, sent, recv prometheus.Counter
}

// dir returns the counters of a direction.
func (m *metrics) dir(direction string) *dirMetrics { return m.byDir[direction] }

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		opened: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "palisade_tcp_connections_opened_total",
			Help: "Connections accepted by the node proxy, by direction.",
		}, []string{"direction"}),
		closed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "palisade_tcp_connections_closed_total",
			Help: "Connections that ended after being established, by direction.",
		}, []string{"direction"}),
		failed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "palisade_tcp_connections_failed_total",
			Help: "Connections refused or failed, by direction and reason.",
		}, []string{"direction", "reason"}),
		sent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "palisade_tcp_sent_bytes_total",
			Help: "Bytes sent towards the destination, by direction.",
		}, []string{"direction"}),
		recv: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "palisade_tcp_received_bytes_total",
			Help: "Bytes received from the destination, by direction.",
		}, []string{"direction"}),
		pods: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "palisade_workloads",
			Help: "Enrolled workloads served by this node proxy.",
		}),
	}
	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "palisade_l7_requests_total",
		Help: "L7 requests judged by the node proxy, by direction, protocol (http/1.1, h2, grpc, kafka) and verdict.",
	}, []string{"direction", "protocol", "verdict"})
	m.l7Errors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "palisade_l7_connection_errors_total",
		Help: "Inspected connections ended because their traffic could not be parsed or was refused as a whole, by direction and protocol.",
	}, []string{"direction", "protocol"})
	m.revoked = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "palisade_tcp_connections_revoked_total",
		Help: "Live connections closed because a policy change withdrew their allowance.",
	})
	m.policyProblems = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "palisade_policy_problems",
		Help: "Problems the last policy compilation reported (invalid objects, unsupported fields).",
	})
	reg.MustRegister(m.opened, m.closed, m.failed, m.sent, m.recv, m.pods, m.requests, m.l7Errors, m.revoked, m.policyProblems)
	m.byDir = map[string]*dirMetrics{}
	for _, d := range []string{dirOutbound, dirInboundHBONE, dirInboundPlain} {
		m.byDir[d] = &dirMetrics{
			opened: m.opened.WithLabelValues(d),
			closed: m.closed.WithLabelValues(d),
			sent:   m.sent.WithLabelValues(d),
			recv:   m.recv.WithLabelValues(d),
		}
	}
	return m
}
