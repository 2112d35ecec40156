package nodeproxy

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/palisade-net/palisade/pkg/identity"
)

// identityCollector exports the identity provider's state at scrape time.
// The identity label is bounded by the service accounts served on the node.
type identityCollector struct {
	r   identity.Reporter
	now func() time.Time

	expiry, ready, updates, bundleAuth, bundleUpdates, connected *prometheus.Desc
}

func newIdentityCollector(r identity.Reporter) *identityCollector {
	return &identityCollector{
		r:   r,
		now: time.Now,
		expiry: prometheus.NewDesc("palisade_svid_expiry_seconds",
			"Seconds until the current SVID of a workload identity expires (negative once expired).", []string{"identity"}, nil),
		ready: prometheus.NewDesc("palisade_svid_ready",
			"1 while a valid SVID is held for the identity, 0 while it is missing (see the admin endpoint /identities for the reason).", []string{"identity"}, nil),
		updates: prometheus.NewDesc("palisade_svid_updates_total",
			"SVIDs received or issued for the identity since it came into use (first issue plus rotations).", []string{"identity"}, nil),
		bundleAuth: prometheus.NewDesc("palisade_trust_bundle_authorities",
			"CA certificates in the trust bundle of a trust domain.", []string{"trust_domain"}, nil),
		bundleUpdates: prometheus.NewDesc("palisade_trust_bundle_updates_total",
			"Times the trust bundle of a trust domain was received or changed.", []string{"trust_domain"}, nil),
		connected: prometheus.NewDesc("palisade_identity_source_connected",
			"1 while the identity source (SPIRE agent) is reachable.", []string{"mode"}, nil),
	}
}

func (c *identityCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.expiry, c.ready, c.updates, c.bundleAuth, c.bundleUpdates, c.connected} {
		ch <- d
	}
}

func (c *identityCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.r.Status()
	now := c.now()
	b2f := func(b bool) float64 {
		if b {
			return 1
		}
		return 0
	}
	ch <- prometheus.MustNewConstMetric(c.connected, prometheus.GaugeValue, b2f(st.Connected), st.Mode)
	svids := st.SVIDs
	if st.Self != nil && !st.Self.NotAfter.IsZero() {
		svids = append(svids, *st.Self)
	}
	for _, s := range svids {
		ch <- prometheus.MustNewConstMetric(c.ready, prometheus.GaugeValue, b2f(s.Ready), s.ID)
		ch <- prometheus.MustNewConstMetric(c.updates, prometheus.CounterValue, float64(s.Updates), s.ID)
		if !s.NotAfter.IsZero() {
			ch <- prometheus.MustNewConstMetric(c.expiry, prometheus.GaugeValue, s.NotAfter.Sub(now).Seconds(), s.ID)
		}
	}
	for _, b := range st.Bundles {
		ch <- prometheus.MustNewConstMetric(c.bundleAuth, prometheus.GaugeValue, float64(len(b.Authorities)), b.TrustDomain)
		ch <- prometheus.MustNewConstMetric(c.bundleUpdates, prometheus.CounterValue, float64(b.Updates), b.TrustDomain)
	}
}
