// Package dashboards holds Palisade's Grafana dashboards (palisade-*.json,
// imported by hand or shipped to Grafana's dashboard sidecar as a ConfigMap
// by the kustomization here; see README.md) and the code that reads their
// Prometheus queries back out.
//
// The offline tests in this package check every dashboard against the
// metric list of docs/observability.md: valid JSON, a Prometheus query on
// every panel, only metric names and labels the spec lists for that
// metric, unique uids. The end-to-end test (test/e2e, TestPrometheus) runs
// exactly the queries Queries returns against a real Prometheus scraping a
// lab, so a dashboard query that returns nothing fails there.
package dashboards
