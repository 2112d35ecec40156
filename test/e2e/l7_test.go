package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/palisade-net/palisade/pkg/lab"
	"github.com/palisade-net/palisade/pkg/netns"
)

// l7Cluster: an enrolled namespace with a client and an intruder on node1
// and an HTTP, a gRPC and a Kafka server on node2, so every request crosses
// an HBONE tunnel and is judged by node2's proxy.
const l7Cluster = `
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {palisade.dev/mtls: enabled}}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: shop, labels: {app: client}}
spec:
  nodeName: node1
  serviceAccountName: client
  containers:
  - {name: c, command: ["$(LAB_BIN)", "serve-echo", "--addr", ":9000"], ports: [{containerPort: 9000}]}
---
apiVersion: v1
kind: Pod
metadata: {name: intruder, namespace: shop, labels: {app: intruder}}
spec:
  nodeName: node1
  serviceAccountName: intruder
  containers:
  - {name: c, command: ["$(LAB_BIN)", "serve-echo", "--addr", ":9000"], ports: [{containerPort: 9000}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
spec:
  nodeName: node2
  serviceAccountName: web
  containers:
  - {name: web, command: ["$(LAB_BIN)", "serve-http", "--addr", ":8080"], ports: [{containerPort: 8080}]}
---
apiVersion: v1
kind: Pod
metadata: {name: grpc, namespace: shop, labels: {app: grpc}}
spec:
  nodeName: node2
  serviceAccountName: grpc
  containers:
  - {name: grpc, command: ["$(LAB_BIN)", "serve-grpc", "--addr", ":9090"], ports: [{containerPort: 9090}]}
---
apiVersion: v1
kind: Pod
metadata: {name: kafka, namespace: shop, labels: {app: kafka}}
spec:
  nodeName: node2
  serviceAccountName: kafka
  containers:
  - {name: kafka, command: ["$(LAB_BIN)", "serve-kafka", "--addr", ":9092", "--topics", "orders,secret"], ports: [{containerPort: 9092}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: grpc, namespace: shop}
spec: {selector: {app: grpc}, ports: [{port: 9090}]}
---
apiVersion: v1
kind: Service
metadata: {name: kafka, namespace: shop}
spec: {selector: {app: kafka}, ports: [{port: 9092}]}
`

// webPolicy allows the client GET /public/... and POST /echo with
// "X-Team: ops", and denies /public/secret... whatever the allows say.
const webPolicy = `
apiVersion: policy.palisade.dev/v1alpha1
kind: L7Policy
metadata: {name: web, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]
      rules:
        http:
        - {method: GET, path: "/public/.*"}
        - {method: POST, path: "/echo", headers: ["X-Team ops"]}
  ingressDeny:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]
      rules:
        http:
        - {path: "/public/secret.*"}
`

// grpcPolicy allows EmptyCall and FullDuplexCall of the test service and
// reflection (for grpcurl); UnaryCall is not allowed.
const grpcPolicy = `
apiVersion: policy.palisade.dev/v1alpha1
kind: L7Policy
metadata: {name: grpc, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: grpc}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: "9090", protocol: TCP}]
      rules:
        grpc:
        - {service: grpc.testing.TestService, method: EmptyCall}
        - {service: grpc.testing.TestService, method: FullDuplexCall}
        - {service: grpc.reflection.v1.ServerReflection}
        - {service: grpc.reflection.v1alpha.ServerReflection}
`

// kafkaPolicy is a CiliumNetworkPolicy exactly as a Cilium user writes it:
// the client may produce to and consume from "orders", nothing else.
const kafkaPolicy = `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: kafka, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: kafka}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: "9092", protocol: TCP}]
      rules:
        kafka:
        - {role: produce, topic: orders}
        - {role: consume, topic: orders}
`

func l7Lab(t *testing.T) *lab.Lab {
	t.Helper()
	l := upLab(t, l7Cluster+"---"+webPolicy+"---"+grpcPolicy+"---"+kafkaPolicy)
	waitL7Services(t, l)
	return l
}

