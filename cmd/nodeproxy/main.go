// Command palisade-nodeproxy is Palisade's per-node proxy. It receives
// enrolled pods from the agent on the same node, listens inside each pod's
// network namespace, and carries the pods' traffic in HBONE mutual-TLS
// tunnels between nodes.
package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/palisade-net/palisade/internal/cli"
	"github.com/palisade-net/palisade/pkg/cluster"
	"github.com/palisade-net/palisade/pkg/flowlog"
	"github.com/palisade-net/palisade/pkg/handoff"
	"github.com/palisade-net/palisade/pkg/identity"
	"github.com/palisade-net/palisade/pkg/memtrim"
	"github.com/palisade-net/palisade/pkg/nodeproxy"
)

const usage = `palisade-nodeproxy: Palisade's node proxy.

It connects to the agent on this node (--agent-socket), receives each enrolled
pod's network namespace, opens listeners inside it (15001 outbound, 15006
inbound plaintext, 15008 inbound HBONE) and tunnels traffic between enrolled
pods over mutual TLS 1.3 with SPIFFE identities.

Standalone mode (no Kubernetes): the cluster view comes from YAML files
(--cluster).

Identities (--identity):
  dev    the embedded development CA (--dev-ca-dir), the default;
  spire  the SPIRE agent on this node: workload SVIDs through its admin socket
         (Delegated Identity API, --spire-admin-socket; the agent must list this
         proxy's SPIFFE ID in authorized_delegates), the proxy's own SVID
         through the Workload API (--spire-workload-socket).

Every flag can also be set by environment: PALISADE_<FLAG> with dashes as
underscores (for example PALISADE_TRUST_DOMAIN).

Endpoints in the node's namespace: admin (--admin-addr, localhost only),
metrics (--metrics-addr, /metrics), readiness (--ready-addr, /healthz/ready).

Flags:
`

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "palisade-nodeproxy:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := cli.NewFlagSet("palisade-nodeproxy", usage)
	var (
		common       cli.Common
		agentSocket  = fs.String("agent-socket", "/var/run/palisade/proxy.sock", "the agent's handoff socket")
		idMode       = fs.String("identity", "dev", "identity source: dev (development CA) or spire")
		devCADir     = fs.String("dev-ca-dir", "/var/lib/palisade/dev-ca", "directory of the development CA (created if missing)")
		spireAdmin   = fs.String("spire-admin-socket", "/run/spire/admin/admin.sock", "SPIRE agent admin socket (Delegated Identity API), with --identity spire")
		spireWL      = fs.String("spire-workload-socket", "/run/spire/agent/public/api.sock", "SPIRE agent Workload API socket for the proxy's own SVID, with --identity spire (empty: skip)")
		trustDomain  = fs.String("trust-domain", "cluster.local", "SPIFFE trust domain")
		svidTTL      = fs.Duration("svid-ttl", time.Hour, "lifetime of SVIDs issued by the development CA")
		adminAddr    = fs.String("admin-addr", "127.0.0.1:15000", "admin API address (keep it on localhost)")
		metricsAddr  = fs.String("metrics-addr", ":15020", "Prometheus metrics address")
		readyAddr    = fs.String("ready-addr", ":15021", "readiness address")
		drainTimeout = fs.Duration("drain-timeout", 25*time.Second, "how long connections may finish after SIGTERM")
		flowLog      = fs.String("flow-log", "/var/log/palisade/flows.jsonl", "flow log file: JSON lines of the connections and requests FlowLog objects select (empty: no file)")
		flowLogMB    = fs.Int64("flow-log-max-mb", 100, "size cap of each flow log file in MiB; the file is rotated when a record would pass it")
		flowLogFiles = fs.Int("flow-log-max-files", 5, "flow log files kept, the current one included (at most max-mb × max-files on disk)")
		memTrim      = fs.Duration("memory-trim-interval", memtrim.DefaultInterval, "how often to check whether the proxy is idle and holds memory a load peak left behind, which it then returns to the OS (0: never)")
		telemetry    = fs.String("telemetry", "on", "on: flow records and per-connection/per-request metrics; off: neither (to measure their cost)")
	)
	if ok, err := common.Parse(fs, args, "PALISADE_"); !ok {
		return err
	}
	log := common.Logging.Logger(os.Stderr, "nodeproxy")
	node, clusterPaths := &common.Node, common.ClusterPaths
	td, err := spiffeid.TrustDomainFromString(*trustDomain)
	if err != nil {
		return fmt.Errorf("--trust-domain: %w", err)
	}
	var ids interface {
		identity.Provider
		Close() error
	}
	switch *idMode {
	case "dev":
		ca, err := identity.LoadOrCreateDevCA(*devCADir, td)
		if err != nil {
			return err
		}
		ids = identity.NewDevProvider(ca, *svidTTL, log)
		log.Info("starting", "node", *node, "identity", "development CA", "ca_dir", *devCADir, "trust_domain", td.String())
	case "spire":
		if *spireAdmin == "" {
			return fmt.Errorf("--spire-admin-socket: required with --identity spire")
		}
		sp, err := identity.NewSPIREProvider(identity.SPIREConfig{
			AdminSocket: *spireAdmin, WorkloadSocket: *spireWL, TrustDomain: td, Logger: log,
		})
		if err != nil {
			return err
		}
		ids = sp
		log.Info("starting", "node", *node, "identity", "SPIRE", "admin_socket", *spireAdmin, "workload_socket", *spireWL, "trust_domain", td.String())
	default:
		return fmt.Errorf("--identity: %q is neither dev nor spire", *idMode)
	}
	defer ids.Close()

	ctx, stop := cli.SignalContext()
	defer stop()

	if *telemetry != "on" && *telemetry != "off" {
		return fmt.Errorf("--telemetry: %q is neither on nor off", *telemetry)
	}
	reg := prometheus.NewRegistry()
	recMetrics := flowlog.NewMetrics(reg)
	var file *flowlog.File
	if *flowLog != "" && *telemetry == "on" {
		if *flowLogMB < 1 || *flowLogFiles < 1 {
			return fmt.Errorf("--flow-log-max-mb and --flow-log-max-files must be at least 1")
		}
		file, err = flowlog.OpenFile(flowlog.FileConfig{
			Path: *flowLog, MaxBytes: *flowLogMB << 20, MaxFiles: *flowLogFiles,
		}, recMetrics, log)
		if err != nil {
			return err
		}
		log.Info("flow log", "path", *flowLog, "max_mb", *flowLogMB, "max_files", *flowLogFiles)
	}
	records := flowlog.NewPipeline(flowlog.NewHub(2000, recMetrics), file)
	defer records.Close()

	proxy, err := nodeproxy.New(nodeproxy.Config{
		Node:             *node,
		TrustDomain:      td,
		Identities:       ids,
		Logger:           log,
		Registry:         reg,
		Records:          records,
		DisableTelemetry: *telemetry == "off",
	})
	if err != nil {
		return err
	}

	servers := []*http.Server{}
	for _, s := range []struct {
		addr string
		h    http.Handler
	}{
		{*adminAddr, proxy.AdminHandler(&common.Logging.Level)},
		{*metricsAddr, proxy.MetricsHandler()},
		{*readyAddr, proxy.ReadyHandler()},
	} {
		ln, err := net.Listen("tcp", s.addr)
		if err != nil {
			return fmt.Errorf("listen %s: %w", s.addr, err)
		}
		srv := &http.Server{Handler: s.h, ReadHeaderTimeout: 5 * time.Second}
		servers = append(servers, srv)
		go srv.Serve(ln)
	}

	src, srcDesc, err := cluster.NewSource(clusterPaths, common.Kubeconfig, log)
	if err != nil {
		return err
	}
	log.Info("cluster view", "source", srcDesc)
	srcErr := make(chan error, 1)
	go func() { srcErr <- src.Run(ctx, proxy.UpdateCluster) }()

	if *memTrim > 0 {
		go func() {
			if err := memtrim.New(memtrim.Config{Interval: *memTrim, Logger: log}).Run(ctx); err != nil {
				log.Warn("memory trimmer stopped", "error", err)
			}
		}()
	}

	client := &handoff.Client{Logger: log}
	go func() {
		if err := client.Run(ctx, *agentSocket, proxy); err != nil && ctx.Err() == nil {
			log.Error("agent connection ended", "error", err)
			stop()
		}
	}()

	select {
	case <-ctx.Done():
	case err := <-srcErr:
		if err != nil {
			return fmt.Errorf("cluster source: %w", err)
		}
		<-ctx.Done()
	}
	log.Info("draining", "timeout", drainTimeout.String())
	dctx, cancel := context.WithTimeout(context.Background(), *drainTimeout)
	defer cancel()
	proxy.Shutdown(dctx)
	for _, s := range servers {
		s.Close()
	}
	log.Info("stopped")
	return nil
}
