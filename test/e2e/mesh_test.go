package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/palisade-net/palisade/pkg/lab"
)

// meshYAML: namespace shop enrolled (client on node1; echo1 on node1, echo2
// on node2, each serving TCP echo on 9000 and HTTP on 8080; Service echo),
// namespace plain not enrolled (visitor on node1, web on node2).
const meshYAML = `
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {palisade.dev/mtls: enabled}}
---
apiVersion: v1
kind: Namespace
metadata: {name: plain}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: shop, labels: {app: client}}
spec:
  nodeName: node1
  serviceAccountName: client
  containers: [{name: c, command: ["sleep", "infinity"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: echo1, namespace: shop, labels: {app: echo}}
spec:
  nodeName: node1
  serviceAccountName: echo
  containers:
  - {name: echo, command: ["$(LAB_BIN)", "serve-echo", "--addr", ":9000"], ports: [{containerPort: 9000}]}
  - {name: http, command: ["$(LAB_BIN)", "serve-http", "--addr", ":8080"], ports: [{name: http, containerPort: 8080}]}
---
apiVersion: v1
kind: Pod
metadata: {name: echo2, namespace: shop, labels: {app: echo}}
spec:
  nodeName: node2
  serviceAccountName: echo
  containers:
  - {name: echo, command: ["$(LAB_BIN)", "serve-echo", "--addr", ":9000"], ports: [{containerPort: 9000}]}
  - {name: http, command: ["$(LAB_BIN)", "serve-http", "--addr", ":8080"], ports: [{name: http, containerPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: shop}
spec:
  selector: {app: echo}
  ports:
  - {name: tcp, port: 9000}
  - {name: http, port: 80, targetPort: http}
---
apiVersion: v1
kind: Pod
metadata: {name: visitor, namespace: plain}
spec:
  nodeName: node1
  containers: [{name: c, command: ["sleep", "infinity"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: plain}
spec:
  nodeName: node2
  containers:
  - {name: echo, command: ["$(LAB_BIN)", "serve-echo", "--addr", ":9000"], ports: [{containerPort: 9000}]}
`

func podAddr(t *testing.T, l *lab.Lab, ns, pod string, port int) string {
	t.Helper()
	ip, err := l.PodIP(ns, pod)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%s:%d", ip, port)
}

func hostVeth(t *testing.T, l *lab.Lab, ns, pod string) (netnsName, iface string) {
	t.Helper()
	p, err := l.Pod(ns, pod)
	if err != nil {
		t.Fatal(err)
	}
	node, err := l.NodeNetns(p.Node)
	if err != nil {
		t.Fatal(err)
	}
	return node, p.HostVeth
}

// TestEnrolledTrafficIsEncrypted: cross-node and same-node traffic between
// enrolled pods arrives byte-exact, no plaintext of it is on the underlay or
// the pod veths, and TLS on 15008 is.
func TestEnrolledTrafficIsEncrypted(t *testing.T) {
	l := upLab(t, meshYAML)
	client := podNetns(t, l, "shop", "client")

	underlay := startCapture(t, l.UnderlayNetns(), lab.UnderlayBridge)
	var vethCaps []*capture
	for _, p := range []string{"client", "echo1", "echo2"} {
		ns, iface := hostVeth(t, l, "shop", p)
		vethCaps = append(vethCaps, startCapture(t, ns, iface))
	}
	marker := "PALISADE-MARKER-" + randHex(8)
	for _, target := range []string{"echo2", "echo1"} { // cross node, then same node
		mustEcho(t, client, podAddr(t, l, "shop", target, 9000), marker, 1<<20)
	}

	if n := underlay.tlsRecords(); n == 0 {
		t.Error("no TLS records on port 15008 on the underlay")
	}
	if n := underlay.count("tcp and not port 15008"); n != 0 {
		t.Errorf("%d TCP packets between the nodes outside port 15008", n)
	}
	for _, c := range append(vethCaps, underlay) {
		if data := c.stop(); strings.Contains(string(data), marker) {
			t.Errorf("plaintext marker found in capture %s", c.file)
		}
		if c.tlsRecords() == 0 {
			t.Errorf("no TLS on 15008 in capture %s", c.file)
		}
	}

	// Both proxies saw the peers' SPIFFE identities. Flow records are
	// written when a relay ends, just after the client saw the echo end.
	waitFlowTo(t, nodeNetns(t, l, "node1"), podAddr(t, l, "shop", "echo1", 9000), "hbone")
	eventually(t, 5*time.Second, "node2's inbound flows recorded", func() error {
		for _, f := range flows(t, nodeNetns(t, l, "node2")) {
			if f.Direction == "inbound-hbone" && f.BytesSent == 1<<20 {
				return nil
			}
		}
		return errors.New("no 1 MiB inbound flow yet")
	})
	var sawInbound bool
	for _, f := range flows(t, nodeNetns(t, l, "node2")) {
		// The lab's readiness checks also reach echo2 (from echo2 itself);
		// pick the client's connection by its source address.
		if f.Direction == "inbound-hbone" && f.Verdict == "allowed" && f.Destination == podAddr(t, l, "shop", "echo2", 9000) &&
			strings.HasPrefix(f.Source, podAddr(t, l, "shop", "client", 0)[:len(podAddr(t, l, "shop", "client", 0))-1]) {
			sawInbound = true
			if f.PeerIdentity != "spiffe://cluster.local/ns/shop/sa/client" {
				t.Errorf("node2 saw peer %q", f.PeerIdentity)
			}
			if f.BytesSent != 1<<20 || f.BytesRecv != 1<<20 {
				t.Errorf("node2 counted %d/%d bytes, want 1 MiB each way", f.BytesSent, f.BytesRecv)
			}
		}
	}
	if !sawInbound {
		t.Error("node2 recorded no inbound HBONE flow to echo2")
	}
	var sawOutbound bool
	for _, f := range flows(t, nodeNetns(t, l, "node1")) {
		if f.Direction == "outbound" && f.Transport == "hbone" && f.Destination == podAddr(t, l, "shop", "echo2", 9000) {
			sawOutbound = true
			if f.PeerIdentity != "spiffe://cluster.local/ns/shop/sa/echo" || f.SrcIdentity != "spiffe://cluster.local/ns/shop/sa/client" {
				t.Errorf("node1 flow identities: %+v", f)
			}
		}
	}
	if !sawOutbound {
		t.Error("node1 recorded no outbound HBONE flow to echo2")
	}
}

