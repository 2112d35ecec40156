package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/palisade-net/palisade/pkg/lab"
)

func TestUpKubeFlags(t *testing.T) {
	for _, args := range [][]string{
		{"up", "-f", demoDir, "--kube-bin-dir", "/nonexistent"},
		{"up", "-f", demoDir, "--crds", "/nonexistent"},
	} {
		var out, errb bytes.Buffer
		if code := run(args, &out, &errb); code != 2 || !strings.Contains(errb.String(), "need --kube") {
			t.Errorf("%v: exit %d, want 2 (stderr %s)", args, code, errb.String())
		}
	}
	var out, errb bytes.Buffer
	if code := run([]string{"help"}, &out, &errb); code != 0 {
		t.Fatal(code)
	}
	for _, want := range []string{"--kube ", "--kube-bin-dir DIR", "--crds FILE_OR_DIR", "https://10.88.0.1:6443", "kubeconfig-nodes", "make kube"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("usage lacks %q", want)
		}
	}
	// The forwarder refuses anything but loopback.
	errb.Reset()
	if code := run([]string{lab.ForwardCommand, "--netns", "x", "--to", "10.0.0.1:1", "--listen", "0.0.0.0:1"}, &out, &errb); code != 1 || !strings.Contains(errb.String(), "want a loopback") {
		t.Errorf("forward on 0.0.0.0: exit %d, stderr %q", code, errb.String())
	}
}

// kubeBinDir finds kube-apiserver and etcd ("make kube"): skipped without
// them, except in CI.
func kubeBinDir(t *testing.T) string {
	t.Helper()
	for _, d := range []string{os.Getenv("PALISADE_TEST_BIN"), filepath.Join("..", "..", ".cache", "test-bin")} {
		if d == "" {
			continue
		}
		if _, err := os.Stat(filepath.Join(d, lab.KubeAPIServerBinary)); err == nil {
			if _, err := os.Stat(filepath.Join(d, lab.EtcdBinary)); err == nil {
				abs, _ := filepath.Abs(d)
				return abs
			}
		}
	}
	if os.Getenv("CI") == "" {
		t.Skip("kube-apiserver and etcd not built (make kube)")
	}
	t.Fatal("kube-apiserver and etcd not found; CI must run make kube")
	return ""
}

func TestKubeUpStatusDown(t *testing.T) {
	needRoot(t)
	kubeBin := kubeBinDir(t)
	var b [4]byte
	_, _ = rand.Read(b[:])
	name := "ct" + hex.EncodeToString(b[:])
	stateDir := t.TempDir()
	common := []string{"--name", name, "--state-dir", stateDir}
	t.Cleanup(func() { _ = lab.Destroy(context.Background(), name, stateDir, nil) })

	out, errOut, code := labCLI(t, "", append(append([]string{"up"}, common...), "-f", filepath.Join(demoDir, "demo.yaml"), "--no-palisade",
		"--kube", "--kube-bin-dir", kubeBin)...)
	if code != 0 {
		t.Fatalf("up: exit %d\n%s\n%s", code, out, errOut)
	}
	kubeconfig := filepath.Join(stateDir, name, "kubeconfig")
	if !strings.Contains(out, "kubectl --kubeconfig "+kubeconfig+" get pods -A") {
		t.Errorf("up does not tell how to use kubectl:\n%s", out)
	}
	out, errOut, code = labCLI(t, "", append([]string{"status"}, common...)...)
	if code != 0 {
		t.Fatalf("status: %d %s", code, errOut)
	}
	for _, want := range []string{"KUBE-APISERVER", "https://10.88.0.1:6443", "https://127.0.0.1:", kubeconfig, "kubeconfig-nodes", "127.0.0.1:2379"} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}
	out, errOut, code = labCLI(t, "", append(append([]string{"status"}, common...), "-o", "json")...)
	if code != 0 {
		t.Fatalf("status: %d %s", code, errOut)
	}
	var topo lab.Topology
	if err := json.Unmarshal([]byte(out), &topo); err != nil {
		t.Fatal(err)
	}
	if topo.Kube == nil || topo.Kube.APIServerPID == 0 || topo.Kube.EtcdPID == 0 || topo.Kube.ForwarderPID == 0 {
		t.Fatalf("status: %+v", topo.Kube)
	}
	kubectl := topo.Kube.Kubectl
	if kubectl == "" {
		if os.Getenv("CI") == "" {
			t.Skip("kubectl not found (make kube builds it)")
		}
		t.Fatal("kubectl not found; CI must run make kube")
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, kubectl, "--kubeconfig", kubeconfig, "get", "pods", "-A", "-o", "custom-columns=NS:.metadata.namespace,NAME:.metadata.name,IP:.status.podIP,PHASE:.status.phase", "--no-headers")
	kout, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl get pods: %v\n%s", err, kout)
	}
	for _, p := range topo.Pods {
		want := strings.Join([]string{p.Namespace, p.Name, p.IP.String(), "Running"}, " ")
		if !strings.Contains(strings.Join(strings.Fields(string(kout)), " "), want) {
			t.Errorf("kubectl get pods lacks %q:\n%s", want, kout)
		}
	}

	// apply -f through the API: a CiliumNetworkPolicy (the lab's stand-in
	// CRD serves it) appears.
	cnp := filepath.Join(t.TempDir(), "cnp.yaml")
	if err := os.WriteFile(cnp, []byte(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress: [{toPorts: [{ports: [{port: "8080", protocol: TCP}], rules: {http: [{method: GET}]}}]}]
`), 0o644); err != nil {
		t.Fatal(err)
	}
	out, errOut, code = labCLI(t, "", append(append([]string{"apply"}, common...), "-f", filepath.Join(demoDir, "demo.yaml"), "-f", cnp)...)
	if code != 0 {
		t.Fatalf("apply: %d %s %s", code, out, errOut)
	}
	if kout, err := exec.CommandContext(ctx, kubectl, "--kubeconfig", kubeconfig, "get", "cnp", "-n", "shop", "server", "-o", "name").CombinedOutput(); err != nil ||
		strings.TrimSpace(string(kout)) != "ciliumnetworkpolicy.cilium.io/server" {
		t.Errorf("CNP after apply: %q %v", kout, err)
	}

	fwd := strings.TrimPrefix(topo.Kube.Forward, "https://")
	if out, errOut, code := labCLI(t, "", append([]string{"down"}, common...)...); code != 0 || !strings.Contains(out, "is down") {
		t.Fatalf("down: %d %s %s", code, out, errOut)
	}
	for _, pid := range []int{topo.Kube.APIServerPID, topo.Kube.EtcdPID, topo.Kube.ForwarderPID} {
		if st, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat"); err == nil && !bytes.Contains(st, []byte(") Z ")) {
			t.Errorf("control plane process %d survives", pid)
		}
	}
	if c, err := net.DialTimeout("tcp", fwd, time.Second); err == nil {
		c.Close()
		t.Errorf("forwarder %s still accepts after down", fwd)
	}
	if _, err := os.Stat(filepath.Join(stateDir, name)); !os.IsNotExist(err) {
		t.Errorf("state dir left: %v", err)
	}
}
