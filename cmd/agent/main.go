// Command palisade-agent is Palisade's per-node enrollment agent. It watches
// the cluster, installs redirect rules inside the network namespace of every
// enrolled pod on its node, and hands those pods to the node proxy.
//
// "palisade-agent cni" is the chained CNI plugin entry point a container
// runtime invokes for new pods.
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/palisade-net/palisade/internal/cli"
	"github.com/palisade-net/palisade/pkg/agent"
	"github.com/palisade-net/palisade/pkg/cluster"
	"github.com/palisade-net/palisade/pkg/cni"
	"github.com/palisade-net/palisade/pkg/handoff"
	"github.com/palisade-net/palisade/pkg/redirect"
)

const usage = `palisade-agent: Palisade's per-node enrollment agent.

It enrolls the pods on this node whose namespace is labelled
palisade.dev/mtls=enabled (or io.cilium/mtls-enabled=true), unless the pod
opts out with palisade.dev/mtls=disabled: it installs redirect rules inside
each pod's network namespace and hands the pod to the node proxy over
--proxy-socket. New pods arrive through the chained CNI plugin
("palisade-agent cni", talking to --cni-socket); pods already running are found
by scanning network namespaces.

Standalone mode: the cluster view comes from YAML files (--cluster), watched
for changes. Every flag can also be set by environment: PALISADE_<FLAG> with
dashes as underscores.

Kubernetes mode (--kubeconfig, or in a pod without --cluster): the cluster
view comes from the API server through shared informers; the agent annotates
the pods of its node with their enrollment state (palisade.dev/enrollment:
enrolled, pending: <why>, failed: <why>), and one agent, chosen by leader
election on a Lease (--leader-election-namespace), writes the Accepted
condition of every L7Policy and ClusterL7Policy.

SPIRE registration entries: with --spire-entries manage the agent keeps one
SPIRE entry per service account enrolled on this node (spiffe ID
spiffe://<trust-domain>/ns/<ns>/sa/<sa>, parent --spire-node-id, selectors
k8s:ns:<ns> and k8s:sa:<sa>, hint "palisade") through the SPIRE server API on
--spire-server-socket. It only ever changes or deletes entries with that
parent and hint; an equal entry managed by someone else is left alone. Use
--spire-entries off (the default) when spire-controller-manager or an
operator registers workloads.

eBPF datapath (--ebpf auto|on|off, default auto): tc programs on the host
side of each enrolled pod's veth mark enrolled traffic, drop TCP between
enrolled pods that is not HBONE (even if the pod flushed its redirect rules)
and plaintext connection attempts into strict pods, and count every packet.
They are pinned under --bpffs (a directory on the host's bpffs, which the
agent does not mount), so they keep guarding and counting across agent
restarts. auto runs iptables-only, saying so once, where the host cannot load
them (no CAP_BPF, no bpffs, an old kernel); on makes that fatal. Drops are
logged and kept for GET /debug/drops on --cni-socket.

Metrics (--metrics-addr, GET /metrics): palisade_pods{state},
palisade_reconciles_total, palisade_reconcile_errors_total{stage},
palisade_datapath_mode, and with the eBPF datapath palisade_ebpf_packets_total and palisade_ebpf_bytes_total
{pod, direction, verdict, reason}, palisade_ebpf_drop_events_lost_total,
palisade_ebpf_counters_full_total and palisade_ebpf_endpoints.

Usage:
  palisade-agent [flags]      run the agent
  palisade-agent cni          CNI plugin (invoked by the container runtime)

Flags:
`

