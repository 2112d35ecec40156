package lab

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	pnetns "github.com/palisade-net/palisade/pkg/netns"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/kubelet/pkg/cri/streaming/portforward"
)

// The lab plays the parts of a kubelet that tools reach through the API
// server: with Kube, every node gets Pod objects for its node proxy and
// agent (what their DaemonSets would create, see manifests/), and a
// kubelet stand-in that serves the API server's pods/portforward, as
// "kubectl port-forward" uses it.
const (
	// KubeletCommand is the lab executable's hidden subcommand that serves
	// a node's kubelet port-forwards. The lab starts it inside the node's
	// netns as "ip netns exec NODE_NETNS $(LAB_BIN) kubelet-serve
	// --state-dir DIR --name LAB --node NODE --listen IP:10250 --cert CRT
	// --key KEY"; RunKubelet implements it.
	KubeletCommand = "kubelet-serve"
	// KubeletPort is the kubelet port on the node's underlay address,
	// which the lab registers in Node.status.daemonEndpoints.
	KubeletPort = 10250
	// PalisadeSystemNamespace holds the node proxy and agent Pods.
	PalisadeSystemNamespace = "palisade-system"
	// NodeProxyAppName and AgentAppName are the app.kubernetes.io/name
	// labels of the node proxy and agent Pods (as in manifests/).
	NodeProxyAppName = "palisade-nodeproxy"
	AgentAppName     = "palisade-agent"
)

// Ports of the node proxy and agent, in the node's netns (manifests/).
const (
	NodeProxyAdminPort     = 15000
	NodeProxyMetricsPort   = 15020
	NodeProxyReadinessPort = 15021
	AgentMetricsPort       = 15022
)

// NodeProxyPodName and AgentPodName name the node's Pods in
// PalisadeSystemNamespace.
func NodeProxyPodName(node string) string { return NodeProxyAppName + "-" + node }

// AgentPodName names the node's agent Pod in PalisadeSystemNamespace.
func AgentPodName(node string) string { return AgentAppName + "-" + node }

func (s *state) kubeletCert(node string) string {
	return filepath.Join(s.kubePKIDir(), "kubelet-"+node+".crt")
}
func (s *state) kubeletKey(node string) string {
	return filepath.Join(s.kubePKIDir(), "kubelet-"+node+".key")
}
func (s *state) kubeletLog(node string) string { return filepath.Join(s.nodeDir(node), "kubelet.log") }

// kubeletAddr is where the node's kubelet stand-in listens, inside the
// node's netns (its underlay address, which the API server dials).
func (n *nodeState) kubeletAddr() string {
	return net.JoinHostPort(n.UnderlayIP.String(), strconv.Itoa(KubeletPort))
}

// kubeNodeDaemons starts the nodes' kubelet stand-ins and, unless
// NoPalisade, creates their node proxy and agent Pods. l.mu is held.
func (l *Lab) kubeNodeDaemons(ctx context.Context, nodes []*nodeState) error {
	for _, n := range nodes {
		if err := l.startKubelet(ctx, n); err != nil {
			return err
		}
	}
	if l.st.NoPalisade || len(nodes) == 0 {
		return nil
	}
	return l.kubeCreateDaemonPods(ctx, nodes)
}

