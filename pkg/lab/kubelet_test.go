package lab

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509/pkix"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/httpstream"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/transport/spdy"
	kubeletportforward "k8s.io/kubelet/pkg/cri/streaming/portforward"
)

// kubeletTestState is a lab of two nodes with pods on both.
func kubeletTestState() *state {
	return &state{
		Name: "kt",
		Nodes: []*nodeState{
			{Name: "node1", Netns: "kt-node-node1", UnderlayIP: netip.MustParseAddr("10.88.0.11")},
			{Name: "node2", Netns: "kt-node-node2", UnderlayIP: netip.MustParseAddr("10.88.0.12")},
		},
		Pods: []*podState{
			{Namespace: "shop", Name: "a", UID: "uid-a", Node: "node1", Netns: "kt-shop-a", Phase: corev1.PodRunning},
			{Namespace: "shop", Name: "b", UID: "uid-b", Node: "node2", Netns: "kt-shop-b", Phase: corev1.PodRunning},
			{Namespace: "shop", Name: "planned", Node: "node1", Netns: "kt-shop-planned"},
		},
	}
}

func TestKubeletPodNetns(t *testing.T) {
	st := kubeletTestState()
	for _, c := range []struct {
		node, ns, name, uid, want string
	}{
		{"node1", "shop", "a", "", "kt-shop-a"},
		{"node1", "shop", "a", "uid-a", "kt-shop-a"},
		{"node1", "shop", "a", "uid-x", ""},
		{"node1", "shop", "b", "", ""},
		{"node2", "shop", "b", "", "kt-shop-b"},
		{"node1", "shop", "planned", "", ""},
		{"node1", "shop", "nosuch", "", ""},
		{"node1", PalisadeSystemNamespace, NodeProxyPodName("node1"), "", "kt-node-node1"},
		{"node1", PalisadeSystemNamespace, AgentPodName("node1"), "", "kt-node-node1"},
		{"node1", PalisadeSystemNamespace, NodeProxyPodName("node2"), "", ""},
		{"node2", PalisadeSystemNamespace, NodeProxyPodName("node2"), "", "kt-node-node2"},
		{"node1", "default", NodeProxyPodName("node1"), "", ""},
	} {
		got, err := st.kubeletPodNetns(c.node, c.ns, c.name, types.UID(c.uid))
		if c.want == "" {
			if err != errNoSuchPod {
				t.Errorf("%s: %s/%s uid %q: %q %v, want errNoSuchPod", c.node, c.ns, c.name, c.uid, got, err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("%s: %s/%s uid %q: %q %v, want %s", c.node, c.ns, c.name, c.uid, got, err, c.want)
		}
	}
	if _, err := st.kubeletPodNetns("node3", "shop", "a", ""); err == nil || err == errNoSuchPod {
		t.Errorf("unknown node: %v", err)
	}
	st.NoPalisade = true
	if _, err := st.kubeletPodNetns("node1", PalisadeSystemNamespace, NodeProxyPodName("node1"), ""); err != errNoSuchPod {
		t.Errorf("node proxy pod without Palisade: %v", err)
	}
	names := map[string]string{}
	for _, p := range daemonPods("node1") {
		names[p.Name] = p.Labels["app.kubernetes.io/name"]
		if p.Namespace != PalisadeSystemNamespace || !p.Spec.HostNetwork || p.Spec.NodeName != "node1" || p.Labels["app.kubernetes.io/part-of"] != "palisade" ||
			p.Spec.ServiceAccountName != p.Labels["app.kubernetes.io/name"] {
			t.Errorf("daemon pod %+v", p)
		}
	}
	if names["palisade-nodeproxy-node1"] != "palisade-nodeproxy" || names["palisade-agent-node1"] != "palisade-agent" || len(names) != 2 {
		t.Errorf("daemon pods %v", names)
	}
}

// TestKubeletHandler runs the stand-in's server (TLS, handler, forwarder)
// on loopback with client-go's port-forward client, as the API server
// would call a kubelet: a pod of its node is forwarded into the pod's
// netns, everything else is 404.
func TestKubeletHandler(t *testing.T) {
	st := kubeletTestState()
	app := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "app path=%s", r.URL.Path)
	}), ReadHeaderTimeout: 5 * time.Second}
	appLn, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = app.Serve(appLn) }()
	t.Cleanup(func() { app.Close() })
	appPort := appLn.Addr().(*net.TCPAddr).Port

	var mu sync.Mutex
	var dialed []string
	h := &kubeletHandler{
		lookup: func(namespace, name string, uid types.UID) (string, error) {
			return st.kubeletPodNetns("node1", namespace, name, uid)
		},
		// Record the netns instead of entering it.
		dial: func(ctx context.Context, netnsName, addr string) (net.Conn, error) {
			mu.Lock()
			dialed = append(dialed, netnsName+" "+addr)
			mu.Unlock()
			var d net.Dialer
			return d.DialContext(ctx, "tcp4", addr)
		},
		log: testLogger(t),
	}
	certPEM, keyPEM, err := selfSignedCert(pkix.Name{CommonName: "kubelet node1"}, nil, []net.IP{net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- serveKubelet(ctx, ln, h, cert, testLogger(t)) }()
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	base := "https://" + ln.Addr().String()

	// Not a port-forward, or not a pod of node1: 404.
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // the API server does not verify kubelets either
	for _, path := range []string{"/", "/healthz", "/pods", "/exec/shop/a/c", "/portForward/", "/portForward/shop", "/portForward/shop/a/uid-a/x",
		"/portForward/shop/b", "/portForward/shop/planned", "/portForward/shop/a/uid-x",
		"/portForward/" + PalisadeSystemNamespace + "/" + NodeProxyPodName("node2")} {
		resp, err := client.Post(base+path, "text/plain", nil)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("POST %s: %s %s, want 404", path, resp.Status, body)
		}
	}
	if resp, err := client.Head(base + "/portForward/shop/a"); err != nil || resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("HEAD: %v %v", resp, err)
	}

	// client-go's SPDY client, with the streams its port-forwarder opens
	// per connection: an error stream and a data stream for the port.
	rt, upgrader, err := spdy.RoundTripperFor(&rest.Config{TLSClientConfig: rest.TLSClientConfig{Insecure: true}})
	if err != nil {
		t.Fatal(err)
	}
	dial := func(path string) (httpstream.Connection, error) {
		u, err := url.Parse(base + path)
		if err != nil {
			t.Fatal(err)
		}
		conn, _, err := spdy.NewDialer(upgrader, &http.Client{Transport: rt}, http.MethodPost, u).Dial(kubeletportforward.ProtocolV1Name)
		return conn, err
	}
	get := func(conn httpstream.Connection, requestID int, path string) (string, error) {
		hdr := http.Header{}
		hdr.Set(corev1.StreamType, corev1.StreamTypeError)
		hdr.Set(corev1.PortHeader, strconv.Itoa(appPort))
		hdr.Set(corev1.PortForwardRequestIDHeader, strconv.Itoa(requestID))
		errStream, err := conn.CreateStream(hdr)
		if err != nil {
			return "", err
		}
		defer errStream.Reset() //nolint:errcheck
		errStream.Close()
		hdr.Set(corev1.StreamType, corev1.StreamTypeData)
		data, err := conn.CreateStream(hdr)
		if err != nil {
			return "", err
		}
		defer data.Reset() //nolint:errcheck
		if _, err := fmt.Fprintf(data, "GET %s HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n", path); err != nil {
			return "", err
		}
		data.Close()
		resp, err := http.ReadResponse(bufio.NewReader(data), nil)
		if err != nil {
			msg, _ := io.ReadAll(errStream)
			return "", fmt.Errorf("%w (error stream: %s)", err, msg)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		return string(body), err
	}

	for path, netnsName := range map[string]string{
		"/portForward/shop/a":       "kt-shop-a",
		"/portForward/shop/a/uid-a": "kt-shop-a",
		"/portForward/" + PalisadeSystemNamespace + "/" + NodeProxyPodName("node1"): "kt-node-node1",
	} {
		mu.Lock()
		dialed = nil
		mu.Unlock()
		conn, err := dial(path)
		if err != nil {
			t.Errorf("port-forward %s: %v", path, err)
			continue
		}
		for i := range 2 { // two connections over one forward
			body, err := get(conn, i, fmt.Sprintf("/x%d", i))
			if err != nil || body != fmt.Sprintf("app path=/x%d", i) {
				t.Errorf("port-forward %s: %q %v", path, body, err)
			}
		}
		conn.Close()
		mu.Lock()
		if len(dialed) != 2 || dialed[0] != fmt.Sprintf("%s 127.0.0.1:%d", netnsName, appPort) {
			t.Errorf("port-forward %s dialed %v, want netns %s twice", path, dialed, netnsName)
		}
		mu.Unlock()
	}

	// The pod of another node, through client-go: refused at the upgrade.
	if conn, err := dial("/portForward/" + PalisadeSystemNamespace + "/" + NodeProxyPodName("node2")); err == nil || !strings.Contains(err.Error(), "pod does not exist") {
		t.Errorf("port-forward to node2's node proxy via node1: %v", err)
		if conn != nil {
			conn.Close()
		}
	}
}

