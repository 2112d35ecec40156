package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/palisade-net/palisade/pkg/cluster"
	"github.com/palisade-net/palisade/pkg/lab"
)

// The test binary is also the lab binary: invoked with a lab command as
// its first argument it runs the CLI (that is how pods run "$(LAB_BIN)
// serve-http" and how the tests run "lab up").
func TestMain(m *testing.M) {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "up", "down", "exec", "status", "apply", "help", "serve-http", "serve-echo", lab.ForwardCommand, lab.KubeletCommand:
			os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
		}
	}
	os.Exit(m.Run())
}

const demoDir = "../../examples/demo"

func TestUsage(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"help"}, &out, &errb); code != 0 || !strings.Contains(out.String(), "lab up -f FILE_OR_DIR") ||
		!strings.Contains(out.String(), "$(LAB_BIN)") || !strings.Contains(out.String(), "--no-palisade") {
		t.Errorf("help: %d %s", code, out.String())
	}
	for _, args := range [][]string{nil, {"frobnicate"}, {"up"}, {"up", "-f", demoDir, "extra"}, {"exec"}, {"exec", "shop/client"}, {"apply"}} {
		out.Reset()
		errb.Reset()
		if code := run(args, &out, &errb); code != 2 {
			t.Errorf("%v: exit %d, want 2 (stderr %s)", args, code, errb.String())
		}
	}
}

func TestDryRunPrintsPlan(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"up", "--dry-run", "--name", "demo", "-f", demoDir}, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	for _, want := range []string{"demo-underlay", "demo-node-node1", "10.88.0.12", "demo-shop-server", "10.244.2.2", "shop/server", "10.96.0.10", "80->8080/TCP"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("plan lacks %q:\n%s", want, out.String())
		}
	}
}

func TestDemoObjects(t *testing.T) {
	objs, err := cluster.Load(demoDir)
	if err != nil {
		t.Fatal(err)
	}
	if objs.Namespace("shop").Labels["palisade.dev/mtls"] != "enabled" || len(objs.Namespace("plain").Labels) != 0 {
		t.Errorf("namespaces: %+v", objs.Namespaces)
	}
	for _, want := range []struct{ key, node, sa string }{{"shop/server", "node2", "server"}, {"shop/client", "node1", "client"}, {"plain/visitor", "node1", "visitor"}} {
		ns, name, _ := strings.Cut(want.key, "/")
		p := objs.Pod(ns, name)
		if p == nil || p.Spec.NodeName != want.node || p.Spec.ServiceAccountName != want.sa {
			t.Errorf("pod %s: %+v", want.key, p)
		}
	}
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "" {
		t.Skip("needs root (network namespaces)")
	}
	t.Fatal("needs root (network namespaces); CI must run these tests as root")
}

// labCLI runs the lab CLI as a separate process, like a user would.
func labCLI(t *testing.T, stdin string, args ...string) (string, string, int) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, exe, args...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run %v: %v", args, err)
	}
	return out.String(), errb.String(), code
}

