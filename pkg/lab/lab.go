package lab

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/palisade-net/palisade/pkg/cluster"
	"github.com/palisade-net/palisade/pkg/workload"
)

// Defaults.
const (
	DefaultName         = "lab"
	DefaultStateDir     = "/run/palisade-lab"
	DefaultReadyTimeout = 60 * time.Second
	// AgentBinary and NodeProxyBinary are looked up in the bin dir.
	AgentBinary     = "palisade-agent"
	NodeProxyBinary = "palisade-nodeproxy"
	// LabBinVar is the placeholder "$(LAB_BIN)" that pod commands, args and
	// env values may use for the lab's own executable (which has the
	// serve-http and serve-echo subcommands).
	LabBinVar = "LAB_BIN"
	// NodeProxyReadyURL is polled inside the node netns.
	NodeProxyReadyURL = "http://127.0.0.1:15021/healthz/ready"
	// AgentReadyPath is requested over the agent's CNI socket.
	AgentReadyPath = "/readyz"
)

// Config describes a lab to build.
type Config struct {
	// Name prefixes every netns of the lab and names its state directory
	// (default "lab"). Two labs with different names can run side by side.
	Name string
	// StateDir holds <Name>/: lab.json, the cluster state, logs, sockets and
	// the development CA (default /run/palisade-lab).
	StateDir string
	// BinDir holds palisade-agent and palisade-nodeproxy (default: the
	// directory of the running executable).
	BinDir string
	// LabBin replaces $(LAB_BIN) in pod commands (default: the running
	// executable).
	LabBin string
	// Files are YAML files or directories of them; Objects are added to
	// what they hold.
	Files   []string
	Objects *cluster.Snapshot
	// NoPalisade builds the cluster without starting agents and node
	// proxies and without calling the CNI plugin.
	NoPalisade bool
	// TrustDomain is passed to the node proxies (default cluster.local),
	// and is the SPIRE server's trust domain.
	TrustDomain string
	// Identity is where the node proxies get their SVIDs: IdentityDev (the
	// default) from the development CA in CADir, IdentitySPIRE from SPIRE.
	// With IdentitySPIRE the lab runs a SPIRE server and one SPIRE agent per
	// node (also with NoPalisade), in the underlay netns, before it starts
	// the agents and node proxies.
	Identity string
	// SPIREBinDir holds spire-server and spire-agent (default: BinDir if
	// they are there, else $PALISADE_TEST_BIN, else $PATH; "make spire"
	// builds them into .cache/test-bin). Ignored without IdentitySPIRE.
	SPIREBinDir string
	// SPIRESVIDTTL is passed to the Palisade agents as --spire-svid-ttl
	// (0: their default). Needs IdentitySPIRE.
	SPIRESVIDTTL time.Duration
	// SPIREEntries says who creates the pods' SPIRE workload entries:
	// SPIREEntriesManage (the default: the Palisade agents) or
	// SPIREEntriesOff (whoever uses the lab, see Lab.SPIREServer). Needs
	// IdentitySPIRE.
	SPIREEntries string
	// Kube runs a real etcd and kube-apiserver (also with NoPalisade), in
	// the underlay netns: the lab applies the CRDs (KubeCRDs and stand-ins
	// for Cilium's policy CRDs), creates the objects through the API
	// (Namespaces, ServiceAccounts, Services with the lab's cluster IPs,
	// every other kind by server-side apply), registers the nodes and plays
	// kubelet for the pods (the pod object, then its network and CNI ADD,
	// its status with IPs, its processes, Running and Ready). The agents
	// and node proxies then follow the API server (--kubeconfig) instead of
	// the cluster state files. LabBin serves the forwarder to the API
	// server in the root netns (its hidden subcommand ForwardCommand). See
	// Lab.Kubeconfig.
	Kube bool
	// KubeBinDir holds kube-apiserver and etcd (default: BinDir if they are
	// there, else $PALISADE_TEST_BIN, else $PATH; "make kube" builds them
	// and kubectl into .cache/test-bin); kubectl is looked up there, then
	// in $PATH.
	// Needs Kube.
	KubeBinDir string
	// KubeCRDs are CRD manifests (YAML files or directories of them)
	// applied before the objects (default: the repository's manifests/crds
	// next to BinDir or above the working directory, if there). Needs Kube.
	KubeCRDs []string
	// EBPF runs the agents with the eBPF datapath (--ebpf on): the lab
	// mounts a bpffs of its own for each node on <state>/nodes/<node>/bpffs
	// (NodeInfo.BPFFS), passed as --bpffs, and unmounts it at teardown.
	// Without it the agents run iptables-only (--ebpf off).
	EBPF bool
	// AgentArgs and NodeProxyArgs are appended to their command lines.
	AgentArgs     []string
	NodeProxyArgs []string
	// ReadyTimeout bounds each wait for an agent, node proxy or pod to
	// become ready (default 60s).
	ReadyTimeout time.Duration
	// Retain keeps whatever was built when Up fails, for inspection; tear
	// it down with Load(...).Down or Destroy. By default Up cleans up.
	Retain bool
	// Logger receives progress; nil discards it.
	Logger *slog.Logger
}