// waitL7Services waits until shop/client reaches the web, grpc and kafka
// Services of l7Cluster (see waitServiceReachable) and returns their
// addresses, service name -> "vip:port".
func waitL7Services(t *testing.T, l *lab.Lab) map[string]string {
	t.Helper()
	client := podNetns(t, l, "shop", "client")
	vips := map[string]string{}
	for _, svc := range []struct {
		name string
		port int
	}{{"web", 80}, {"grpc", 9090}, {"kafka", 9092}} {
		vip, err := l.ServiceIP("shop", svc.name)
		if err != nil {
			t.Fatal(err)
		}
		vips[svc.name] = fmt.Sprintf("%s:%d", vip, svc.port)
		waitServiceReachable(t, client, vips[svc.name])
	}
	return vips
}

// waitServiceReachable waits until node1's proxy knows the Service's ready
// endpoints: before that it resets connections to the VIP at once; after,
// the connection stays open waiting for the client to speak.
func waitServiceReachable(t *testing.T, h *netns.Handle, addr string) {
	t.Helper()
	eventually(t, 10*time.Second, "node1's proxy has ready endpoints for "+addr, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, err := dialFrom(ctx, h, addr)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		_, err = c.Read(make([]byte, 1))
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return nil
		}
		return fmt.Errorf("connection ended at once: %v", err)
	})
}

// testTool returns the path of a Go test client built from the tools
// module (tools/go.mod) into $PALISADE_TEST_BIN (set by make) or
// .cache/test-bin, building it when it is not there yet.
func testTool(t *testing.T, name, pkg string) string {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	dir := os.Getenv("PALISADE_TEST_BIN")
	if dir == "" {
		dir = filepath.Join(root, ".cache", "test-bin")
	}
	path := filepath.Join(dir, name)
	if _, err := os.Stat(path); err == nil {
		return path
	}
	cmd := exec.Command("go", "build", "-o", dir+"/", pkg)
	cmd.Dir = filepath.Join(root, "tools")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building %s from the tools module: %v\n%s", name, err, out)
	}
	return path
}

// curl runs curl in the pod and returns the HTTP status and body.
func curl(t *testing.T, l *lab.Lab, pod string, args ...string) (int, string) {
	t.Helper()
	code, body, err := tryCurl(l, pod, args...)
	if err != nil {
		t.Fatal(err)
	}
	return code, body
}

