package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/palisade-net/palisade/pkg/lab"
)

// kubeBinDir returns the directory with kube-apiserver and etcd.
func kubeBinDir(t *testing.T) string {
	t.Helper()
	return builtTools(t, "kube", "kube-apiserver", "etcd", "kubectl")
}

// upKubeLab builds a lab backed by a real etcd and kube-apiserver: the
// objects are created through the API, the agents and node proxies follow
// it with informers.
func upKubeLab(t *testing.T, yaml string) *lab.Lab {
	t.Helper()
	bin := kubeBinDir(t)
	return upLabWith(t, "e2ekb"+randHex(3), yaml, func(c *lab.Config) {
		c.Kube = true
		c.KubeBinDir = bin
		// kube-system exists on every API server (created by its own
		// bootstrap); the manifests use palisade-system.
		c.AgentArgs = append(c.AgentArgs, "--leader-election-namespace", "kube-system")
	})
}

// kubectl runs kubectl against the lab's API server.
func kubectl(t *testing.T, l *lab.Lab, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := l.Kubectl(ctx, args...)
	return string(out), err
}

func mustKubectl(t *testing.T, l *lab.Lab, args ...string) string {
	t.Helper()
	out, err := kubectl(t, l, args...)
	if err != nil {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// kubectlApply applies YAML with kubectl and returns its output and error.
func kubectlApply(t *testing.T, l *lab.Lab, yaml string) (string, error) {
	t.Helper()
	f := filepath.Join(t.TempDir(), "obj.yaml")
	if err := os.WriteFile(f, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	return kubectl(t, l, "apply", "-f", f)
}

// kubeCluster: namespace demo, not enrolled yet: a client on node1, an HTTP
// server and a Kafka broker on node2.
const kubeCluster = `
apiVersion: v1
kind: Namespace
metadata: {name: demo}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: demo, labels: {app: client}}
spec:
  nodeName: node1
  serviceAccountName: client
  containers:
  - {name: c, command: ["$(LAB_BIN)", "serve-echo", "--addr", ":9000"], ports: [{containerPort: 9000}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: demo, labels: {app: web}}
spec:
  nodeName: node2
  serviceAccountName: web
  containers:
  - {name: web, command: ["$(LAB_BIN)", "serve-http", "--addr", ":8080"], ports: [{containerPort: 8080}]}
---
apiVersion: v1
kind: Pod
metadata: {name: kafka, namespace: demo, labels: {app: kafka}}
spec:
  nodeName: node2
  serviceAccountName: kafka
  containers:
  - {name: kafka, command: ["$(LAB_BIN)", "serve-kafka", "--addr", ":9092", "--topics", "orders,secret"], ports: [{containerPort: 9092}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec: {selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: kafka, namespace: demo}
spec: {selector: {app: kafka}, ports: [{port: 9092}]}
`

const kubeWebPolicy = `
apiVersion: policy.palisade.dev/v1alpha1
kind: L7Policy
metadata: {name: web, namespace: demo}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]
      rules:
        http:
        - {method: GET, path: "/public/.*"}
`

// kubeCNP is Cilium YAML as its users write it, two specs: HTTP rules for
// the web pods and Kafka rules for the broker.
const kubeCNP = `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: legacy, namespace: demo}
specs:
- endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]
      rules:
        http:
        - {method: GET, path: "/cnp/.*"}
- endpointSelector: {matchLabels: {app: kafka}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: "9092", protocol: TCP}]
      rules:
        kafka:
        - {role: produce, topic: orders}
`

func podAnnotation(t *testing.T, l *lab.Lab, ns, pod string) string {
	t.Helper()
	return mustKubectl(t, l, "get", "pod", "-n", ns, pod, "-o", `jsonpath={.metadata.annotations.palisade\.dev/enrollment}`)
}

func acceptedCondition(t *testing.T, l *lab.Lab, ns, name string) (status, reason, message string) {
	t.Helper()
	out := mustKubectl(t, l, "get", "l7policy", "-n", ns, name, "-o",
		`jsonpath={.status.conditions[?(@.type=="Accepted")].status}|{.status.conditions[?(@.type=="Accepted")].reason}|{.status.conditions[?(@.type=="Accepted")].message}`)
	parts := strings.SplitN(out, "|", 3)
	for len(parts) < 3 {
		parts = append(parts, "")
	}
	return parts[0], parts[1], parts[2]
}

// TestKubernetesControlPlane drives Palisade with kubectl against a real
// API server: labelling a namespace enrolls its running pods on both nodes
// (and a pod created later before its first connection), policies applied
// as CRDs change enforcement without restarts, invalid ones are refused at
// admission or marked Accepted=False, a CiliumNetworkPolicy with HTTP and
// Kafka rules is enforced unchanged, and removing the label reverts
// everything.
func TestKubernetesControlPlane(t *testing.T) {
	l := upKubeLab(t, kubeCluster)
	client := podNetns(t, l, "demo", "client")
	web := podNetns(t, l, "demo", "web")
	node1, node2 := nodeNetns(t, l, "node1"), nodeNetns(t, l, "node2")
	webIP, err := l.ServiceIP("demo", "web")
	if err != nil {
		t.Fatal(err)
	}
	webURL := "http://" + webIP.String()

	// Not enrolled yet: plaintext, no rules, no annotation.
	if code, _ := curl(t, l, "demo/client", webURL+"/before"); code != 200 {
		t.Fatalf("before enrollment: HTTP %d", code)
	}
	if rulesInstalled(t, client) || podAnnotation(t, l, "demo", "client") != "" {
		t.Fatal("a pod of an unlabelled namespace is enrolled")
	}

	// kubectl label enrolls the running pods on both nodes.
	labelled := time.Now()
	mustKubectl(t, l, "label", "namespace", "demo", "palisade.dev/mtls=enabled")
	eventually(t, 30*time.Second, "both pods enrolled and annotated", func() error {
		for _, p := range []string{"client", "web"} {
			if a := podAnnotation(t, l, "demo", p); a != "enrolled" {
				return fmt.Errorf("pod %s annotation %q", p, a)
			}
		}
		if !rulesInstalled(t, client) || !rulesInstalled(t, web) {
			return errors.New("redirect rules missing")
		}
		return nil
	})
	t.Logf("enrolled %s after the label", time.Since(labelled).Round(time.Millisecond))
	eventually(t, 30*time.Second, "client reaches web over HBONE", func() error {
		code, _, err := tryCurl(l, "demo/client", webURL+"/after")
		if err != nil {
			return err // a connection the change closed
		}
		if code != 200 {
			return fmt.Errorf("HTTP %d", code)
		}
		for _, f := range flows(t, node2) {
			if f.Direction == "inbound-hbone" && f.PeerIdentity == "spiffe://cluster.local/ns/demo/sa/client" {
				return nil
			}
		}
		return errors.New("no inbound HBONE flow from the client's identity on node2")
	})

	// A pod created now is enrolled before its first connection: its
	// command connects at once, and that connection is tunneled.
	// (lab apply takes the whole desired cluster.)
	enrolledCluster := strings.Replace(kubeCluster, "metadata: {name: demo}", "metadata: {name: demo, labels: {palisade.dev/mtls: enabled}}", 1)
	apply(t, l, enrolledCluster+fmt.Sprintf(`
---
apiVersion: v1
kind: Pod
metadata: {name: late, namespace: demo, labels: {app: late}}
spec:
  nodeName: node1
  serviceAccountName: late
  containers:
  - {name: c, command: ["sh", "-c", "curl -sS -o /dev/null --max-time 10 %s/first-connection; sleep infinity"]}
`, webURL))
	eventually(t, 30*time.Second, "the late pod's first connection went through the tunnel", func() error {
		for _, f := range flows(t, node1) {
			if f.Pod == "demo/late" && f.Direction == "outbound" {
				if f.Transport != "hbone" {
					return fmt.Errorf("late pod's first connection: transport %q", f.Transport)
				}
				return nil
			}
		}
		return errors.New("no outbound flow of demo/late on node1")
	})

	// An L7Policy applied with kubectl changes enforcement without restarts.
	applied := time.Now()
	if out, err := kubectlApply(t, l, kubeWebPolicy); err != nil {
		t.Fatalf("apply L7Policy: %v\n%s", err, out)
	}
	eventually(t, 10*time.Second, "the policy is enforced", func() error {
		code, _, err := tryCurl(l, "demo/client", webURL+"/private")
		if err != nil {
			return err // a connection the change closed
		}
		if code != 403 {
			return fmt.Errorf("GET /private: HTTP %d, want 403", code)
		}
		return nil
	})
	t.Logf("policy enforced %s after kubectl apply", time.Since(applied).Round(time.Millisecond))
	if code, _ := curl(t, l, "demo/client", webURL+"/public/a"); code != 200 {
		t.Fatalf("GET /public/a: HTTP %d", code)
	}
	eventually(t, 30*time.Second, "the policy's status says Accepted", func() error {
		if st, reason, _ := acceptedCondition(t, l, "demo", "web"); st != "True" {
			return fmt.Errorf("Accepted=%q reason %q", st, reason)
		}
		return nil
	})
	if out := mustKubectl(t, l, "get", "l7policy", "-n", "demo"); !strings.Contains(out, "True") {
		t.Fatalf("kubectl get l7policy does not show the Accepted column:\n%s", out)
	}

	// kubectl explain shows the documented schema.
	if out := mustKubectl(t, l, "explain", "l7policy.spec"); !strings.Contains(out, "endpointSelector") || !strings.Contains(out, "ingressDeny") {
		t.Fatalf("kubectl explain l7policy.spec lacks the fields:\n%s", out)
	}

	// Invalid: refused by the API server, naming the field.
	out, err := kubectlApply(t, l, strings.Replace(strings.Replace(kubeWebPolicy, "name: web,", "name: broken,", 1), `"/public/.*"`, `"/a("`, 1))
	if err == nil || !strings.Contains(err.Error(), "spec.ingress[0].toPorts[0].rules.http[0].path") {
		t.Fatalf("an invalid regex was not refused naming its field: %v\n%s", err, out)
	}

	// Valid for the API server but not for Palisade: Accepted=False.
	bogus := strings.Replace(strings.Replace(kubeWebPolicy, "name: web,", "name: bogus,", 1),
		"endpointSelector: {matchLabels: {app: web}}", "endpointSelector: {matchExpressions: [{key: app, operator: Sometimes, values: [web]}]}", 1)
	if out, err := kubectlApply(t, l, bogus); err != nil {
		t.Fatalf("apply a policy the API server accepts: %v\n%s", err, out)
	}
	eventually(t, 30*time.Second, "the bogus policy is Accepted=False", func() error {
		st, reason, msg := acceptedCondition(t, l, "demo", "bogus")
		if st != "False" || reason != "Invalid" || !strings.Contains(msg, "endpointSelector") {
			return fmt.Errorf("Accepted=%q reason %q message %q", st, reason, msg)
		}
		return nil
	})
	mustKubectl(t, l, "delete", "l7policy", "-n", "demo", "bogus")

	// A CiliumNetworkPolicy with HTTP and Kafka rules, unchanged.
	if out, err := kubectlApply(t, l, kubeCNP); err != nil {
		t.Fatalf("apply CNP: %v\n%s", err, out)
	}
	eventually(t, 10*time.Second, "the CNP's HTTP rule is enforced", func() error {
		code, _, err := tryCurl(l, "demo/client", webURL+"/cnp/x")
		if err != nil {
			return err // a connection the change closed
		}
		if code != 200 {
			return fmt.Errorf("GET /cnp/x: HTTP %d, want 200 (allowed by the CNP)", code)
		}
		return nil
	})
	kafkaIP, err := l.ServiceIP("demo", "kafka")
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "the CNP's Kafka rule is enforced", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		cl, err := kafkaProducer(client, kafkaIP.String()+":9092")
		if err != nil {
			return err
		}
		defer cl.Close()
		if err := cl.ProduceSync(ctx, &kgo.Record{Topic: "orders", Value: []byte("o")}).FirstErr(); err != nil {
			return fmt.Errorf("allowed produce: %w", err)
		}
		if err := cl.ProduceSync(ctx, &kgo.Record{Topic: "secret", Value: []byte("s")}).FirstErr(); !errors.Is(err, kerr.TopicAuthorizationFailed) {
			return fmt.Errorf("denied produce: got %v, want TOPIC_AUTHORIZATION_FAILED", err)
		}
		return nil
	})
	rec := waitRequest(t, node2, "node2 records the Kafka denial", func(r request) bool {
		return r.Kafka != nil && slices.Contains(r.Kafka.Topics, "secret") && r.Verdict == "denied"
	})
	t.Logf("kafka denial: %+v", rec)

	// The deployment manifests (CRDs, RBAC, DaemonSets, SPIRE) are accepted
	// by the real API server.
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	// A server-side dry run does not create namespaces, so those go first.
	for _, ns := range []string{"manifests/namespace.yaml", "manifests/spire/namespace.yaml"} {
		mustKubectl(t, l, "apply", "-f", filepath.Join(root, ns))
	}
	if out, err := kubectl(t, l, "apply", "--dry-run=server", "-k", filepath.Join(root, "manifests")); err != nil {
		t.Fatalf("kubectl apply --dry-run=server -k manifests: %v\n%s", err, out)
	}

	// Removing the label reverts everything.
	mustKubectl(t, l, "label", "namespace", "demo", "palisade.dev/mtls-")
	eventually(t, 30*time.Second, "pods unenrolled and annotations gone", func() error {
		for _, p := range []string{"client", "web", "late"} {
			if a := podAnnotation(t, l, "demo", p); a != "" {
				return fmt.Errorf("pod %s annotation %q", p, a)
			}
		}
		if rulesInstalled(t, client) || rulesInstalled(t, web) {
			return errors.New("redirect rules still installed")
		}
		return nil
	})
	if code, _ := curl(t, l, "demo/client", webURL+"/private"); code != 200 {
		t.Fatalf("after unlabelling, policy no longer applies in plaintext: HTTP %d", code)
	}
}