// Lab is a running lab. Its methods are safe for concurrent use.
type Lab struct {
	mu           sync.Mutex
	st           *state
	objs         *cluster.Snapshot
	sys          *system
	procs        *children
	log          *slog.Logger
	readyTimeout time.Duration
	// kc are the API clients of a Kube lab, made on first use.
	kc *kubeClients
}

// ErrExists is returned by Up when a lab of that name exists already.
var ErrExists = errors.New("lab exists")

func requireRoot() error {
	if os.Geteuid() != 0 {
		return errors.New("the lab needs root (it creates network namespaces)")
	}
	return nil
}

func selfExe() (string, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("find own executable: %w", err)
	}
	if r, err := filepath.EvalSymlinks(exe); err == nil {
		exe = r
	}
	return exe, nil
}

// LoadObjects reads YAML files or directories (as the agent does) and adds
// extra; either may be empty.
func LoadObjects(files []string, extra *cluster.Snapshot) (*cluster.Snapshot, error) {
	out := cluster.NewSnapshot()
	if len(files) > 0 {
		s, err := cluster.Load(files...)
		if err != nil {
			return nil, fmt.Errorf("read objects: %w", err)
		}
		out = s
	}
	if extra != nil {
		for k, v := range extra.Namespaces {
			out.Namespaces[k] = v
		}
		out.Pods = append(out.Pods, extra.Pods...)
		out.Services = append(out.Services, extra.Services...)
		out.Other = append(out.Other, extra.Other...)
	}
	out.Sort()
	return out, nil
}

// Decode parses Kubernetes YAML (documents separated by "---").
func Decode(yamlText string) (*cluster.Snapshot, error) {
	s := cluster.NewSnapshot()
	if err := s.Decode("<objects>", strings.NewReader(yamlText)); err != nil {
		return nil, err
	}
	s.Sort()
	return s, nil
}