// TestLabKubePortForward runs "kubectl port-forward" through the lab's
// API server to the node proxies' admin endpoint (hostNetwork Pods in
// palisade-system) and to pods' app ports, as a kubelet would serve it.
func TestLabKubePortForward(t *testing.T) {
	needRoot(t)
	kubeBin := testKubeBinDir(t)
	bin := palisadeBinDir(t)
	name := labName(t)
	stateDir := t.TempDir()
	before := viewHost(t)
	objs := mustDecode(t, `
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {palisade.dev/mtls: enabled}}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: shop, labels: {app: server}}
spec:
  nodeName: node1
  containers: [{name: c, command: ["$(LAB_BIN)", "serve-http", "--addr", ":8080"], ports: [{containerPort: 8080}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: plain}
spec:
  nodeName: node2
  containers: [{name: c, command: ["$(LAB_BIN)", "serve-http", "--addr", ":8080"], ports: [{containerPort: 8080}]}]
`)
	l := upForTest(t, Config{Name: name, StateDir: stateDir, BinDir: bin, LabBin: selfBin(t), Objects: objs, Kube: true, KubeBinDir: kubeBin,
		KubeCRDs: []string{filepath.Join("..", "..", "manifests", "crds")},
		Logger:   testLogger(t), ReadyTimeout: 60 * time.Second})
	needKubectl(t, l)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	topo := l.Status()
	nodeIP := map[string]string{}
	for _, n := range topo.Nodes {
		nodeIP[n.Name] = n.UnderlayIP.String()
	}
	l.mu.Lock()
	var kubeletPIDs []int
	for _, n := range l.st.Nodes {
		if n.Kubelet == nil {
			t.Errorf("node %s: no kubelet stand-in", n.Name)
			continue
		}
		kubeletPIDs = append(kubeletPIDs, n.Kubelet.PID)
		want := fmt.Sprintf("net:[%d]", netnsInode(n.Netns))
		if got, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", n.Kubelet.PID)); err != nil || got != want {
			t.Errorf("node %s: kubelet stand-in in netns %s, want %s (%v)", n.Name, got, want, err)
		}
	}
	l.mu.Unlock()

	client, err := l.KubeClient()
	if err != nil {
		t.Fatal(err)
	}
	nodes, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes.Items {
		if n.Status.DaemonEndpoints.KubeletEndpoint.Port != KubeletPort {
			t.Errorf("node %s: kubelet endpoint %+v", n.Name, n.Status.DaemonEndpoints)
		}
	}

	t.Run("node proxy pods, one per node", func(t *testing.T) {
		out, err := l.Kubectl(ctx, "get", "pods", "-n", PalisadeSystemNamespace, "-l", "app.kubernetes.io/name=palisade-nodeproxy", "-o", "wide")
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("kubectl get pods -o wide:\n%s", out)
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		seen := map[string]bool{}
		for _, line := range lines[1:] {
			// NAME READY STATUS RESTARTS AGE IP NODE NOMINATED-NODE READINESS-GATES
			f := strings.Fields(line)
			if len(f) < 7 {
				t.Errorf("line %q", line)
				continue
			}
			node := f[6]
			if f[0] != NodeProxyPodName(node) || f[1] != "1/1" || f[2] != "Running" || f[5] != nodeIP[node] || seen[node] {
				t.Errorf("pod line %q (node %s, underlay IP %s)", line, node, nodeIP[node])
			}
			seen[node] = true
		}
		if len(seen) != len(topo.Nodes) {
			t.Errorf("node proxy pods on %v, nodes %v", seen, nodeIP)
		}
		var agents corev1.PodList
		kubectlJSON(t, ctx, l, &agents, "get", "pods", "-n", PalisadeSystemNamespace, "-l", "app.kubernetes.io/name=palisade-agent,app.kubernetes.io/part-of=palisade")
		for _, p := range agents.Items {
			if p.Name != AgentPodName(p.Spec.NodeName) || !p.Spec.HostNetwork || p.Status.Phase != corev1.PodRunning || p.Status.PodIP != nodeIP[p.Spec.NodeName] ||
				len(p.Spec.Containers) != 1 || len(p.Spec.Containers[0].Ports) != 1 || p.Spec.Containers[0].Ports[0].ContainerPort != AgentMetricsPort {
				t.Errorf("agent pod %s on %s: %+v %+v", p.Name, p.Spec.NodeName, p.Spec, p.Status)
			}
		}
		if len(agents.Items) != len(topo.Nodes) {
			t.Errorf("%d agent pods, %d nodes", len(agents.Items), len(topo.Nodes))
		}
		// Not the lab's pods: its own bookkeeping never saw them.
		for _, p := range topo.Pods {
			if p.Namespace == PalisadeSystemNamespace {
				t.Errorf("the lab counts %s/%s as its pod", p.Namespace, p.Name)
			}
		}
	})

	t.Run("kubectl port-forward to each node proxy's admin endpoint", func(t *testing.T) {
		for node := range nodeIP {
			local := kubectlPortForward(t, ctx, l, PalisadeSystemNamespace, "pod/"+NodeProxyPodName(node), NodeProxyAdminPort)
			body := httpGet(t, fmt.Sprintf("http://127.0.0.1:%d/config_dump", local))
			var dump struct {
				Node string `json:"node"`
			}
			if err := json.Unmarshal(body, &dump); err != nil || dump.Node != node {
				t.Errorf("config_dump through %s's node proxy pod: node %q (%v)\n%s", node, dump.Node, err, body)
			}
		}
	})

	t.Run("kubectl port-forward to pods' app ports", func(t *testing.T) {
		for _, target := range []string{"shop/server", "plain/web"} {
			ns, pod, _ := strings.Cut(target, "/")
			local := kubectlPortForward(t, ctx, l, ns, "pod/"+pod, 8080)
			body := httpGet(t, fmt.Sprintf("http://127.0.0.1:%d/", local))
			if !strings.Contains(string(body), "hostname="+pod) {
				t.Errorf("port-forward to %s: %q", target, body)
			}
		}
	})

	t.Run("a kubelet refuses other nodes' pods", func(t *testing.T) {
		hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
			DialContext:     l.st.underlayDial,
			TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // the API server does not verify kubelets either
		}}
		for path, want := range map[string]int{
			"/portForward/" + PalisadeSystemNamespace + "/" + NodeProxyPodName("node2"): http.StatusNotFound,
			"/portForward/plain/web": http.StatusNotFound,
			"/healthz":               http.StatusNotFound,
		} {
			resp, err := hc.Post("https://"+net.JoinHostPort(nodeIP["node1"], strconv.Itoa(KubeletPort))+path, "text/plain", nil)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != want {
				t.Errorf("node1's kubelet, POST %s: %s", path, resp.Status)
			}
		}
	})

	dctx, dcancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer dcancel()
	if err := l.Down(dctx); err != nil {
		t.Fatalf("down: %v", err)
	}
	checkNothingLeft(t, name, before, stateDir, kubeletPIDs)
}

