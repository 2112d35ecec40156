package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/features"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/palisade-net/palisade/manifests/dashboards"
	"github.com/palisade-net/palisade/pkg/lab"
	"github.com/palisade-net/palisade/pkg/netns"
)

// promNamespaceLine is l7Cluster's namespace, made strict for this test so
// that a plaintext connection from outside the mesh is dropped (eBPF) or
// refused (strict-mode).
const promNamespaceLine = "metadata: {name: shop, labels: {palisade.dev/mtls: enabled}}"

// promExtra: a pod outside the mesh (namespace plain) on node1.
const promExtra = `
apiVersion: v1
kind: Namespace
metadata: {name: plain}
---
apiVersion: v1
kind: Pod
metadata: {name: visitor, namespace: plain, labels: {app: visitor}}
spec:
  nodeName: node1
  containers: [{name: c, command: ["sleep", "infinity"]}]
`

// promProtocols are the values of the dashboards' protocol variable.
var promProtocols = []string{"http", "grpc", "kafka"}

// TestPrometheus runs every query of the Grafana dashboards in
// manifests/dashboards against a real Prometheus (Debian's package) that
// scrapes the node proxies (:15020) and agents (:15022) of a two-node lab
// with eBPF, after allowed and denied HTTP, gRPC and Kafka requests (the
// L7 fixtures of l7_test.go, in a strict namespace), a connection denied at
// L4 and a plaintext connection into a strict pod from outside the mesh.
// Every query must return something for each protocol it is filtered by,
// and a query whose series carry a verdict must show allowed and denied.
func TestPrometheus(t *testing.T) {
	requireRoot(t)
	prom, err := exec.LookPath("prometheus")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("prometheus is not installed: make prometheus installs Debian's package")
		}
		t.Skip("prometheus is not installed (make prometheus installs Debian's package); skipped outside CI")
	}
	if err := features.HaveProgramType(ebpf.SchedCLS); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("the eBPF datapath cannot load here: %v", err)
		}
		t.Skipf("the eBPF datapath cannot load here (%v); skipped outside CI, where eBPF drops could not be produced", err)
	}
	queries, err := dashboards.Queries("../../manifests/dashboards")
	if err != nil {
		t.Fatal(err)
	}
	if len(queries) == 0 {
		t.Fatal("no dashboard queries")
	}

	cluster := strings.Replace(l7Cluster, promNamespaceLine,
		"metadata: {name: shop, labels: {palisade.dev/mtls: enabled, palisade.dev/mtls-mode: strict}}", 1)
	if cluster == l7Cluster {
		t.Fatalf("l7Cluster has no line %q to make strict", promNamespaceLine)
	}
	l := upLabWith(t, "e2e"+randHex(3), cluster+"---"+webPolicy+"---"+grpcPolicy+"---"+kafkaPolicy+"---"+promExtra,
		func(c *lab.Config) { c.EBPF = true })
	ps := startPrometheus(t, l, prom)
	ps.waitTargets(t)

	promTraffic(t, l)

	values := dashboards.SampleValues()
	type check struct {
		q        dashboards.Query
		protocol string
		expr     string
		err      error
		passed   bool
	}
	var checks []*check
	for _, q := range queries {
		protos := []string{""}
		if slices.Contains(dashboards.Variables(q.Expr), "protocol") {
			protos = promProtocols
		}
		for _, p := range protos {
			v := maps.Clone(values)
			if p != "" {
				v["protocol"] = p
			}
			expr, err := dashboards.Expand(q.Expr, v)
			if err != nil {
				t.Fatalf("%s: %v (give the variable a value in this test)", q, err)
			}
			checks = append(checks, &check{q: q, protocol: p, expr: expr})
		}
	}

	// Poll until Prometheus has scraped what the traffic left behind: every
	// query passes, or the deadline lists those that do not.
	const timeout = 90 * time.Second
	deadline := time.Now().Add(timeout)
	for {
		failing := 0
		for _, c := range checks {
			if c.passed {
				continue // counters only grow: not asked again
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			c.err = ps.checkQuery(ctx, c.expr)
			cancel()
			c.passed = c.err == nil
			if !c.passed {
				failing++
			}
		}
		if failing == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Second)
	}
	var failed []string
	for _, c := range checks {
		if c.passed {
			continue
		}
		proto := c.protocol
		if proto == "" {
			proto = "(any)"
		}
		failed = append(failed, fmt.Sprintf("%s, protocol %s: %v\n\t%s", c.q, proto, c.err, c.expr))
	}
	if len(failed) > 0 {
		t.Fatalf("%d of %d dashboard queries (query × protocol) still failing after %s:\n%s",
			len(failed), len(checks), timeout, strings.Join(failed, "\n"))
	}
	t.Logf("all %d dashboard queries (%d queries × their protocols) returned data", len(checks), len(queries))
}