// Up builds a lab and returns once every agent, node proxy and pod (and,
// with IdentitySPIRE, the SPIRE server and every SPIRE agent; with Kube,
// etcd and the API server) is ready.
// On failure everything built is torn down again, unless cfg.Retain.
func Up(ctx context.Context, cfg Config) (*Lab, error) {
	if cfg.Name == "" {
		cfg.Name = DefaultName
	}
	if cfg.StateDir == "" {
		cfg.StateDir = DefaultStateDir
	}
	if cfg.TrustDomain == "" {
		cfg.TrustDomain = workload.DefaultTrustDomain
	}
	if cfg.ReadyTimeout <= 0 {
		cfg.ReadyTimeout = DefaultReadyTimeout
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := ValidateName(cfg.Name); err != nil {
		return nil, err
	}
	stateRoot, err := filepath.Abs(cfg.StateDir)
	if err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	exe, err := selfExe()
	if err != nil {
		return nil, err
	}
	if cfg.BinDir == "" {
		cfg.BinDir = filepath.Dir(exe)
	}
	if cfg.BinDir, err = filepath.Abs(cfg.BinDir); err != nil {
		return nil, fmt.Errorf("bin dir: %w", err)
	}
	if cfg.LabBin == "" {
		cfg.LabBin = exe
	}
	raw, err := LoadObjects(cfg.Files, cfg.Objects)
	if err != nil {
		return nil, err
	}
	objs, err := normalize(raw)
	if err != nil {
		return nil, fmt.Errorf("lab %s: %w", cfg.Name, err)
	}
	if len(objs.Pods) == 0 {
		return nil, fmt.Errorf("lab %s: no pods: the lab's nodes are the distinct spec.nodeName values of the pods", cfg.Name)
	}
	if !cfg.NoPalisade {
		for _, b := range []string{AgentBinary, NodeProxyBinary} {
			p := filepath.Join(cfg.BinDir, b)
			if st, err := os.Stat(p); err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
				return nil, fmt.Errorf("lab %s: %s is not an executable (build it, pass --bin-dir, or use --no-palisade)", cfg.Name, p)
			}
		}
	}
	st := &state{
		Version: stateVersion, Name: cfg.Name, StateRoot: stateRoot,
		BinDir: cfg.BinDir, LabBin: cfg.LabBin, NoPalisade: cfg.NoPalisade,
		TrustDomain: cfg.TrustDomain, AgentArgs: cfg.AgentArgs, NodeProxyArgs: cfg.NodeProxyArgs, EBPF: cfg.EBPF,
		Underlay: cfg.Name + "-underlay",
	}
	if err := configureSPIRE(cfg, st); err != nil {
		return nil, fmt.Errorf("lab %s: %w", cfg.Name, err)
	}
	if err := configureKube(cfg, st); err != nil {
		return nil, fmt.Errorf("lab %s: %w", cfg.Name, err)
	}
	if err := st.allocate(objs); err != nil {
		return nil, fmt.Errorf("lab %s: %w", cfg.Name, err)
	}
	var sockets []string
	for _, n := range st.Nodes {
		sockets = append(sockets, st.agentSocket(n.Name), st.proxySocket(n.Name))
	}
	if st.spire() {
		sockets = append(sockets, st.spireSockets()...)
	}
	for _, p := range sockets {
		if len(p) > 107 {
			return nil, fmt.Errorf("lab %s: socket path %s is longer than 107 bytes; use a shorter --state-dir", cfg.Name, p)
		}
	}
	if err := requireRoot(); err != nil {
		return nil, err
	}
	sys, err := newSystem()
	if err != nil {
		return nil, err
	}
	if err := checkFree(st); err != nil {
		return nil, err
	}
	l := &Lab{st: st, objs: objs, sys: sys, procs: &children{}, log: log.With("lab", cfg.Name), readyTimeout: cfg.ReadyTimeout}
	l.mu.Lock()
	err = l.up(ctx)
	l.mu.Unlock()
	if err == nil {
		return l, nil
	}
	if cfg.Retain {
		return nil, fmt.Errorf("lab %s: %w (kept for inspection; tear it down with: lab down --name %s --state-dir %s)", cfg.Name, err, cfg.Name, stateRoot)
	}
	l.log.Warn("up failed; tearing down", "error", err)
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
	defer cancel()
	if derr := l.Down(dctx); derr != nil {
		return nil, fmt.Errorf("lab %s: %w (cleanup also failed: %v)", cfg.Name, err, derr)
	}
	return nil, fmt.Errorf("lab %s: %w", cfg.Name, err)
}