// kubectlPortForward runs "kubectl port-forward -n NS TARGET LOCAL:PORT"
// until the test ends and returns the local port once it forwards.
func kubectlPortForward(t *testing.T, ctx context.Context, l *Lab, ns, target string, port int) int {
	t.Helper()
	fl, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	local := fl.Addr().(*net.TCPAddr).Port
	fl.Close()
	cmd := exec.CommandContext(ctx, l.Status().Kube.Kubectl, "--kubeconfig", l.Kubeconfig(), "port-forward", "-n", ns, target,
		fmt.Sprintf("%d:%d", local, port), "--address", "127.0.0.1")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if s := strings.TrimSpace(stderr.String()); s != "" {
			t.Logf("kubectl port-forward %s/%s stderr: %s", ns, target, s)
		}
	})
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	want := fmt.Sprintf("Forwarding from 127.0.0.1:%d -> %d", local, port)
	timeout := time.After(30 * time.Second)
	for {
		select {
		case line, ok := <-lines:
			if !ok {
				t.Fatalf("kubectl port-forward %s/%s %d:%d ended: %s", ns, target, local, port, stderr.String())
			}
			if strings.Contains(line, want) {
				go func() {
					for range lines {
					}
				}()
				return local
			}
		case <-timeout:
			t.Fatalf("kubectl port-forward %s/%s: no %q after 30s: %s", ns, target, want, stderr.String())
		}
	}
}

func httpGet(t *testing.T, url string) []byte {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s %v\n%s", url, resp.Status, err, body)
	}
	return body
}

func TestKubeletAPIServerFlags(t *testing.T) {
	st := &state{Name: "kc", Underlay: "kc-underlay", StateRoot: t.TempDir(), Kube: &kubeState{APIServerIP: kubeAPIServerIP()}}
	argv := strings.Join(st.kubeAPIServerArgv("ip"), " ")
	if !strings.Contains(argv, "--kubelet-preferred-address-types InternalIP") {
		t.Errorf("kube-apiserver argv: %s", argv)
	}
	n := &nodeState{Name: "node1", UnderlayIP: netip.MustParseAddr("10.88.0.11")}
	if got := n.kubeletAddr(); got != "10.88.0.11:10250" {
		t.Errorf("kubelet address %s", got)
	}
}
