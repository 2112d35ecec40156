// Package cluster is the agent's and node proxy's view of the cluster in
// standalone mode: Kubernetes objects read from YAML files, decoded into the
// same API types the client-go path uses, and watched for changes.
//
// Everything after decoding (enrollment, workload maps, policy) consumes a
// *Snapshot and does not care whether it came from files or an API server.
package cluster

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// Snapshot is a consistent view of the objects Palisade cares about.
// Snapshots are immutable once published; callers must not modify them.
type Snapshot struct {
	Namespaces map[string]*corev1.Namespace
	Pods       []*corev1.Pod
	Services   []*corev1.Service
	// EndpointSlices back Services where present (Kubernetes mode).
	EndpointSlices []*discoveryv1.EndpointSlice
	// Other holds every object of a kind this package does not decode
	// itself (policies, for example), for later stages to interpret.
	Other []*unstructured.Unstructured
}

// NewSnapshot returns an empty snapshot.
func NewSnapshot() *Snapshot {
	return &Snapshot{Namespaces: map[string]*corev1.Namespace{}}
}

// Namespace returns the named namespace or nil.
func (s *Snapshot) Namespace(name string) *corev1.Namespace { return s.Namespaces[name] }

// Pod returns the pod with the given namespace and name, or nil.
func (s *Snapshot) Pod(namespace, name string) *corev1.Pod {
	for _, p := range s.Pods {
		if p.Namespace == namespace && p.Name == name {
			return p
		}
	}
	return nil
}

// PodsOnNode returns the pods scheduled to node.
func (s *Snapshot) PodsOnNode(node string) []*corev1.Pod {
	var out []*corev1.Pod
	for _, p := range s.Pods {
		if p.Spec.NodeName == node {
			out = append(out, p)
		}
	}
	return out
}

// ServiceByIP returns the Service whose cluster IP is ip, or nil.
func (s *Snapshot) ServiceByIP(ip netip.Addr) *corev1.Service {
	for _, svc := range s.Services {
		for _, c := range append([]string{svc.Spec.ClusterIP}, svc.Spec.ClusterIPs...) {
			if a, err := netip.ParseAddr(c); err == nil && a == ip {
				return svc
			}
		}
	}
	return nil
}

// DecodeError names the document that could not be decoded.
type DecodeError struct {
	Source string // file name or "<stdin>"
	Doc    int    // 1-based index of the YAML document in the source
	Err    error
}

func (e *DecodeError) Error() string {
	return fmt.Sprintf("%s: document %d: %v", e.Source, e.Doc, e.Err)
}

func (e *DecodeError) Unwrap() error { return e.Err }

// Decode reads a stream of YAML (or JSON) documents separated by "---" and
// adds each object to s. Lists (kind: List, or *List) are expanded. Objects
// without a namespace default to "default" for namespaced kinds.
func (s *Snapshot) Decode(source string, r io.Reader) error {
	reader := utilyaml.NewYAMLReader(bufio.NewReader(r))
	for doc := 1; ; doc++ {
		raw, err := reader.Read()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return &DecodeError{Source: source, Doc: doc, Err: err}
		}
		if len(bytes.TrimSpace(raw)) == 0 {
			continue
		}
		if err := s.addRaw(raw); err != nil {
			return &DecodeError{Source: source, Doc: doc, Err: err}
		}
	}
}

func (s *Snapshot) addRaw(raw []byte) error {
	var u unstructured.Unstructured
	if err := yaml.Unmarshal(raw, &u.Object); err != nil {
		return fmt.Errorf("parse: %w", err)
	}
	if u.Object == nil {
		return nil // a document with only comments
	}
	if u.IsList() {
		list, err := u.ToList()
		if err != nil {
			return fmt.Errorf("list: %w", err)
		}
		for i := range list.Items {
			item := list.Items[i]
			if err := s.addObject(&item); err != nil {
				return fmt.Errorf("items[%d]: %w", i, err)
			}
		}
		return nil
	}
	return s.addObject(&u)
}

