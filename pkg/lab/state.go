package lab

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/palisade-net/palisade/pkg/cluster"
	corev1 "k8s.io/api/core/v1"
)

// stateVersion is bumped whenever lab.json changes incompatibly.
const stateVersion = 1

// state is everything the lab needs to find and tear down what it built. It
// is written to <state-dir>/<name>/lab.json after every step, and every
// resource is recorded *before* it is created, so that "down" works after a
// crash at any point of "up".
type state struct {
	Version    int    `json:"version"`
	Name       string `json:"name"`
	StateRoot  string `json:"stateRoot"`
	BinDir     string `json:"binDir"`
	LabBin     string `json:"labBin"`
	NoPalisade bool   `json:"noPalisade"`
	// TrustDomain is passed to the node proxies.
	TrustDomain string `json:"trustDomain"`
	// AgentArgs and NodeProxyArgs are appended to the generated command lines.
	AgentArgs     []string `json:"agentArgs,omitempty"`
	NodeProxyArgs []string `json:"nodeProxyArgs,omitempty"`
	// EBPF runs the agents with the eBPF datapath on a bpffs per node
	// (bpffsDir), mounted when the node is created.
	EBPF bool `json:"ebpf,omitempty"`
	// Identity is IdentityDev ("" in labs from before it existed) or
	// IdentitySPIRE, in which case SPIRE describes the SPIRE deployment.
	Identity string      `json:"identity,omitempty"`
	SPIRE    *spireState `json:"spire,omitempty"`
	// Kube describes the lab's etcd and kube-apiserver (Config.Kube); nil
	// without them.
	Kube *kubeState `json:"kube,omitempty"`

	Underlay string `json:"underlay"`
	// Netns lists every network namespace the lab created or was about to
	// create, in creation order.
	Netns []string `json:"netns"`
	// EtcDirs lists every /etc/netns/<netns> directory the lab created.
	EtcDirs []string `json:"etcDirs"`

	Nodes    []*nodeState    `json:"nodes"`
	Pods     []*podState     `json:"pods"`
	Services []*serviceState `json:"services"`

	// NextPodIndex numbers pods lab-wide; it names their host-side veths.
	NextPodIndex int `json:"nextPodIndex"`
}

type nodeState struct {
	Name       string       `json:"name"`
	Index      int          `json:"index"`
	Netns      string       `json:"netns"`
	UnderlayIP netip.Addr   `json:"underlayIP"`
	PodCIDR    netip.Prefix `json:"podCIDR"`
	Gateway    netip.Addr   `json:"gateway"`
	// UnderlayPort is the node's veth in the underlay netns.
	UnderlayPort string `json:"underlayPort"`
	// NextHost is the host part of the next pod IP to try.
	NextHost  int        `json:"nextHost"`
	Agent     *procState `json:"agent,omitempty"`
	NodeProxy *procState `json:"nodeProxy,omitempty"`
	// SPIREAgent runs in the underlay netns (with the SPIRE server).
	SPIREAgent *procState `json:"spireAgent,omitempty"`
	// Kubelet is the node's kubelet stand-in (with Kube), which serves the
	// API server's port-forwards (kubelet.go).
	Kubelet *procState `json:"kubelet,omitempty"`
}

type podState struct {
	Namespace string     `json:"namespace"`
	Name      string     `json:"name"`
	UID       string     `json:"uid"`
	Node      string     `json:"node"`
	Netns     string     `json:"netns"`
	IP        netip.Addr `json:"ip"`
	Index     int        `json:"index"`
	HostVeth  string     `json:"hostVeth"`
	// Phase is "" while the pod is only planned, Pending once its network
	// exists (it then appears in the cluster state with its IP) and Running
	// once its containers are ready (it then is a Service endpoint).
	Phase corev1.PodPhase `json:"phase,omitempty"`
	// CNIAdded is set before CNI ADD runs, so that teardown runs DEL for a
	// plugin call that may have half-succeeded.
	CNIAdded  bool         `json:"cniAdded"`
	CreatedAt time.Time    `json:"createdAt"`
	StartedAt time.Time    `json:"startedAt,omitempty"`
	Procs     []*procState `json:"procs,omitempty"`
}

