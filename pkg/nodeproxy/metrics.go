package nodeproxy

import (
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/palisade-net/palisade/pkg/flowlog"
)

// metrics are the node proxy's Prometheus series (docs/observability.md).
// Label values are bounded: directions and reasons are fixed sets, and the
// workload labels name workloads, one side of which runs on this node.
// The series of a label combination are resolved from the vectors once and
// kept in a map keyed by the label values; a connection looks its series
// up once, and its requests reuse the previous request's series while the
// labels repeat.
type metrics struct {
	opened, closed, sent, recv *prometheus.CounterVec
	failed                     *prometheus.CounterVec
	pods                       prometheus.Gauge

	requests       *prometheus.CounterVec
	reqDuration    *prometheus.HistogramVec
	l7Errors       *prometheus.CounterVec
	handshakes     *prometheus.HistogramVec
	revoked        prometheus.Counter
	policyProblems prometheus.Gauge
	flowLogs       prometheus.Gauge

	connCache sync.Map // connKey -> *connSeries
	reqCache  sync.Map // reqKey -> *reqCacheEntry

	// grpcMethods maps a gRPC service and method seen so far to its label
	// value; clients choose the path, so past maxGRPCMethods new ones
	// are counted as OTHER.
	grpcMethods sync.Map // [2]string -> string
	grpcCount   atomic.Int32
}

// maxGRPCMethods caps the distinct gRPC method label values.
const maxGRPCMethods = 500

// Connection directions, the only values of the direction label.
const (
	dirOutbound     = "outbound"
	dirInboundHBONE = "inbound-hbone"
	dirInboundPlain = "inbound-plaintext"
)

// unknownLabel stands for a side that is not a known pod.
const unknownLabel = "unknown"

var connLabels = []string{"direction", "source_namespace", "source_workload", "source_principal",
	"destination_namespace", "destination_workload", "destination_principal"}

var reqLabels = []string{"direction", "protocol", "method", "status", "verdict", "policy", "rule",
	"source_namespace", "source_workload", "destination_namespace", "destination_workload"}

// connKey is a connection's label values, in connLabels order.
type connKey [7]string

type connSeries struct {
	opened, closed, sent, recv prometheus.Counter
}

// reqKey is a request's label values, in reqLabels order.
type reqKey [11]string

func newMetrics(reg prometheus.Registerer) *metrics {
	counter := func(name, help string, labels []string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
	}
	m := &metrics{
		opened: counter("palisade_tcp_connections_opened_total",
			"Connections the node proxy established (allowed and connected), by direction and source and destination workload.", connLabels),
		closed: counter("palisade_tcp_connections_closed_total",
			"Established connections that ended, by direction and source and destination workload.", connLabels),
		sent: counter("palisade_tcp_sent_bytes_total",
			"Bytes sent towards the destination, counted when the connection ends.", connLabels),
		recv: counter("palisade_tcp_received_bytes_total",
			"Bytes received from the destination, counted when the connection ends.", connLabels),
		failed: counter("palisade_tcp_connections_failed_total",
			"Connections refused or failed, by direction, reason and source and destination workload.",
			[]string{"direction", "reason", "source_namespace", "source_workload", "destination_namespace", "destination_workload"}),
		pods: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "palisade_workloads",
			Help: "Enrolled workloads served by this node proxy.",
		}),
		requests: counter("palisade_l7_requests_total",
			"L7 requests judged by the node proxy, by protocol (http, grpc, kafka), method or API, status, verdict, deciding policy and rule, and workloads.", reqLabels),
		reqDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "palisade_l7_request_duration_seconds",
			Help:    "Time from the end of a request's head to its response head (allowed) or to its denial.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2.5, 12), // 100µs … ~5.9s
		}, []string{"direction", "protocol", "verdict", "destination_namespace", "destination_workload"}),
		l7Errors: counter("palisade_l7_connection_errors_total",
			"Inspected connections ended because their traffic could not be parsed or was refused as a whole, by direction and protocol.",
			[]string{"direction", "protocol"}),
		handshakes: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "palisade_hbone_handshake_duration_seconds",
			Help:    "TLS handshakes of HBONE connections, by role (client, server) and result (ok, error).",
			Buckets: prometheus.ExponentialBuckets(0.0002, 2.5, 10), // 200µs … ~0.76s
		}, []string{"role", "result"}),
		revoked: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "palisade_tcp_connections_revoked_total",
			Help: "Live connections closed because a policy change withdrew their allowance.",
		}),
		policyProblems: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "palisade_policy_problems",
			Help: "Problems the last policy compilation reported (invalid objects, unsupported fields).",
		}),
		flowLogs: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "palisade_flow_logs",
			Help: "FlowLog objects in use (selecting what the flow log file records).",
		}),
	}
	reg.MustRegister(m.opened, m.closed, m.sent, m.recv, m.failed, m.pods, m.requests, m.reqDuration,
		m.l7Errors, m.handshakes, m.revoked, m.policyProblems, m.flowLogs)
	return m
}

