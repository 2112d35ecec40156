// Command lab builds a multi-node Kubernetes-like cluster on one Linux host
// out of network namespaces, runs pods as processes inside them, and starts
// Palisade's agent and node proxy on every node. Run "lab help" for usage.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/palisade-net/palisade/pkg/lab"
	"github.com/palisade-net/palisade/pkg/lab/apps"
)

const usage = `lab builds a multi-node Kubernetes-like cluster on this host out of network
namespaces, for Palisade demos and end-to-end tests. It needs root.

Usage:
  lab up -f FILE_OR_DIR [-f ...] [flags]   build the lab and start everything
  lab status [-o json]                     nodes, pods, IPs, netns, Services
  lab exec NS/POD -- CMD [ARGS...]         run CMD inside the pod; exits with CMD's code
  lab apply -f FILE_OR_DIR [-f ...]        make the lab match the files
  lab down                                 tear everything down
  lab help                                 this text

Common flags (before any positional argument):
  --name NAME        lab name (default "lab", or $PALISADE_LAB)
  --state-dir DIR    state directory (default /run/palisade-lab, or $PALISADE_LAB_STATE_DIR)

lab up flags:
  -f FILE_OR_DIR     Kubernetes YAML: a file, or a directory of *.yaml/*.yml/*.json (repeatable)
  --bin-dir DIR      where palisade-agent and palisade-nodeproxy are (default: lab's own directory)
  --no-palisade      build the cluster only: no agent, no node proxy, no CNI plugin
  --trust-domain TD  passed to the node proxies (default cluster.local); also SPIRE's
  --identity MODE    where the node proxies get SVIDs: dev (default, the development CA)
                     or spire (a real SPIRE server and one SPIRE agent per node, see below)
  --spire-bin-dir DIR  where spire-server and spire-agent are (default: --bin-dir if they
                     are there, else $PALISADE_TEST_BIN, else $PATH; "make spire" builds
                     them into .cache/test-bin)
  --spire-entries M  manage (default): the agents create the pods' SPIRE entries;
                     off: they leave entries alone (create them yourself)
  --spire-svid-ttl DUR  passed to the agents as --spire-svid-ttl (default: theirs)
  --kube             run a real etcd and kube-apiserver (also with --no-palisade, see below);
                     the agents and node proxies then follow the API server
  --kube-bin-dir DIR where kube-apiserver and etcd are (default: --bin-dir if they are
                     there, else $PALISADE_TEST_BIN, else $PATH; "make kube" builds them
                     and kubectl into .cache/test-bin); kubectl is looked up there, then
                     in $PATH
  --crds FILE_OR_DIR CRD manifests applied with --kube (repeatable; default: the
                     repository's manifests/crds next to --bin-dir or above the working
                     directory, skipped when there is none)
  --ebpf             run the agents with the eBPF datapath (--ebpf on): the lab mounts a
                     bpffs of its own per node on <state>/<name>/nodes/<node>/bpffs, passed
                     as --bpffs, and unmounts it at down (default: agents run --ebpf off)
  --agent-arg ARG    extra argument for every agent (repeatable); --nodeproxy-arg likewise
  --timeout DUR      how long to wait for each agent, node proxy and pod to be ready (default 60s)
  --retain           keep what was built when up fails (default: clean up), for inspection
  --dry-run          print the plan (names, addresses) and change nothing
  -v                 log progress in detail

Input: Namespaces (labels as given), Pods and Services; every other kind (for
example L7Policy, CiliumNetworkPolicy) is passed through to the cluster state.
Every Pod names its node in spec.nodeName: the lab's nodes are the distinct
node names. A container's command and args (or args alone) run as a process
inside the pod's netns with the container's env (value and the downward-API
fieldRefs). $(VAR) refers to an env var as in Kubernetes; $(LAB_BIN) is this
lab executable, which serves small test servers:
  command: ["$(LAB_BIN)", "serve-http", "--addr", ":8080"]
      answers "hostname=POD ip=POD_IP remote=ADDR method=M path=P" and echoes
      the request body; /echo echoes only the body; /bytes?n=N sends N bytes;
      /status/CODE answers CODE
  command: ["$(LAB_BIN)", "serve-echo", "--addr", ":9000"]
      raw TCP echo
  command: ["$(LAB_BIN)", "serve-grpc", "--addr", ":9090"]
      gRPC (h2c): grpc.testing.TestService, grpc.health.v1.Health, reflection
  command: ["$(LAB_BIN)", "serve-kafka", "--addr", ":9092", "--topics", "a,b"]
      a one-broker Kafka cluster (franz-go kfake) advertising the pod IP
      (--advertise HOST:PORT to override); topics are also auto-created
  (serve-http also speaks prior-knowledge HTTP/2, h2c)
A container with a readinessProbe (tcpSocket, httpGet, exec) is ready when it
passes; without one, when its TCP containerPorts accept connections. Probes
run inside the pod netns against 127.0.0.1 unless the probe names a host.

What up builds (i = node index in name order, from 1):
  netns <name>-underlay         bridge br-underlay joining the nodes
  netns <name>-node-<node>      eth0 10.88.0.(10+i)/24 on the underlay (peer veth-n<i>),
                                bridge br-pods 10.244.i.1/24, ip_forward=1, routes to the
                                other nodes' pod CIDRs, kube-proxy rules (iptables chains
                                PLAB-*) DNATing clusterIP:port to ready endpoints at random
  netns <name>-<ns>-<pod>       eth0 10.244.i.N/24, default via 10.244.i.1; node side veth-p<k>
  /etc/netns/<pod netns>/hosts  localhost, the pod's name, and every Service as
                                "VIP name name.ns name.ns.svc name.ns.svc.cluster.local"
  <state>/<name>/cluster/       the cluster as the kube API would report it (pods with uid,
                                podIP, Running, Ready; Services with clusterIP); the agents and
                                node proxies read and watch it (--cluster)
  <state>/<name>/nodes/<node>/  agent.log, nodeproxy.log, cni.sock, proxy.sock, and with
                                --ebpf bpffs/ (a bpffs mount: the agent's pinned datapath)
  <state>/<name>/pods/          <ns>_<pod>.log
  <state>/<name>/ca/            the node proxies' development CA
  <state>/<name>/lab.json       everything needed to tear down, written as up goes
Service cluster IPs come from 10.96.0.0/16 unless spec.clusterIP is set.

Per node, unless --no-palisade, inside the node netns:
  palisade-agent --node N --cluster DIR --proxy-socket nodes/N/proxy.sock --cni-socket nodes/N/cni.sock
                 --ebpf off (with --ebpf: --ebpf on --bpffs nodes/N/bpffs)
  palisade-nodeproxy --node N --cluster DIR --agent-socket nodes/N/proxy.sock --dev-ca-dir ca --trust-domain TD
(with --kube: --kubeconfig <state>/<name>/kubeconfig-nodes instead of --cluster DIR).
up waits for GET /readyz on cni.sock and for http://127.0.0.1:15021/healthz/ready in the
node netns.

With --identity spire (also with --no-palisade), before the agents and node proxies
start, inside netns <name>-underlay (nothing of SPIRE is reachable from the host):
  spire-server   listening on 127.0.0.1:8081 of that netns, API socket
                 <state>/<name>/spire/server/api.sock, trust domain TD, SQLite and CA
                 keys in spire/server/data (kept across restarts), join-token node
                 attestation; log spire/server.log
  per node       a join token for spiffe://TD/palisade/node/<node> (the node's alias),
                 an entry spiffe://TD/palisade/nodeproxy/<node> under it with selectors
                 unix:uid:0 and unix:path:<palisade-nodeproxy binary>, and a spire-agent
                 (data nodes/<node>/spire-agent/data, Workload API
                 nodes/<node>/spire-agent/workload/api.sock, admin socket
                 nodes/<node>/spire-agent/admin/admin.sock whose only authorized
                 delegate is the node proxy; log nodes/<node>/spire-agent.log)
up waits for "spire-server healthcheck" and "spire-agent healthcheck". The agents then
get --spire-entries manage --spire-server-socket S --spire-node-id spiffe://TD/palisade/node/N
--trust-domain TD [--spire-svid-ttl D] (or --spire-entries off), the node proxies
--identity spire --spire-admin-socket A --spire-workload-socket W instead of --dev-ca-dir. Per pod, before its process starts, up calls "palisade-agent cni" with
CNI_COMMAND=ADD (and DEL when the pod goes) as a container runtime would.

With --kube (also with --no-palisade), before the agents and node proxies start:
  etcd             in netns <name>-underlay on its 127.0.0.1:2379 (peer 2380), data in
                   <state>/<name>/kube/etcd; log kube/etcd.log
  kube-apiserver   in the same netns on https://10.88.0.1:6443 (the underlay bridge's
                   address, which the lab adds; the nodes reach it over the underlay):
                   self-signed serving certificate (SANs 10.88.0.1, 127.0.0.1, kubernetes,
                   kubernetes.default.svc, localhost), a static admin token in group
                   system:masters, --authorization-mode RBAC, a service account key pair,
                   --service-cluster-ip-range 10.96.0.0/16; files in kube/pki, log
                   kube/apiserver.log. up waits for GET /readyz with the token.
  forwarder        "lab forward" in the root netns on 127.0.0.1:<free port>, connecting
                   to the API server inside the underlay netns; log kube/forward.log
  <state>/<name>/kubeconfig        https://127.0.0.1:<port>, for kubectl on this host:
                                   kubectl --kubeconfig <state>/<name>/kubeconfig get pods -A
  <state>/<name>/kubeconfig-nodes  https://10.88.0.1:6443, for the agents and node proxies
Then up applies the CRDs (stand-ins for Cilium's cilium.io/v2 CiliumNetworkPolicy and
CiliumClusterwideNetworkPolicy that accept any content, then --crds) and waits until each
is established, registers a Node per node (InternalIP = its underlay address, kubelet
port 10250), starts each node's kubelet stand-in ("lab kubelet-serve", inside the node
netns on https://<underlay IP>:10250, self-signed kube/pki/kubelet-<node>.crt, log
nodes/<node>/kubelet.log: it serves the API server's pods/portforward, as used by
kubectl port-forward, by connecting to 127.0.0.1:<port> in the pod's netns, the node's
for hostNetwork pods, and answers 404 to anything else and to other nodes' pods),
creates (unless --no-palisade) the Pods palisade-system/palisade-nodeproxy-<node> and
palisade-agent-<node> (hostNetwork, Running and Ready on the node, labels and ports as in
manifests/; they stand for the processes, which are not containers, and the agents
ignore them), applies the Namespaces, a ServiceAccount for
every one the pods use (created when missing), the Services (spec.clusterIP = the lab's)
and every other kind (server-side apply, field manager palisade-lab), and plays kubelet
for each pod: the pod object (containers without an image get palisade-lab/process),
netns, CNI ADD, status.podIP/hostIP (Pending), processes, then, once ready, Running
with the PodScheduled, Initialized, ContainersReady and Ready conditions True. The
agents and node proxies run with --kubeconfig <state>/<name>/kubeconfig-nodes instead
of --cluster (the cluster state files are still written, for inspection).

apply takes the whole desired cluster: changed Namespace labels, Services and
policies are written to the cluster state, new pods are created, pods that are
gone are deleted (CNI DEL), pods whose spec changed are recreated. With --kube
it goes through the API: objects are applied, objects the lab applied before
and the files no longer have are deleted (Namespaces excepted), running pods get
their new labels, and a pod is deleted as by kubectl and a kubelet (deletion
timestamp, processes stopped, CNI DEL, then the object removed).

down stops every process the lab started (pods, agents, node proxies, SPIRE,
the kubelet stand-ins, the API server, etcd and the forwarder) and anything else inside its
namespaces, runs CNI DEL, deletes every netns of the lab (also stray
"<name>-*" ones after a crash), /etc/netns/<netns> and the state directory. It is idempotent and works after a failed or interrupted up.

Examples:
  lab up -f examples/demo --bin-dir ./bin
  lab up -f examples/demo --bin-dir ./bin --kube --kube-bin-dir .cache/test-bin
  lab exec shop/client -- curl -s http://server/
  lab exec plain/visitor -- curl -s http://server.shop.svc.cluster.local/
  lab down
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// stringList is a repeatable string flag.
type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

type common struct {
	name, stateDir string
	verbose        bool
}

func (c *common) register(fs *flag.FlagSet) {
	name := os.Getenv("PALISADE_LAB")
	if name == "" {
		name = lab.DefaultName
	}
	dir := os.Getenv("PALISADE_LAB_STATE_DIR")
	if dir == "" {
		dir = lab.DefaultStateDir
	}
	fs.StringVar(&c.name, "name", name, "lab name")
	fs.StringVar(&c.stateDir, "state-dir", dir, "state directory")
	fs.BoolVar(&c.verbose, "v", false, "verbose logging")
}

func (c *common) logger(stderr io.Writer) *slog.Logger {
	level := slog.LevelInfo
	if c.verbose {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
}

func newFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("lab "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, usage) }
	return fs
}

// run executes the command line and returns the exit code.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	switch args[0] {
	case "help", "-h", "--help", "-help":
		fmt.Fprint(stdout, usage)
		return 0
	case "up":
		err = cmdUp(ctx, args[1:], stdout, stderr)
	case "down":
		err = cmdDown(ctx, args[1:], stdout, stderr)
	case "status":
		err = cmdStatus(args[1:], stdout, stderr)
	case "apply":
		err = cmdApply(ctx, args[1:], stdout, stderr)
	case "exec":
		stop() // signals go to the command, see cmdExec
		return cmdExec(args[1:], stderr)
	case "serve-http", "serve-echo", "serve-grpc", "serve-kafka":
		err = cmdServe(ctx, args[0], args[1:], stderr)
	case lab.ForwardCommand:
		// Hidden: the API server forwarder that "up --kube" starts.
		err = lab.RunForward(ctx, args[1:], slog.New(slog.NewTextHandler(stderr, nil)))
	case lab.KubeletCommand:
		// Hidden: a node's kubelet stand-in (port-forwards) that "up --kube"
		// starts inside the node's netns.
		err = lab.RunKubelet(ctx, args[1:], slog.New(slog.NewTextHandler(stderr, nil)))
	default:
		fmt.Fprintf(stderr, "lab: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	var ue usageError
	if errors.As(err, &ue) {
		fmt.Fprintf(stderr, "lab: %v (see lab help)\n", err)
		return 2
	}
	if err != nil {
		fmt.Fprintf(stderr, "lab: %v\n", err)
		return 1
	}
	return 0
}

type usageError struct{ error }

func cmdUp(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("up", stderr)
	var c common
	c.register(fs)
	var files, agentArgs, proxyArgs stringList
	fs.Var(&files, "f", "YAML file or directory (repeatable)")
	binDir := fs.String("bin-dir", "", "directory of palisade-agent and palisade-nodeproxy")
	noPalisade := fs.Bool("no-palisade", false, "do not start Palisade")
	trustDomain := fs.String("trust-domain", "cluster.local", "trust domain for the node proxies")
	identity := fs.String("identity", lab.IdentityDev, "identity: dev or spire")
	spireBinDir := fs.String("spire-bin-dir", "", "directory of spire-server and spire-agent")
	spireEntries := fs.String("spire-entries", "", "who manages SPIRE entries: manage or off")
	spireSVIDTTL := fs.Duration("spire-svid-ttl", 0, "SVID TTL for the agents' SPIRE entries")
	kube := fs.Bool("kube", false, "run etcd and kube-apiserver")
	kubeBinDir := fs.String("kube-bin-dir", "", "directory of kube-apiserver and etcd")
	var crds stringList
	fs.Var(&crds, "crds", "CRD manifests for --kube (repeatable)")
	ebpf := fs.Bool("ebpf", false, "run the agents with the eBPF datapath on a bpffs of the lab's")
	fs.Var(&agentArgs, "agent-arg", "extra agent argument (repeatable)")
	fs.Var(&proxyArgs, "nodeproxy-arg", "extra node proxy argument (repeatable)")
	timeout := fs.Duration("timeout", lab.DefaultReadyTimeout, "readiness timeout")
	retain := fs.Bool("retain", false, "keep a failed lab for inspection")
	dryRun := fs.Bool("dry-run", false, "print the plan only")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("up: unexpected argument %q", fs.Arg(0))}
	}
	if len(files) == 0 {
		return usageError{errors.New("up: -f FILE_OR_DIR is required")}
	}
	switch *identity {
	case lab.IdentityDev:
		if *spireEntries != "" || *spireSVIDTTL != 0 {
			return usageError{errors.New("up: --spire-entries and --spire-svid-ttl need --identity spire")}
		}
	case lab.IdentitySPIRE:
		switch *spireEntries {
		case "", lab.SPIREEntriesManage, lab.SPIREEntriesOff:
		default:
			return usageError{fmt.Errorf("up: --spire-entries %q: want manage or off", *spireEntries)}
		}
		if *spireSVIDTTL < 0 {
			return usageError{fmt.Errorf("up: --spire-svid-ttl %s is negative", *spireSVIDTTL)}
		}
	default:
		return usageError{fmt.Errorf("up: --identity %q: want dev or spire", *identity)}
	}
	if !*kube && (*kubeBinDir != "" || len(crds) > 0) {
		return usageError{errors.New("up: --kube-bin-dir and --crds need --kube")}
	}
	if *dryRun {
		objs, err := lab.LoadObjects(files, nil)
		if err != nil {
			return err
		}
		topo, err := lab.Plan(c.name, objs)
		if err != nil {
			return err
		}
		topo.Identity = *identity
		printTopology(stdout, topo, false)
		return nil
	}
	l, err := lab.Up(ctx, lab.Config{
		Name: c.name, StateDir: c.stateDir, BinDir: *binDir, Files: files,
		NoPalisade: *noPalisade, TrustDomain: *trustDomain,
		Identity: *identity, SPIREBinDir: *spireBinDir, SPIREEntries: *spireEntries, SPIRESVIDTTL: *spireSVIDTTL,
		Kube: *kube, KubeBinDir: *kubeBinDir, KubeCRDs: crds, EBPF: *ebpf,
		AgentArgs: agentArgs, NodeProxyArgs: proxyArgs,
		ReadyTimeout: *timeout, Retain: *retain, Logger: c.logger(stderr),
	})
	if err != nil {
		return err
	}
	printTopology(stdout, l.Status(), true)
	flags := ""
	if c.name != lab.DefaultName {
		flags += " --name " + c.name
	}
	if c.stateDir != lab.DefaultStateDir {
		flags += " --state-dir " + c.stateDir
	}
	fmt.Fprintf(stdout, "\nLab %q is up. State: %s\n  lab status%s\n  lab exec%s NS/POD -- CMD...\n", c.name, l.StateDir(), flags, flags)
	if kc := l.Kubeconfig(); kc != "" {
		fmt.Fprintf(stdout, "  kubectl --kubeconfig %s get pods -A\n", kc)
	}
	fmt.Fprintf(stdout, "  lab down%s\n", flags)
	return nil
}

func cmdDown(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("down", stderr)
	var c common
	c.register(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("down: unexpected argument %q", fs.Arg(0))}
	}
	// Tear down even when interrupted halfway: a second signal is not
	// needed for cleanup to finish.
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Minute)
	defer cancel()
	if err := lab.Destroy(dctx, c.name, c.stateDir, c.logger(stderr)); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "Lab %q is down.\n", c.name)
	return nil
}

func cmdStatus(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("status", stderr)
	var c common
	c.register(fs)
	output := fs.String("o", "table", "output format: table or json")
	if err := fs.Parse(args); err != nil {
		return err
	}
	l, err := lab.Load(c.name, c.stateDir)
	if err != nil {
		return err
	}
	topo := l.Status()
	switch *output {
	case "json":
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(topo)
	case "table":
		fmt.Fprintf(stdout, "Lab %q, state %s, cluster state %s\n", l.Name(), l.StateDir(), l.ClusterDir())
		if kc := l.Kubeconfig(); kc != "" {
			fmt.Fprintf(stdout, "API server %s, kubeconfig %s (kubectl --kubeconfig %s get pods -A)\n", topo.Kube.Forward, kc, kc)
		}
		fmt.Fprintln(stdout)
		printTopology(stdout, topo, true)
		return nil
	}
	return usageError{fmt.Errorf("status: unknown output format %q", *output)}
}

func cmdApply(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("apply", stderr)
	var c common
	c.register(fs)
	var files stringList
	fs.Var(&files, "f", "YAML file or directory (repeatable)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if len(files) == 0 {
		return usageError{errors.New("apply: -f FILE_OR_DIR is required")}
	}
	l, err := lab.Load(c.name, c.stateDir)
	if err != nil {
		return err
	}
	l.SetLogger(c.logger(stderr))
	if err := l.ApplyFiles(ctx, files...); err != nil {
		return err
	}
	printTopology(stdout, l.Status(), true)
	return nil
}

// cmdExec runs a command in a pod with stdio attached and returns its exit
// code. The terminal's Ctrl-C reaches the command directly (same process
// group); the lab ignores it and forwards SIGTERM and SIGHUP.
func cmdExec(args []string, stderr io.Writer) int {
	fs := newFlagSet("exec", stderr)
	var c common
	c.register(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	rest := fs.Args()
	if len(rest) < 1 {
		fmt.Fprintln(stderr, "lab: exec: want NS/POD -- CMD [ARGS...]")
		return 2
	}
	target, cmdArgs := rest[0], rest[1:]
	if len(cmdArgs) > 0 && cmdArgs[0] == "--" {
		cmdArgs = cmdArgs[1:]
	}
	if len(cmdArgs) == 0 {
		fmt.Fprintln(stderr, "lab: exec: no command given (lab exec NS/POD -- CMD [ARGS...])")
		return 2
	}
	l, err := lab.Load(c.name, c.stateDir)
	if err != nil {
		fmt.Fprintf(stderr, "lab: %v\n", err)
		return 1
	}
	cmd := l.Command(context.Background(), target, cmdArgs...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT)
	defer signal.Stop(sigs)
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(stderr, "lab: exec: %v\n", err)
		return 1
	}
	go func() {
		for s := range sigs {
			if s == syscall.SIGTERM || s == syscall.SIGHUP {
				_ = cmd.Process.Signal(s)
			}
		}
	}()
	err = cmd.Wait()
	if code := lab.ExitCode(err); code >= 0 {
		return code
	}
	fmt.Fprintf(stderr, "lab: exec: %v\n", err)
	return 1
}

func cmdServe(ctx context.Context, which string, args []string, stderr io.Writer) error {
	fs := newFlagSet(which, stderr)
	def := map[string]string{"serve-http": ":8080", "serve-echo": ":9000", "serve-grpc": ":9090", "serve-kafka": ":9092"}[which]
	addr := fs.String("addr", def, "listen address")
	var topics, advertise *string
	var partitions *int
	if which == "serve-kafka" {
		topics = fs.String("topics", "", "comma-separated topics to create at start-up")
		partitions = fs.Int("partitions", 1, "partitions per created topic")
		advertise = fs.String("advertise", "", "host:port named in Metadata (default: the pod's IPv4 and the listen port)")
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	switch which {
	case "serve-echo":
		return apps.ServeEcho(ctx, *addr, log)
	case "serve-grpc":
		return apps.ServeGRPC(ctx, *addr, log)
	case "serve-kafka":
		return apps.ServeKafka(ctx, apps.KafkaOptions{Addr: *addr, Advertise: *advertise, Topics: apps.ParseTopics(*topics), Partitions: int32(*partitions)}, log)
	}
	return apps.ServeHTTP(ctx, *addr, log)
}

func addr(a interface {
	IsValid() bool
	String() string
}) string {
	if !a.IsValid() {
		return "-"
	}
	return a.String()
}

func printTopology(w io.Writer, t *lab.Topology, live bool) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	pid := func(p int) string {
		if !live {
			return ""
		}
		if p == 0 {
			return "-"
		}
		return fmt.Sprintf("pid %d", p)
	}
	fmt.Fprintf(tw, "UNDERLAY NETNS\tBRIDGE\tIDENTITY\n%s\t%s\t%s\n\n", t.Underlay, t.Bridge, t.Identity)
	if s := t.SPIRE; s != nil {
		ttl := s.SVIDTTL
		if ttl == "" {
			ttl = "the agents' default"
		}
		fmt.Fprintln(tw, "SPIRE SERVER\tNETNS\tADDRESS\tTRUST DOMAIN\tENTRIES\tSVID TTL\tSOCKET\tLOG")
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n\n", pid(s.ServerPID), s.Netns, s.ServerAddress, s.TrustDomain, s.Entries, ttl, s.ServerSocket, s.ServerLog)
	}
	if k := t.Kube; k != nil {
		fmt.Fprintln(tw, "KUBE-APISERVER\tNETNS\tADDRESS\tFORWARD (ROOT NETNS)\tETCD\tETCD PID\tKUBECONFIG\tNODES' KUBECONFIG\tLOG")
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n\n", pid(k.APIServerPID), k.Netns, k.APIServer, k.Forward, k.Etcd, pid(k.EtcdPID), k.Kubeconfig, k.NodeKubeconfig, k.APIServerLog)
	}
	spire := t.SPIRE != nil
	header := "NODE\tNETNS\tUNDERLAY IP\tPOD CIDR\tGATEWAY\tUNDERLAY PORT\tAGENT\tNODE PROXY"
	if spire {
		header += "\tSPIRE AGENT\tWORKLOAD API"
	}
	fmt.Fprintln(tw, header)
	for _, n := range t.Nodes {
		line := fmt.Sprintf("%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s", n.Name, n.Netns, n.UnderlayIP, n.PodCIDR, n.Gateway, n.UnderlayPort, pid(n.AgentPID), pid(n.NodeProxyPID))
		if spire {
			line += fmt.Sprintf("\t%s\t%s", pid(n.SPIREAgentPID), n.SPIREWorkloadSocket)
		}
		fmt.Fprintln(tw, line)
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "POD\tNODE\tIP\tNETNS\tHOST VETH\tREADY\tPIDS")
	for _, p := range t.Pods {
		var pids []string
		for _, x := range p.PIDs {
			pids = append(pids, pid(x))
		}
		ready := ""
		if live {
			ready = fmt.Sprint(p.Ready)
		}
		fmt.Fprintf(tw, "%s/%s\t%s\t%s\t%s\t%s\t%s\t%s\n", p.Namespace, p.Name, p.Node, p.IP, p.Netns, p.HostVeth, ready, strings.Join(pids, ","))
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "SERVICE\tCLUSTER IP\tPORTS\tENDPOINTS")
	for _, s := range t.Services {
		var ports, eps []string
		for _, p := range s.Ports {
			ports = append(ports, fmt.Sprintf("%d->%s/%s", p.Port, p.TargetPort, p.Protocol))
			for _, e := range p.Endpoints {
				eps = append(eps, e.String())
			}
		}
		fmt.Fprintf(tw, "%s/%s\t%s\t%s\t%s\n", s.Namespace, s.Name, addr(s.ClusterIP), strings.Join(ports, ","), strings.Join(eps, ","))
	}
	tw.Flush()
}