func TestDemoEndToEnd(t *testing.T) {
	needRoot(t)
	var b [4]byte
	_, _ = rand.Read(b[:])
	name := "ct" + hex.EncodeToString(b[:])
	stateDir := t.TempDir()
	common := []string{"--name", name, "--state-dir", stateDir}
	netnsOfLab := func() []string {
		var out []string
		entries, _ := os.ReadDir("/var/run/netns")
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), name+"-") {
				out = append(out, e.Name())
			}
		}
		if entries, err := os.ReadDir("/etc/netns"); err == nil {
			for _, e := range entries {
				if strings.HasPrefix(e.Name(), name+"-") {
					out = append(out, "/etc/netns/"+e.Name())
				}
			}
		}
		return out
	}
	t.Cleanup(func() { _ = lab.Destroy(context.Background(), name, stateDir, nil) })

	out, errOut, code := labCLI(t, "", append(append([]string{"up"}, common...), "-f", demoDir, "--no-palisade")...)
	if code != 0 {
		t.Fatalf("up: exit %d\n%s\n%s", code, out, errOut)
	}
	if got := netnsOfLab(); len(got) != 1+2+3+3 { // underlay, 2 nodes, 3 pods, 3 /etc/netns dirs
		t.Errorf("lab netns and /etc/netns: %v", got)
	}
	if !strings.Contains(out, name+"-shop-server") || !strings.Contains(out, "lab exec --name "+name) {
		t.Errorf("up output:\n%s", out)
	}

	execIn := func(stdin, pod string, cmd ...string) (string, int) {
		t.Helper()
		out, errOut, code := labCLI(t, stdin, append(append(append([]string{"exec"}, common...), pod, "--"), cmd...)...)
		return out + errOut, code
	}
	if out, code := execIn("", "shop/client", "curl", "-sS", "-m", "5", "http://server/"); code != 0 || !strings.Contains(out, "hostname=server ip=10.244.2.2") {
		t.Errorf("client -> server: %d %s", code, out)
	}
	if out, code := execIn("", "plain/visitor", "curl", "-sS", "-m", "5", "http://server.shop.svc.cluster.local/echo", "--data-binary", "hello"); code != 0 || out != "hello" {
		t.Errorf("visitor -> server: %d %q", code, out)
	}
	if out, code := execIn("", "shop/client", "curl", "-sS", "-m", "5", "http://server/bytes?n=100000", "-o", "/dev/null", "-w", "%{size_download}"); code != 0 || out != "100000" {
		t.Errorf("bytes: %d %q", code, out)
	}
	if out, code := execIn("", "shop/client", "sh", "-c", "echo oops >&2; exit 5"); code != 5 || !strings.Contains(out, "oops") {
		t.Errorf("exit code: %d %q", code, out)
	}
	if out, code := execIn("from stdin", "shop/client", "cat"); code != 0 || out != "from stdin" {
		t.Errorf("stdin: %d %q", code, out)
	}
	if out, code := execIn("", "shop/nobody", "true"); code != 1 || !strings.Contains(out, "no pod shop/nobody") {
		t.Errorf("unknown pod: %d %q", code, out)
	}

	out, errOut, code = labCLI(t, "", append(append([]string{"status"}, common...), "-o", "json")...)
	if code != 0 {
		t.Fatalf("status: %d %s", code, errOut)
	}
	var topo lab.Topology
	if err := json.Unmarshal([]byte(out), &topo); err != nil {
		t.Fatal(err)
	}
	if len(topo.Nodes) != 2 || len(topo.Pods) != 3 || len(topo.Services) != 1 || len(topo.Services[0].Ports[0].Endpoints) != 1 {
		t.Errorf("status: %+v", topo)
	}
	for _, p := range topo.Pods {
		if !p.Ready || len(p.PIDs) != 1 || p.PIDs[0] == 0 {
			t.Errorf("pod %s/%s: %+v", p.Namespace, p.Name, p)
		}
	}

	// apply: enroll namespace plain.
	data, err := os.ReadFile(filepath.Join(demoDir, "demo.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	changed := strings.Replace(string(data), "kind: Namespace\nmetadata:\n  name: plain\n", "kind: Namespace\nmetadata:\n  name: plain\n  labels:\n    palisade.dev/mtls: enabled\n", 1)
	if changed == string(data) {
		t.Fatal("demo.yaml changed shape; update the test")
	}
	changedFile := filepath.Join(t.TempDir(), "demo.yaml")
	if err := os.WriteFile(changedFile, []byte(changed), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, errOut, code := labCLI(t, "", append(append([]string{"apply"}, common...), "-f", changedFile)...); code != 0 {
		t.Fatalf("apply: %d %s %s", code, out, errOut)
	}
	snap, err := cluster.Load(filepath.Join(stateDir, name, "cluster"))
	if err != nil {
		t.Fatal(err)
	}
	if snap.Namespace("plain").Labels["palisade.dev/mtls"] != "enabled" {
		t.Errorf("label not applied: %+v", snap.Namespace("plain"))
	}

	if out, errOut, code := labCLI(t, "", append([]string{"down"}, common...)...); code != 0 || !strings.Contains(out, "is down") {
		t.Fatalf("down: %d %s %s", code, out, errOut)
	}
	if left := netnsOfLab(); len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}
	for _, p := range topo.Pods {
		if err := exec.Command("kill", "-0", strconv.Itoa(p.PIDs[0])).Run(); err == nil {
			if st, _ := os.ReadFile("/proc/" + strconv.Itoa(p.PIDs[0]) + "/stat"); !bytes.Contains(st, []byte(") Z ")) {
				t.Errorf("pod process %d survives", p.PIDs[0])
			}
		}
	}
	if _, err := os.Stat(filepath.Join(stateDir, name)); !os.IsNotExist(err) {
		t.Errorf("state dir left: %v", err)
	}
	// down again: fine.
	if _, errOut, code := labCLI(t, "", append([]string{"down"}, common...)...); code != 0 {
		t.Errorf("second down: %d %s", code, errOut)
	}
}

func TestUpIdentityFlags(t *testing.T) {
	for _, args := range [][]string{
		{"up", "-f", demoDir, "--identity", "vault"},
		{"up", "-f", demoDir, "--spire-entries", "off"},
		{"up", "-f", demoDir, "--spire-svid-ttl", "1m"},
		{"up", "-f", demoDir, "--identity", "spire", "--spire-entries", "sometimes"},
		{"up", "-f", demoDir, "--identity", "spire", "--spire-svid-ttl", "-1m"},
	} {
		var out, errb bytes.Buffer
		if code := run(args, &out, &errb); code != 2 {
			t.Errorf("%v: exit %d, want 2 (stderr %s)", args, code, errb.String())
		}
	}
	var out, errb bytes.Buffer
	if code := run([]string{"up", "--dry-run", "-f", demoDir, "--identity", "spire", "--spire-entries", "off"}, &out, &errb); code != 0 ||
		!strings.Contains(out.String(), "IDENTITY") || !strings.Contains(out.String(), "spire") {
		t.Errorf("dry run with spire: exit %d\n%s%s", code, out.String(), errb.String())
	}
	out.Reset()
	if code := run([]string{"help"}, &out, &errb); code != 0 {
		t.Fatal(code)
	}
	for _, want := range []string{"--identity MODE", "--spire-bin-dir DIR", "--spire-entries M", "--spire-svid-ttl DUR", "127.0.0.1:8081", "admin/admin.sock"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("usage lacks %q", want)
		}
	}
}

