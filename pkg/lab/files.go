package lab

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/palisade-net/palisade/pkg/cluster"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/yaml"
)

// Files of the cluster state directory, one per kind. Each is replaced
// atomically, and only when its content changes, so a watcher sees each
// change once and never a torn file.
const (
	namespacesFile = "namespaces.yaml"
	servicesFile   = "services.yaml"
	podsFile       = "pods.yaml"
	otherFile      = "other.yaml" // policies and every other kind, as given
)

// clusterObjects renders the cluster state for objs as the kube API would
// report it: pods with the lab's UID, IP and status, Services with their
// cluster IPs. Pods that are only planned are left out.
func (s *state) clusterObjects(objs *cluster.Snapshot) map[string][]any {
	files := map[string][]any{}
	var nsNames []string
	for name := range objs.Namespaces {
		nsNames = append(nsNames, name)
	}
	sort.Strings(nsNames)
	for _, name := range nsNames {
		ns := objs.Namespaces[name].DeepCopy()
		ns.APIVersion, ns.Kind = "v1", "Namespace"
		if ns.Status.Phase == "" {
			ns.Status.Phase = corev1.NamespaceActive
		}
		files[namespacesFile] = append(files[namespacesFile], ns)
	}
	for _, in := range objs.Services {
		ss := s.service(in.Namespace, in.Name)
		if ss == nil {
			continue
		}
		svc := in.DeepCopy()
		svc.APIVersion, svc.Kind = "v1", "Service"
		if svc.Spec.Type == "" {
			svc.Spec.Type = corev1.ServiceTypeClusterIP
		}
		svc.Spec.ClusterIP = displayIP(ss.ClusterIP)
		svc.Spec.ClusterIPs = []string{svc.Spec.ClusterIP}
		files[servicesFile] = append(files[servicesFile], svc)
	}
	for _, in := range objs.Pods {
		ps := s.pod(in.Namespace, in.Name)
		if ps == nil || ps.Phase == "" {
			continue
		}
		files[podsFile] = append(files[podsFile], s.podObject(in, ps))
	}
	for _, u := range objs.Other {
		files[otherFile] = append(files[otherFile], u.Object)
	}
	return files
}

// podObject is pod as a kubelet would have reported it.
func (s *state) podObject(in *corev1.Pod, ps *podState) *corev1.Pod {
	pod := in.DeepCopy()
	pod.APIVersion, pod.Kind = "v1", "Pod"
	pod.UID = types.UID(ps.UID)
	pod.CreationTimestamp = metav1.NewTime(ps.CreatedAt)
	hostIP := ""
	if n := s.node(ps.Node); n != nil {
		hostIP = n.UnderlayIP.String()
	}
	st := corev1.PodStatus{
		Phase:   ps.Phase,
		HostIP:  hostIP,
		HostIPs: []corev1.HostIP{{IP: hostIP}},
		PodIP:   ps.IP.String(),
		PodIPs:  []corev1.PodIP{{IP: ps.IP.String()}},
	}
	created := metav1.NewTime(ps.CreatedAt)
	cond := func(t corev1.PodConditionType, ok bool, at metav1.Time) corev1.PodCondition {
		status := corev1.ConditionFalse
		if ok {
			status = corev1.ConditionTrue
		}
		return corev1.PodCondition{Type: t, Status: status, LastTransitionTime: at}
	}
	if ps.ready() {
		started := metav1.NewTime(ps.StartedAt)
		st.StartTime = &started
		st.Conditions = []corev1.PodCondition{
			cond(corev1.PodScheduled, true, created),
			cond(corev1.PodInitialized, true, started),
			cond(corev1.ContainersReady, true, started),
			cond(corev1.PodReady, true, started),
		}
		for _, c := range in.Spec.Containers {
			st.ContainerStatuses = append(st.ContainerStatuses, corev1.ContainerStatus{
				Name:    c.Name,
				Image:   c.Image,
				Ready:   true,
				Started: ptr(true),
				State:   corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: started}},
			})
		}
	} else {
		st.Conditions = []corev1.PodCondition{
			cond(corev1.PodScheduled, true, created),
			cond(corev1.PodReady, false, created),
		}
	}
	pod.Status = st
	return pod
}