// tryCurl is curl returning curl's failure instead of failing the test:
// for polling while a policy or an enrollment changes, when a connection
// the change closes is expected.
func tryCurl(l *lab.Lab, pod string, args ...string) (int, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	args = append([]string{"curl", "-sS", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}"}, args...)
	out, err := l.Exec(ctx, pod, args...)
	if err != nil {
		return 0, "", fmt.Errorf("%s: %w\n%s", strings.Join(args, " "), err, out)
	}
	s := strings.TrimRight(string(out), "\n")
	i := strings.LastIndexByte(s, '\n')
	var code int
	fmt.Sscan(s[i+1:], &code)
	return code, s[:max(i, 0)], nil
}

// requests fetches node's L7 request records.
type request struct {
	Protocol string `json:"protocol"`
	HTTP     *struct {
		Method string `json:"method"`
		Path   string `json:"path"`
		Status int    `json:"status"`
	} `json:"http"`
	GRPC *struct {
		Service string `json:"service"`
		Method  string `json:"method"`
		Status  int    `json:"status"`
	} `json:"grpc"`
	Kafka *struct {
		API       string   `json:"api"`
		Topics    []string `json:"topics"`
		ErrorCode int16    `json:"errorCode"`
	} `json:"kafka"`
	Verdict string `json:"verdict"`
	Policy  string `json:"policy"`
	Rule    string `json:"rule"`
	Reason  string `json:"reason"`
}

func requestRecords(t *testing.T, node *netns.Handle) []request {
	var out []request
	adminGet(t, node, "/debug/requests", &out)
	return out
}

// waitRequest waits until node2's proxy has a request record matching f.
func waitRequest(t *testing.T, node *netns.Handle, what string, f func(request) bool) request {
	t.Helper()
	var found request
	eventually(t, 5*time.Second, what, func() error {
		for _, r := range requestRecords(t, node) {
			if f(r) {
				found = r
				return nil
			}
		}
		return errors.New("no such request record")
	})
	return found
}

func TestHTTPPolicy(t *testing.T) {
	l := l7Lab(t)
	node2 := nodeNetns(t, l, "node2")
	url := "http://web.shop.svc.cluster.local"
	tests := []struct {
		name   string
		args   []string
		status int
		body   string
	}{
		{"allowed GET", []string{url + "/public/a?x=1"}, 200, "path=/public/a?x=1"},
		{"allowed GET h2c", []string{"--http2-prior-knowledge", url + "/public/b"}, 200, "path=/public/b"},
		{"method not allowed", []string{"-X", "DELETE", url + "/public/a"}, 403, "Access denied"},
		{"path not allowed", []string{url + "/private"}, 403, "Access denied"},
		{"path not allowed h2c", []string{"--http2-prior-knowledge", url + "/private"}, 403, "Access denied"},
		{"deny beats allow", []string{url + "/public/secret/x"}, 403, "Access denied"},
		{"header present", []string{"-H", "X-Team: ops", "--data", "hello", url + "/echo"}, 200, "hello"},
		{"header wrong value", []string{"-H", "X-Team: dev", "--data", "hello", url + "/echo"}, 403, "Access denied"},
		{"header missing", []string{"--data", "hello", url + "/echo"}, 403, "Access denied"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, body := curl(t, l, "shop/client", tt.args...)
			if code != tt.status || !strings.Contains(body, tt.body) {
				t.Fatalf("got %d %q, want %d containing %q", code, body, tt.status, tt.body)
			}
		})
	}
	rec := waitRequest(t, node2, "node2 records the denied DELETE with its reason", func(r request) bool {
		return r.HTTP != nil && r.HTTP.Method == "DELETE" && r.Verdict == "denied"
	})
	if rec.HTTP.Status != 403 || rec.Reason == "" {
		t.Errorf("denied request record: %+v", rec)
	}
	rec = waitRequest(t, node2, "node2 records the deny rule that matched /public/secret", func(r request) bool {
		return r.HTTP != nil && strings.HasPrefix(r.HTTP.Path, "/public/secret") && r.Verdict == "denied"
	})
	if !strings.Contains(rec.Policy, "shop/web") || !strings.Contains(rec.Rule, "ingressDeny[0]") {
		t.Errorf("deny record names policy %q rule %q, want shop/web and ingressDeny[0]", rec.Policy, rec.Rule)
	}

	// Malformed HTTP on a port with L7 rules is refused for that
	// connection only, with the reason logged; others carry on.
	vip, err := l.ServiceIP("shop", "web")
	if err != nil {
		t.Fatal(err)
	}
	logOff := logSize(t, l, "node2")
	ctx0, cancel0 := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel0()
	bad, err := dialFrom(ctx0, podNetns(t, l, "shop", "client"), vip.String()+":80")
	if err != nil {
		t.Fatal(err)
	}
	bad.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(bad, "GET /public/a HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!")
	reply, _ := io.ReadAll(bad)
	bad.Close()
	if !strings.HasPrefix(string(reply), "HTTP/1.1 400") {
		t.Errorf("conflicting Content-Length: got %q, want a 400 and the connection closed", reply)
	}
	eventually(t, 5*time.Second, "node2 logs why the malformed connection was refused", func() error {
		if s := logSince(t, l, "node2", logOff); !strings.Contains(s, "Content-Length") {
			return errors.New("no log line naming the conflicting Content-Length")
		}
		return nil
	})
	if code, _ := curl(t, l, "shop/client", url+"/public/after"); code != 200 {
		t.Errorf("a request after the malformed connection: %d", code)
	}

	// A source that no rule names is refused at L4: node2 answers the
	// tunnel with 401 and node1 resets the app's connection.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := l.Exec(ctx, "shop/intruder", "curl", "-sS", "--max-time", "10", url+"/public/a")
	if err == nil || lab.ExitCode(err) == 28 {
		t.Fatalf("intruder reached the web pod or timed out instead of being reset: %v %s", err, out)
	}
	waitFlowVerdict(t, node2, "inbound-hbone", "denied", "shop/intruder")
	// The source's proxy records the refusal as the destination's
	// denial, not as a failure.
	waitFlowVerdict(t, nodeNetns(t, l, "node1"), "outbound", "denied", "shop/intruder")
}

