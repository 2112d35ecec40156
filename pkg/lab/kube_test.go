package lab

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/palisade-net/palisade/pkg/agent"
	"github.com/palisade-net/palisade/pkg/cluster"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// testKubeBinDir finds kube-apiserver and etcd ("make kube" builds them):
// $PALISADE_TEST_BIN, else the repository's .cache/test-bin. Without them
// the test is skipped, except in CI, where it fails.
func testKubeBinDir(t *testing.T) string {
	t.Helper()
	for _, d := range []string{os.Getenv("PALISADE_TEST_BIN"), filepath.Join("..", "..", ".cache", "test-bin")} {
		if d == "" {
			continue
		}
		if dir, err := kubeBinDir(d, ""); err == nil {
			return dir
		}
	}
	if os.Getenv("CI") == "" {
		t.Skip("kube-apiserver and etcd not built (make kube)")
	}
	t.Fatal("kube-apiserver and etcd not found in $PALISADE_TEST_BIN or .cache/test-bin; CI must run make kube")
	return ""
}

// needKubectl skips (in CI: fails) without kubectl.
func needKubectl(t *testing.T, l *Lab) {
	t.Helper()
	if l.Status().Kube.Kubectl != "" {
		return
	}
	if os.Getenv("CI") == "" {
		t.Skip("kubectl not found (make kube builds it)")
	}
	t.Fatal("kubectl not found; CI must run make kube")
}

// fakeKubeCheck is what the fake agent does with --kubeconfig: list the
// namespaces, from wherever it runs.
func fakeKubeCheck(kubeconfig string) string {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return "err=" + strings.ReplaceAll(err.Error(), " ", "_")
	}
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return "err=" + strings.ReplaceAll(err.Error(), " ", "_")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	list, err := c.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		return "err=" + strings.ReplaceAll(err.Error(), " ", "_")
	}
	var names []string
	for _, ns := range list.Items {
		names = append(names, ns.Name)
	}
	return "server=" + cfg.Host + " namespaces=" + strings.Join(names, ",")
}

