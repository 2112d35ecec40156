package kubectlplugin

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"strconv"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/palisade-net/palisade/pkg/nodeproxy"
	"github.com/palisade-net/palisade/pkg/policy"
)

// ExplainOptions says what to explain: a pod's port and, optionally, the
// client and one request.
type ExplainOptions struct {
	Namespace, Pod string
	Port           int
	// From (namespace/name or name in Namespace) or FromIdentity (a
	// SPIFFE ID) is the client; neither means a client outside the
	// cluster.
	From, FromIdentity string
	// An HTTP request (Method, Path, Host, Headers "name: value"), a gRPC
	// call (GRPC = package.Service/Method) or a Kafka request (KafkaAPI,
	// Topics, ClientID).
	Method, Path, Host string
	Headers            []string
	GRPC               string
	KafkaAPI           string
	Topics             []string
	ClientID           string
	JSON               bool
}

// Explain asks the node proxy of the pod's node which policies apply to
// the pod and what the connection and request would get, and prints it.
func (c *Cluster) Explain(ctx context.Context, w io.Writer, o ExplainOptions) error {
	pod, err := c.Client.CoreV1().Pods(o.Namespace).Get(ctx, o.Pod, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("pod %s/%s: %w", o.Namespace, o.Pod, err)
	}
	if pod.Spec.NodeName == "" {
		return fmt.Errorf("pod %s/%s is not scheduled to a node yet", o.Namespace, o.Pod)
	}
	np, err := c.NodeProxyOn(ctx, pod.Spec.NodeName)
	if err != nil {
		return err
	}
	a, err := c.Admin(ctx, np)
	if err != nil {
		return err
	}
	q := url.Values{"pod": {o.Namespace + "/" + o.Pod}, "port": {strconv.Itoa(o.Port)}}
	if o.From != "" {
		from := o.From
		if !strings.Contains(from, "/") {
			from = o.Namespace + "/" + from
		}
		q.Set("from", from)
	}
	set := func(k, v string) {
		if v != "" {
			q.Set(k, v)
		}
	}
	set("fromIdentity", o.FromIdentity)
	set("method", o.Method)
	set("path", o.Path)
	set("host", o.Host)
	set("grpc", o.GRPC)
	set("kafkaApi", o.KafkaAPI)
	set("clientId", o.ClientID)
	for _, h := range o.Headers {
		q.Add("header", h)
	}
	for _, t := range o.Topics {
		q.Add("topic", t)
	}
	var e nodeproxy.Explanation
	if err := a.Get(ctx, "/explain", q, &e); err != nil {
		return err
	}
	if o.JSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(&e)
	}
	PrintExplanation(w, &e)
	return nil
}

// PrintExplanation writes e for people.
func PrintExplanation(w io.Writer, e *nodeproxy.Explanation) {
	enrolled := "not enrolled"
	if e.Enrolled {
		enrolled = "enrolled, " + e.Mode
	}
	fmt.Fprintf(w, "Pod %s port %d (node %s; %s; identity %s)\n", e.Pod, e.Port, e.Node, enrolled, e.Identity)
	printDirection(w, "Ingress", "from", e.Policies.Ingress)
	printDirection(w, "Egress", "to", e.Policies.Egress)
	fmt.Fprintf(w, "\nConnection from %s: %s\n", e.From, verdictLine(e.Connection))
	if e.Connection.Allowed && e.Connection.Protocol != "" {
		fmt.Fprintf(w, "  requests are parsed as %s and judged one by one\n", e.Connection.Protocol)
	}
	if e.Request != nil {
		fmt.Fprintf(w, "Request %s: %s\n", e.Request.Request, verdictLine(*e.Request))
	}
}

func printDirection(w io.Writer, name, peer string, d policy.DirectionExplanation) {
	switch {
	case len(d.Policies) == 0:
		fmt.Fprintf(w, "%s: no policy selects the pod (everything allowed)\n", name)
		return
	case d.DefaultDeny:
		fmt.Fprintf(w, "%s: default deny (only what the rules below allow)\n", name)
	default:
		fmt.Fprintf(w, "%s:\n", name)
	}
	for _, p := range d.Policies {
		line := "  " + p.Policy
		if p.Invalid != "" {
			line += " (INVALID, enforces default deny only: " + p.Invalid + ")"
		}
		fmt.Fprintln(w, line)
		for _, r := range p.Allow {
			fmt.Fprintf(w, "    allow %s: %s %s, ports %s\n", r.Rule, peer, r.Peers, strings.Join(r.Ports, ", "))
		}
		for _, r := range p.Deny {
			fmt.Fprintf(w, "    deny  %s: %s %s, ports %s\n", r.Rule, peer, r.Peers, strings.Join(r.Ports, ", "))
		}
	}
}

func verdictLine(v nodeproxy.Verdict) string {
	s := "DENIED"
	if v.Allowed {
		s = "ALLOWED"
	}
	if v.Policy != "" {
		s += " by " + v.Policy
	}
	if v.Rule != "" {
		s += " rule " + v.Rule
	}
	if v.Reason != "" {
		s += " (" + v.Reason + ")"
	}
	return s
}