// checkFree refuses to build over an existing lab or foreign namespaces.
func checkFree(st *state) error {
	if _, err := os.Stat(st.file()); err == nil {
		return fmt.Errorf("%w: %s exists; run: lab down --name %s --state-dir %s", ErrExists, st.file(), st.Name, st.StateRoot)
	}
	all, err := listNetns()
	if err != nil {
		return err
	}
	var clash []string
	for _, n := range all {
		if strings.HasPrefix(n, st.Name+"-") {
			clash = append(clash, n)
		}
	}
	if len(clash) > 0 {
		return fmt.Errorf("%w: network namespaces %s exist; run: lab down --name %s", ErrExists, strings.Join(clash, ", "), st.Name)
	}
	return nil
}

// up builds everything; l.mu is held.
func (l *Lab) up(ctx context.Context) error {
	st := l.st
	for _, d := range []string{st.dir(), st.clusterDir(), st.podLogDir()} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("state dir: %w", err)
		}
	}
	if err := os.MkdirAll(st.caDir(), 0o700); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	st.addNetns(st.Underlay)
	if err := st.save(); err != nil {
		return err
	}
	l.log.Info("creating underlay", "netns", st.Underlay)
	if err := l.sys.setupUnderlay(ctx, st.Underlay); err != nil {
		return err
	}
	for _, n := range st.Nodes {
		if err := l.createNode(ctx, n); err != nil {
			return err
		}
	}
	if err := syncRoutes(st.Nodes); err != nil {
		return err
	}
	if err := st.writeClusterState(l.objs); err != nil {
		return err
	}
	if st.spire() {
		if err := l.startSPIRE(ctx); err != nil {
			return err
		}
	}
	if st.kube() {
		if err := l.startKube(ctx); err != nil {
			return err
		}
		if err := l.applyKubeCRDs(ctx); err != nil {
			return err
		}
		if err := l.kubeRegisterNodes(ctx, st.Nodes); err != nil {
			return err
		}
		if err := l.kubeApplyObjects(ctx, nil, l.objs); err != nil {
			return err
		}
	}
	if !st.NoPalisade {
		for _, n := range st.Nodes {
			if err := l.startPalisade(ctx, n); err != nil {
				return err
			}
		}
	}
	var pods []*podState
	for _, p := range st.Pods {
		if p.Phase == "" {
			pods = append(pods, p)
		}
	}
	if err := l.createPods(ctx, pods); err != nil {
		return err
	}
	l.log.Info("lab is up", "nodes", len(st.Nodes), "pods", len(st.Pods), "services", len(st.Services), "state", st.dir())
	return st.save()
}

// createNode builds one node's netns and network; l.mu is held.
func (l *Lab) createNode(ctx context.Context, n *nodeState) error {
	st := l.st
	st.addNetns(n.Netns)
	if err := os.MkdirAll(st.nodeDir(n.Name), 0o755); err != nil {
		return fmt.Errorf("node %s: %w", n.Name, err)
	}
	if err := st.save(); err != nil {
		return err
	}
	if st.EBPF && !st.NoPalisade {
		// Before the agent starts: "ip netns exec" copies the mounts into
		// the agent's mount namespace when it starts.
		if err := mountBPFFS(st.bpffsDir(n.Name)); err != nil {
			return fmt.Errorf("node %s: %w", n.Name, err)
		}
	}
	l.log.Info("creating node", "node", n.Name, "netns", n.Netns, "underlayIP", n.UnderlayIP, "podCIDR", n.PodCIDR)
	if err := l.sys.setupNode(ctx, st.Underlay, n); err != nil {
		return err
	}
	return l.sys.installProxyBase(ctx, n.Netns)
}

// startPalisade starts a node's agent and node proxy; l.mu is held.
func (l *Lab) startPalisade(ctx context.Context, n *nodeState) error {
	if err := l.startAgent(ctx, n); err != nil {
		return err
	}
	return l.startNodeProxy(ctx, n)
}

