// Command kubectl-palisade is the kubectl plugin for Palisade
// (`kubectl palisade status|observe|explain`).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/palisade-net/palisade/internal/cli"
	"github.com/palisade-net/palisade/pkg/flowlog"
	"github.com/palisade-net/palisade/pkg/kubectlplugin"
)

const usage = `kubectl palisade: see what Palisade enrolled, allowed and denied.

Commands:
  status                 per node: node proxy readiness, identity source,
                         workloads, policy problems; per pod of enrolled
                         namespaces: enrolled, mode, identity, SVID expiry,
                         last error
  observe                live flow records (connections and HTTP, gRPC and
                         Kafka requests) from every node proxy
  explain POD PORT       which policies select POD and what a connection to
                         PORT (and a given request) would get

The node proxies are found through the API server (pods labelled
app.kubernetes.io/name=palisade-nodeproxy in --palisade-namespace) and
reached through port-forwards to their admin port, like kubectl
port-forward: you need list on pods and create on pods/portforward there.

Run 'kubectl palisade COMMAND --help' for the flags of a command.
`

func main() {
	ctx, stop := cli.SignalContext()
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "kubectl palisade:", err)
		}
		os.Exit(1)
	}
}

// common are the flags every command takes.
type common struct {
	kubeconfig, context, namespace, palisadeNS string
	output                                     string
}

func (c *common) register(fs *flag.FlagSet) {
	fs.StringVar(&c.kubeconfig, "kubeconfig", "", "kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
	fs.StringVar(&c.context, "context", "", "kubeconfig context")
	fs.StringVar(&c.namespace, "namespace", "", "namespace (default: the context's)")
	fs.StringVar(&c.namespace, "n", "", "shorthand for --namespace")
	fs.StringVar(&c.palisadeNS, "palisade-namespace", kubectlplugin.DefaultNamespace, "namespace of Palisade's node proxies")
	fs.StringVar(&c.output, "o", "", "output: table (default) or json")
}

// cluster connects to the API server.
func (c *common) cluster() (*kubectlplugin.Cluster, string, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	if c.kubeconfig != "" {
		rules.ExplicitPath = c.kubeconfig
	}
	cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: c.context})
	cfg, err := cc.ClientConfig()
	if err != nil {
		return nil, "", fmt.Errorf("kubeconfig: %w", err)
	}
	ns, _, err := cc.Namespace()
	if err != nil {
		return nil, "", err
	}
	if c.namespace != "" {
		ns = c.namespace
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, "", err
	}
	return &kubectlplugin.Cluster{Config: cfg, Client: client, Namespace: c.palisadeNS, Selector: kubectlplugin.DefaultSelector}, ns, nil
}

