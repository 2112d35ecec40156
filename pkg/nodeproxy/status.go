package nodeproxy

import (
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/palisade-net/palisade/pkg/identity"
	"github.com/palisade-net/palisade/pkg/policy"
)

// ConfigDump is the node proxy's configuration for GET /config_dump.
type ConfigDump struct {
	Node        string         `json:"node"`
	TrustDomain string         `json:"trustDomain"`
	Ready       bool           `json:"ready"`
	Workloads   []WorkloadInfo `json:"workloads"`
	// Policies are the policy objects in force (L7Policy,
	// ClusterL7Policy, CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy)
	// as the proxy received them, and the problems their compilation
	// reported.
	Policies       []*unstructured.Unstructured `json:"policies"`
	PolicyProblems []policy.Problem             `json:"policyProblems"`
	// FlowLogs are the FlowLog objects selecting what the file records.
	FlowLogs []*unstructured.Unstructured `json:"flowLogs"`
	// Identities are the SVIDs (certificates, never keys) and bundles.
	Identities *identity.Status `json:"identities"`
}

// ConfigDump reports the proxy's configuration.
func (p *Proxy) ConfigDump() ConfigDump {
	p.policyMu.Lock()
	pols, fls := p.policyObjs, p.flowLogObjs
	p.policyMu.Unlock()
	return ConfigDump{
		Node: p.cfg.Node, TrustDomain: p.cfg.TrustDomain.String(), Ready: p.Ready(), Workloads: p.Workloads(),
		Policies: nonNil(pols), PolicyProblems: nonNil(p.PolicyProblems()), FlowLogs: nonNil(fls),
		Identities: p.IdentityStatus(),
	}
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// StatusReport is the node proxy's summary for GET /status (what
// `kubectl palisade status` shows per node and per pod).
type StatusReport struct {
	Node     string `json:"node"`
	Ready    bool   `json:"ready"`
	NotReady string `json:"notReady,omitempty"`
	// Identity source: mode (dev-ca, spire), whether it is reachable and
	// its last error.
	IdentityMode      string `json:"identityMode,omitempty"`
	IdentityConnected bool   `json:"identityConnected"`
	IdentityError     string `json:"identityError,omitempty"`
	// PolicyProblems counts the problems of the last policy compilation.
	PolicyProblems int `json:"policyProblems"`
	// FlowLogs counts the FlowLog objects in use.
	FlowLogs  int              `json:"flowLogs"`
	Workloads []WorkloadStatus `json:"workloads"`
}

// WorkloadStatus is one served pod.
type WorkloadStatus struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	Mode      string `json:"mode"`
	Identity  string `json:"identity"`
	// SVIDReady, SVIDExpiry and SVIDReason describe the pod identity's
	// certificate; an SVID is fetched with the first connection that
	// needs it, so a pod that has not talked yet has none.
	SVIDReady  bool      `json:"svidReady"`
	SVIDExpiry time.Time `json:"svidExpiry,omitzero"`
	SVIDReason string    `json:"svidReason,omitempty"`
}

// Status reports the proxy's state.
func (p *Proxy) Status() StatusReport {
	st := StatusReport{Node: p.cfg.Node, NotReady: p.NotReady(), PolicyProblems: len(p.PolicyProblems()),
		FlowLogs: p.records.Selection().Len(), Workloads: []WorkloadStatus{}}
	st.Ready = st.NotReady == ""
	ids := p.IdentityStatus()
	if ids != nil {
		st.IdentityMode, st.IdentityConnected, st.IdentityError = ids.Mode, ids.Connected, ids.LastError
	}
	for _, w := range p.Workloads() {
		ws := WorkloadStatus{Namespace: w.Namespace, Name: w.Name, Mode: string(w.Mode), Identity: w.Identity}
		if ids != nil {
			for _, s := range ids.SVIDs {
				if s.ID == w.Identity {
					ws.SVIDReady, ws.SVIDExpiry, ws.SVIDReason = s.Ready, s.NotAfter, s.Reason
				}
			}
		}
		st.Workloads = append(st.Workloads, ws)
	}
	return st
}