// Load reopens a lab from <stateDir>/<name>/lab.json, for example to exec
// into its pods or tear it down from another process.
func Load(name, stateDir string) (*Lab, error) {
	if stateDir == "" {
		stateDir = DefaultStateDir
	}
	root, err := filepath.Abs(stateDir)
	if err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	st, err := loadState(name, root)
	if err != nil {
		return nil, err
	}
	sys, err := newSystem()
	if err != nil {
		return nil, err
	}
	objs := cluster.NewSnapshot()
	if _, err := os.Stat(st.clusterDir()); err == nil {
		if objs, err = cluster.Load(st.clusterDir()); err != nil {
			return nil, fmt.Errorf("lab %s: %w", name, err)
		}
	}
	return &Lab{st: st, objs: objs, sys: sys, procs: &children{}, log: slog.New(slog.DiscardHandler), readyTimeout: DefaultReadyTimeout}, nil
}

// SetLogger sets where progress is logged (nil discards).
func (l *Lab) SetLogger(log *slog.Logger) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.log = log.With("lab", l.st.Name)
}

// Name returns the lab's name.
func (l *Lab) Name() string { return l.st.Name }

// StateDir returns <state-dir>/<name>, which holds everything of the lab.
func (l *Lab) StateDir() string { return l.st.dir() }

// ClusterDir returns the cluster state directory, which the agents and node
// proxies read with --cluster.
func (l *Lab) ClusterDir() string { return l.st.clusterDir() }

// CADir returns the node proxies' development CA directory.
func (l *Lab) CADir() string { return l.st.caDir() }

// BinDir returns where the Palisade binaries come from.
func (l *Lab) BinDir() string { return l.st.BinDir }

// UnderlayNetns returns the netns that holds the underlay bridge
// (UnderlayBridge): capture there to see traffic between nodes.
func (l *Lab) UnderlayNetns() string { return l.st.Underlay }

// Status reports the lab's nodes, pods and Services.
func (l *Lab) Status() *Topology {
	l.mu.Lock()
	defer l.mu.Unlock()
	t := l.st.topology(l.objs)
	if t.SPIRE != nil && !l.procs.alive(l.st.SPIRE.Server) {
		t.SPIRE.ServerPID = 0
	}
	if k := t.Kube; k != nil {
		if !l.procs.alive(l.st.Kube.Etcd) {
			k.EtcdPID = 0
		}
		if !l.procs.alive(l.st.Kube.APIServer) {
			k.APIServerPID = 0
		}
		if !l.procs.alive(l.st.Kube.Forwarder) {
			k.ForwarderPID = 0
		}
	}
	for i, n := range t.Nodes {
		ns := l.st.node(n.Name)
		if !l.procs.alive(ns.Agent) {
			t.Nodes[i].AgentPID = 0
		}
		if !l.procs.alive(ns.NodeProxy) {
			t.Nodes[i].NodeProxyPID = 0
		}
		if !l.procs.alive(ns.SPIREAgent) {
			t.Nodes[i].SPIREAgentPID = 0
		}
	}
	for i, p := range t.Pods {
		ps := l.st.pod(p.Namespace, p.Name)
		for j, pr := range ps.Procs {
			if !l.procs.alive(pr) {
				t.Pods[i].PIDs[j] = 0
			}
		}
	}
	return t
}

// Node describes a node.
func (l *Lab) Node(name string) (NodeInfo, error) {
	for _, n := range l.Status().Nodes {
		if n.Name == name {
			return n, nil
		}
	}
	return NodeInfo{}, fmt.Errorf("lab %s: no node %q", l.st.Name, name)
}

// Pod describes a pod.
func (l *Lab) Pod(namespace, name string) (PodInfo, error) {
	for _, p := range l.Status().Pods {
		if p.Namespace == namespace && p.Name == name {
			return p, nil
		}
	}
	return PodInfo{}, fmt.Errorf("lab %s: no pod %s/%s", l.st.Name, namespace, name)
}

// Service describes a Service, with its ready endpoints.
func (l *Lab) Service(namespace, name string) (ServiceInfo, error) {
	for _, s := range l.Status().Services {
		if s.Namespace == namespace && s.Name == name {
			return s, nil
		}
	}
	return ServiceInfo{}, fmt.Errorf("lab %s: no service %s/%s", l.st.Name, namespace, name)
}