// ready reports whether the pod is a Service endpoint.
func (p *podState) ready() bool { return p.Phase == corev1.PodRunning }

type serviceState struct {
	Namespace string     `json:"namespace"`
	Name      string     `json:"name"`
	ClusterIP netip.Addr `json:"clusterIP"` // invalid for headless Services
}

// procState identifies a process the lab started. StartTime (clock ticks
// since boot, from /proc/PID/stat) protects against PID reuse.
type procState struct {
	Name      string   `json:"name"`
	PID       int      `json:"pid"`
	StartTime uint64   `json:"startTime"`
	Log       string   `json:"log"`
	Argv      []string `json:"argv"`
}

func (s *state) dir() string              { return filepath.Join(s.StateRoot, s.Name) }
func (s *state) clusterDir() string       { return filepath.Join(s.dir(), "cluster") }
func (s *state) caDir() string            { return filepath.Join(s.dir(), "ca") }
func (s *state) file() string             { return filepath.Join(s.dir(), "lab.json") }
func (s *state) podLogDir() string        { return filepath.Join(s.dir(), "pods") }
func (s *state) nodeDir(n string) string  { return filepath.Join(s.dir(), "nodes", n) }
func (s *state) bpffsDir(n string) string { return filepath.Join(s.nodeDir(n), "bpffs") }

func (s *state) node(name string) *nodeState {
	for _, n := range s.Nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

func (s *state) pod(ns, name string) *podState {
	for _, p := range s.Pods {
		if p.Namespace == ns && p.Name == name {
			return p
		}
	}
	return nil
}

func (s *state) service(ns, name string) *serviceState {
	for _, svc := range s.Services {
		if svc.Namespace == ns && svc.Name == name {
			return svc
		}
	}
	return nil
}

func (s *state) removePod(p *podState) {
	s.Pods = slices.DeleteFunc(s.Pods, func(q *podState) bool { return q == p })
}

func (s *state) addNetns(name string) { s.Netns = appendUnique(s.Netns, name) }

func (s *state) removeNetns(name string) { s.Netns = deleteValue(s.Netns, name) }

func (s *state) addEtcDir(dir string) { s.EtcDirs = appendUnique(s.EtcDirs, dir) }

func (s *state) removeEtcDir(dir string) { s.EtcDirs = deleteValue(s.EtcDirs, dir) }

func appendUnique(list []string, v string) []string {
	if slices.Contains(list, v) {
		return list
	}
	return append(list, v)
}

func deleteValue(list []string, v string) []string {
	return slices.DeleteFunc(list, func(x string) bool { return x == v })
}

// save writes lab.json atomically.
func (s *state) save() error {
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("encode lab state: %w", err)
	}
	if err := os.MkdirAll(s.dir(), 0o755); err != nil {
		return fmt.Errorf("save lab state: %w", err)
	}
	if err := cluster.WriteFile(s.file(), append(data, '\n')); err != nil {
		return fmt.Errorf("save lab state: %w", err)
	}
	return nil
}

// ErrNotFound is returned by Load when the lab has no state file.
var ErrNotFound = errors.New("lab not found")

func loadState(name, stateRoot string) (*state, error) {
	path := filepath.Join(stateRoot, name, "lab.json")
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: no %s", ErrNotFound, path)
	}
	if err != nil {
		return nil, fmt.Errorf("load lab state: %w", err)
	}
	var s state
	if err := json.Unmarshal(data, &s); err != nil {
		return nil, fmt.Errorf("load lab state %s: %w", path, err)
	}
	if s.Version != stateVersion {
		return nil, fmt.Errorf("load lab state %s: version %d, this lab understands %d", path, s.Version, stateVersion)
	}
	if s.Name != name {
		return nil, fmt.Errorf("load lab state %s: belongs to lab %q", path, s.Name)
	}
	s.StateRoot = stateRoot
	return &s, nil
}