// daemonPods returns the Pod objects of the node's node proxy and agent:
// hostNetwork, on the node, with the labels, service accounts, container
// names and ports of manifests/nodeproxy.yaml and manifests/agent.yaml
// (plus the node proxy's localhost-only admin port).
func daemonPods(node string) []*corev1.Pod {
	pod := func(name, app, container string, ports ...corev1.ContainerPort) *corev1.Pod {
		for i := range ports {
			ports[i].Protocol = corev1.ProtocolTCP
		}
		return &corev1.Pod{
			TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
			ObjectMeta: metav1.ObjectMeta{Namespace: PalisadeSystemNamespace, Name: name, Labels: map[string]string{
				"app.kubernetes.io/name":    app,
				"app.kubernetes.io/part-of": "palisade",
			}},
			Spec: corev1.PodSpec{
				NodeName:           node,
				HostNetwork:        true,
				DNSPolicy:          corev1.DNSClusterFirstWithHostNet,
				ServiceAccountName: app,
				Tolerations:        []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
				Containers:         []corev1.Container{{Name: container, Image: DefaultContainerImage, Ports: ports}},
			},
		}
	}
	return []*corev1.Pod{
		pod(NodeProxyPodName(node), NodeProxyAppName, "nodeproxy",
			corev1.ContainerPort{Name: "admin", ContainerPort: NodeProxyAdminPort},
			corev1.ContainerPort{Name: "metrics", ContainerPort: NodeProxyMetricsPort},
			corev1.ContainerPort{Name: "readiness", ContainerPort: NodeProxyReadinessPort}),
		pod(AgentPodName(node), AgentAppName, "agent",
			corev1.ContainerPort{Name: "metrics", ContainerPort: AgentMetricsPort}),
	}
}

// kubeCreateDaemonPods creates the namespace palisade-system (labelled as
// manifests/namespace.yaml does) and its service accounts when missing,
// then the nodes' node proxy and agent Pods, Running and Ready with the
// node's underlay address as host and pod IP. They are not the lab's pods
// (not in its state, never enrolled: hostNetwork); the node proxies and
// agents they stand for are the processes the lab runs on the node, and
// stay the same objects across restarts of those. l.mu is held.
func (l *Lab) kubeCreateDaemonPods(ctx context.Context, nodes []*nodeState) error {
	k, err := l.kubeAPI()
	if err != nil {
		return err
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: PalisadeSystemNamespace, Labels: map[string]string{
		"app.kubernetes.io/part-of":          "palisade",
		"pod-security.kubernetes.io/enforce": "privileged",
		"palisade.dev/mtls":                  "disabled",
	}}}
	if _, err := k.client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{FieldManager: KubeFieldManager}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("namespace %s: %w", PalisadeSystemNamespace, err)
	}
	for _, name := range []string{NodeProxyAppName, AgentAppName} {
		sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: PalisadeSystemNamespace, Name: name}}
		if _, err := k.client.CoreV1().ServiceAccounts(PalisadeSystemNamespace).Create(ctx, sa, metav1.CreateOptions{FieldManager: KubeFieldManager}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("service account %s/%s: %w", PalisadeSystemNamespace, name, err)
		}
	}
	pods := k.client.CoreV1().Pods(PalisadeSystemNamespace)
	for _, n := range nodes {
		for _, pod := range daemonPods(n.Name) {
			key := pod.Namespace + "/" + pod.Name
			l.log.Info("creating pod object", "pod", key, "node", n.Name)
			if _, err := pods.Create(ctx, pod, metav1.CreateOptions{FieldManager: KubeFieldManager}); err != nil && !apierrors.IsAlreadyExists(err) {
				return fmt.Errorf("create pod %s: %w", key, err)
			}
			err := l.updatePodStatus(ctx, pods, pod.Name, func(live *corev1.Pod) (*podState, error) {
				// What a kubelet reports for a running hostNetwork pod:
				// the node's address as host and pod IP.
				return &podState{
					Namespace: pod.Namespace, Name: pod.Name, UID: string(live.UID), Node: n.Name, IP: n.UnderlayIP,
					Phase: corev1.PodRunning, CreatedAt: live.CreationTimestamp.UTC(), StartedAt: nowUTC(),
				}, nil
			}, nil)
			if err != nil {
				return fmt.Errorf("pod %s: status: %w", key, err)
			}
		}
	}
	return nil
}