func (s *Snapshot) addObject(u *unstructured.Unstructured) error {
	if u.GetKind() == "" {
		return errors.New("missing field \"kind\"")
	}
	if u.GetName() == "" {
		return fmt.Errorf("%s: missing field \"metadata.name\"", u.GetKind())
	}
	js, err := u.MarshalJSON()
	if err != nil {
		return fmt.Errorf("%s %s: %w", u.GetKind(), u.GetName(), err)
	}
	// sigs.k8s.io/json is the decoder the API server uses: its strict
	// errors name the full field path (spec.containers[0].comand).
	strict := func(into any) error {
		strictErrs, err := kjson.UnmarshalStrict(js, into, kjson.DisallowUnknownFields)
		if err == nil && len(strictErrs) > 0 {
			err = errors.Join(strictErrs...)
		}
		if err != nil {
			return fmt.Errorf("%s %q: %w", u.GetKind(), u.GetName(), err)
		}
		return nil
	}
	group := u.GroupVersionKind().Group
	switch {
	case group == "" && u.GetKind() == "Namespace":
		var ns corev1.Namespace
		if err := strict(&ns); err != nil {
			return err
		}
		s.Namespaces[ns.Name] = &ns
	case group == "" && u.GetKind() == "Pod":
		var p corev1.Pod
		if err := strict(&p); err != nil {
			return err
		}
		if p.Namespace == "" {
			p.Namespace = "default"
		}
		s.Pods = append(s.Pods, &p)
	case group == "" && u.GetKind() == "Service":
		var svc corev1.Service
		if err := strict(&svc); err != nil {
			return err
		}
		if svc.Namespace == "" {
			svc.Namespace = "default"
		}
		s.Services = append(s.Services, &svc)
	case group == "discovery.k8s.io" && u.GetKind() == "EndpointSlice":
		var es discoveryv1.EndpointSlice
		if err := strict(&es); err != nil {
			return err
		}
		if es.Namespace == "" {
			es.Namespace = "default"
		}
		s.EndpointSlices = append(s.EndpointSlices, &es)
	default:
		s.Other = append(s.Other, u)
	}
	return nil
}

// Sort orders pods and services by namespace and name, so that snapshots
// built from the same files compare equal and iterate deterministically.
func (s *Snapshot) Sort() {
	sort.Slice(s.Pods, func(i, j int) bool {
		return s.Pods[i].Namespace+"/"+s.Pods[i].Name < s.Pods[j].Namespace+"/"+s.Pods[j].Name
	})
	sort.Slice(s.Services, func(i, j int) bool {
		return s.Services[i].Namespace+"/"+s.Services[i].Name < s.Services[j].Namespace+"/"+s.Services[j].Name
	})
	sort.Slice(s.EndpointSlices, func(i, j int) bool {
		return s.EndpointSlices[i].Namespace+"/"+s.EndpointSlices[i].Name < s.EndpointSlices[j].Namespace+"/"+s.EndpointSlices[j].Name
	})
}

// Load reads every path: a file, or a directory whose *.yaml, *.yml and *.json
// files (not recursive, in name order) are read.
func Load(paths ...string) (*Snapshot, error) {
	s := NewSnapshot()
	files, err := expand(paths)
	if err != nil {
		return nil, err
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", f, err)
		}
		if err := s.Decode(f, bytes.NewReader(data)); err != nil {
			return nil, err
		}
	}
	s.Sort()
	return s, nil
}

func expand(paths []string) ([]string, error) {
	var files []string
	for _, p := range paths {
		st, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("cluster source: %w", err)
		}
		if !st.IsDir() {
			files = append(files, p)
			continue
		}
		entries, err := os.ReadDir(p)
		if err != nil {
			return nil, fmt.Errorf("cluster source: %w", err)
		}
		for _, e := range entries {
			if e.IsDir() || strings.HasPrefix(e.Name(), ".") {
				continue
			}
			switch filepath.Ext(e.Name()) {
			case ".yaml", ".yml", ".json":
				files = append(files, filepath.Join(p, e.Name()))
			}
		}
	}
	return files, nil
}
