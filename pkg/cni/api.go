package cni

import (
	"errors"
	"net/netip"
	"strings"
)

// Paths of the agent's HTTP API.
const (
	PathAdd    = "/v1/cni/add"
	PathDel    = "/v1/cni/del"
	PathReadyz = "/readyz"
	// PathDebug prefixes the agent's diagnostics (ServerOptions.Debug).
	PathDebug = "/debug/"
)

// DefaultAgentSocket is where the plugin finds the agent unless the network
// configuration says otherwise.
const DefaultAgentSocket = "/var/run/palisade/cni.sock"

// DefaultMaxRequestBytes bounds request bodies on the agent's API unless
// ServerOptions says otherwise.
const DefaultMaxRequestBytes = 64 << 10

// PodEvent is what the plugin tells the agent about a pod sandbox, the body
// of both add and del requests.
type PodEvent struct {
	// ContainerID is the sandbox's container ID (CNI_CONTAINERID).
	ContainerID string `json:"containerID"`
	// IfName is the interface the chain configured (CNI_IFNAME).
	IfName string `json:"ifName,omitempty"`
	// Namespace, Name and UID identify the pod (K8S_POD_* in CNI_ARGS). UID
	// is empty when the runtime does not pass K8S_POD_UID.
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	UID       string `json:"uid,omitempty"`
	// Netns is the path of the pod's network namespace (CNI_NETNS). It may be
	// empty on del, when the namespace is already gone.
	Netns string `json:"netns,omitempty"`
	// IPs are the pod's addresses from the previous plugin's result (add
	// only).
	IPs []netip.Addr `json:"ips,omitempty"`
}

// Key returns "namespace/name", for logs.
func (e *PodEvent) Key() string { return e.Namespace + "/" + e.Name }

// validate checks the fields the agent needs; add also needs the netns.
func (e *PodEvent) validate(add bool) error {
	var missing []string
	if e.Namespace == "" {
		missing = append(missing, "namespace")
	}
	if e.Name == "" {
		missing = append(missing, "name")
	}
	if add && e.Netns == "" {
		missing = append(missing, "netns")
	}
	if len(missing) > 0 {
		return errors.New("missing field(s): " + strings.Join(missing, ", "))
	}
	return nil
}

// errorBody is the JSON body of every error response.
type errorBody struct {
	Error string `json:"error"`
}

// statusBody is the JSON body of successful responses.
type statusBody struct {
	Status string `json:"status"`
}