func TestKubeConfigValidation(t *testing.T) {
	empty := t.TempDir()
	t.Setenv("PALISADE_TEST_BIN", "")
	t.Setenv("PATH", empty)
	st := &state{Name: "x"}
	if err := configureKube(Config{KubeBinDir: empty}, st); err == nil || !strings.Contains(err.Error(), "need Kube") {
		t.Errorf("KubeBinDir without Kube: %v", err)
	}
	if err := configureKube(Config{Kube: true, BinDir: empty}, st); err == nil || !strings.Contains(err.Error(), "make kube") {
		t.Errorf("no binaries: %v", err)
	}
	if err := configureKube(Config{Kube: true, KubeBinDir: empty}, st); err == nil || !strings.Contains(err.Error(), "make kube") {
		t.Errorf("empty kube bin dir: %v", err)
	}
	bin := t.TempDir()
	for _, b := range []string{KubeAPIServerBinary, EtcdBinary, KubectlBinary} {
		if err := os.WriteFile(filepath.Join(bin, b), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	crds := t.TempDir()
	if err := configureKube(Config{Kube: true, BinDir: bin, KubeCRDs: []string{crds}}, st); err != nil {
		t.Fatal(err)
	}
	if st.Kube.BinDir != bin || st.Kube.Kubectl != filepath.Join(bin, KubectlBinary) || !slices.Equal(st.Kube.CRDs, []string{crds}) ||
		st.Kube.APIServerIP.String() != "10.88.0.1" {
		t.Errorf("kube state %+v", st.Kube)
	}
	if _, err := Up(context.Background(), Config{Name: "x", StateDir: t.TempDir(), BinDir: empty, Kube: true, NoPalisade: true, Objects: mustDecode(t, `
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: default}
spec: {nodeName: n1, containers: [{name: c, command: [sleep, infinity]}]}
`)}); err == nil || !strings.Contains(err.Error(), "make kube") {
		t.Errorf("Up without binaries: %v", err)
	}
}

func mustDecode(t *testing.T, y string) *cluster.Snapshot {
	t.Helper()
	s, err := Decode(y)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestKubeCredentialsAndKubeconfigs(t *testing.T) {
	st := &state{Name: "kc", Underlay: "kc-underlay", StateRoot: t.TempDir(), Kube: &kubeState{APIServerIP: kubeAPIServerIP(), ForwardPort: 40123}}
	cred, err := st.writeKubeCredentials()
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(cred.caPEM)
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	for _, host := range []string{"10.88.0.1", "127.0.0.1", "kubernetes", "kubernetes.default.svc", "localhost"} {
		if err := cert.VerifyHostname(host); err != nil {
			t.Errorf("serving certificate: %v", err)
		}
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, DNSName: "kubernetes.default.svc"}); err != nil {
		t.Errorf("self-signed certificate does not verify against itself: %v", err)
	}
	tokens, err := os.ReadFile(st.kubeTokenFile())
	if err != nil {
		t.Fatal(err)
	}
	if want := cred.token + "," + KubeAdminUser + "," + KubeAdminUser + ",\"system:masters\"\n"; string(tokens) != want {
		t.Errorf("token file %q, want %q", tokens, want)
	}
	for _, f := range []string{st.kubeServingKey(), st.kubeSAKey(), st.kubeTokenFile()} {
		if fi, err := os.Stat(f); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v %v", f, fi.Mode(), err)
		}
	}
	for path, server := range map[string]string{st.kubeconfigPath(): "https://127.0.0.1:40123", st.nodeKubeconfigPath(): "https://10.88.0.1:6443"} {
		if err := writeKubeconfig(path, st.Name, server, cred); err != nil {
			t.Fatal(err)
		}
		cfg, err := clientcmd.BuildConfigFromFlags("", path)
		if err != nil {
			t.Fatal(err)
		}
		if cfg.Host != server || cfg.BearerToken != cred.token || string(cfg.CAData) != string(cred.caPEM) {
			t.Errorf("%s: host %s token %q", path, cfg.Host, cfg.BearerToken)
		}
	}
	argv := strings.Join(st.kubeAPIServerArgv("ip"), " ")
	for _, want := range []string{"--bind-address 10.88.0.1", "--advertise-address 10.88.0.1", "--secure-port 6443",
		"--authorization-mode RBAC", "--service-cluster-ip-range 10.96.0.0/16", "--token-auth-file " + st.kubeTokenFile(),
		"--service-account-signing-key-file " + st.kubeSAKey(), "netns exec kc-underlay"} {
		if !strings.Contains(argv, want) {
			t.Errorf("kube-apiserver argv lacks %q: %s", want, argv)
		}
	}
	if argv := strings.Join(st.etcdArgv("ip"), " "); !strings.Contains(argv, "--listen-client-urls http://127.0.0.1:2379") || strings.Contains(argv, "0.0.0.0") {
		t.Errorf("etcd argv: %s", argv)
	}
}

func TestKubeManifests(t *testing.T) {
	objs, err := decodeManifests("stand-ins", ciliumStandInCRDs)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, u := range objs {
		names = append(names, u.GetKind()+"/"+u.GetName())
	}
	if want := []string{"CustomResourceDefinition/ciliumnetworkpolicies.cilium.io", "CustomResourceDefinition/ciliumclusterwidenetworkpolicies.cilium.io"}; !slices.Equal(names, want) {
		t.Errorf("stand-in CRDs %v, want %v", names, want)
	}
	if _, err := decodeManifests("bad", []byte("kind: Foo\n")); err == nil {
		t.Error("a document without apiVersion and name was accepted")
	}
	pod := mustDecode(t, `
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: default, uid: "1234", resourceVersion: "7"}
spec:
  nodeName: n1
  initContainers: [{name: i, command: ["true"]}]
  containers: [{name: c, command: [sleep, infinity]}, {name: d, image: busybox, command: [sleep, infinity]}]
status: {phase: Running}
`).Pods[0]
	got := apiPod(pod)
	if got.UID != "" || got.ResourceVersion != "" || got.Status.Phase != "" || got.Spec.InitContainers[0].Image != DefaultContainerImage ||
		got.Spec.Containers[0].Image != DefaultContainerImage || got.Spec.Containers[1].Image != "busybox" {
		t.Errorf("apiPod: %+v", got)
	}
	if pod.Spec.Containers[0].Image != "" {
		t.Error("apiPod changed its input")
	}
}

// kubeYAML is clusterYAML plus what only an API server makes interesting:
// labelled namespaces, a kind of a stand-in CRD, a ConfigMap.
const kubeYAML = clusterYAML + `
---
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {palisade.dev/mtls: enabled, team: a}}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-l7, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - toPorts:
    - ports: [{port: "8080", protocol: TCP}]
      rules: {http: [{method: GET, path: "/"}]}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: plain}
data: {a: b}
`

// kubectlJSON runs kubectl with -o json and decodes the result.
func kubectlJSON(t *testing.T, ctx context.Context, l *Lab, out any, args ...string) {
	t.Helper()
	data, err := l.Kubectl(ctx, append(args, "-o", "json")...)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, out); err != nil {
		t.Fatalf("kubectl %v: %v\n%s", args, err, data)
	}
}