// PodIP returns a pod's IP.
func (l *Lab) PodIP(namespace, name string) (netip.Addr, error) {
	p, err := l.Pod(namespace, name)
	return p.IP, err
}

// PodNetns returns the name of a pod's netns.
func (l *Lab) PodNetns(namespace, name string) (string, error) {
	p, err := l.Pod(namespace, name)
	return p.Netns, err
}

// PodHostVeth returns the pod's veth on the node side (in the node's netns,
// attached to NodeBridge): capture there to see everything the pod sends and
// receives.
func (l *Lab) PodHostVeth(namespace, name string) (string, error) {
	p, err := l.Pod(namespace, name)
	return p.HostVeth, err
}

// ServiceIP returns a Service's cluster IP.
func (l *Lab) ServiceIP(namespace, name string) (netip.Addr, error) {
	s, err := l.Service(namespace, name)
	if err == nil && !s.ClusterIP.IsValid() {
		err = fmt.Errorf("lab %s: service %s/%s is headless", l.st.Name, namespace, name)
	}
	return s.ClusterIP, err
}

// NodeNetns returns the name of a node's netns.
func (l *Lab) NodeNetns(node string) (string, error) {
	n, err := l.Node(node)
	return n.Netns, err
}

// splitTarget parses "ns/pod" (or "pod", in namespace default).
func splitTarget(target string) (string, string) {
	if ns, name, ok := strings.Cut(target, "/"); ok {
		return ns, name
	}
	return "default", target
}

// Command returns a command that runs args inside the pod's netns, with the
// pod's /etc/hosts and resolv.conf and the environment of its first
// container, like "kubectl exec". An unknown pod makes Start fail.
func (l *Lab) Command(ctx context.Context, target string, args ...string) *exec.Cmd {
	ns, name := splitTarget(target)
	l.mu.Lock()
	ps := l.st.pod(ns, name)
	pod := l.objs.Pod(ns, name)
	var env []string
	var err error
	if ps != nil && pod != nil {
		env, err = l.containerEnv(pod, ps, &pod.Spec.Containers[0])
	}
	l.mu.Unlock()
	var netnsName string
	if ps != nil {
		netnsName = ps.Netns
	}
	cmd := exec.CommandContext(ctx, l.sys.ip, append([]string{"netns", "exec", netnsName}, args...)...)
	cmd.Env = env
	switch {
	case ps == nil || pod == nil:
		cmd.Err = fmt.Errorf("lab %s: no pod %s/%s", l.st.Name, ns, name)
	case len(args) == 0:
		cmd.Err = errors.New("exec: no command")
	case err != nil:
		cmd.Err = err
	}
	return cmd
}

// Exec runs args inside the pod's netns and returns the combined output.
// A non-zero exit is an error wrapping *exec.ExitError (see ExitCode).
func (l *Lab) Exec(ctx context.Context, target string, args ...string) ([]byte, error) {
	out, err := l.Command(ctx, target, args...).CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("exec in %s: %s: %w", target, strings.Join(args, " "), err)
	}
	return out, nil
}

// NodeCommand returns a command that runs args inside a node's netns (for
// example iptables-save, ss or tcpdump).
func (l *Lab) NodeCommand(ctx context.Context, node string, args ...string) *exec.Cmd {
	ns, err := l.NodeNetns(node)
	cmd := exec.CommandContext(ctx, l.sys.ip, append([]string{"netns", "exec", ns}, args...)...)
	if err != nil {
		cmd.Err = err
	}
	return cmd
}

// ExitCode returns the exit code carried by an error from Exec or a
// Command's Run, 0 for nil, and -1 if err carries none.
func ExitCode(err error) int {
	if err == nil {
		return 0
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal())
		}
		return ee.ExitCode()
	}
	return -1
}
