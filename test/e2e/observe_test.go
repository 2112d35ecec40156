package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/palisade-net/palisade/pkg/flowlog"
	"github.com/palisade-net/palisade/pkg/kubectlplugin"
)

// deniedFlowLog records the denied flows of namespace shop.
const deniedFlowLog = `
apiVersion: policy.palisade.dev/v1alpha1
kind: FlowLog
metadata: {name: shop-denied}
spec:
  namespaces: [shop]
  verdicts: [denied]
`

// kafkaProducePolicy is kafkaPolicy plus Metadata for every topic, so a
// client reaches the Produce to a topic it may not write (with kafkaPolicy
// alone, the Metadata request for that topic is what is denied).
var kafkaProducePolicy = strings.Replace(kafkaPolicy, "        - {role: consume, topic: orders}\n",
	"        - {role: consume, topic: orders}\n        - {apiKey: metadata}\n", 1)

// observed is one line of `kubectl palisade observe -o json`.
type observed struct {
	rec flowlog.Record
	at  time.Time
}

// TestKubectlPalisade runs the real kubectl with the plugin against a lab
// backed by a real API server: observe shows denied HTTP, gRPC and Kafka
// requests as they happen, with the policy and rule; status and explain
// describe the lab; the FlowLog selects what the flow log file records.
func TestKubectlPalisade(t *testing.T) {
	if kafkaProducePolicy == kafkaPolicy {
		t.Fatal("kafkaProducePolicy: kafkaPolicy changed shape")
	}
	l := upKubeLab(t, l7Cluster+"---"+webPolicy+"---"+grpcPolicy+"---"+kafkaProducePolicy+"---"+deniedFlowLog)
	vips := waitL7Services(t, l)
	client := podNetns(t, l, "shop", "client")
	kubeconfig := l.Status().Kube.Kubeconfig
	kubectlBin := filepath.Join(kubeBinDir(t), "kubectl")
	// kubectl finds plugins on $PATH.
	t.Setenv("PATH", binaries(t)+string(os.PathListSeparator)+os.Getenv("PATH"))
	// kubectl refuses global flags before a plugin's name; the plugin
	// reads $KUBECONFIG as kubectl does.
	plugin := func(ctx context.Context, args ...string) *exec.Cmd {
		cmd := exec.CommandContext(ctx, kubectlBin, append([]string{"palisade"}, args...)...)
		cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig)
		return cmd
	}
	run := func(t *testing.T, args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		var stdout, stderr bytes.Buffer
		cmd := plugin(ctx, args...)
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("kubectl palisade %s: %v\n%s%s", strings.Join(args, " "), err, stdout.String(), stderr.String())
		}
		return stdout.String()
	}

	t.Run("observe", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		cmd := plugin(ctx, "observe", "-n", "shop", "--verdict", "denied", "-o", "json")
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		stderr, err := cmd.StderrPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() {
			cancel()
			cmd.Wait()
		}()
		ready := make(chan string, 1)
		go func() {
			sc := bufio.NewScanner(stderr)
			var all []string
			for sc.Scan() {
				all = append(all, sc.Text())
				if strings.Contains(sc.Text(), "watching flows") {
					ready <- ""
				}
			}
			ready <- strings.Join(all, "\n")
		}()
		lines := make(chan observed, 100)
		go func() {
			defer close(lines)
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				var r flowlog.Record
				if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
					t.Errorf("observe printed %q: %v", sc.Text(), err)
					return
				}
				lines <- observed{r, time.Now()}
			}
		}()
		select {
		case msg := <-ready:
			if msg != "" {
				t.Fatalf("observe ended before watching:\n%s", msg)
			}
		case <-time.After(time.Minute):
			t.Fatal("observe did not open the node proxies' streams")
		}

		// expect waits for the first observed record matching f; the
		// timeout only bounds a failure, the delay is measured.
		expect := func(what string, sent time.Time, f func(*flowlog.Record) bool) flowlog.Record {
			t.Helper()
			deadline := time.After(30 * time.Second)
			for {
				select {
				case o, ok := <-lines:
					if !ok {
						t.Fatalf("%s: observe ended", what)
					}
					if o.rec.Verdict != flowlog.Denied {
						t.Errorf("observe --verdict denied printed a %s record: %+v", o.rec.Verdict, o.rec)
					}
					if f(&o.rec) {
						t.Logf("%s: shown %s after the client saw the denial (policy %q, rule %q)", what, o.at.Sub(sent).Round(time.Millisecond), o.rec.Policy, o.rec.Rule)
						if o.rec.Policy == "" || o.rec.Rule == "" || o.rec.Reason == "" {
							t.Errorf("%s: record without policy, rule or reason: %+v", what, o.rec)
						}
						return o.rec
					}
				case <-deadline:
					t.Fatalf("%s: not shown by observe", what)
				}
			}
		}

		// HTTP: the ingressDeny rule.
		code, _ := curl(t, l, "shop/client", "http://web.shop.svc.cluster.local/public/secret/plans")
		sent := time.Now()
		if code != 403 {
			t.Fatalf("curl /public/secret: %d, want 403", code)
		}
		r := expect("denied HTTP request", sent, func(r *flowlog.Record) bool {
			return r.HTTP != nil && r.HTTP.Path == "/public/secret/plans"
		})
		if r.Protocol != flowlog.ProtoHTTP || r.Rule != "spec.ingressDeny[0].toPorts[0].rules.http[0]" || r.Policy != "L7Policy shop/web" ||
			r.Source.Pod != "client" || r.Destination.Pod != "web" || r.HTTP.Status != 403 {
			t.Errorf("HTTP record %+v", r)
		}

		// gRPC: UnaryCall, which no rule allows.
		gctx, gcancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer gcancel()
		_, err = grpcClient(t, client, vips["grpc"]).UnaryCall(gctx, &testpb.SimpleRequest{ResponseSize: 1})
		sent = time.Now()
		if st, _ := status.FromError(err); st.Code() != codes.PermissionDenied {
			t.Fatalf("UnaryCall: %v, want PermissionDenied", err)
		}
		r = expect("denied gRPC call", sent, func(r *flowlog.Record) bool {
			return r.GRPC != nil && r.GRPC.Method == "UnaryCall"
		})
		if r.Protocol != flowlog.ProtoGRPC || r.GRPC.Status != 7 || r.Policy != "L7Policy shop/grpc" || r.Rule != "default-deny" {
			t.Errorf("gRPC record %+v", r)
		}

		// Kafka: a produce to a topic the CiliumNetworkPolicy does not allow.
		kcl, err := kafkaProducer(client, vips["kafka"])
		if err != nil {
			t.Fatal(err)
		}
		defer kcl.Close()
		err = kcl.ProduceSync(gctx, &kgo.Record{Topic: "secret", Value: []byte("s")}).FirstErr()
		sent = time.Now()
		if !errors.Is(err, kerr.TopicAuthorizationFailed) {
			t.Fatalf("produce to secret: %v, want TOPIC_AUTHORIZATION_FAILED", err)
		}
		r = expect("denied Kafka produce", sent, func(r *flowlog.Record) bool {
			return r.Kafka != nil && r.Kafka.API == "Produce"
		})
		if r.Protocol != flowlog.ProtoKafka || r.Kafka.ErrorCode != 29 || r.Policy != "CiliumNetworkPolicy shop/kafka" ||
			len(r.Kafka.Topics) != 1 || r.Kafka.Topics[0] != "secret" {
			t.Errorf("Kafka record %+v", r)
		}
	})

	t.Run("status", func(t *testing.T) {
		var rep kubectlplugin.StatusReport
		if err := json.Unmarshal([]byte(run(t, "status", "-A", "-o", "json")), &rep); err != nil {
			t.Fatal(err)
		}
		if len(rep.Nodes) != 2 {
			t.Fatalf("nodes %+v, want node1 and node2", rep.Nodes)
		}
		for _, n := range rep.Nodes {
			if !n.Ready || n.Error != "" || n.Workloads == 0 || n.IdentitySource == "" || n.FlowLogs != 1 {
				t.Errorf("node %+v: want ready, serving workloads, with an identity source and one FlowLog", n)
			}
		}
		pods := map[string]kubectlplugin.PodStatus{}
		for _, p := range rep.Pods {
			pods[p.Namespace+"/"+p.Name] = p
		}
		web := pods["shop/web"]
		if web.Enrolled != "yes" || web.Node != "node2" || web.Mode != "permissive" ||
			web.Identity != "spiffe://cluster.local/ns/shop/sa/web" || web.SVIDExpiry.Before(time.Now()) || web.LastError != "" {
			t.Errorf("shop/web: %+v, want enrolled on node2 with a valid SVID", web)
		}
		if len(pods) != 5 {
			t.Errorf("pods %v, want the five pods of shop", pods)
		}
		table := run(t, "status", "-n", "shop")
		t.Logf("kubectl palisade status -n shop:\n%s", table)
		for _, want := range []string{"NODE", "node1", "node2", "SVID EXPIRES", "shop", "web", "yes", "spiffe://cluster.local/ns/shop/sa/web"} {
			if !strings.Contains(table, want) {
				t.Errorf("status table lacks %q:\n%s", want, table)
			}
		}
	})

	t.Run("explain", func(t *testing.T) {
		for _, tc := range []struct {
			args []string
			want []string
		}{
			{[]string{"web", "8080", "-n", "shop", "--from", "client", "--path", "/public/secret/x"},
				[]string{"L7Policy shop/web", "allow spec.ingress[0]", "deny  spec.ingressDeny[0]", "Connection from shop/client: ALLOWED",
					"parsed as http", "Request http GET /public/secret/x: DENIED by L7Policy shop/web rule spec.ingressDeny[0].toPorts[0].rules.http[0]"}},
			{[]string{"shop/web", "8080", "--from", "shop/client", "--path", "/public/catalog"},
				[]string{"Request http GET /public/catalog: ALLOWED by L7Policy shop/web rule spec.ingress[0].toPorts[0].rules.http[0]"}},
			{[]string{"web", "8080", "-n", "shop", "--from", "intruder"},
				[]string{"Connection from shop/intruder: DENIED"}},
			{[]string{"grpc", "9090", "-n", "shop", "--from", "client", "--grpc", "grpc.testing.TestService/UnaryCall"},
				[]string{"Request grpc grpc.testing.TestService/UnaryCall: DENIED by L7Policy shop/grpc rule default-deny"}},
			{[]string{"kafka", "9092", "-n", "shop", "--from", "client", "--kafka-api", "Produce", "--topic", "orders"},
				[]string{"CiliumNetworkPolicy shop/kafka", ": ALLOWED by CiliumNetworkPolicy shop/kafka rule spec.ingress[0].toPorts[0].rules.kafka[0]"}},
		} {
			out := run(t, append([]string{"explain"}, tc.args...)...)
			t.Logf("kubectl palisade explain %s:\n%s", strings.Join(tc.args, " "), out)
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("explain %s: output lacks %q:\n%s", strings.Join(tc.args, " "), w, out)
				}
			}
		}
	})

	// This subtest relies on the denials the "observe" subtest produced.
	t.Run("flow log file", func(t *testing.T) {
		var path string
		for _, n := range l.Status().Nodes {
			if n.Name == "node2" {
				path = n.FlowLog
			}
		}
		// The HTTP, gRPC and Kafka denials of the observe subtest are in
		// node2's file; nothing allowed is (the FlowLog selects denied).
		eventually(t, 10*time.Second, "node2's flow log holds the three denials", func() error {
			data, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			protos := map[string]bool{}
			sc := bufio.NewScanner(bytes.NewReader(data))
			for sc.Scan() {
				var r flowlog.Record
				if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
					t.Fatalf("flow log line %q: %v", sc.Text(), err)
				}
				if r.Verdict != flowlog.Denied {
					t.Fatalf("flow log holds a %s record, the FlowLog selects denied ones: %s", r.Verdict, sc.Text())
				}
				protos[r.Protocol] = true
			}
			if !protos["http"] || !protos["grpc"] || !protos["kafka"] {
				return fmt.Errorf("protocols %v", protos)
			}
			return nil
		})
		eventually(t, 30*time.Second, "the FlowLog is Accepted", func() error {
			out := mustKubectl(t, l, "get", "flowlog", "shop-denied", "-o", `jsonpath={.status.conditions[?(@.type=="Accepted")].status}`)
			if out != "True" {
				return fmt.Errorf("Accepted = %q", out)
			}
			return nil
		})
	})
}