// startKubelet starts the node's kubelet stand-in inside the node's netns,
// with a fresh self-signed serving certificate, and waits until it answers
// from the underlay netns (where the API server dials it). A stand-in that
// runs already is left alone. l.mu is held.
func (l *Lab) startKubelet(ctx context.Context, n *nodeState) error {
	st := l.st
	if l.procs.alive(n.Kubelet) {
		return nil
	}
	if err := os.MkdirAll(st.kubePKIDir(), 0o700); err != nil {
		return fmt.Errorf("node %s: kubelet: %w", n.Name, err)
	}
	certPEM, keyPEM, err := selfSignedCert(
		pkix.Name{CommonName: "kubelet " + n.Name, Organization: []string{"palisade lab " + st.Name}},
		[]string{n.Name}, []net.IP{n.UnderlayIP.AsSlice()})
	if err != nil {
		return fmt.Errorf("node %s: kubelet certificate: %w", n.Name, err)
	}
	if err := os.WriteFile(st.kubeletCert(n.Name), certPEM, 0o644); err != nil {
		return fmt.Errorf("node %s: kubelet certificate: %w", n.Name, err)
	}
	if err := os.WriteFile(st.kubeletKey(n.Name), keyPEM, 0o600); err != nil {
		return fmt.Errorf("node %s: kubelet key: %w", n.Name, err)
	}
	spec := procSpec{
		name: "kubelet stand-in on " + n.Name,
		argv: []string{l.sys.ip, "netns", "exec", n.Netns, st.LabBin, KubeletCommand,
			"--state-dir", st.StateRoot, "--name", st.Name, "--node", n.Name,
			"--listen", n.kubeletAddr(), "--cert", st.kubeletCert(n.Name), "--key", st.kubeletKey(n.Name)},
		env: os.Environ(),
		dir: st.nodeDir(n.Name),
		log: st.kubeletLog(n.Name),
	}
	l.log.Info("starting kubelet stand-in", "node", n.Name, "listen", n.kubeletAddr(), "log", spec.log)
	ps, err := l.procs.start(spec)
	if err != nil {
		return fmt.Errorf("node %s: %w", n.Name, err)
	}
	n.Kubelet = ps
	if err := st.save(); err != nil {
		return err
	}
	return l.waitKubeletReady(ctx, n, certPEM)
}

// waitKubeletReady polls the stand-in from the underlay netns, trusting
// only its certificate: it answers 404 to anything but a port-forward.
// l.mu is held.
func (l *Lab) waitKubeletReady(ctx context.Context, n *nodeState, certPEM []byte) error {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(certPEM) {
		return fmt.Errorf("node %s: kubelet certificate unreadable", n.Name)
	}
	client := &http.Client{Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext:       l.st.underlayDial,
		TLSClientConfig:   &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
	}}
	url := "https://" + n.kubeletAddr() + "/"
	return l.pollReady(ctx, "kubelet stand-in on node "+n.Name, n.Kubelet, func(ctx context.Context) error {
		return getStatus(ctx, client, url, http.StatusNotFound)
	})
}

// stopKubelets stops the nodes' kubelet stand-ins. l.mu is held.
func (l *Lab) stopKubelets(ctx context.Context, grace time.Duration) error {
	var errs []error
	for _, n := range l.st.Nodes {
		if n.Kubelet != nil {
			errs = append(errs, l.procs.stop(ctx, n.Kubelet, grace))
		}
	}
	return errors.Join(errs...)
}

// errNoSuchPod is the kubelet's answer (404) for a pod it does not run.
var errNoSuchPod = errors.New("pod does not exist")

// kubeletPodNetns returns the netns to port-forward into for the pod
// namespace/name (of uid, if given), if node runs it: the node's own netns
// for its node proxy and agent Pods (hostNetwork), the pod's netns for the
// lab's pods on the node once their network exists. Anything else is
// errNoSuchPod.
func (s *state) kubeletPodNetns(node, namespace, name string, uid types.UID) (string, error) {
	n := s.node(node)
	if n == nil {
		return "", fmt.Errorf("lab %s has no node %q", s.Name, node)
	}
	if namespace == PalisadeSystemNamespace && !s.NoPalisade && (name == NodeProxyPodName(node) || name == AgentPodName(node)) {
		return n.Netns, nil
	}
	p := s.pod(namespace, name)
	if p == nil || p.Node != node || p.Phase == "" || uid != "" && string(uid) != p.UID {
		return "", errNoSuchPod
	}
	return p.Netns, nil
}