// TestPermissiveAndStrict: enrolled → plain and plain → enrolled work in
// permissive mode; plain → enrolled is refused in strict mode while enrolled
// → enrolled keeps working.
func TestPermissiveAndStrict(t *testing.T) {
	l := upLab(t, meshYAML)
	client := podNetns(t, l, "shop", "client")
	visitor := podNetns(t, l, "plain", "visitor")
	echo2 := podAddr(t, l, "shop", "echo2", 9000)

	mustEcho(t, client, podAddr(t, l, "plain", "web", 9000), "to-plain", 64<<10)
	mustEcho(t, visitor, echo2, "from-plain", 64<<10)

	eventually(t, 5*time.Second, "node2 records the allowed plaintext flow into echo2", func() error {
		for _, f := range flows(t, nodeNetns(t, l, "node2")) {
			if f.Direction == "inbound-plaintext" && f.Verdict == "allowed" && f.Destination == echo2 {
				return nil
			}
		}
		return errors.New("not recorded")
	})

	objs, err := lab.Decode(strings.Replace(meshYAML,
		"metadata: {name: shop, labels: {palisade.dev/mtls: enabled}}",
		"metadata: {name: shop, labels: {palisade.dev/mtls: enabled, palisade.dev/mtls-mode: strict}}", 1))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := l.Apply(ctx, objs); err != nil {
		t.Fatal(err)
	}
	eventually(t, 15*time.Second, "plaintext into a strict pod is refused", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		got, err := echoRoundTrip(ctx, visitor, echo2, []byte("plaintext-in-strict"))
		if err == nil && len(got) > 0 {
			return fmt.Errorf("plain visitor still got an echo: %q", got)
		}
		return nil
	})
	mustEcho(t, client, echo2, "strict-enrolled", 64<<10)
	var refused bool
	for _, f := range flows(t, nodeNetns(t, l, "node2")) {
		if f.Direction == "inbound-plaintext" && f.Verdict == "denied" && strings.Contains(f.Reason, "strict") {
			refused = true
		}
	}
	if !refused {
		t.Error("no denied flow naming strict mode on node2")
	}
}

// TestServiceReachesEndpointsOnBothNodes: a client calling a Service name is
// balanced over endpoints on both nodes, through tunnels.
func TestServiceReachesEndpointsOnBothNodes(t *testing.T) {
	l := upLab(t, meshYAML)
	client := podNetns(t, l, "shop", "client")
	vip, err := l.ServiceIP("shop", "echo")
	if err != nil {
		t.Fatal(err)
	}
	// The pod's own hosts file resolves the Service name.
	out, err := l.Exec(context.Background(), "shop/client", "getent", "hosts", "echo.shop.svc.cluster.local")
	if err != nil || !strings.Contains(string(out), vip.String()) {
		t.Fatalf("echo.shop.svc.cluster.local does not resolve to %s in the pod: %s %v", vip, out, err)
	}
	seen := map[string]int{}
	httpc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return dialFrom(ctx, client, addr)
		},
	}}
	// The node proxy learns that the endpoints became ready from its cluster
	// view, one poll after the lab marks them ready.
	eventually(t, 10*time.Second, "the Service has ready endpoints in node1's view", func() error {
		resp, err := httpc.Get("http://" + vip.String() + ":80/")
		if err == nil {
			resp.Body.Close()
		}
		return err
	})
	for i := 0; i < 12; i++ {
		resp, err := httpc.Get("http://" + vip.String() + ":80/")
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, h := range []string{"echo1", "echo2"} {
			if strings.Contains(string(body), "hostname="+h) {
				seen[h]++
			}
		}
	}
	if seen["echo1"] == 0 || seen["echo2"] == 0 {
		t.Fatalf("Service did not reach both nodes' endpoints: %v", seen)
	}
	eventually(t, 5*time.Second, "node1 records 12 tunneled Service flows", func() error {
		var tunneled int
		for _, f := range flows(t, nodeNetns(t, l, "node1")) {
			if f.Direction == "outbound" && f.Service == "shop/echo" && f.Transport == "hbone" && f.Verdict == "allowed" {
				tunneled++
			}
		}
		if tunneled < 12 {
			return fmt.Errorf("%d tunneled Service flows", tunneled)
		}
		return nil
	})
}