func main() {
	if len(os.Args) > 1 && os.Args[1] == "cni" {
		cni.Main()
		return
	}
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "palisade-agent:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := cli.NewFlagSet("palisade-agent", usage)
	var (
		common      cli.Common
		proxySocket = fs.String("proxy-socket", "/var/run/palisade/proxy.sock", "socket the node proxy connects to")
		cniSocket   = fs.String("cni-socket", "/var/run/palisade/cni.sock", "socket the CNI plugin talks to")
		netnsDir    = fs.String("netns-dir", "/var/run/netns", "directory of named network namespaces to scan")
		cniWait     = fs.Duration("cni-wait", 10*time.Second, "how long a CNI ADD waits for its pod to appear in the cluster view")
		workers     = fs.Int("enroll-workers", agent.DefaultEnrollWorkers, "pods enrolled at once: their hand-offs, redirect rules and datapath attachments overlap (0 or less: the default)")
		spireFlags  spireFlags
		kube        kubeFlags
		dpFlags     datapathFlags
	)
	spireFlags.register(fs)
	kube.register(fs)
	dpFlags.register(fs)
	if ok, err := common.Parse(fs, args, "PALISADE_"); !ok {
		return err
	}
	spire, err := spireFlags.validate()
	if err != nil {
		return err
	}
	if err := dpFlags.validate(); err != nil {
		return err
	}
	log := common.Logging.Logger(os.Stderr, "agent")
	node, clusterPaths := &common.Node, common.ClusterPaths
	ctx, stop := cli.SignalContext()
	defer stop()

	onEnrolled, stopSPIRE, err := startSPIRE(ctx, spire, log)
	if err != nil {
		return err
	}
	defer stopSPIRE()

	// Hold snapshots back until the first reconcile has re-discovered every
	// enrolled pod: a node proxy drops whatever its snapshot lacks, so an
	// agent restarting must never send it an incomplete one.
	hs := handoff.NewServer(handoff.ServerOptions{Logger: log, WaitForSync: true})
	if err := hs.Start(*proxySocket); err != nil {
		return err
	}
	defer hs.Close()

	var ks *kubeStatus
	if len(clusterPaths) == 0 {
		if ks, err = newKubeStatus(common.Kubeconfig, *node, kube, log); err != nil {
			return err
		}
		ks.start(ctx)
	}

	// The eBPF datapath, if any: its pinned programs keep guarding while
	// the agent is down; Close leaves them in place.
	dp, err := openDatapath(dpFlags, *node, hs, log)
	if err != nil {
		return err
	}
	if dp != nil {
		defer dp.Close()
		runDatapath(ctx, dp, log)
	}
	reg, err := newRegistry(dp)
	if err != nil {
		return err
	}
	ms, err := serveMetrics(dpFlags.metricsAddr, reg, log)
	if err != nil {
		return err
	}
	if ms != nil {
		defer ms.Close()
	}

	a := agent.New(agent.Config{
		Node:          *node,
		Proxy:         hs,
		Rules:         agent.RedirectRules{Config: redirect.DefaultConfig()},
		Finder:        &agent.Finder{NetnsDir: *netnsDir, Logger: log},
		Datapath:      agentDatapath(dp),
		Logger:        log,
		CNIWait:       *cniWait,
		EnrollWorkers: *workers,
		Metrics:       agent.NewMetrics(reg),

		OnEnrolled:  onEnrolled,
		OnPodStatus: ks.onPodStatus(),
	})
	cs := cni.NewServer(cniHandler{a}, cni.ServerOptions{Logger: log, Debug: debugHandler(dp)})
	if err := cs.Start(*cniSocket); err != nil {
		return err
	}
	defer cs.Close()

	src, srcDesc, err := cluster.NewSource(clusterPaths, common.Kubeconfig, log)
	if err != nil {
		return err
	}
	log.Info("cluster view", "source", srcDesc)
	srcErr := make(chan error, 1)
	go func() { srcErr <- src.Run(ctx, ks.onSnapshot(a.OnSnapshot)) }()

	dpMode := modeIptablesOnly
	if dp != nil {
		dpMode = modeEBPF
	}
	log.Info("starting", "node", *node, "cluster", clusterPaths.String(), "proxy_socket", *proxySocket, "cni_socket", *cniSocket, "spire_entries", spireFlags.entries, "datapath", dpMode)
	runErr := make(chan error, 1)
	go func() {
		runErr <- a.Run(ctx, func() {
			hs.MarkSynced()
			cs.SetReady(true)
			log.Info("ready")
		})
	}()
	select {
	case err := <-srcErr:
		if err != nil {
			stop()
			<-runErr
			return fmt.Errorf("cluster source: %w", err)
		}
		return <-runErr
	case err := <-runErr:
		return err
	}
}

// cniHandler adapts the agent to the CNI server's handler.
type cniHandler struct{ a *agent.Agent }

func (h cniHandler) PodAdded(ctx context.Context, ev cni.PodEvent) error {
	return h.a.PodAdded(ctx, agent.PodEvent{Namespace: ev.Namespace, Name: ev.Name, UID: ev.UID, Netns: ev.Netns, IPs: ev.IPs})
}

func (h cniHandler) PodDeleted(ctx context.Context, ev cni.PodEvent) error {
	return h.a.PodDeleted(ctx, agent.PodEvent{Namespace: ev.Namespace, Name: ev.Name, UID: ev.UID, Netns: ev.Netns, IPs: ev.IPs})
}
