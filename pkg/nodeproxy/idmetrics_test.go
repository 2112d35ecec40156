package nodeproxy

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/palisade-net/palisade/pkg/identity"
)

func TestIdentityMetrics(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	ca, err := identity.LoadOrCreateDevCA(t.TempDir(), td)
	if err != nil {
		t.Fatal(err)
	}
	ids := identity.NewDevProvider(ca, 10*time.Minute, nil)
	defer ids.Close()
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/web")
	if _, err := ids.SVID(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	c := newIdentityCollector(ids)
	now := time.Now()
	c.now = func() time.Time { return now }
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)

	want := `
# HELP palisade_svid_ready 1 while a valid SVID is held for the identity, 0 while it is missing (see the admin endpoint /identities for the reason).
# TYPE palisade_svid_ready gauge
palisade_svid_ready{identity="spiffe://cluster.local/ns/shop/sa/web"} 1
# HELP palisade_svid_updates_total SVIDs received or issued for the identity since it came into use (first issue plus rotations).
# TYPE palisade_svid_updates_total counter
palisade_svid_updates_total{identity="spiffe://cluster.local/ns/shop/sa/web"} 1
# HELP palisade_trust_bundle_authorities CA certificates in the trust bundle of a trust domain.
# TYPE palisade_trust_bundle_authorities gauge
palisade_trust_bundle_authorities{trust_domain="cluster.local"} 1
# HELP palisade_identity_source_connected 1 while the identity source (SPIRE agent) is reachable.
# TYPE palisade_identity_source_connected gauge
palisade_identity_source_connected{mode="dev-ca"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want),
		"palisade_svid_ready", "palisade_svid_updates_total", "palisade_trust_bundle_authorities", "palisade_identity_source_connected"); err != nil {
		t.Fatal(err)
	}
	// Time to expiry: the SVID's remaining lifetime, within the TTL.
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var expiry float64
	for _, mf := range mfs {
		if mf.GetName() == "palisade_svid_expiry_seconds" {
			expiry = mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	if expiry <= 9*60 || expiry > 10*60 {
		t.Fatalf("palisade_svid_expiry_seconds = %v, want about 600", expiry)
	}
}