func TestLabKube(t *testing.T) {
	needRoot(t)
	kubeBin := testKubeBinDir(t)
	name := labName(t)
	stateDir := t.TempDir()
	before := viewHost(t)
	objs := mustDecode(t, strings.Replace(kubeYAML, "metadata: {name: shop}\n---\n", "", 1))
	start := time.Now()
	l, err := Up(context.Background(), Config{
		Name: name, StateDir: stateDir, Objects: objs, NoPalisade: true, Kube: true, KubeBinDir: kubeBin,
		KubeCRDs: []string{filepath.Join("..", "..", "manifests", "crds")},
		LabBin:   selfBin(t), Logger: testLogger(t), ReadyTimeout: 60 * time.Second,
	})
	if err != nil {
		t.Fatalf("up: %v", err)
	}
	t.Logf("up with kube in %s", time.Since(start).Round(time.Millisecond))
	downDone := false
	t.Cleanup(func() {
		if !downDone {
			_ = l.Down(context.Background())
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	topo := l.Status()
	k := topo.Kube
	if k == nil || k.APIServerPID == 0 || k.EtcdPID == 0 || k.ForwarderPID == 0 || k.APIServer != "https://10.88.0.1:6443" ||
		!strings.HasPrefix(k.Forward, "https://127.0.0.1:") || k.Kubeconfig != filepath.Join(l.StateDir(), "kubeconfig") ||
		k.NodeKubeconfig != filepath.Join(l.StateDir(), "kubeconfig-nodes") {
		t.Fatalf("kube status: %+v", k)
	}
	pids := []int{k.APIServerPID, k.EtcdPID, k.ForwarderPID}
	fwdPort := strings.TrimPrefix(k.Forward, "https://127.0.0.1:")
	if l.Kubeconfig() != k.Kubeconfig || l.NodeKubeconfig() != k.NodeKubeconfig || !l.Kube() {
		t.Errorf("Kubeconfig %s NodeKubeconfig %s", l.Kubeconfig(), l.NodeKubeconfig())
	}

	client, err := l.KubeClient()
	if err != nil {
		t.Fatal(err)
	}

	t.Run("API server only in the underlay netns, forwarder on root loopback", func(t *testing.T) {
		if v, err := client.Discovery().ServerVersion(); err != nil || v.GitVersion != "v1.34.4" {
			t.Errorf("server version %+v: %v", v, err)
		}
		body, err := client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		if err != nil || strings.TrimSpace(string(body)) != "ok" {
			t.Errorf("/readyz: %q %v", body, err)
		}
		// etcd and the API server run in the underlay netns, the forwarder
		// in ours (the root netns), and nothing of the lab listens here
		// but the forwarder on loopback.
		underlay := fmt.Sprintf("net:[%d]", netnsInode(l.UnderlayNetns()))
		for pid, want := range map[int]string{k.APIServerPID: underlay, k.EtcdPID: underlay, k.ForwarderPID: selfNetns()} {
			if got, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid)); err != nil || got != want {
				t.Errorf("process %d in netns %s, want %s (%v)", pid, got, want, err)
			}
		}
		tcp, err := os.ReadFile("/proc/self/net/tcp")
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(tcp), "\n")[1:] {
			f := strings.Fields(line)
			// local address, state 0A (LISTEN); 10.88.0.1 is 0100580A.
			if len(f) > 3 && f[3] == "0A" && strings.HasPrefix(f[1], "0100580A:") {
				t.Errorf("a socket listens on the lab's underlay address in the root netns: %s", line)
			}
		}
	})

	t.Run("kubectl through the forwarder", func(t *testing.T) {
		needKubectl(t, l)
		var nsList corev1.NamespaceList
		kubectlJSON(t, ctx, l, &nsList, "get", "namespaces")
		labels := map[string]map[string]string{}
		for _, ns := range nsList.Items {
			labels[ns.Name] = ns.Labels
		}
		if labels["shop"]["palisade.dev/mtls"] != "enabled" || labels["shop"]["team"] != "a" {
			t.Errorf("namespace shop labels %v", labels["shop"])
		}
		if _, ok := labels["plain"]; !ok {
			t.Errorf("namespaces %v lack plain", labels)
		}
		out, err := l.Kubectl(ctx, "get", "ciliumnetworkpolicies", "-n", "shop", "web-l7", "-o", "jsonpath={.spec.ingress[0].toPorts[0].rules.http[0].path}")
		if err != nil || string(out) != "/" {
			t.Errorf("CNP: %q %v", out, err)
		}
		if out, err := l.Kubectl(ctx, "get", "cm", "-n", "plain", "settings", "-o", "jsonpath={.data.a}"); err != nil || string(out) != "b" {
			t.Errorf("ConfigMap: %q %v", out, err)
		}
		if out, err := l.Kubectl(ctx, "auth", "can-i", "create", "pods", "--all-namespaces"); err != nil || strings.TrimSpace(string(out)) != "yes" {
			t.Errorf("admin can-i: %q %v", out, err)
		}
		if _, err := l.Kubectl(ctx, "get", "nosuchkind"); err == nil || !strings.Contains(err.Error(), "nosuchkind") {
			t.Errorf("kubectl error lacks its stderr: %v", err)
		}
		// From a node netns, with the nodes' kubeconfig, over the underlay.
		out, err = l.NodeCommand(ctx, "node2", l.Status().Kube.Kubectl, "--kubeconfig", l.NodeKubeconfig(), "get", "namespace", "shop", "-o", "name").CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != "namespace/shop" {
			t.Errorf("kubectl in node2's netns: %q %v", out, err)
		}
	})

	t.Run("pods as a kubelet reports them", func(t *testing.T) {
		for _, pi := range topo.Pods {
			pod, err := client.CoreV1().Pods(pi.Namespace).Get(ctx, pi.Name, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			n, _ := l.Node(pi.Node)
			ready := map[corev1.PodConditionType]corev1.ConditionStatus{}
			for _, c := range pod.Status.Conditions {
				ready[c.Type] = c.Status
			}
			if string(pod.UID) != pi.UID || pod.Status.PodIP != pi.IP.String() || len(pod.Status.PodIPs) != 1 ||
				pod.Status.HostIP != n.UnderlayIP.String() || pod.Status.Phase != corev1.PodRunning || pod.Spec.NodeName != pi.Node {
				t.Errorf("pod %s/%s: uid %s (lab %s) status %+v", pi.Namespace, pi.Name, pod.UID, pi.UID, pod.Status)
			}
			for _, c := range []corev1.PodConditionType{corev1.PodScheduled, corev1.PodInitialized, corev1.ContainersReady, corev1.PodReady} {
				if ready[c] != corev1.ConditionTrue {
					t.Errorf("pod %s/%s: condition %s is %q", pi.Namespace, pi.Name, c, ready[c])
				}
			}
			if len(pod.Status.ContainerStatuses) != len(pod.Spec.Containers) || !pod.Status.ContainerStatuses[0].Ready {
				t.Errorf("pod %s/%s: container statuses %+v", pi.Namespace, pi.Name, pod.Status.ContainerStatuses)
			}
		}
		if out, err := l.Exec(ctx, "shop/client", "sh", "-c", "echo $GREETING"); err != nil || strings.TrimSpace(string(out)) != "hello client" {
			t.Errorf("exec: %q %v", out, err)
		}
		for _, sa := range []string{"shop/web", "shop/client", "plain/default"} {
			ns, n, _ := strings.Cut(sa, "/")
			if _, err := client.CoreV1().ServiceAccounts(ns).Get(ctx, n, metav1.GetOptions{}); err != nil {
				t.Errorf("service account %s: %v", sa, err)
			}
		}
		nodes, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil || len(nodes.Items) != 2 {
			t.Fatalf("nodes %v %v", nodes, err)
		}
		for _, n := range nodes.Items {
			info, _ := l.Node(n.Name)
			if n.Spec.PodCIDR != info.PodCIDR.String() || len(n.Status.Addresses) == 0 || n.Status.Addresses[0].Address != info.UnderlayIP.String() {
				t.Errorf("node %s: %+v %+v", n.Name, n.Spec, n.Status.Addresses)
			}
		}
	})

	t.Run("services have the lab's cluster IPs", func(t *testing.T) {
		want, err := l.ServiceIP("shop", "web")
		if err != nil {
			t.Fatal(err)
		}
		svc, err := client.CoreV1().Services("shop").Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if svc.Spec.ClusterIP != want.String() || !slices.Equal(svc.Spec.ClusterIPs, []string{want.String()}) {
			t.Errorf("service shop/web: clusterIP %s, lab %s", svc.Spec.ClusterIP, want)
		}
		// The API server's own Service got its first address.
		if kube, err := client.CoreV1().Services("default").Get(ctx, "kubernetes", metav1.GetOptions{}); err != nil || kube.Spec.ClusterIP != "10.96.0.1" {
			t.Errorf("default/kubernetes: %v %v", kube, err)
		}
	})

	t.Run("apply and delete go through the API", func(t *testing.T) {
		var uidBefore string
		if p, err := l.Pod("shop", "web1"); err == nil {
			uidBefore = p.UID
		}
		next := strings.Replace(kubeYAML, "metadata: {name: shop}\n---\n", "", 1)
		next = strings.Replace(next, "team: a", "team: b", 1)
		next = strings.Replace(next, "metadata: {name: web1, namespace: shop, labels: {app: web}}", "metadata: {name: web1, namespace: shop, labels: {app: web, tier: front}}", 1)
		i := strings.Index(next, "---\napiVersion: cilium.io/v2")
		j := strings.Index(next, "---\napiVersion: v1\nkind: ConfigMap")
		next = next[:i] + next[j:] + `
---
apiVersion: v1
kind: Pod
metadata: {name: late, namespace: plain}
spec:
  nodeName: node1
  serviceAccountName: late
  containers: [{name: c, command: ["$(LAB_BIN)", "serve-echo", "--addr", ":9000"], ports: [{containerPort: 9000}]}]
`
		next = strings.Replace(next, "apiVersion: v1\nkind: Pod\nmetadata: {name: visitor, namespace: plain}\nspec:\n  nodeName: node2\n  containers: [{name: c, command: [\"sleep\", \"infinity\"]}]\n---\n", "", 1)
		objs2, err := Decode(next)
		if err != nil {
			t.Fatal(err)
		}
		if objs2.Pod("plain", "visitor") != nil {
			t.Fatal("test YAML still has plain/visitor")
		}
		if err := l.Apply(ctx, objs2); err != nil {
			t.Fatal(err)
		}
		ns, err := client.CoreV1().Namespaces().Get(ctx, "shop", metav1.GetOptions{})
		if err != nil || ns.Labels["team"] != "b" {
			t.Errorf("namespace shop after apply: %v %v", ns.Labels, err)
		}
		if _, err := client.Discovery().RESTClient().Get().AbsPath("/apis/cilium.io/v2/namespaces/shop/ciliumnetworkpolicies/web-l7").DoRaw(ctx); !apierrors.IsNotFound(err) {
			t.Errorf("the CNP gone from the YAML is still there: %v", err)
		}
		web1, err := client.CoreV1().Pods("shop").Get(ctx, "web1", metav1.GetOptions{})
		if err != nil || web1.Labels["tier"] != "front" || string(web1.UID) != uidBefore {
			t.Errorf("web1 after a label change: %v uid %s (before %s) %v", web1.Labels, web1.UID, uidBefore, err)
		}
		late, err := client.CoreV1().Pods("plain").Get(ctx, "late", metav1.GetOptions{})
		if err != nil || late.Status.Phase != corev1.PodRunning || late.Status.PodIP == "" || late.Spec.ServiceAccountName != "late" {
			t.Errorf("late: %+v %v", late, err)
		}
		if _, err := client.CoreV1().Pods("plain").Get(ctx, "visitor", metav1.GetOptions{}); err == nil {
			t.Error("plain/visitor still in the API")
		}
		if err := l.DeletePod(ctx, "plain", "late"); err != nil {
			t.Fatal(err)
		}
		if _, err := client.CoreV1().Pods("plain").Get(ctx, "late", metav1.GetOptions{}); err == nil {
			t.Error("plain/late still in the API after DeletePod")
		}
		// An unknown field is refused, naming it, as with kubectl apply.
		typo, err := Decode(next + "\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: typo, namespace: plain}\ndta: {a: b}\n")
		if err != nil {
			t.Fatal(err)
		}
		if err := l.Apply(ctx, typo); err == nil || !strings.Contains(err.Error(), "ConfigMap plain/typo") || !strings.Contains(err.Error(), "dta") {
			t.Errorf("apply of a ConfigMap with an unknown field: %v", err)
		}
	})

	t.Run("a reloaded lab talks to the same API server", func(t *testing.T) {
		l2, err := Load(name, stateDir)
		if err != nil {
			t.Fatal(err)
		}
		if l2.Kubeconfig() != l.Kubeconfig() {
			t.Errorf("kubeconfig %s vs %s", l2.Kubeconfig(), l.Kubeconfig())
		}
		st := l2.Status()
		if st.Kube == nil || st.Kube.APIServerPID != k.APIServerPID || st.Kube.ForwarderPID != k.ForwarderPID {
			t.Errorf("status of the reloaded lab: %+v", st.Kube)
		}
	})

	downDone = true
	dctx, dcancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer dcancel()
	if err := l.Down(dctx); err != nil {
		t.Fatalf("down: %v", err)
	}
	for _, pi := range topo.Pods {
		pids = append(pids, pi.PIDs...)
	}
	checkNothingLeft(t, name, before, stateDir, pids)
	if c, err := net.DialTimeout("tcp", "127.0.0.1:"+fwdPort, time.Second); err == nil {
		c.Close()
		t.Errorf("forwarder port %s still open after down", fwdPort)
	}
}

func TestLabKubeWithPalisadeFakes(t *testing.T) {
	needRoot(t)
	kubeBin := testKubeBinDir(t)
	recordFile := filepath.Join(t.TempDir(), "record")
	t.Setenv("LAB_FAKE_RECORD", recordFile)
	name := labName(t)
	stateDir := t.TempDir()
	objs := mustDecode(t, `
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {palisade.dev/mtls: enabled}}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: shop}
spec: {nodeName: node1, containers: [{name: c, command: ["sleep", "infinity"]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: shop}
spec: {nodeName: node2, containers: [{name: c, command: ["sleep", "infinity"]}]}
`)
	bin := fakeBinDir(t)
	l := upForTest(t, Config{Name: name, StateDir: stateDir, BinDir: bin, LabBin: selfBin(t), Objects: objs, Kube: true, KubeBinDir: kubeBin,
		Logger: testLogger(t), ReadyTimeout: 60 * time.Second})
	client, err := l.KubeClient()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	deadline := time.Now().Add(20 * time.Second)
	var rec []string
	for {
		rec = readRecord(t, recordFile)
		if len(grepLines(rec, "agent-kube ")) >= 2 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, node := range []string{"node1", "node2"} {
		if got := grepLines(rec, "agent node="+node+" ", "cluster=false", "kubeconfig="+l.NodeKubeconfig()); len(got) != 1 {
			t.Errorf("agent on %s not started with --kubeconfig (and without --cluster):\n%s", node, strings.Join(rec, "\n"))
		}
		if got := grepLines(rec, "nodeproxy node="+node+" ", "kubeconfig="+l.NodeKubeconfig()); len(got) != 1 {
			t.Errorf("node proxy on %s not started with --kubeconfig:\n%s", node, strings.Join(rec, "\n"))
		}
		if got := grepLines(rec, "agent-kube node="+node+" ", "server=https://10.88.0.1:6443", "shop"); len(got) != 1 {
			t.Errorf("agent on %s did not reach the API server from its netns:\n%s", node, strings.Join(rec, "\n"))
		}
	}
	for _, pod := range []string{"a", "b"} {
		api, err := client.CoreV1().Pods("shop").Get(ctx, pod, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		adds := grepLines(rec, "cni ADD pod=shop/"+pod+" ")
		if len(adds) != 1 || !strings.Contains(adds[0], "uid="+string(api.UID)) || !strings.Contains(adds[0], "procs=0") {
			t.Errorf("CNI ADD of %s (API uid %s): %v", pod, api.UID, adds)
		}
	}
	if err := l.DeletePod(ctx, "shop", "a"); err != nil {
		t.Fatal(err)
	}
	rec = readRecord(t, recordFile)
	if dels := grepLines(rec, "cni DEL pod=shop/a "); len(dels) != 1 {
		t.Errorf("CNI DEL of a: %v", dels)
	}
}

// TestLabKubePalisade runs the real agents and node proxies against the
// API server: the lab comes up only when both are ready on every node.
func TestLabKubePalisade(t *testing.T) {
	needRoot(t)
	kubeBin := testKubeBinDir(t)
	bin := palisadeBinDir(t)
	name := labName(t)
	stateDir := t.TempDir()
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
metadata: {name: client, namespace: shop}
spec: {nodeName: node2, containers: [{name: c, command: ["sleep", "infinity"]}]}
---
apiVersion: v1
kind: Service
metadata: {name: server, namespace: shop}
spec: {selector: {app: server}, ports: [{port: 80, targetPort: 8080}]}
`)
	l := upForTest(t, Config{Name: name, StateDir: stateDir, BinDir: bin, LabBin: selfBin(t), Objects: objs, Kube: true, KubeBinDir: kubeBin,
		KubeCRDs: []string{filepath.Join("..", "..", "manifests", "crds")},
		Logger:   testLogger(t), ReadyTimeout: 60 * time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, n := range l.Status().Nodes {
		if n.AgentPID == 0 || n.NodeProxyPID == 0 {
			t.Errorf("node %s: %+v", n.Name, n)
		}
		if err := l.WaitAgentReady(ctx, n.Name); err != nil {
			t.Error(err)
		}
		if err := l.WaitNodeProxyReady(ctx, n.Name); err != nil {
			t.Error(err)
		}
	}
	// The agents follow the API server: they annotate their pods.
	client, err := l.KubeClient()
	if err != nil {
		t.Fatal(err)
	}
	for _, pod := range []string{"server", "client"} {
		var got string
		for range 100 {
			p, err := client.CoreV1().Pods("shop").Get(ctx, pod, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if got = p.Annotations[agent.EnrollmentAnnotation]; got == "enrolled" {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if got != "enrolled" {
			t.Errorf("pod shop/%s: %s=%q", pod, agent.EnrollmentAnnotation, got)
		}
	}
	// Through the tunnel: the server's node proxy dials the app from the
	// server pod's own address.
	serverIP, _ := l.PodIP("shop", "server")
	var out []byte
	for range 50 {
		if out, err = l.Exec(ctx, "shop/client", "curl", "-sS", "--max-time", "5", "http://server/"); err == nil {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil || !strings.Contains(string(out), "hostname=server") || !strings.Contains(string(out), "remote="+serverIP.String()+":") {
		t.Errorf("client -> server through Palisade: %q %v", out, err)
	}
}

// palisadeBinDir finds the real palisade-agent and palisade-nodeproxy with
// --kubeconfig: $PALISADE_BIN (set by make), else the repository's bin/.
func palisadeBinDir(t *testing.T) string {
	t.Helper()
	for _, d := range []string{os.Getenv("PALISADE_BIN"), filepath.Join("..", "..", "bin")} {
		if d == "" {
			continue
		}
		abs, err := filepath.Abs(d)
		if err != nil || !isExecutable(filepath.Join(abs, AgentBinary)) || !isExecutable(filepath.Join(abs, NodeProxyBinary)) {
			continue
		}
		return abs
	}
	if os.Getenv("CI") == "" {
		t.Skip("palisade-agent and palisade-nodeproxy not built (make build)")
	}
	t.Fatal("palisade-agent and palisade-nodeproxy not found in $PALISADE_BIN or bin/; CI must run make build")
	return ""
}

// procsMentioning lists the live processes whose command line contains s.
func procsMentioning(s string) []int {
	entries, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		cmdline, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil || !strings.Contains(string(cmdline), s) {
			continue
		}
		if state, _, err := procStat(pid); err == nil && state != 'Z' {
			out = append(out, pid)
		}
	}
	return out
}

// An object the API server refuses fails up, names the field, and leaves
// nothing behind (the forwarder in the root netns included).
func TestLabKubeRefused(t *testing.T) {
	needRoot(t)
	kubeBin := testKubeBinDir(t)
	ctx := context.Background()
	name := labName(t)
	stateDir := t.TempDir()
	before := viewHost(t)
	objs := mustDecode(t, `
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: shop}
spec: {nodeName: node1, containers: [{name: c, command: ["sleep", "infinity"]}]}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: broken, namespace: shop}
data: {"not a key!": x}
`)
	l, err := Up(ctx, Config{Name: name, StateDir: stateDir, Objects: objs, NoPalisade: true, Kube: true, KubeBinDir: kubeBin,
		LabBin: selfBin(t), Logger: testLogger(t)})
	if err == nil {
		_ = l.Down(ctx)
		t.Fatal("up succeeded")
	}
	for _, want := range []string{"ConfigMap shop/broken", "not a key!"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
	checkNothingLeft(t, name, before, stateDir, nil)
	// etcd and the API server name the state dir, the forwarder the netns.
	if left := append(procsMentioning(filepath.Join(stateDir, name)), procsMentioning(name+"-underlay")...); len(left) > 0 {
		t.Errorf("processes of the failed lab survive: %v", left)
	}
}

// "lab down" by name after lab.json is lost: the forwarder, whose PID is
// then unknown, exits by itself once the underlay netns is gone.
func TestLabKubeLostState(t *testing.T) {
	needRoot(t)
	kubeBin := testKubeBinDir(t)
	ctx := context.Background()
	name := labName(t)
	stateDir := t.TempDir()
	before := viewHost(t)
	objs := mustDecode(t, `
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: shop}
spec: {nodeName: node1, containers: [{name: c, command: ["sleep", "infinity"]}]}
`)
	l, err := Up(ctx, Config{Name: name, StateDir: stateDir, Objects: objs, NoPalisade: true, Kube: true, KubeBinDir: kubeBin,
		LabBin: selfBin(t), Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Down(ctx) })
	k := l.Status().Kube
	if err := os.Remove(filepath.Join(l.StateDir(), "lab.json")); err != nil {
		t.Fatal(err)
	}
	// Without the state the forwarder's PID is unknown: it notices its
	// netns is gone and exits by itself.
	if err := Destroy(ctx, name, stateDir, testLogger(t)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		state, _, err := procStat(k.ForwarderPID)
		if err != nil || state == 'Z' {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("forwarder %d survives the deletion of its netns", k.ForwarderPID)
		}
		time.Sleep(50 * time.Millisecond)
	}
	checkNothingLeft(t, name, before, stateDir, []int{k.APIServerPID, k.EtcdPID, k.ForwarderPID})
}