// waitFlowVerdict waits for a flow of direction with verdict whose source
// identity names the pod.
func waitFlowVerdict(t *testing.T, node *netns.Handle, direction, verdict, pod string) {
	t.Helper()
	ns, name, _ := strings.Cut(pod, "/")
	eventually(t, 5*time.Second, fmt.Sprintf("a %s %s flow from %s", verdict, direction, pod), func() error {
		for _, f := range flows(t, node) {
			if f.Direction == direction && f.Verdict == verdict && strings.Contains(f.SrcIdentity, "/ns/"+ns+"/sa/"+name) {
				return nil
			}
		}
		return errors.New("none yet")
	})
}

func TestPolicyChangeAppliesToLiveConnections(t *testing.T) {
	l := l7Lab(t)
	client := podNetns(t, l, "shop", "client")
	vip, err := l.ServiceIP("shop", "web")
	if err != nil {
		t.Fatal(err)
	}
	// One keep-alive connection, counted by the dialer.
	var dials int
	var mu sync.Mutex
	var conn net.Conn
	httpc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		MaxIdleConnsPerHost: 1,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := dialFrom(ctx, client, addr)
			mu.Lock()
			dials++
			conn = c
			mu.Unlock()
			return c, err
		},
	}}
	get := func(path string) (int, error) {
		resp, err := httpc.Get("http://" + vip.String() + path)
		if err != nil {
			return 0, err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	if code, err := get("/public/a"); err != nil || code != 200 {
		t.Fatalf("before the change: %d %v", code, err)
	}
	// Narrow the policy: /public/a is no longer allowed. The next request on
	// the same connection is judged by the new policy.
	narrowed := strings.Replace(webPolicy, `{method: GET, path: "/public/.*"}`, `{method: GET, path: "/public/b"}`, 1)
	apply(t, l, l7Cluster+"---"+narrowed+"---"+grpcPolicy+"---"+kafkaPolicy)
	eventually(t, 10*time.Second, "the narrowed policy denies /public/a on the live connection", func() error {
		code, err := get("/public/a")
		if err != nil {
			return err
		}
		if code != 403 {
			return fmt.Errorf("status %d", code)
		}
		return nil
	})
	if code, err := get("/public/b"); err != nil || code != 200 {
		t.Fatalf("/public/b under the narrowed policy: %d %v", code, err)
	}
	mu.Lock()
	if dials != 1 {
		t.Errorf("the client dialled %d times; the policy change should not have closed the connection", dials)
	}
	live := conn
	mu.Unlock()

	// Withdraw the client's L4 allowance: the live connection is closed.
	withdrawn := strings.ReplaceAll(narrowed, "{app: client}", "{app: nobody}")
	apply(t, l, l7Cluster+"---"+withdrawn+"---"+grpcPolicy+"---"+kafkaPolicy)
	live.SetReadDeadline(time.Now().Add(15 * time.Second))
	_, err = bufio.NewReader(live).ReadByte()
	if err == nil {
		t.Fatal("the connection delivered data after its allowance was withdrawn")
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatal("the connection stayed open after its allowance was withdrawn")
	}
	waitFlowVerdict(t, nodeNetns(t, l, "node2"), "inbound-hbone", "revoked", "shop/client")
}

func TestGRPCPolicy(t *testing.T) {
	l := l7Lab(t)
	node2 := nodeNetns(t, l, "node2")
	client := podNetns(t, l, "shop", "client")
	vip, err := l.ServiceIP("shop", "grpc")
	if err != nil {
		t.Fatal(err)
	}
	c := grpcClient(t, client, vip.String()+":9090")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.EmptyCall(ctx, &testpb.Empty{}); err != nil {
		t.Fatalf("allowed EmptyCall: %v", err)
	}
	_, err = c.UnaryCall(ctx, &testpb.SimpleRequest{ResponseSize: 10})
	if st, _ := status.FromError(err); st.Code() != codes.PermissionDenied || !strings.Contains(st.Message(), "UnaryCall") {
		t.Fatalf("denied UnaryCall: got %v, want PermissionDenied naming the method", err)
	}
	// The same HTTP/2 connection keeps working after a denied stream,
	// streaming included.
	stream, err := c.FullDuplexCall(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, msg := range []string{"one", "two", "three"} {
		if err := stream.Send(&testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: []byte(msg)}}); err != nil {
			t.Fatal(err)
		}
		r, err := stream.Recv()
		if err != nil || string(r.GetPayload().GetBody()) != msg {
			t.Fatalf("stream echo %q: %v %v", msg, r, err)
		}
	}
	stream.CloseSend()
	if _, err := stream.Recv(); err != io.EOF {
		t.Fatalf("stream end: %v", err)
	}
	rec := waitRequest(t, node2, "node2 records the denied UnaryCall", func(r request) bool {
		return r.GRPC != nil && r.GRPC.Method == "UnaryCall" && r.Verdict == "denied"
	})
	if rec.GRPC.Status != 7 || !strings.Contains(rec.Policy, "shop/grpc") || !strings.Contains(rec.Reason, "UnaryCall") {
		t.Errorf("denied call record: %+v, want grpc-status 7, the policy and a reason naming the method", rec)
	}

	// grpcurl, through reflection, which the policy allows.
	grpcurl := testTool(t, "grpcurl", "github.com/fullstorydev/grpcurl/cmd/grpcurl")
	gctx, gcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer gcancel()
	out, err := l.Exec(gctx, "shop/client", grpcurl, "-plaintext", "grpc.shop.svc.cluster.local:9090", "grpc.testing.TestService/EmptyCall")
	if err != nil {
		t.Fatalf("grpcurl EmptyCall: %v\n%s", err, out)
	}
	out, err = l.Exec(gctx, "shop/client", grpcurl, "-plaintext", "-d", `{"response_size": 3}`, "grpc.shop.svc.cluster.local:9090", "grpc.testing.TestService/UnaryCall")
	if err == nil || !strings.Contains(string(out), "PermissionDenied") {
		t.Fatalf("grpcurl UnaryCall: want PermissionDenied, got %v\n%s", err, out)
	}
}