// open checks the output format and connects: the cluster, the namespace
// in effect, and whether to print JSON.
func (c *common) open() (*kubectlplugin.Cluster, string, bool, error) {
	var js bool
	switch c.output {
	case "", "table":
	case "json":
		js = true
	default:
		return nil, "", false, fmt.Errorf("-o %s: want table or json", c.output)
	}
	cl, ns, err := c.cluster()
	return cl, ns, js, err
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stdout, usage)
		if len(args) == 0 {
			return errors.New("no command")
		}
		return nil
	}
	cmd, args := args[0], args[1:]
	fs := flag.NewFlagSet("kubectl palisade "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c common
	c.register(fs)
	switch cmd {
	case "status":
		all := fs.Bool("all-namespaces", false, "pods of every enrolled namespace (default when -n is not given)")
		fs.BoolVar(all, "A", false, "shorthand for --all-namespaces")
		if _, err := parse(fs, args, 0); err != nil {
			return err
		}
		cl, _, js, err := c.open()
		if err != nil {
			return err
		}
		defer cl.Close()
		ns := c.namespace
		if *all {
			ns = ""
		}
		return cl.Status(ctx, stdout, kubectlplugin.StatusOptions{Namespace: ns, JSON: js})

	case "observe":
		pod := fs.String("pod", "", "only flows from or to this pod (name in -n, or namespace/name)")
		verdict := fs.String("verdict", "", "only these verdicts: allowed, denied, failed, revoked, dropped (packets the eBPF datapath dropped) (comma-separated)")
		protocol := fs.String("protocol", "", "only these protocols: tcp (connections, dropped TCP packets), http, grpc, kafka, udp, icmp, icmpv6 (comma-separated)")
		typ := fs.String("type", "", "only these record types: connection, request, packet (comma-separated)")
		all := fs.Bool("all-namespaces", false, "flows of every namespace (default when -n is not given)")
		fs.BoolVar(all, "A", false, "shorthand for --all-namespaces")
		count := fs.Int("count", 0, "stop after this many records (default: until interrupted)")
		recent := fs.Int("last", 0, "first print up to this many recent records of each node")
		timeout := fs.Duration("timeout", 0, "stop after this long (default: until interrupted)")
		if _, err := parse(fs, args, 0); err != nil {
			return err
		}
		q := map[string][]string{}
		for k, v := range map[string]string{"verdict": *verdict, "protocol": *protocol, "type": *typ} {
			if v != "" {
				q[k] = []string{v}
			}
		}
		f, err := flowlog.ParseFilter(q)
		if err != nil {
			return err
		}
		if !*all {
			f.Namespace = c.namespace
		}
		if *pod != "" {
			f.Pod = *pod
			if !strings.Contains(*pod, "/") && c.namespace != "" {
				f.Pod = c.namespace + "/" + *pod
			}
		}
		cl, _, js, err := c.open()
		if err != nil {
			return err
		}
		defer cl.Close()
		if *timeout > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, *timeout)
			defer cancel()
		}
		ready := make(chan struct{})
		go func() {
			select {
			case <-ready:
				fmt.Fprintln(stderr, "watching flows of every node proxy (interrupt to stop)")
			case <-ctx.Done():
			}
		}()
		return cl.Observe(ctx, stdout, kubectlplugin.ObserveOptions{Filter: f, JSON: js, Count: *count, Recent: *recent, Ready: ready})

	case "explain":
		var o kubectlplugin.ExplainOptions
		fs.StringVar(&o.From, "from", "", "the client pod (name in -n, or namespace/name); default: a client outside the cluster")
		fs.StringVar(&o.FromIdentity, "from-identity", "", "the client's SPIFFE ID instead of a pod")
		fs.StringVar(&o.Method, "method", "", "an HTTP request: its method (default GET when --path is given)")
		fs.StringVar(&o.Path, "path", "", "an HTTP request: its path")
		fs.StringVar(&o.Host, "host", "", "an HTTP request: its Host")
		headers := fs.String("header", "", "an HTTP request: headers, 'Name: value' separated by ';'")
		fs.StringVar(&o.GRPC, "grpc", "", "a gRPC call: package.Service/Method")
		fs.StringVar(&o.KafkaAPI, "kafka-api", "", "a Kafka request: API name (Produce, Fetch, …) or key")
		topics := fs.String("topic", "", "a Kafka request: topics (comma-separated)")
		fs.StringVar(&o.ClientID, "client-id", "", "a Kafka request: client id")
		pos, err := parse(fs, args, 2)
		if err != nil {
			return err
		}
		port, err := strconv.Atoi(pos[1])
		if err != nil || port < 1 || port > 65535 {
			return fmt.Errorf("PORT %q is not a port number", pos[1])
		}
		cl, ns, js, err := c.open()
		if err != nil {
			return err
		}
		defer cl.Close()
		o.Namespace, o.Pod, o.Port, o.JSON = ns, pos[0], port, js
		if p, name, ok := strings.Cut(pos[0], "/"); ok {
			o.Namespace, o.Pod = p, name
		}
		if *headers != "" {
			o.Headers = strings.Split(*headers, ";")
		}
		if *topics != "" {
			o.Topics = strings.Split(*topics, ",")
		}
		ctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		return cl.Explain(ctx, stdout, o)
	}
	fmt.Fprint(stderr, usage)
	return fmt.Errorf("unknown command %q", cmd)
}

// parse parses flags interspersed with want positional arguments (kubectl
// users write flags after the arguments).
func parse(fs *flag.FlagSet, args []string, want int) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
	if len(pos) != want {
		fs.Usage()
		return nil, fmt.Errorf("%s takes %d arguments, got %d (%v)", fs.Name(), want, len(pos), pos)
	}
	return pos, nil
}
