package kubectlplugin

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/palisade-net/palisade/pkg/agent"
	"github.com/palisade-net/palisade/pkg/nodeproxy"
	"github.com/palisade-net/palisade/pkg/workload"
)

// StatusOptions configures Status.
type StatusOptions struct {
	// Namespace limits the pods shown ("" for every namespace).
	Namespace string
	JSON      bool
}

// NodeStatus is one node's row of the status.
type NodeStatus struct {
	Node     string `json:"node"`
	Pod      string `json:"pod"`
	Ready    bool   `json:"ready"`
	NotReady string `json:"notReady,omitempty"`
	// IdentitySource is where identities come from (dev-ca, spire) and
	// IdentityConnected whether that source is reachable.
	IdentitySource    string `json:"identitySource,omitempty"`
	IdentityConnected bool   `json:"identityConnected"`
	Workloads         int    `json:"workloads"`
	PolicyProblems    int    `json:"policyProblems"`
	FlowLogs          int    `json:"flowLogs"`
	Error             string `json:"error,omitempty"`
}

// PodStatus is one pod's row of the status.
type PodStatus struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	Node      string `json:"node"`
	// Enrolled is yes, pending, failed or no (not enrolled by policy).
	Enrolled   string    `json:"enrolled"`
	Mode       string    `json:"mode,omitempty"`
	Identity   string    `json:"identity,omitempty"`
	SVIDExpiry time.Time `json:"svidExpiry,omitzero"`
	// LastError is why the pod is pending or failed, or why its identity
	// has no SVID.
	LastError string `json:"lastError,omitempty"`
}

// StatusReport is what Status prints.
type StatusReport struct {
	Nodes []NodeStatus `json:"nodes"`
	Pods  []PodStatus  `json:"pods"`
}

// Status collects each node proxy's state and each pod's enrollment, and
// prints them.
func (c *Cluster) Status(ctx context.Context, w io.Writer, opts StatusOptions) error {
	rep, err := c.StatusReport(ctx, opts)
	if err != nil {
		return err
	}
	if opts.JSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	now := time.Now()
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tPROXY\tREADY\tIDENTITY SOURCE\tWORKLOADS\tPOLICY PROBLEMS\tFLOW LOGS\tERROR")
	for _, n := range rep.Nodes {
		ready := yesNo(n.Ready)
		if !n.Ready && n.NotReady != "" {
			ready = "no (" + n.NotReady + ")"
		}
		id := n.IdentitySource
		if id != "" && !n.IdentityConnected {
			id += " (disconnected)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%d\t%s\n", n.Node, n.Pod, ready, dash(id), n.Workloads, n.PolicyProblems, n.FlowLogs, dash(n.Error))
	}
	tw.Flush()
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAMESPACE\tPOD\tNODE\tENROLLED\tMODE\tIDENTITY\tSVID EXPIRES\tLAST ERROR")
	for _, p := range rep.Pods {
		exp := "-"
		if !p.SVIDExpiry.IsZero() {
			exp = "in " + p.SVIDExpiry.Sub(now).Round(time.Second).String()
			if p.SVIDExpiry.Before(now) {
				exp = "expired " + now.Sub(p.SVIDExpiry).Round(time.Second).String() + " ago"
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", p.Namespace, p.Name, dash(p.Node), p.Enrolled, dash(p.Mode), dash(p.Identity), exp, dash(p.LastError))
	}
	return tw.Flush()
}

// StatusReport collects what Status prints.
func (c *Cluster) StatusReport(ctx context.Context, opts StatusOptions) (*StatusReport, error) {
	reports := map[string]nodeproxy.StatusReport{}
	nps, err := c.NodeProxies(ctx)
	if err != nil {
		return nil, err
	}
	var mu sync.Mutex
	errs := c.forEach(ctx, nps, func(a *Admin) error {
		var st nodeproxy.StatusReport
		if err := a.Get(ctx, "/status", nil, &st); err != nil {
			return err
		}
		mu.Lock()
		reports[a.Node] = st
		mu.Unlock()
		return nil
	})
	rep := &StatusReport{Nodes: []NodeStatus{}, Pods: []PodStatus{}}
	for _, np := range nps {
		ns := NodeStatus{Node: np.Node, Pod: np.Pod}
		if e := errs[np.Node]; e != nil {
			ns.Error = e.Error()
		} else if st, ok := reports[np.Node]; ok {
			ns.Ready, ns.NotReady, ns.IdentitySource, ns.IdentityConnected = st.Ready, st.NotReady, st.IdentityMode, st.IdentityConnected
			ns.Workloads, ns.PolicyProblems, ns.FlowLogs = len(st.Workloads), st.PolicyProblems, st.FlowLogs
		}
		rep.Nodes = append(rep.Nodes, ns)
	}

	nsList, err := c.Client.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing namespaces: %w", err)
	}
	namespaces := map[string]*corev1.Namespace{}
	for i := range nsList.Items {
		namespaces[nsList.Items[i].Name] = &nsList.Items[i]
	}
	pods, err := c.Client.CoreV1().Pods(opts.Namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing pods: %w", err)
	}
	for i := range pods.Items {
		p := &pods.Items[i]
		ns := namespaces[p.Namespace]
		if ns == nil || p.Spec.HostNetwork || !workload.NamespaceEnrolled(ns) {
			continue
		}
		ps := PodStatus{Namespace: p.Namespace, Name: p.Name, Node: p.Spec.NodeName, Enrolled: "no"}
		if workload.PodEnrolled(ns, p) {
			ps.Mode = string(workload.NamespaceMode(ns))
			ann := p.Annotations[agent.EnrollmentAnnotation]
			state, why, _ := strings.Cut(ann, ":")
			switch state {
			case "enrolled":
				ps.Enrolled = "yes"
			case "pending", "failed":
				ps.Enrolled, ps.LastError = state, strings.TrimSpace(why)
			default:
				ps.Enrolled = "pending"
				ps.LastError = "no enrollment reported by the node's agent yet"
			}
			if st, ok := reports[p.Spec.NodeName]; ok {
				for _, ws := range st.Workloads {
					if ws.Namespace == p.Namespace && ws.Name == p.Name {
						ps.Identity = ws.Identity
						ps.SVIDExpiry = ws.SVIDExpiry
						if ps.LastError == "" && !ws.SVIDReady && ws.SVIDReason != "" {
							ps.LastError = "SVID: " + ws.SVIDReason
						}
					}
				}
			}
		}
		rep.Pods = append(rep.Pods, ps)
	}
	slices.SortFunc(rep.Pods, func(a, b PodStatus) int {
		return strings.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name)
	})
	return rep, nil
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