// grpcClient is a grpc-go TestService client in the pod of h, for addr.
func grpcClient(t *testing.T, h *netns.Handle, addr string) testpb.TestServiceClient {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) { return dialFrom(ctx, h, addr) }))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return testpb.NewTestServiceClient(cc)
}

// kafkaProducer is a franz-go client in the pod of h that produces
// without retries (a denial surfaces at once).
func kafkaProducer(h *netns.Handle, seed string) (*kgo.Client, error) {
	return kgo.NewClient(kgo.SeedBrokers(seed), kgo.Dialer(kafkaDialer(h)),
		kgo.DisableIdempotentWrite(), kgo.RequestRetries(0), kgo.RecordRetries(1))
}

// kafkaDialer dials from inside the pod's netns.
func kafkaDialer(h *netns.Handle) func(ctx context.Context, network, host string) (net.Conn, error) {
	return func(ctx context.Context, network, host string) (net.Conn, error) { return dialFrom(ctx, h, host) }
}

type netnsProxyDialer struct{ h *netns.Handle }

func (d netnsProxyDialer) Dial(network, addr string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return dialFrom(ctx, d.h, addr)
}

func TestKafkaPolicy(t *testing.T) {
	l := l7Lab(t)
	node2 := nodeNetns(t, l, "node2")
	client := podNetns(t, l, "shop", "client")
	vip, err := l.ServiceIP("shop", "kafka")
	if err != nil {
		t.Fatal(err)
	}
	seed := vip.String() + ":9092"

	t.Run("franz-go", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		cl, err := kafkaProducer(client, seed)
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		if err := cl.ProduceSync(ctx, &kgo.Record{Topic: "orders", Value: []byte("o1")}).FirstErr(); err != nil {
			t.Fatalf("allowed produce: %v", err)
		}
		err = cl.ProduceSync(ctx, &kgo.Record{Topic: "secret", Value: []byte("s1")}).FirstErr()
		if !errors.Is(err, kerr.TopicAuthorizationFailed) {
			t.Fatalf("denied produce: got %v, want TOPIC_AUTHORIZATION_FAILED", err)
		}
		if ctx.Err() != nil {
			t.Fatal("the denied produce only ended at the test's deadline")
		}
		consumer, err := kgo.NewClient(kgo.SeedBrokers(seed), kgo.Dialer(kafkaDialer(client)),
			kgo.ConsumeTopics("orders"), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
		if err != nil {
			t.Fatal(err)
		}
		defer consumer.Close()
		fs := consumer.PollFetches(ctx)
		if err := fs.Err(); err != nil {
			t.Fatalf("allowed consume: %v", err)
		}
		if recs := fs.Records(); len(recs) == 0 || string(recs[0].Value) != "o1" {
			t.Fatalf("consumed %v", recs)
		}
	})

	t.Run("sarama", func(t *testing.T) {
		cfg := sarama.NewConfig()
		cfg.Producer.Return.Successes = true
		cfg.Producer.Retry.Max = 0
		cfg.Metadata.Retry.Max = 1
		cfg.Net.Proxy.Enable = true
		cfg.Net.Proxy.Dialer = netnsProxyDialer{client}
		cfg.Version = sarama.V2_8_0_0
		p, err := sarama.NewSyncProducer([]string{seed}, cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		if _, _, err := p.SendMessage(&sarama.ProducerMessage{Topic: "orders", Value: sarama.StringEncoder("o2")}); err != nil {
			t.Fatalf("allowed produce: %v", err)
		}
		_, _, err = p.SendMessage(&sarama.ProducerMessage{Topic: "secret", Value: sarama.StringEncoder("s2")})
		if !errors.Is(err, sarama.ErrTopicAuthorizationFailed) {
			t.Fatalf("denied produce: got %v, want ErrTopicAuthorizationFailed", err)
		}
	})

	t.Run("kcat", func(t *testing.T) {
		if _, err := exec.LookPath("kcat"); err != nil {
			t.Fatal("kcat is not installed (make deps installs it)")
		}
		run := func(stdin string, args ...string) ([]byte, error) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			cmd := l.Command(ctx, "shop/client", append([]string{"kcat", "-b", "kafka.shop.svc.cluster.local:9092"}, args...)...)
			cmd.Stdin = strings.NewReader(stdin)
			out, err := cmd.CombinedOutput()
			if ctx.Err() != nil {
				t.Fatalf("kcat %v hung: %s", args, out)
			}
			return out, err
		}
		if out, err := run("o3\n", "-P", "-t", "orders"); err != nil {
			t.Fatalf("kcat allowed produce: %v\n%s", err, out)
		}
		out, err := run("", "-C", "-t", "orders", "-o", "beginning", "-e", "-q")
		if err != nil || !strings.Contains(string(out), "o3") {
			t.Fatalf("kcat allowed consume: %v\n%s", err, out)
		}
		// kcat reports the broker's answer ("Topic authorization failed").
		out, err = run("s3\n", "-P", "-t", "secret")
		if !strings.Contains(strings.ToLower(string(out)), "authorization failed") {
			t.Fatalf("kcat denied produce: want an authorization error, got %v\n%s", err, out)
		}
	})

	// The clients ask for the topic's metadata before producing; the first
	// request naming "secret" is the one denied.
	rec := waitRequest(t, node2, "node2 records a denied request for topic secret", func(r request) bool {
		return r.Kafka != nil && slices.Contains(r.Kafka.Topics, "secret") && r.Verdict == "denied"
	})
	if rec.Kafka.ErrorCode != 29 || !strings.Contains(rec.Reason, "secret") || !strings.Contains(rec.Policy, "shop/kafka") {
		t.Errorf("denied request record: %+v, want error code 29, a reason naming the topic and the policy", rec)
	}
}

