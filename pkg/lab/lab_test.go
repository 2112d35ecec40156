package lab

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/palisade-net/palisade/pkg/cluster"
	pnetns "github.com/palisade-net/palisade/pkg/netns"
)

// clusterYAML: two nodes; "web" has endpoints on both; echo servers on both.
const clusterYAML = `
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Namespace
metadata: {name: plain}
---
apiVersion: v1
kind: Pod
metadata: {name: web1, namespace: shop, labels: {app: web}}
spec:
  nodeName: node1
  serviceAccountName: web
  containers:
  - name: http
    command: ["$(LAB_BIN)", "serve-http", "--addr", ":8080"]
    ports: [{name: http, containerPort: 8080}]
  - name: echo
    command: ["$(LAB_BIN)", "serve-echo", "--addr", ":9000"]
    ports: [{containerPort: 9000}]
---
apiVersion: v1
kind: Pod
metadata: {name: web2, namespace: shop, labels: {app: web}}
spec:
  nodeName: node2
  serviceAccountName: web
  containers:
  - name: http
    command: ["$(LAB_BIN)"]
    args: ["serve-http", "--addr", "$(ADDR)"]
    env: [{name: ADDR, value: ":8080"}, {name: MY_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}]
    ports: [{name: http, containerPort: 8080}]
    readinessProbe: {httpGet: {path: /healthz, port: http}}
  - name: echo
    command: ["$(LAB_BIN)", "serve-echo", "--addr", ":9000"]
    readinessProbe: {tcpSocket: {port: 9000}}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: shop}
spec:
  nodeName: node1
  serviceAccountName: client
  initContainers:
  - name: init
    command: ["sh", "-c", "echo init ran; exit 0"]
  containers:
  - name: c
    command: ["sleep", "infinity"]
    env: [{name: GREETING, value: "hello $(HOSTNAME)"}]
---
apiVersion: v1
kind: Pod
metadata: {name: visitor, namespace: plain}
spec:
  nodeName: node2
  containers: [{name: c, command: ["sleep", "infinity"]}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: http}
  - {name: echo, port: 9000}
`