// conn returns the series of a connection between src and dst.
func (m *metrics) conn(direction string, src, dst *flowlog.Endpoint) *connSeries {
	k := connKey{direction, orUnknown(src.Namespace), orUnknown(src.Workload), orUnknown(src.Identity),
		orUnknown(dst.Namespace), orUnknown(dst.Workload), orUnknown(dst.Identity)}
	if s, ok := m.connCache.Load(k); ok {
		return s.(*connSeries)
	}
	s := &connSeries{
		opened: m.opened.WithLabelValues(k[:]...),
		closed: m.closed.WithLabelValues(k[:]...),
		sent:   m.sent.WithLabelValues(k[:]...),
		recv:   m.recv.WithLabelValues(k[:]...),
	}
	actual, _ := m.connCache.LoadOrStore(k, s)
	return actual.(*connSeries)
}

// reqCacheEntry is a label combination and its series. The cache holds the
// entries themselves, so a connection switching between label sets stores
// a pointer it already has rather than allocating.
type reqCacheEntry struct {
	key      reqKey
	count    prometheus.Counter
	duration prometheus.Observer
}

// request counts one request record. last caches the series of the
// connection's previous request, which avoids hashing the labels when
// they repeat.
func (m *metrics) request(last *atomic.Pointer[reqCacheEntry], r *flowlog.Record, d time.Duration) {
	k := reqKey{r.Direction, r.Protocol, m.methodLabel(r), statusLabel(r), r.Verdict, r.Policy, r.Rule,
		orUnknown(r.Source.Namespace), orUnknown(r.Source.Workload),
		orUnknown(r.Destination.Namespace), orUnknown(r.Destination.Workload)}
	e := last.Load()
	if e == nil || e.key != k {
		v, ok := m.reqCache.Load(k)
		if !ok {
			v, _ = m.reqCache.LoadOrStore(k, &reqCacheEntry{key: k,
				count:    m.requests.WithLabelValues(k[:]...),
				duration: m.reqDuration.WithLabelValues(k[0], k[1], k[4], k[9], k[10]),
			})
		}
		e = v.(*reqCacheEntry)
		last.Store(e)
	}
	e.count.Inc()
	e.duration.Observe(d.Seconds())
}

// handshake observes one HBONE TLS handshake.
func (m *metrics) handshake(role string) func(time.Duration, error) {
	ok := m.handshakes.WithLabelValues(role, "ok")
	bad := m.handshakes.WithLabelValues(role, "error")
	return func(d time.Duration, err error) {
		if err != nil {
			bad.Observe(d.Seconds())
			return
		}
		ok.Observe(d.Seconds())
	}
}

func orUnknown(s string) string {
	if s == "" {
		return unknownLabel
	}
	return s
}

// httpMethods are the method label's values for HTTP; others are OTHER,
// so a client cannot grow the label set.
var httpMethods = map[string]bool{
	http.MethodGet: true, http.MethodHead: true, http.MethodPost: true, http.MethodPut: true,
	http.MethodPatch: true, http.MethodDelete: true, http.MethodConnect: true, http.MethodOptions: true,
	http.MethodTrace: true,
}

// methodLabel is the method label of a request record: the HTTP method,
// the gRPC service/method, or the Kafka API name.
func (m *metrics) methodLabel(r *flowlog.Record) string {
	switch {
	case r.GRPC != nil:
		key := [2]string{r.GRPC.Service, r.GRPC.Method}
		if v, ok := m.grpcMethods.Load(key); ok {
			return v.(string)
		}
		if m.grpcCount.Add(1) > maxGRPCMethods {
			m.grpcCount.Add(-1)
			return "OTHER"
		}
		v, loaded := m.grpcMethods.LoadOrStore(key, r.GRPC.Service+"/"+r.GRPC.Method)
		if loaded {
			m.grpcCount.Add(-1)
		}
		return v.(string)
	case r.Kafka != nil:
		return r.Kafka.API
	case r.HTTP != nil:
		if httpMethods[r.HTTP.Method] {
			return r.HTTP.Method
		}
		return "OTHER"
	}
	return ""
}

// codeLabel formats a status code; the common ones without allocating.
func codeLabel(c int) string {
	if c >= 0 && c < len(codeLabels) {
		return codeLabels[c]
	}
	return strconv.Itoa(c)
}

// codeLabels are the decimal strings of 0..599 (an immutable table).
var codeLabels = func() (t [600]string) {
	for i := range t {
		t[i] = strconv.Itoa(i)
	}
	return t
}()

// statusLabel is the status label: the HTTP status, the grpc-status, or
// the Kafka error code of a denial ("0" when allowed); "" when none.
func statusLabel(r *flowlog.Record) string {
	switch {
	case r.GRPC != nil:
		if r.GRPC.Status < 0 {
			return ""
		}
		return codeLabel(r.GRPC.Status)
	case r.Kafka != nil:
		return codeLabel(int(r.Kafka.ErrorCode))
	case r.HTTP != nil:
		if r.HTTP.Status == 0 {
			return ""
		}
		return codeLabel(r.HTTP.Status)
	}
	return ""
}