// egressCluster: an enrolled client and, in a namespace outside the mesh,
// an HTTP server and a Kafka broker. The client's egress policy is
// enforced by its own node proxy, since the destinations have none.
const egressCluster = `
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {palisade.dev/mtls: enabled}}
---
apiVersion: v1
kind: Namespace
metadata: {name: outside}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: shop, labels: {app: client}}
spec:
  nodeName: node1
  serviceAccountName: client
  containers:
  - {name: c, command: ["$(LAB_BIN)", "serve-echo", "--addr", ":9000"], ports: [{containerPort: 9000}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: outside, labels: {app: web}}
spec:
  nodeName: node2
  containers:
  - {name: web, command: ["$(LAB_BIN)", "serve-http", "--addr", ":8080"], ports: [{containerPort: 8080}]}
---
apiVersion: v1
kind: Pod
metadata: {name: kafka, namespace: outside, labels: {app: kafka}}
spec:
  nodeName: node2
  containers:
  - {name: kafka, command: ["$(LAB_BIN)", "serve-kafka", "--addr", ":9092", "--topics", "orders,secret"], ports: [{containerPort: 9092}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: outside}
spec: {selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: kafka, namespace: outside}
spec: {selector: {app: kafka}, ports: [{port: 9092}]}
---
apiVersion: policy.palisade.dev/v1alpha1
kind: L7Policy
metadata: {name: client-egress, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {k8s:io.kubernetes.pod.namespace: outside, app: web}}]
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]
      rules:
        http:
        - {method: GET, path: "/allowed.*"}
  - toEndpoints: [{matchLabels: {k8s:io.kubernetes.pod.namespace: outside, app: kafka}}]
    toPorts:
    - ports: [{port: "9092", protocol: TCP}]
      rules:
        kafka:
        - {role: produce, topic: orders}
`

