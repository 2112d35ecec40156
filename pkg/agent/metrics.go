package agent

import (
	"errors"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// Reconcile stages, the values of palisade_reconcile_errors_total's stage
// label.
const (
	StageNetns    = "netns"    // finding or opening the pod's network namespace
	StageHandoff  = "handoff"  // handing the pod to the node proxy
	StageRules    = "rules"    // the in-pod redirect rules
	StageDatapath = "datapath" // the eBPF programs and endpoint map
	StageUnenroll = "unenroll" // removing a pod's rules, programs or listeners
	StageStrays   = "strays"   // removing rules of pods no longer enrolled
)

// stageError tags a reconcile error with its stage.
type stageError struct {
	stage string
	err   error
}

func (e *stageError) Error() string { return e.err.Error() }
func (e *stageError) Unwrap() error { return e.err }

func staged(stage string, err error) error { return &stageError{stage: stage, err: err} }

// Metrics are the agent's reconcile series: palisade_pods{state},
// palisade_reconciles_total and palisade_reconcile_errors_total{stage}.
type Metrics struct {
	pods       *prometheus.GaugeVec
	reconciles prometheus.Counter
	errors     *prometheus.CounterVec
}

// NewMetrics registers the series with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		pods: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "palisade_pods",
			Help: "Pods of this node enrolled by policy, by enrollment state (enrolled, pending, failed).",
		}, []string{"state"}),
		reconciles: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "palisade_reconciles_total",
			Help: "Reconcile passes of the enrollment controller.",
		}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "palisade_reconcile_errors_total",
			Help: "Errors of reconcile passes, by stage (netns, handoff, rules, datapath, unenroll, strays); a failed pass is retried.",
		}, []string{"stage"}),
	}
	reg.MustRegister(m.pods, m.reconciles, m.errors)
	for _, st := range []string{"enrolled", "pending", "failed"} {
		m.pods.WithLabelValues(st)
	}
	for _, st := range []string{StageNetns, StageHandoff, StageRules, StageDatapath, StageUnenroll, StageStrays} {
		m.errors.WithLabelValues(st)
	}
	return m
}

func (m *Metrics) observeReconcile(errs []error) {
	if m == nil {
		return
	}
	m.reconciles.Inc()
	for _, err := range errs {
		stage := "other"
		if se, ok := errors.AsType[*stageError](err); ok {
			stage = se.stage
		}
		m.errors.WithLabelValues(stage).Inc()
	}
}

// countPods sets palisade_pods from the wanted status of this node's pods.
// a.mu is held.
func (a *Agent) countPods() {
	m := a.cfg.Metrics
	if m == nil || a.snap == nil {
		return
	}
	counts := map[string]int{"enrolled": 0, "pending": 0, "failed": 0}
	for _, p := range a.snap.PodsOnNode(a.cfg.Node) {
		if want, _ := a.wantedStatus(p); want != "" {
			state, _, _ := strings.Cut(want, ":")
			counts[state]++
		}
	}
	for st, n := range counts {
		m.pods.WithLabelValues(st).Set(float64(n))
	}
}