// kubeletHandler serves /portForward/{namespace}/{pod}[/{uid}] (GET or
// POST, SPDY or WebSocket, as the kubelet does) for the pods lookup finds,
// connecting each forwarded stream to 127.0.0.1:<port> inside the pod's
// netns with dial. Every other path is 404, and so is a pod lookup does
// not find (one of another node).
type kubeletHandler struct {
	lookup func(namespace, name string, uid types.UID) (netns string, err error)
	dial   func(ctx context.Context, netns, addr string) (net.Conn, error)
	log    *slog.Logger
}

// The kubelet's defaults for streaming connections.
const (
	kubeletStreamIdleTimeout     = 4 * time.Hour
	kubeletStreamCreationTimeout = 30 * time.Second
)

func (h *kubeletHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rest, ok := strings.CutPrefix(r.URL.Path, "/portForward/")
	parts := strings.Split(rest, "/")
	if !ok || len(parts) < 2 || len(parts) > 3 || parts[0] == "" || parts[1] == "" {
		h.log.Info("refused: not a port-forward", "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr)
		http.NotFound(w, r)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodPost {
		w.Header().Set("Allow", "GET, POST")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	namespace, name := parts[0], parts[1]
	var uid types.UID
	if len(parts) == 3 {
		uid = types.UID(parts[2])
	}
	key := namespace + "/" + name
	netnsName, err := h.lookup(namespace, name, uid)
	if errors.Is(err, errNoSuchPod) {
		h.log.Info("refused: pod not on this node", "pod", key, "remote", r.RemoteAddr)
		http.Error(w, err.Error(), http.StatusNotFound)
		return
	}
	if err != nil {
		h.log.Warn("pod lookup failed", "pod", key, "error", err)
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	opts, err := portforward.NewV4Options(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	h.log.Info("port-forward", "pod", key, "netns", netnsName, "remote", r.RemoteAddr)
	fw := &netnsPortForwarder{netns: netnsName, dial: h.dial, log: h.log.With("pod", key)}
	portforward.ServePortForward(w, r, fw, name, uid, opts, kubeletStreamIdleTimeout, kubeletStreamCreationTimeout, portforward.SupportedProtocols)
	h.log.Info("port-forward done", "pod", key, "remote", r.RemoteAddr)
}

// netnsPortForwarder connects forwarded streams to 127.0.0.1:<port> in a
// netns, as a container runtime does in the pod's sandbox.
type netnsPortForwarder struct {
	netns string
	dial  func(ctx context.Context, netns, addr string) (net.Conn, error)
	log   *slog.Logger
}

// PortForward implements portforward.PortForwarder. It returns once the
// pod's side has finished sending (the caller then closes the stream, which
// tells the client), or on an error.
func (f *netnsPortForwarder) PortForward(ctx context.Context, _ string, _ types.UID, port int32, stream io.ReadWriteCloser) error {
	if port <= 0 || port > 65535 {
		return fmt.Errorf("invalid port %d", port)
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(int(port)))
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	conn, err := f.dial(dctx, f.netns, addr)
	cancel()
	if err != nil {
		f.log.Info("port-forward dial failed", "addr", addr, "netns", f.netns, "error", err)
		return fmt.Errorf("dial %s in netns %s: %w", addr, f.netns, err)
	}
	defer conn.Close()
	go func() {
		// Client to pod; at the client's end, half-close towards the pod.
		_, err := io.Copy(conn, stream)
		if cw, ok := conn.(interface{ CloseWrite() error }); ok && err == nil {
			_ = cw.CloseWrite()
			return
		}
		_ = conn.Close()
	}()
	if _, err := io.Copy(stream, conn); err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("port %d: %w", port, err)
	}
	return nil
}

// dialInNetns connects from inside the named netns, opened for this dial
// only, so that nothing holds it afterwards.
func dialInNetns(ctx context.Context, netnsName, network, addr string) (net.Conn, error) {
	h, err := pnetns.Open(netnsPath(netnsName))
	if err != nil {
		return nil, err
	}
	defer h.Close()
	d := &pnetns.Dialer{Netns: h}
	return d.DialContext(ctx, network, addr)
}

// RunKubelet runs the kubelet-serve subcommand with its flags:
//
//	--state-dir DIR   the labs' state directory (required)
//	--name NAME       the lab (required)
//	--node NODE       the node it serves (required)
//	--listen IP:PORT  where to listen, in the current netns (required)
//	--cert, --key     its TLS serving certificate and key (required)
//
// It serves HTTPS (HTTP/1.1 only, which SPDY upgrades need) until ctx ends,
// authenticating nobody beyond TLS: it listens only inside the lab's
// underlay network. For each request it reads the lab's state (lab.json)
// to find the pod on its node, so it follows pods the lab adds and deletes.
func RunKubelet(ctx context.Context, args []string, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	fs := flag.NewFlagSet(KubeletCommand, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	stateDir := fs.String("state-dir", "", "the labs' state directory")
	name := fs.String("name", "", "lab name")
	node := fs.String("node", "", "node served")
	listen := fs.String("listen", "", "IP:PORT to listen on")
	certFile := fs.String("cert", "", "TLS certificate")
	keyFile := fs.String("key", "", "TLS key")
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("%s: %w", KubeletCommand, err)
	}
	if *stateDir == "" || *name == "" || *node == "" || *listen == "" || *certFile == "" || *keyFile == "" || fs.NArg() > 0 {
		return fmt.Errorf("%s: want --state-dir DIR --name LAB --node NODE --listen IP:PORT --cert FILE --key FILE", KubeletCommand)
	}
	if _, err := netip.ParseAddrPort(*listen); err != nil {
		return fmt.Errorf("%s: --listen: %w", KubeletCommand, err)
	}
	cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
	if err != nil {
		return fmt.Errorf("%s: %w", KubeletCommand, err)
	}
	st, err := loadState(*name, *stateDir)
	if err != nil {
		return fmt.Errorf("%s: %w", KubeletCommand, err)
	}
	if st.node(*node) == nil {
		return fmt.Errorf("%s: lab %s has no node %q", KubeletCommand, *name, *node)
	}
	h := &kubeletHandler{
		lookup: func(namespace, pod string, uid types.UID) (string, error) {
			st, err := loadState(*name, *stateDir)
			if err != nil {
				return "", err
			}
			return st.kubeletPodNetns(*node, namespace, pod, uid)
		},
		dial: func(ctx context.Context, netnsName, addr string) (net.Conn, error) {
			return dialInNetns(ctx, netnsName, "tcp4", addr)
		},
		log: log,
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", *listen)
	if err != nil {
		return fmt.Errorf("%s: %w", KubeletCommand, err)
	}
	return serveKubelet(ctx, ln, h, cert, log)
}

// serveKubelet serves h over TLS on ln until ctx ends.
func serveKubelet(ctx context.Context, ln net.Listener, h http.Handler, cert tls.Certificate, log *slog.Logger) error {
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	srv := &http.Server{
		Handler:           h,
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12, NextProtos: []string{"http/1.1"}},
		Protocols:         &protocols,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-ctx.Done():
		case <-done:
		}
		_ = srv.Close()
	}()
	log.Info("kubelet stand-in serving port-forwards", "listen", ln.Addr().String())
	if err := srv.ServeTLS(ln, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("%s: %w", KubeletCommand, err)
	}
	return nil
}