func ptr[T any](v T) *T { return &v }

// writeClusterState writes the cluster state directory for objs.
func (s *state) writeClusterState(objs *cluster.Snapshot) error {
	dir := s.clusterDir()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("cluster state: %w", err)
	}
	files := s.clusterObjects(objs)
	for _, name := range []string{namespacesFile, servicesFile, podsFile, otherFile} {
		var b bytes.Buffer
		fmt.Fprintf(&b, "# Written by the palisade lab (%s): the cluster as the kube API would report it.\n", s.Name)
		for _, obj := range files[name] {
			data, err := yaml.Marshal(obj)
			if err != nil {
				return fmt.Errorf("cluster state %s: %w", name, err)
			}
			b.WriteString("---\n")
			b.Write(data)
		}
		path := filepath.Join(dir, name)
		if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, b.Bytes()) {
			continue
		}
		if err := cluster.WriteFile(path, b.Bytes()); err != nil {
			return fmt.Errorf("cluster state: %w", err)
		}
	}
	return nil
}

// hostsFile renders /etc/hosts for a pod: localhost, the pod's own name, and
// every Service. Services of the pod's namespace come first, so that a short
// name resolves to the pod's own namespace, as with Kubernetes DNS.
func hostsFile(p *podState, services []ServiceInfo) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "# Kubernetes-style hosts file for pod %s/%s, written by the palisade lab.\n", p.Namespace, p.Name)
	b.WriteString("127.0.0.1\tlocalhost\n")
	b.WriteString("::1\tlocalhost ip6-localhost ip6-loopback\n")
	fmt.Fprintf(&b, "%s\t%s\n", p.IP, p.Name)
	svcs := append([]ServiceInfo(nil), services...)
	sort.SliceStable(svcs, func(i, j int) bool {
		ai, aj := svcs[i].Namespace == p.Namespace, svcs[j].Namespace == p.Namespace
		if ai != aj {
			return ai
		}
		return svcs[i].Namespace+"/"+svcs[i].Name < svcs[j].Namespace+"/"+svcs[j].Name
	})
	for _, svc := range svcs {
		if !svc.ClusterIP.IsValid() {
			continue
		}
		fmt.Fprintf(&b, "%s\t%s\n", svc.ClusterIP, strings.Join(svc.DNSNames(), " "))
	}
	return b.Bytes()
}

// resolvConf keeps the host's DNS servers out of the pods: with no name
// server listening on 127.0.0.1 in the pod, a name missing from /etc/hosts
// fails at once instead of leaking to (or waiting for) the host's resolver.
func resolvConf() []byte {
	return []byte("# Written by the palisade lab: names resolve through /etc/hosts only.\nnameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
}

// writePodEtc writes /etc/netns/<podns>/{hosts,resolv.conf}. The files are
// rewritten in place (not replaced) when they change, because "ip netns
// exec" bind-mounts them: running processes then see the new content.
func writePodEtc(p *podState, services []ServiceInfo) error {
	dir := filepath.Join(etcNetnsDir, p.Netns)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	for name, data := range map[string][]byte{"hosts": hostsFile(p, services), "resolv.conf": resolvConf()} {
		path := filepath.Join(dir, name)
		if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, data) {
			continue
		}
		if err := writeInPlace(path, data); err != nil {
			return fmt.Errorf("pod %s/%s: %w", p.Namespace, p.Name, err)
		}
	}
	return nil
}

func writeInPlace(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// removeEtcDir removes /etc/netns/<name>; a missing one is fine.
func removeEtcDir(name string) error {
	if name == "" || strings.ContainsAny(name, "/") || name == "." || name == ".." {
		return fmt.Errorf("refusing to remove /etc/netns/%q", name)
	}
	err := os.RemoveAll(filepath.Join(etcNetnsDir, name))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", filepath.Join(etcNetnsDir, name), err)
	}
	return nil
}

// nowUTC is the lab's clock, truncated to seconds like the API server's.
func nowUTC() time.Time { return time.Now().UTC().Truncate(time.Second) }