// spireBinDir finds spire-server and spire-agent ("make spire"): skipped
// without them, except in CI.
func spireBinDir(t *testing.T) string {
	t.Helper()
	for _, d := range []string{os.Getenv("PALISADE_TEST_BIN"), filepath.Join("..", "..", ".cache", "test-bin")} {
		if d == "" {
			continue
		}
		if _, err := os.Stat(filepath.Join(d, lab.SPIREServerBinary)); err == nil {
			if _, err := os.Stat(filepath.Join(d, lab.SPIREAgentBinary)); err == nil {
				abs, _ := filepath.Abs(d)
				return abs
			}
		}
	}
	if os.Getenv("CI") == "" {
		t.Skip("spire-server and spire-agent not built (make spire)")
	}
	t.Fatal("spire-server and spire-agent not found; CI must run make spire")
	return ""
}

func TestSPIREUpStatusDown(t *testing.T) {
	needRoot(t)
	spireBin := spireBinDir(t)
	var b [4]byte
	_, _ = rand.Read(b[:])
	name := "ct" + hex.EncodeToString(b[:])
	stateDir := t.TempDir()
	common := []string{"--name", name, "--state-dir", stateDir}
	t.Cleanup(func() { _ = lab.Destroy(context.Background(), name, stateDir, nil) })

	out, errOut, code := labCLI(t, "", append(append([]string{"up"}, common...), "-f", demoDir, "--no-palisade",
		"--identity", "spire", "--spire-bin-dir", spireBin, "--spire-entries", "off")...)
	if code != 0 {
		t.Fatalf("up: exit %d\n%s\n%s", code, out, errOut)
	}
	out, errOut, code = labCLI(t, "", append([]string{"status"}, common...)...)
	if code != 0 {
		t.Fatalf("status: %d %s", code, errOut)
	}
	for _, want := range []string{"IDENTITY", "spire", "SPIRE SERVER", "127.0.0.1:8081", "SPIRE AGENT", "spire-agent/workload/api.sock", "spire/server/api.sock", "off"} {
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
	if topo.Identity != lab.IdentitySPIRE || topo.SPIRE == nil || topo.SPIRE.ServerPID == 0 || topo.SPIRE.Entries != lab.SPIREEntriesOff {
		t.Fatalf("status: %+v %+v", topo.Identity, topo.SPIRE)
	}
	pids := []int{topo.SPIRE.ServerPID}
	for _, n := range topo.Nodes {
		if n.SPIREAgentPID == 0 {
			t.Errorf("node %s: no SPIRE agent: %+v", n.Name, n)
		}
		pids = append(pids, n.SPIREAgentPID)
	}
	if out, errOut, code := labCLI(t, "", append([]string{"down"}, common...)...); code != 0 || !strings.Contains(out, "is down") {
		t.Fatalf("down: %d %s %s", code, out, errOut)
	}
	for _, pid := range pids {
		if st, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat"); err == nil && !bytes.Contains(st, []byte(") Z ")) {
			t.Errorf("SPIRE process %d survives", pid)
		}
	}
	if _, err := os.Stat(filepath.Join(stateDir, name)); !os.IsNotExist(err) {
		t.Errorf("state dir left: %v", err)
	}
}