func TestEgressL7ToPlainDestinations(t *testing.T) {
	l := upLab(t, egressCluster)
	node1 := nodeNetns(t, l, "node1")
	client := podNetns(t, l, "shop", "client")
	for _, svc := range []struct {
		name string
		port int
	}{{"web", 80}, {"kafka", 9092}} {
		vip, err := l.ServiceIP("outside", svc.name)
		if err != nil {
			t.Fatal(err)
		}
		waitServiceReachable(t, client, fmt.Sprintf("%s:%d", vip, svc.port))
	}

	// HTTP: judged by node1's proxy before the plaintext leaves the pod.
	if code, body := curl(t, l, "shop/client", "http://web.outside.svc.cluster.local/allowed/x"); code != 200 || !strings.Contains(body, "path=/allowed/x") {
		t.Fatalf("allowed egress request: %d %q", code, body)
	}
	if code, body := curl(t, l, "shop/client", "http://web.outside.svc.cluster.local/forbidden"); code != 403 || strings.TrimSpace(body) != "Access denied" {
		t.Fatalf("denied egress request: %d %q, want 403 Access denied", code, body)
	}
	rec := waitRequest(t, node1, "node1 records the denied egress request", func(r request) bool {
		return r.HTTP != nil && r.HTTP.Path == "/forbidden" && r.Verdict == "denied"
	})
	if !strings.Contains(rec.Policy, "shop/client-egress") {
		t.Errorf("denied egress record names policy %q", rec.Policy)
	}
	// The connections left node1 in plaintext (the destination is outside
	// the mesh), through the inspector.
	eventually(t, 5*time.Second, "node1 records the inspected plaintext egress flows", func() error {
		for _, f := range flows(t, node1) {
			if f.Direction == "outbound" && f.Transport == "plaintext" && f.Protocol == "http" {
				return nil
			}
		}
		return errors.New("none yet")
	})

	// Kafka: produce to orders allowed, to secret refused by node1's proxy.
	vip, err := l.ServiceIP("outside", "kafka")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cl, err := kafkaProducer(client, vip.String()+":9092")
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if err := cl.ProduceSync(ctx, &kgo.Record{Topic: "orders", Value: []byte("o1")}).FirstErr(); err != nil {
		t.Fatalf("allowed egress produce: %v", err)
	}
	err = cl.ProduceSync(ctx, &kgo.Record{Topic: "secret", Value: []byte("s1")}).FirstErr()
	if !errors.Is(err, kerr.TopicAuthorizationFailed) || ctx.Err() != nil {
		t.Fatalf("denied egress produce: got %v, want TOPIC_AUTHORIZATION_FAILED promptly", err)
	}
	waitRequest(t, node1, "node1 records the denied egress Kafka request", func(r request) bool {
		return r.Kafka != nil && slices.Contains(r.Kafka.Topics, "secret") && r.Verdict == "denied"
	})
}