// promTraffic sends allowed and denied requests of each protocol from
// shop/client (node1) to the servers on node2, a connection denied at L4
// (shop/intruder) and a plaintext connection into the strict web pod from
// plain/visitor, checking that each got the answer policy gives it.
func promTraffic(t *testing.T, l *lab.Lab) {
	t.Helper()
	vips := waitL7Services(t, l)
	client := podNetns(t, l, "shop", "client")

	// HTTP, with curl: allowed, denied by the missing allow, denied by the
	// deny rule.
	web := "http://web.shop.svc.cluster.local"
	for _, c := range []struct {
		args []string
		code int
	}{
		{[]string{web + "/public/a"}, 200},
		{[]string{"--http2-prior-knowledge", web + "/public/b"}, 200},
		{[]string{"-X", "DELETE", web + "/public/a"}, 403},
		{[]string{web + "/public/secret/x"}, 403},
	} {
		if code, body := curl(t, l, "shop/client", c.args...); code != c.code {
			t.Fatalf("curl %v: %d %q, want %d", c.args, code, body, c.code)
		}
	}

	// gRPC, with grpc-go: EmptyCall allowed, UnaryCall denied.
	tc := grpcClient(t, client, vips["grpc"])
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := tc.EmptyCall(ctx, &testpb.Empty{}); err != nil {
		t.Fatalf("allowed EmptyCall: %v", err)
	}
	if _, err := tc.UnaryCall(ctx, &testpb.SimpleRequest{ResponseSize: 10}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("denied UnaryCall: got %v, want PermissionDenied", err)
	}

	// Kafka, with franz-go: produce to orders allowed, to secret denied.
	kc, err := kafkaProducer(client, vips["kafka"])
	if err != nil {
		t.Fatal(err)
	}
	defer kc.Close()
	if err := kc.ProduceSync(ctx, &kgo.Record{Topic: "orders", Value: []byte("o1")}).FirstErr(); err != nil {
		t.Fatalf("allowed produce: %v", err)
	}
	if err := kc.ProduceSync(ctx, &kgo.Record{Topic: "secret", Value: []byte("s1")}).FirstErr(); !errors.Is(err, kerr.TopicAuthorizationFailed) {
		t.Fatalf("denied produce: got %v, want TOPIC_AUTHORIZATION_FAILED", err)
	}

	// A source no rule names is refused at L4 (a failed connection).
	out, err := l.Exec(ctx, "shop/intruder", "curl", "-sS", "--max-time", "10", web+"/public/a")
	if err == nil || lab.ExitCode(err) == 28 {
		t.Fatalf("intruder: want its connection refused, got %v %s", err, out)
	}

	// Plaintext from outside the mesh into the strict web pod: the eBPF
	// guard drops the SYN on node2.
	mustNotConnect(t, podNetns(t, l, "plain", "visitor"), podAddr(t, l, "shop", "web", 8080), []byte("GET / HTTP/1.0\r\n\r\n"))
}

// promServer is a Prometheus running in the lab's underlay netns.
type promServer struct {
	base    string
	client  *http.Client
	targets int
}

// startPrometheus runs prometheus in the underlay netns, scraping every
// node proxy and agent on the nodes' underlay addresses each second. It is
// stopped, and its directory removed, when the test ends.
func startPrometheus(t *testing.T, l *lab.Lab, bin string) *promServer {
	t.Helper()
	underlay := l.UnderlayNetns()
	if _, err := l.EnsureUnderlayAddr(); err != nil {
		t.Fatal(err)
	}
	h, err := netns.Open("/var/run/netns/" + underlay)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })

	var proxies, agents []string
	for _, n := range l.Status().Nodes {
		proxies = append(proxies, fmt.Sprintf("%q", n.UnderlayIP.String()+":15020"))
		agents = append(agents, fmt.Sprintf("%q", n.UnderlayIP.String()+":15022"))
	}
	// Cleanups run last first: the directory is removed after Prometheus
	// has stopped.
	dir := t.TempDir()
	config := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
- job_name: palisade-nodeproxy
  static_configs: [{targets: [%s]}]
