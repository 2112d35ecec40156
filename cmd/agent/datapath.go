package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/cilium/ebpf/rlimit"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/palisade-net/palisade/pkg/agent"
	"github.com/palisade-net/palisade/pkg/agent/ebpf"
	"github.com/palisade-net/palisade/pkg/datapath"
)

// The --ebpf modes.
const (
	ebpfAuto = "auto"
	ebpfOn   = "on"
	ebpfOff  = "off"
)

// Values of the mode label of palisade_datapath_mode.
const (
	modeEBPF         = "ebpf"
	modeIptablesOnly = "iptables-only"
)

// DefaultMetricsAddr is the agent's Prometheus address: next to the node
// proxy's 15020 (metrics) and 15021 (readiness).
const DefaultMetricsAddr = ":15022"

// datapathFlags are the agent's eBPF and metrics settings.
type datapathFlags struct {
	mode        string
	pinDir      string
	metricsAddr string
}

func (f *datapathFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.mode, "ebpf", ebpfAuto, "eBPF datapath (guard and counters on the host side of each enrolled pod's veth): "+
		"auto uses it when this host can run it and otherwise runs iptables-only, saying so once; on fails without it; off never loads it")
	fs.StringVar(&f.pinDir, "bpffs", ebpf.DefaultPinDir, "directory on a bpffs mount where the eBPF datapath is pinned, so that its enforcement "+
		"and counters outlive agent restarts (created if missing; the agent does not mount bpffs: mount the host's /sys/fs/bpf)")
	fs.StringVar(&f.metricsAddr, "metrics-addr", DefaultMetricsAddr, "Prometheus metrics address (GET /metrics); empty disables it")
}

func (f *datapathFlags) validate() error {
	switch f.mode {
	case ebpfAuto, ebpfOn, ebpfOff:
	default:
		return fmt.Errorf("--ebpf %q: want auto, on or off", f.mode)
	}
	if f.mode != ebpfOff && f.pinDir == "" {
		return errors.New("--bpffs: must not be empty with --ebpf auto or on")
	}
	return nil
}

// openDatapath loads the eBPF datapath as --ebpf says. A nil Manager and
// no error mean iptables-only.
func openDatapath(f datapathFlags, node string, drops ebpf.DropReporter, log *slog.Logger) (*ebpf.Manager, error) {
	if f.mode == ebpfOff {
		log.Info("eBPF datapath off (--ebpf off): enforcement is iptables-only")
		// Programs an earlier agent pinned would go on guarding with an
		// endpoint map nobody updates.
		if f.pinDir != "" {
			if _, err := ebpf.Remove(f.pinDir, log); err != nil {
				log.Error("could not remove the eBPF datapath an earlier agent left; its programs may drop traffic between pods it knew as enrolled", "error", err, "bpffs", f.pinDir)
			}
		}
		return nil, nil
	}
	// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; later ones
	// ignore it.
	if err := rlimit.RemoveMemlock(); err != nil {
		log.Warn("could not lift RLIMIT_MEMLOCK; loading the eBPF datapath may fail on kernels before 5.11", "error", err)
	}
	m, err := ebpf.Open(ebpf.Options{Node: node, PinDir: f.pinDir, RequireVeth: f.mode == ebpfOn, Drops: drops, Logger: log})
	switch {
	case err == nil:
		log.Info("eBPF datapath loaded", "bpffs", f.pinDir)
		return m, nil
	case f.mode == ebpfOn:
		return nil, fmt.Errorf("--ebpf on: %w", err)
	case errors.Is(err, datapath.ErrUnavailable):
		log.Warn("eBPF datapath unavailable on this host; enforcement is iptables-only (--ebpf on makes this fatal)", "reason", err, "bpffs", f.pinDir)
	default:
		log.Error("eBPF datapath failed to load; enforcement is iptables-only (--ebpf on makes this fatal)", "error", err, "bpffs", f.pinDir)
	}
	return nil, nil
}

// agentDatapath is m as Config.Datapath: a nil interface without it.
func agentDatapath(m *ebpf.Manager) agent.Datapath {
	if m == nil {
		return nil
	}
	return m
}

// newRegistry holds the agent's metrics: the datapath's counters and
// palisade_datapath_mode.
func newRegistry(m *ebpf.Manager) (*prometheus.Registry, error) {
	reg := prometheus.NewRegistry()
	mode := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "palisade_datapath_mode",
		Help: "How this agent enforces: 1 for the mode in use (ebpf: eBPF guard and redirect rules; iptables-only: redirect rules alone), 0 for the other.",
	}, []string{"mode"})
	if err := reg.Register(mode); err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	if m != nil {
		mode.WithLabelValues(modeEBPF).Set(1)
		mode.WithLabelValues(modeIptablesOnly).Set(0)
		if err := reg.Register(m); err != nil {
			return nil, fmt.Errorf("metrics: %w", err)
		}
	} else {
		mode.WithLabelValues(modeEBPF).Set(0)
		mode.WithLabelValues(modeIptablesOnly).Set(1)
	}
	return reg, nil
}

// serveMetrics serves GET /metrics on addr until Close; "" serves nothing.
func serveMetrics(addr string, reg *prometheus.Registry, log *slog.Logger) (*http.Server, error) {
	if addr == "" {
		return nil, nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics-addr: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server", "error", err)
		}
	}()
	log.Info("serving metrics", "addr", ln.Addr().String())
	return srv, nil
}

// debugHandler serves the CNI socket's /debug/ paths: /debug/drops, the
// datapath's newest drops.
func debugHandler(m *ebpf.Manager) http.Handler {
	mux := http.NewServeMux()
	if m != nil {
		mux.Handle("/debug/drops", m.DropsHandler())
	} else {
		mux.HandleFunc("/debug/drops", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusNotFound)
			fmt.Fprintln(w, `{"error":"the eBPF datapath is not running (iptables-only): no drops to report"}`)
		})
	}
	return mux
}

// runDatapath reads drop events until ctx ends.
func runDatapath(ctx context.Context, m *ebpf.Manager, log *slog.Logger) {
	if m == nil {
		return
	}
	go func() {
		if err := m.Run(ctx); err != nil {
			log.Error("eBPF drop events", "error", err)
		}
	}()
}