func TestLabNoPalisade(t *testing.T) {
	needRoot(t)
	name := labName(t)
	stateDir := t.TempDir()
	before := viewHost(t)
	objs, err := Decode(clusterYAML)
	if err != nil {
		t.Fatal(err)
	}
	l := upForTest(t, Config{
		Name: name, StateDir: stateDir, Objects: objs, NoPalisade: true,
		LabBin: selfBin(t), Logger: testLogger(t), ReadyTimeout: 30 * time.Second,
	})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	ip := func(ns, pod string) string {
		t.Helper()
		a, err := l.PodIP(ns, pod)
		if err != nil {
			t.Fatal(err)
		}
		return a.String()
	}

	t.Run("names and addresses", func(t *testing.T) {
		if got := ip("shop", "web1"); !strings.HasPrefix(got, "10.244.1.") {
			t.Errorf("web1 on node1 has %s", got)
		}
		if got := ip("shop", "web2"); !strings.HasPrefix(got, "10.244.2.") {
			t.Errorf("web2 on node2 has %s", got)
		}
		if ns, _ := l.PodNetns("shop", "client"); ns != name+"-shop-client" {
			t.Errorf("client netns %s", ns)
		}
		if ns, _ := l.NodeNetns("node2"); ns != name+"-node-node2" {
			t.Errorf("node2 netns %s", ns)
		}
		if l.UnderlayNetns() != name+"-underlay" {
			t.Errorf("underlay %s", l.UnderlayNetns())
		}
		all, _ := listNetns()
		for _, want := range []string{name + "-underlay", name + "-node-node1", name + "-node-node2", name + "-shop-web1", name + "-plain-visitor"} {
			if !contains(all, want) {
				t.Errorf("ip netns list lacks %s", want)
			}
		}
		vip, err := l.ServiceIP("shop", "web")
		if err != nil || vip.String() != "10.96.0.10" {
			t.Errorf("service IP %s, %v", vip, err)
		}
		// Interfaces for captures exist where the API says.
		veth, _ := l.PodHostVeth("shop", "web1")
		node1, _ := l.NodeNetns("node1")
		if out, err := l.sys.inNetns(ctx, node1, nil, "ip", "-o", "link", "show", veth); err != nil || !strings.Contains(string(out), "master "+NodeBridge) {
			t.Errorf("veth %s in %s: %s %v", veth, node1, out, err)
		}
		if out, err := l.sys.inNetns(ctx, l.UnderlayNetns(), nil, "ip", "-o", "link", "show", UnderlayBridge); err != nil {
			t.Errorf("underlay bridge: %s %v", out, err)
		}
		// No lab address in the root namespace.
		addrs, _ := net.InterfaceAddrs()
		for _, a := range addrs {
			if s := a.String(); strings.HasPrefix(s, "10.88.0.") || strings.HasPrefix(s, "10.244.") || strings.HasPrefix(s, "10.96.") {
				t.Errorf("lab address %s in the root netns", s)
			}
		}
	})

	echo := func(t *testing.T, from, to string) {
		t.Helper()
		h, err := pnetns.Open(netnsPath(from))
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		d := &pnetns.Dialer{Netns: h}
		dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		c, err := d.DialContext(dctx, "tcp", to)
		if err != nil {
			t.Fatalf("dial %s from %s: %v", to, from, err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		msg := "ping from " + from + "\n"
		if _, err := io.WriteString(c, msg); err != nil {
			t.Fatal(err)
		}
		got, err := bufio.NewReader(c).ReadString('\n')
		if err != nil || got != msg {
			t.Fatalf("echo via %s: %q, %v", to, got, err)
		}
	}

	t.Run("pod to pod on the same node", func(t *testing.T) {
		echo(t, name+"-shop-client", ip("shop", "web1")+":9000")
		out, err := l.Exec(ctx, "shop/client", "curl", "-sS", "-m", "5", "http://"+ip("shop", "web1")+":8080/")
		if err != nil || !strings.Contains(string(out), "hostname=web1") || !strings.Contains(string(out), "remote="+ip("shop", "client")+":") {
			t.Fatalf("curl: %s %v", out, err)
		}
	})

	t.Run("pod to pod across nodes", func(t *testing.T) {
		echo(t, name+"-shop-client", ip("shop", "web2")+":9000")
		echo(t, name+"-plain-visitor", ip("shop", "web1")+":9000")
		out, err := l.Exec(ctx, "plain/visitor", "curl", "-sS", "-m", "5", "--data-binary", "payload", "http://"+ip("shop", "web1")+":8080/x")
		if err != nil || !strings.Contains(string(out), "hostname=web1") || !strings.Contains(string(out), "payload") ||
			!strings.Contains(string(out), "remote="+ip("plain", "visitor")+":") {
			t.Fatalf("curl: %s %v", out, err)
		}
	})

	t.Run("service VIP and names reach endpoints on both nodes", func(t *testing.T) {
		vip, _ := l.ServiceIP("shop", "web")
		echo(t, name+"-plain-visitor", vip.String()+":9000")
		for _, tc := range []struct{ pod, url string }{
			{"shop/client", "http://web/"},                         // same namespace, short name
			{"plain/visitor", "http://web.shop/"},                  // other namespace
			{"plain/visitor", "http://web.shop.svc.cluster.local"}, // full name
			{"shop/client", "http://" + vip.String() + "/"},
			{"shop/web1", "http://web/"}, // hairpin: may land on itself
		} {
			seen := map[string]int{}
			for i := 0; i < 24; i++ {
				out, err := l.Exec(ctx, tc.pod, "curl", "-sS", "-m", "5", tc.url)
				if err != nil {
					t.Fatalf("%s: curl %s: %s %v", tc.pod, tc.url, out, err)
				}
				host := strings.Fields(string(out))[0]
				seen[host]++
			}
			if seen["hostname=web1"] == 0 || seen["hostname=web2"] == 0 {
				t.Errorf("%s -> %s: endpoints seen %v, want both", tc.pod, tc.url, seen)
			}
		}
	})

	t.Run("pod environment", func(t *testing.T) {
		out, err := l.Exec(ctx, "shop/client", "sh", "-c", `echo "$GREETING|$WEB_SERVICE_HOST|$WEB_SERVICE_PORT_HTTP|$HOSTNAME"`)
		if err != nil || strings.TrimSpace(string(out)) != "hello client|10.96.0.10|80|client" {
			t.Errorf("env: %q %v", out, err)
		}
		logData, _ := os.ReadFile(filepath.Join(l.StateDir(), "pods", "shop_client.log"))
		if !strings.Contains(string(logData), "init ran") {
			t.Errorf("init container output missing from log: %q", logData)
		}
		if out, err := l.Exec(ctx, "shop/client", "getent", "hosts", "client"); err != nil || !strings.Contains(string(out), ip("shop", "client")) {
			t.Errorf("own name: %s %v", out, err)
		}
		// Unknown names fail fast and never reach the host's resolver.
		start := time.Now()
		if out, err := l.Exec(ctx, "shop/client", "getent", "hosts", "no-such-name.example"); err == nil {
			t.Errorf("resolved unknown name: %s", out)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("unknown name took %s to fail", d)
		}
	})

	t.Run("exec exit code", func(t *testing.T) {
		_, err := l.Exec(ctx, "shop/client", "sh", "-c", "exit 3")
		if ExitCode(err) != 3 {
			t.Errorf("exit code %d (%v)", ExitCode(err), err)
		}
		out, err := l.Exec(ctx, "shop/client", "true")
		if err != nil || ExitCode(err) != 0 {
			t.Errorf("true: %s %v", out, err)
		}
		if _, err := l.Exec(ctx, "shop/nope", "true"); err == nil || !strings.Contains(err.Error(), "no pod shop/nope") {
			t.Errorf("unknown pod: %v", err)
		}
	})

	t.Run("cluster state", func(t *testing.T) {
		snap, err := cluster.Load(l.ClusterDir())
		if err != nil {
			t.Fatal(err)
		}
		p := snap.Pod("shop", "web2")
		if p == nil || string(p.UID) == "" || p.Status.PodIP != ip("shop", "web2") || p.Status.Phase != "Running" ||
			len(p.Status.PodIPs) != 1 || p.Status.HostIP != "10.88.0.12" {
			t.Fatalf("pod in cluster state: %+v", p)
		}
		ready := false
		for _, c := range p.Status.Conditions {
			ready = ready || c.Type == "Ready" && c.Status == "True"
		}
		if !ready {
			t.Errorf("pod not Ready: %+v", p.Status.Conditions)
		}
		if len(snap.Services) != 1 || snap.Services[0].Spec.ClusterIP != "10.96.0.10" {
			t.Errorf("services: %+v", snap.Services)
		}
		if snap.Namespace("shop") == nil || snap.Namespace("plain") == nil {
			t.Errorf("namespaces: %v", snap.Namespaces)
		}
		info, _ := l.Pod("shop", "web2")
		if info.UID != string(p.UID) {
			t.Errorf("uid %s vs %s", info.UID, p.UID)
		}
	})

	t.Run("apply", func(t *testing.T) {
		oldClient, _ := l.Pod("shop", "client")
		web1, _ := l.Pod("shop", "web1")
		changed := strings.Replace(clusterYAML, "metadata: {name: shop}", "metadata: {name: shop, labels: {palisade.dev/mtls: enabled}}", 1)
		// Drop visitor, add newbie on node2 and a pod on a brand-new node3.
		changed = strings.Replace(changed, `metadata: {name: visitor, namespace: plain}
spec:
  nodeName: node2
  containers: [{name: c, command: ["sleep", "infinity"]}]`, `metadata: {name: newbie, namespace: plain}
spec:
  nodeName: node2
  containers: [{name: c, command: ["$(LAB_BIN)", "serve-echo"], ports: [{containerPort: 9000}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: far, namespace: plain, labels: {app: web}}
spec:
  nodeName: node3
  containers: [{name: c, command: ["sleep", "infinity"]}]`, 1)
		// The client gets a label (in place) ...
		changed = strings.Replace(changed, "metadata: {name: client, namespace: shop}", "metadata: {name: client, namespace: shop, labels: {tier: front}}", 1)
		objs, err := Decode(changed)
		if err != nil {
			t.Fatal(err)
		}
		visitorNetns := name + "-plain-visitor"
		if err := l.Apply(ctx, objs); err != nil {
			t.Fatal(err)
		}
		snap, err := cluster.Load(l.ClusterDir())
		if err != nil {
			t.Fatal(err)
		}
		if snap.Namespace("shop").Labels["palisade.dev/mtls"] != "enabled" {
			t.Errorf("namespace label not in cluster state: %v", snap.Namespace("shop").Labels)
		}
		if snap.Pod("plain", "visitor") != nil || snap.Pod("plain", "newbie") == nil {
			t.Errorf("pods in cluster state: %d", len(snap.Pods))
		}
		if c := snap.Pod("shop", "client"); c == nil || c.Labels["tier"] != "front" || string(c.UID) != oldClient.UID {
			t.Errorf("client not updated in place: %+v", c)
		}
		if netnsExists(visitorNetns) {
			t.Error("visitor netns survives")
		}
		if _, err := os.Stat(filepath.Join(etcNetnsDir, visitorNetns)); !os.IsNotExist(err) {
			t.Error("visitor /etc/netns survives")
		}
		if now, _ := l.Pod("shop", "web1"); now.UID != web1.UID || now.PIDs[0] != web1.PIDs[0] {
			t.Error("unchanged pod was restarted")
		}
		// The new pods work, also on the new node.
		echo(t, name+"-shop-client", ip("plain", "newbie")+":9000")
		if n, err := l.Node("node3"); err != nil || n.UnderlayIP.String() != "10.88.0.13" {
			t.Fatalf("node3: %+v %v", n, err)
		}
		out, err := l.Exec(ctx, "plain/far", "curl", "-sS", "-m", "5", "http://web.shop/")
		if err != nil || !strings.Contains(string(out), "hostname=web") {
			t.Errorf("from node3: %s %v", out, err)
		}
		// A pod of another namespace is no endpoint of shop/web.
		svc, _ := l.Service("shop", "web")
		if len(svc.Ports[0].Endpoints) != 2 {
			t.Errorf("endpoints %v", svc.Ports[0].Endpoints)
		}
		// A changed cluster IP is refused, and nothing changes.
		bad := strings.Replace(changed, "selector: {app: web}", "clusterIP: 10.96.9.9\n  selector: {app: web}", 1)
		objs, _ = Decode(bad)
		if err := l.Apply(ctx, objs); err == nil || !strings.Contains(err.Error(), "immutable") {
			t.Errorf("apply with changed clusterIP: %v", err)
		}
		if _, err := l.Pod("plain", "newbie"); err != nil {
			t.Error(err)
		}
	})

	t.Run("delete pod", func(t *testing.T) {
		web2, _ := l.Pod("shop", "web2")
		if err := l.DeletePod(ctx, "shop", "web2"); err != nil {
			t.Fatal(err)
		}
		if netnsExists(web2.Netns) {
			t.Error("netns survives")
		}
		for _, pid := range web2.PIDs {
			if state, _, err := procStat(pid); err == nil && state != 'Z' {
				t.Errorf("pid %d survives", pid)
			}
		}
		for i := 0; i < 10; i++ {
			out, err := l.Exec(ctx, "shop/client", "curl", "-sS", "-m", "5", "http://web/")
			if err != nil || !strings.Contains(string(out), "hostname=web1") {
				t.Fatalf("after delete: %s %v", out, err)
			}
		}
		if _, err := l.Pod("shop", "web2"); err == nil {
			t.Error("pod still listed")
		}
	})

	t.Run("load and down", func(t *testing.T) {
		var pids []int
		for _, p := range l.Status().Pods {
			pids = append(pids, p.PIDs...)
		}
		// A stray process in a pod netns (as "lab exec ... &" would leave).
		stray := l.Command(context.Background(), "shop/client", "sleep", "1000")
		if err := stray.Start(); err != nil {
			t.Fatal(err)
		}
		go func() { _ = stray.Wait() }()
		pids = append(pids, stray.Process.Pid)
		// Tear down through a fresh handle, as "lab down" does.
		l2, err := Load(name, stateDir)
		if err != nil {
			t.Fatal(err)
		}
		if err := l2.Down(ctx); err != nil {
			t.Fatal(err)
		}
		checkNothingLeft(t, name, before, stateDir, pids)
		// Idempotent, also through the original handle.
		if err := l2.Down(ctx); err != nil {
			t.Errorf("second down: %v", err)
		}
		if err := l.Down(ctx); err != nil {
			t.Errorf("down via first handle: %v", err)
		}
		if err := Destroy(ctx, name, stateDir, nil); err != nil {
			t.Errorf("destroy after down: %v", err)
		}
		checkNothingLeft(t, name, before, stateDir, pids)
	})
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

const failingYAML = `
apiVersion: v1
kind: Pod
metadata: {name: ok, namespace: t}
spec:
  nodeName: node1
  containers: [{name: c, command: ["sleep", "infinity"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: zbroken, namespace: t}
spec:
  nodeName: node2
  initContainers: [{name: setup, command: ["sh", "-c", "echo setup is failing >&2; exit 4"]}]
  containers: [{name: c, command: ["sleep", "infinity"]}]
`

func TestFailedUpCleansUp(t *testing.T) {
	needRoot(t)
	name := labName(t)
	stateDir := t.TempDir()
	before := viewHost(t)
	objs, err := Decode(failingYAML)
	if err != nil {
		t.Fatal(err)
	}
	_, err = Up(context.Background(), Config{Name: name, StateDir: stateDir, Objects: objs, NoPalisade: true, Logger: testLogger(t)})
	if err == nil {
		t.Fatal("up succeeded")
	}
	for _, want := range []string{"init container setup failed", "exit status 4", "setup is failing"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
	checkNothingLeft(t, name, before, stateDir, nil)
}

func TestDownAfterPartialUp(t *testing.T) {
	needRoot(t)
	ctx := context.Background()
	stateDir := t.TempDir()

	t.Run("retained failure", func(t *testing.T) {
		name := labName(t)
		before := viewHost(t)
		objs, err := Decode(failingYAML)
		if err != nil {
			t.Fatal(err)
		}
		_, err = Up(ctx, Config{Name: name, StateDir: stateDir, Objects: objs, NoPalisade: true, Retain: true, Logger: testLogger(t)})
		if err == nil || !strings.Contains(err.Error(), "lab down --name "+name) {
			t.Fatalf("up: %v", err)
		}
		t.Cleanup(func() { _ = Destroy(ctx, name, stateDir, nil) })
		l, err := Load(name, stateDir)
		if err != nil {
			t.Fatal(err)
		}
		var pids []int
		for _, p := range l.Status().Pods {
			pids = append(pids, p.PIDs...)
		}
		if len(pids) == 0 || !netnsExists(name+"-t-ok") {
			t.Fatalf("nothing was built: pids %v", pids)
		}
		// A second up over the leftovers is refused.
		if _, err := Up(ctx, Config{Name: name, StateDir: stateDir, Objects: objs, NoPalisade: true}); !errors.Is(err, ErrExists) {
			t.Errorf("up over existing lab: %v", err)
		}
		if err := Destroy(ctx, name, stateDir, testLogger(t)); err != nil {
			t.Fatal(err)
		}
		checkNothingLeft(t, name, before, stateDir, pids)
	})

	t.Run("crash before lab.json", func(t *testing.T) {
		// What a crash leaves when lab.json is lost: namespaces with the
		// lab's prefix, an /etc/netns entry, a process inside.
		name := labName(t)
		before := viewHost(t)
		sys, err := newSystem()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = Destroy(ctx, name, stateDir, nil) })
		// Another lab whose name extends ours must survive our down.
		other := name + "-x"
		for _, n := range []string{name + "-underlay", name + "-node-a", name + "-ns-pod", other + "-underlay"} {
			if err := sys.addNetns(ctx, n); err != nil {
				t.Fatal(err)
			}
		}
		t.Cleanup(func() { _ = sys.deleteNetns(ctx, other+"-underlay") })
		if err := os.MkdirAll(filepath.Join(etcNetnsDir, name+"-ns-pod"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Join(stateDir, other), 0o755); err != nil {
			t.Fatal(err)
		}
		otherState := &state{Version: stateVersion, Name: other, StateRoot: stateDir, Underlay: other + "-underlay", Netns: []string{other + "-underlay"}}
		if err := otherState.save(); err != nil {
			t.Fatal(err)
		}
		c := &children{}
		proc, err := c.start(procSpec{name: "stray", argv: []string{sys.ip, "netns", "exec", name + "-ns-pod", "sleep", "1000"}, log: filepath.Join(t.TempDir(), "stray.log")})
		if err != nil {
			t.Fatal(err)
		}
		ino := netnsInode(name + "-ns-pod")
		for deadline := time.Now().Add(5 * time.Second); len(pidsInNetns(map[uint64]bool{ino: true}, os.Getpid())) == 0; {
			if time.Now().After(deadline) {
				t.Fatal("stray process never entered its netns")
			}
			time.Sleep(10 * time.Millisecond)
		}
		if err := Destroy(ctx, name, stateDir, testLogger(t)); err != nil {
			t.Fatal(err)
		}
		if c.alive(proc) {
			t.Error("stray process survives")
		}
		if !netnsExists(other + "-underlay") {
			t.Error("the other lab's netns was deleted")
		}
		_ = sys.deleteNetns(ctx, other+"-underlay")
		_ = os.RemoveAll(filepath.Join(stateDir, other))
		checkNothingLeft(t, name, before, stateDir, []int{proc.PID})
	})
}

// fakeBinDir makes a bin dir whose palisade-agent and palisade-nodeproxy
// are this test binary (see TestMain).
func fakeBinDir(t *testing.T) string {
	dir := t.TempDir()
	for _, b := range []string{AgentBinary, NodeProxyBinary} {
		if err := os.Symlink(selfBin(t), filepath.Join(dir, b)); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func readRecord(t *testing.T, path string) []string {
	data, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSpace(string(data)), "\n")
}

func grepLines(lines []string, parts ...string) []string {
	var out []string
	for _, l := range lines {
		ok := true
		for _, p := range parts {
			ok = ok && strings.Contains(l, p)
		}
		if ok {
			out = append(out, l)
		}
	}
	return out
}

func TestLabWithPalisadeFakes(t *testing.T) {
	needRoot(t)
	recordFile := filepath.Join(t.TempDir(), "record")
	t.Setenv("LAB_FAKE_RECORD", recordFile)
	name := labName(t)
	stateDir := t.TempDir()
	before := viewHost(t)
	objs, err := Decode(`
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
	if err != nil {
		t.Fatal(err)
	}
	bin := fakeBinDir(t)
	l := upForTest(t, Config{Name: name, StateDir: stateDir, BinDir: bin, Objects: objs, Logger: testLogger(t), ReadyTimeout: 20 * time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rec := readRecord(t, recordFile)

	for _, node := range []string{"node1", "node2"} {
		ns, _ := l.NodeNetns(node)
		inode := fmt.Sprintf("net:[%d]", netnsInode(ns))
		if len(grepLines(rec, "agent node="+node+" ", "netns="+inode, "cluster=true", "proxy-socket="+filepath.Join(l.StateDir(), "nodes", node, "proxy.sock"), "ebpf=off bpffs= ")) != 1 {
			t.Errorf("agent on %s not started once in its netns %s:\n%s", node, inode, strings.Join(rec, "\n"))
		}
		if len(grepLines(rec, "nodeproxy node="+node+" ", "netns="+inode, "ca="+l.CADir(), "td=cluster.local")) != 1 {
			t.Errorf("node proxy on %s not started once in its netns:\n%s", node, strings.Join(rec, "\n"))
		}
		info, _ := l.Node(node)
		if info.AgentPID == 0 || info.NodeProxyPID == 0 {
			t.Errorf("node %s: pids %+v", node, info)
		}
	}
	for _, pod := range []string{"a", "b"} {
		p, _ := l.Pod("shop", pod)
		n, _ := l.Node(p.Node)
		adds := grepLines(rec, "cni ADD pod=shop/"+pod+" ")
		if len(adds) != 1 {
			t.Fatalf("CNI ADD for %s: %v", pod, adds)
		}
		for _, want := range []string{
			"uid=" + p.UID, "container=" + p.UID, "netns=/var/run/netns/" + p.Netns, "ifname=eth0", "path=" + bin,
			"type=palisade-agent", "version=1.0.0", "sock=" + filepath.Join(l.StateDir(), "nodes", p.Node, "cni.sock"),
			"ip=" + p.IP.String() + "/24/gw=" + n.Gateway.String(), "sandbox=eth0@/var/run/netns/" + p.Netns,
			"procs=0", fmt.Sprintf("where=net:[%d]", netnsInode(n.Netns)),
		} {
			if !strings.Contains(adds[0], want) {
				t.Errorf("CNI ADD for %s lacks %q: %s", pod, want, adds[0])
			}
		}
	}

	t.Run("restart agent and node proxy", func(t *testing.T) {
		if err := l.StopAgent(ctx, "node1", 9); err != nil {
			t.Fatal(err)
		}
		if info, _ := l.Node("node1"); info.AgentPID != 0 {
			t.Errorf("agent still running: %+v", info)
		}
		if err := l.StartAgent(ctx, "node1"); err != nil {
			t.Fatal(err)
		}
		if err := l.StartAgent(ctx, "node1"); err == nil {
			t.Error("second start of a running agent succeeded")
		}
		if err := l.StopNodeProxy(ctx, "node2", 15); err != nil {
			t.Fatal(err)
		}
		if err := l.StartNodeProxy(ctx, "node2"); err != nil {
			t.Fatal(err)
		}
		if err := l.WaitAgentReady(ctx, "node1"); err != nil {
			t.Error(err)
		}
		if err := l.WaitNodeProxyReady(ctx, "node2"); err != nil {
			t.Error(err)
		}
	})

	t.Run("CNI failure fails the pod with the plugin's output", func(t *testing.T) {
		bad := objs.Pods[0].DeepCopy()
		bad.Name = "cni-fail"
		objs2, _ := LoadObjects(nil, objs)
		objs2.Pods = append(objs2.Pods, bad)
		err := l.Apply(ctx, objs2)
		if err == nil || !strings.Contains(err.Error(), "fake plugin refuses cni-fail") || !strings.Contains(err.Error(), "fake plugin: refused") {
			t.Fatalf("apply: %v", err)
		}
		if p, err := l.Pod("shop", "cni-fail"); err == nil && len(p.PIDs) != 0 {
			t.Errorf("process started despite CNI failure: %+v", p)
		}
	})

	t.Run("down runs CNI DEL", func(t *testing.T) {
		if err := l.Down(ctx); err != nil {
			t.Fatal(err)
		}
		rec := readRecord(t, recordFile)
		for _, pod := range []string{"a", "b", "cni-fail"} {
			if len(grepLines(rec, "cni DEL pod=shop/"+pod+" ")) != 1 {
				t.Errorf("CNI DEL for %s:\n%s", pod, strings.Join(rec, "\n"))
			}
		}
		checkNothingLeft(t, name, before, stateDir, nil)
	})
}

func TestAgentNotReadyFailsWithLog(t *testing.T) {
	needRoot(t)
	t.Setenv("LAB_FAKE_AGENT", "crash")
	name := labName(t)
	stateDir := t.TempDir()
	before := viewHost(t)
	objs, _ := Decode(`
apiVersion: v1
kind: Pod
metadata: {name: a}
spec: {nodeName: node1, containers: [{name: c, command: ["sleep", "infinity"]}]}
`)
	start := time.Now()
	_, err := Up(context.Background(), Config{Name: name, StateDir: stateDir, BinDir: fakeBinDir(t), Objects: objs, ReadyTimeout: 20 * time.Second, Logger: testLogger(t)})
	if err == nil || !strings.Contains(err.Error(), "agent on node node1") || !strings.Contains(err.Error(), "crashing on purpose") {
		t.Fatalf("up: %v", err)
	}
	if time.Since(start) > 15*time.Second {
		t.Errorf("a crashed agent took %s to notice", time.Since(start))
	}
	checkNothingLeft(t, name, before, stateDir, nil)

	t.Setenv("LAB_FAKE_AGENT", "never-ready")
	_, err = Up(context.Background(), Config{Name: name, StateDir: stateDir, BinDir: fakeBinDir(t), Objects: objs, ReadyTimeout: 2 * time.Second})
	if err == nil || !strings.Contains(err.Error(), "not ready after 2s") || !strings.Contains(err.Error(), "fake agent listening") {
		t.Fatalf("up: %v", err)
	}
	checkNothingLeft(t, name, before, stateDir, nil)
}

// TestLabEBPF: with Config.EBPF each node's agent gets --ebpf on and
// --bpffs on a bpffs the lab mounted (visible in the agent's own mount
// namespace), also after a restart; down leaves no mount behind.
func TestLabEBPF(t *testing.T) {
	needRoot(t)
	recordFile := filepath.Join(t.TempDir(), "record")
	t.Setenv("LAB_FAKE_RECORD", recordFile)
	name := labName(t)
	stateDir := t.TempDir()
	before := viewHost(t)
	objs, err := Decode(`
apiVersion: v1
kind: Pod
metadata: {name: a}
spec: {nodeName: node1, containers: [{name: c, command: ["sleep", "infinity"]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b}
spec: {nodeName: node2, containers: [{name: c, command: ["sleep", "infinity"]}]}
`)
	if err != nil {
		t.Fatal(err)
	}
	l := upForTest(t, Config{Name: name, StateDir: stateDir, BinDir: fakeBinDir(t), Objects: objs, EBPF: true, Logger: testLogger(t), ReadyTimeout: 20 * time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, node := range []string{"node1", "node2"} {
		dir := filepath.Join(l.StateDir(), "nodes", node, "bpffs")
		if info, _ := l.Node(node); info.BPFFS != dir {
			t.Errorf("node %s: BPFFS %q, want %q", node, info.BPFFS, dir)
		}
		if got := grepLines(readRecord(t, recordFile), "agent node="+node+" ", "ebpf=on bpffs="+dir+" bpffs-mounted=true"); len(got) != 1 {
			t.Errorf("agent on %s not started with --ebpf on on its mounted bpffs:\n%s", node, strings.Join(readRecord(t, recordFile), "\n"))
		}
		if m, err := mountsUnder(dir); err != nil || len(m) != 1 {
			t.Errorf("mounts on %s: %v %v, want the lab's bpffs", dir, m, err)
		}
	}
	if err := l.StopAgent(ctx, "node1", 9); err != nil {
		t.Fatal(err)
	}
	if err := l.StartAgent(ctx, "node1"); err != nil {
		t.Fatal(err)
	}
	if got := grepLines(readRecord(t, recordFile), "agent node=node1 ", "ebpf=on", "bpffs-mounted=true"); len(got) != 2 {
		t.Errorf("restarted agent does not see its bpffs:\n%s", strings.Join(readRecord(t, recordFile), "\n"))
	}
	if err := l.Down(ctx); err != nil {
		t.Fatal(err)
	}
	checkNothingLeft(t, name, before, stateDir, nil)
}

func TestUnescapeMountPath(t *testing.T) {
	for in, want := range map[string]string{
		`/run/lab/nodes/n1/bpffs`:  "/run/lab/nodes/n1/bpffs",
		`/tmp/with\040space/bpffs`: "/tmp/with space/bpffs",
		`/tmp/tab\011and\134slash`: "/tmp/tab\tand\\slash",
		`/tmp/trailing\04`:         `/tmp/trailing\04`,
		`/tmp/not-octal\999/x`:     `/tmp/not-octal\999/x`,
	} {
		if got := unescapeMountPath(in); got != want {
			t.Errorf("unescapeMountPath(%q) = %q, want %q", in, got, want)
		}
	}
}