- job_name: palisade-agent
  static_configs: [{targets: [%s]}]
`, strings.Join(proxies, ", "), strings.Join(agents, ", "))
	cfgPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgPath, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}

	// A free port on the underlay's loopback.
	ln, err := netns.Listen(context.Background(), h, "127.0.0.1:0", netns.SocketOptions{})
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()

	logPath := filepath.Join(dir, "prometheus.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ip", "netns", "exec", underlay, bin,
		"--config.file", cfgPath,
		"--storage.tsdb.path", filepath.Join(dir, "data"),
		"--web.listen-address", addr)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("start prometheus: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
		logf.Close()
		if t.Failed() {
			data, _ := os.ReadFile(logPath)
			lines := strings.Split(strings.TrimSpace(string(data)), "\n")
			if len(lines) > 100 {
				lines = lines[len(lines)-100:]
			}
			t.Logf("==== prometheus log (last lines)\n%s", strings.Join(lines, "\n"))
		}
	})
	ps := &promServer{
		base:    "http://" + addr,
		targets: len(proxies) + len(agents),
		client: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
			DialContext: (&netns.Dialer{Netns: h}).DialContext,
		}},
	}
	eventually(t, 60*time.Second, "prometheus ready at "+addr+" in "+underlay, func() error {
		select {
		case err := <-done:
			done <- err
			return fmt.Errorf("prometheus exited: %v", err)
		default:
		}
		resp, err := ps.client.Get(ps.base + "/-/ready")
		if err != nil {
			return err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return errors.New(resp.Status)
		}
		return nil
	})
	return ps
}

// get fetches an API path and decodes its data.
func (ps *promServer) get(ctx context.Context, path string, into any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, ps.base+path, nil)
	if err != nil {
		return err
	}
	resp, err := ps.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var body struct {
		Status    string          `json:"status"`
		ErrorType string          `json:"errorType"`
		Error     string          `json:"error"`
		Data      json.RawMessage `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return fmt.Errorf("%s: %s: %w", path, resp.Status, err)
	}
	if body.Status != "success" {
		return fmt.Errorf("%s: %s: %s", body.ErrorType, body.Error, resp.Status)
	}
	return json.Unmarshal(body.Data, into)
}

// waitTargets waits until Prometheus scrapes every node proxy and agent.
func (ps *promServer) waitTargets(t *testing.T) {
	t.Helper()
	eventually(t, 60*time.Second, "prometheus scrapes every node proxy and agent", func() error {
		var data struct {
			ActiveTargets []struct {
				ScrapeURL string `json:"scrapeUrl"`
				Health    string `json:"health"`
				LastError string `json:"lastError"`
			} `json:"activeTargets"`
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := ps.get(ctx, "/api/v1/targets", &data); err != nil {
			return err
		}
		var bad []string
		for _, tg := range data.ActiveTargets {
			if tg.Health != "up" {
				bad = append(bad, fmt.Sprintf("%s %s %s", tg.ScrapeURL, tg.Health, tg.LastError))
			}
		}
		if len(data.ActiveTargets) != ps.targets || len(bad) > 0 {
			return fmt.Errorf("%d targets, want %d up; not up: %v", len(data.ActiveTargets), ps.targets, bad)
		}
		return nil
	})
}

// checkQuery runs an instant query: its result must not be empty, and
// when its series carry a verdict, both allowed and denied must be there.
func (ps *promServer) checkQuery(ctx context.Context, expr string) error {
	var data struct {
		ResultType string          `json:"resultType"`
		Result     json.RawMessage `json:"result"`
	}
	if err := ps.get(ctx, "/api/v1/query?query="+url.QueryEscape(expr), &data); err != nil {
		return err
	}
	if data.ResultType != "vector" {
		return fmt.Errorf("result type %s, want vector", data.ResultType)
	}
	var series []struct {
		Metric map[string]string `json:"metric"`
	}
	if err := json.Unmarshal(data.Result, &series); err != nil {
		return err
	}
	if len(series) == 0 {
		return errors.New("empty result")
	}
	verdicts := map[string]bool{}
	for _, s := range series {
		if v, ok := s.Metric["verdict"]; ok {
			verdicts[v] = true
		}
	}
	if len(verdicts) > 0 && (!verdicts["allowed"] || !verdicts["denied"]) {
		return fmt.Errorf("verdicts %v, want allowed and denied", slices.Sorted(maps.Keys(verdicts)))
	}
	return nil
}
