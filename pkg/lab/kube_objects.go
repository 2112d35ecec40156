package lab

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/palisade-net/palisade/pkg/cluster"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/util/retry"
)

// ciliumStandInCRDs are lab-only stand-ins for Cilium's
// CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy CRDs (cilium.io/v2):
// their schemas accept any content (x-kubernetes-preserve-unknown-fields),
// so that CNP and CCNP YAML written for Cilium can be applied to the lab's
// API server unchanged and read back by the agents. They are not Cilium's
// CRDs and validate nothing; a cluster running Cilium has the real ones.
//
//go:embed kube_cilium_crds.yaml
var ciliumStandInCRDs []byte

// DefaultContainerImage is the image the lab gives the API server for a
// container that names none (the lab runs commands, not images, and the API
// server requires an image).
const DefaultContainerImage = "palisade-lab/process"

var crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// kubeClients talk to the lab's API server from the lab process. They dial
// from inside the underlay netns (as the nodes do), not through the
// forwarder, so the lab works while the forwarder is down.
type kubeClients struct {
	client kubernetes.Interface
	dyn    dynamic.Interface
	mapper meta.ResettableRESTMapper
}

// kubeAPI returns the lab's own API clients; l.mu is held.
func (l *Lab) kubeAPI() (*kubeClients, error) {
	if err := l.kubeFor(); err != nil {
		return nil, err
	}
	if l.kc != nil {
		return l.kc, nil
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", l.st.nodeKubeconfigPath())
	if err != nil {
		return nil, fmt.Errorf("lab kubeconfig: %w", err)
	}
	cfg.Dial = l.st.underlayDial
	cfg.QPS, cfg.Burst = 100, 200
	cfg.UserAgent = KubeFieldManager
	cfg.Timeout = 30 * time.Second
	cfg.WarningHandler = slogWarnings{l.log}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes dynamic client: %w", err)
	}
	disc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes discovery client: %w", err)
	}
	l.kc = &kubeClients{
		client: client,
		dyn:    dyn,
		mapper: restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(disc)),
	}
	return l.kc, nil
}

// slogWarnings logs the API server's warnings (deprecations, unknown
// fields) instead of client-go's default, klog on standard error.
type slogWarnings struct{ log *slog.Logger }

// HandleWarningHeader implements rest.WarningHandler.
func (w slogWarnings) HandleWarningHeader(code int, _ string, text string) {
	if code == 299 && text != "" {
		w.log.Warn("API server warning", "warning", text)
	}
}

// resource finds the API resource of u, re-reading discovery once when the
// kind is unknown (a CRD that was just established).
func (k *kubeClients) resource(u *unstructured.Unstructured) (dynamic.ResourceInterface, error) {
	gvk := u.GroupVersionKind()
	m, err := k.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if meta.IsNoMatchError(err) {
		k.mapper.Reset()
		m, err = k.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	}
	if meta.IsNoMatchError(err) {
		return nil, fmt.Errorf("%s %s: the API server does not serve this kind (is its CRD among the lab's CRDs? see Config.KubeCRDs, lab up --crds): %w", gvk.GroupVersion(), gvk.Kind, err)
	}
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", gvk.GroupVersion(), gvk.Kind, err)
	}
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		ns := u.GetNamespace()
		if ns == "" {
			ns = metav1.NamespaceDefault
			u.SetNamespace(ns)
		}
		return k.dyn.Resource(m.Resource).Namespace(ns), nil
	}
	u.SetNamespace("")
	return k.dyn.Resource(m.Resource), nil
}

// applyObject applies u with server-side apply as KubeFieldManager, taking
// over conflicting fields (the lab's YAML is the desired state), with
// strict field validation as "kubectl apply" does: an unknown or duplicate
// field is an error naming it.
func (k *kubeClients) applyObject(ctx context.Context, u *unstructured.Unstructured) (kubeRef, error) {
	u = cleanForApply(u)
	ri, err := k.resource(u)
	if err != nil {
		return kubeRef{}, err
	}
	ref := kubeRef{APIVersion: u.GetAPIVersion(), Kind: u.GetKind(), Namespace: u.GetNamespace(), Name: u.GetName()}
	data, err := u.MarshalJSON()
	if err != nil {
		return ref, fmt.Errorf("apply %s: %w", ref, err)
	}
	opts := metav1.PatchOptions{FieldManager: KubeFieldManager, Force: ptr(true), FieldValidation: metav1.FieldValidationStrict}
	if _, err := ri.Patch(ctx, u.GetName(), types.ApplyPatchType, data, opts); err != nil {
		return ref, fmt.Errorf("apply %s: %w", ref, err)
	}
	return ref, nil
}

// deleteObject deletes ref; a missing object (or kind) is not an error.
func (k *kubeClients) deleteObject(ctx context.Context, ref kubeRef) error {
	u := &unstructured.Unstructured{}
	u.SetAPIVersion(ref.APIVersion)
	u.SetKind(ref.Kind)
	u.SetNamespace(ref.Namespace)
	u.SetName(ref.Name)
	ri, err := k.resource(u)
	if meta.IsNoMatchError(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := ri.Delete(ctx, ref.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete %s: %w", ref, err)
	}
	return nil
}

// cleanForApply drops what the server owns (identity, versions, status)
// from an object read from YAML or the cluster state.
func cleanForApply(in *unstructured.Unstructured) *unstructured.Unstructured {
	u := in.DeepCopy()
	for _, f := range []string{"uid", "resourceVersion", "creationTimestamp", "generation", "managedFields", "selfLink", "deletionTimestamp", "deletionGracePeriodSeconds"} {
		unstructured.RemoveNestedField(u.Object, "metadata", f)
	}
	delete(u.Object, "status")
	return u
}

// toUnstructured converts a typed object (its TypeMeta set).
func toUnstructured(obj any) (*unstructured.Unstructured, error) {
	data, err := json.Marshal(obj)
	if err != nil {
		return nil, fmt.Errorf("encode object: %w", err)
	}
	u := &unstructured.Unstructured{}
	if err := u.UnmarshalJSON(data); err != nil {
		return nil, fmt.Errorf("encode object: %w", err)
	}
	return u, nil
}

// decodeManifests splits YAML (or JSON) documents into objects; empty
// documents are skipped.
func decodeManifests(source string, data []byte) ([]*unstructured.Unstructured, error) {
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	var out []*unstructured.Unstructured
	for i := 1; ; i++ {
		var obj map[string]any
		err := dec.Decode(&obj)
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%s: document %d: %w", source, i, err)
		}
		if len(obj) == 0 {
			continue
		}
		u := &unstructured.Unstructured{Object: obj}
		if u.GetAPIVersion() == "" || u.GetKind() == "" || u.GetName() == "" {
			return nil, fmt.Errorf("%s: document %d: apiVersion, kind and metadata.name are required", source, i)
		}
		out = append(out, u)
	}
}

// manifestFiles expands files and directories (*.yaml, *.yml, *.json, in
// name order).
func manifestFiles(paths []string) ([]string, error) {
	var out []string
	for _, p := range paths {
		st, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("manifests: %w", err)
		}
		if !st.IsDir() {
			out = append(out, p)
			continue
		}
		entries, err := os.ReadDir(p)
		if err != nil {
			return nil, fmt.Errorf("manifests: %w", err)
		}
		for _, e := range entries {
			switch strings.ToLower(filepath.Ext(e.Name())) {
			case ".yaml", ".yml", ".json":
				if !e.IsDir() {
					out = append(out, filepath.Join(p, e.Name()))
				}
			}
		}
	}
	return out, nil
}

// applyKubeCRDs applies the Cilium stand-in CRDs, then the CRD manifests
// (st.Kube.CRDs), and waits until every CRD is established. l.mu is held.
func (l *Lab) applyKubeCRDs(ctx context.Context) error {
	k, err := l.kubeAPI()
	if err != nil {
		return err
	}
	objs, err := decodeManifests("cilium stand-in CRDs", ciliumStandInCRDs)
	if err != nil {
		return err
	}
	files, err := manifestFiles(l.st.Kube.CRDs)
	if err != nil {
		l.log.Warn("CRD manifests unreadable; skipping them", "paths", l.st.Kube.CRDs, "error", err)
		files = nil
	}
	if len(files) == 0 {
		l.log.Info("no CRD manifests to apply (looked in manifests/crds); only the Cilium stand-ins", "paths", l.st.Kube.CRDs)
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return fmt.Errorf("CRDs: %w", err)
		}
		more, err := decodeManifests(f, data)
		if err != nil {
			return fmt.Errorf("CRDs: %w", err)
		}
		objs = append(objs, more...)
	}
	var crds []string
	for _, u := range objs {
		l.log.Info("applying", "kind", u.GetKind(), "name", u.GetName())
		if _, err := k.applyObject(ctx, u); err != nil {
			return fmt.Errorf("CRDs: %w", err)
		}
		if u.GetKind() == "CustomResourceDefinition" {
			crds = append(crds, u.GetName())
		}
	}
	for _, name := range crds {
		if err := l.waitCRDEstablished(ctx, k, name); err != nil {
			return err
		}
	}
	k.mapper.Reset()
	return nil
}

// waitCRDEstablished waits until the CRD's Established condition is True.
func (l *Lab) waitCRDEstablished(ctx context.Context, k *kubeClients, name string) error {
	ctx, cancel := context.WithTimeout(ctx, l.readyTimeout)
	defer cancel()
	var last string
	for {
		u, err := k.dyn.Resource(crdGVR).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			last = err.Error()
		} else {
			conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
			last = "no conditions yet"
			for _, c := range conds {
				m, _ := c.(map[string]any)
				typ, _ := m["type"].(string)
				status, _ := m["status"].(string)
				msg, _ := m["message"].(string)
				switch {
				case typ == "Established" && status == "True":
					return nil
				case typ == "NamesAccepted" && status == "False":
					return fmt.Errorf("CRD %s: names not accepted: %s", name, msg)
				case typ == "Established":
					last = "Established=" + status + ": " + msg
				}
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("CRD %s not established after %s: %s", name, l.readyTimeout, last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// kubeRegisterNodes plays each kubelet's registration: a Node object with
// the node's pod CIDR, its underlay address as InternalIP, the kubelet port
// and Ready; then it starts each node's kubelet stand-in and creates its
// node proxy and agent Pods (kubeNodeDaemons). l.mu is held.
func (l *Lab) kubeRegisterNodes(ctx context.Context, nodes []*nodeState) error {
	k, err := l.kubeAPI()
	if err != nil {
		return err
	}
	for _, n := range nodes {
		node := &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: n.Name, Labels: map[string]string{
				"kubernetes.io/hostname": n.Name,
				"kubernetes.io/os":       "linux",
				"kubernetes.io/arch":     runtime.GOARCH,
			}},
			Spec: corev1.NodeSpec{PodCIDR: n.PodCIDR.String(), PodCIDRs: []string{n.PodCIDR.String()}},
		}
		if _, err := k.client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{FieldManager: KubeFieldManager}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("register node %s: %w", n.Name, err)
		}
		err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
			live, err := k.client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			now := metav1.NewTime(nowUTC())
			live.Status.Addresses = []corev1.NodeAddress{
				{Type: corev1.NodeInternalIP, Address: n.UnderlayIP.String()},
				{Type: corev1.NodeHostName, Address: n.Name},
			}
			live.Status.Capacity = corev1.ResourceList{corev1.ResourcePods: resource.MustParse("110")}
			live.Status.Allocatable = live.Status.Capacity
			live.Status.Conditions = []corev1.NodeCondition{{
				Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
				Message: "palisade lab node (netns " + n.Netns + ")", LastHeartbeatTime: now, LastTransitionTime: now,
			}}
			live.Status.NodeInfo.OperatingSystem = "linux"
			live.Status.NodeInfo.Architecture = runtime.GOARCH
			// Where the API server finds the node's kubelet (the lab's
			// stand-in, kubelet.go) for pods/portforward.
			live.Status.DaemonEndpoints.KubeletEndpoint.Port = KubeletPort
			_, err = k.client.CoreV1().Nodes().UpdateStatus(ctx, live, metav1.UpdateOptions{FieldManager: KubeFieldManager})
			return err
		})
		if err != nil {
			return fmt.Errorf("node %s status: %w", n.Name, err)
		}
	}
	return l.kubeNodeDaemons(ctx, nodes)
}

// kubeApplyObjects makes the API server hold objs, the lab's whole desired
// cluster except pods (which createPods and removePod handle, as a kubelet
// would): Namespaces with their labels, a ServiceAccount for every one the
// pods name (created when missing), Services with the cluster IPs the lab
// allocated, and every other kind, by server-side apply. Objects the lab
// applied before that objs no longer has are deleted, except Namespaces
// (without a namespace controller a deleted namespace would stay
// Terminating). Pods that keep running get their labels and annotations
// updated from prev to objs. l.mu is held.
func (l *Lab) kubeApplyObjects(ctx context.Context, prev, objs *cluster.Snapshot) error {
	st := l.st
	k, err := l.kubeAPI()
	if err != nil {
		return err
	}
	var applied []kubeRef
	apply := func(u *unstructured.Unstructured) error {
		ref, err := k.applyObject(ctx, u)
		if err != nil {
			return err
		}
		if !slices.Contains(applied, ref) {
			applied = append(applied, ref)
		}
		return nil
	}

	names := make([]string, 0, len(objs.Namespaces))
	for name := range objs.Namespaces {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		in := objs.Namespaces[name]
		ns := &corev1.Namespace{
			TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Namespace"},
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: in.Labels, Annotations: in.Annotations},
		}
		u, err := toUnstructured(ns)
		if err != nil {
			return err
		}
		if err := apply(u); err != nil {
			return err
		}
	}

	if err := l.kubeEnsureServiceAccounts(ctx, k, objs); err != nil {
		return err
	}

	for _, in := range objs.Services {
		ss := st.service(in.Namespace, in.Name)
		if ss == nil {
			continue
		}
		svc := in.DeepCopy()
		svc.APIVersion, svc.Kind = "v1", "Service"
		svc.Status = corev1.ServiceStatus{}
		svc.Spec.ClusterIP = displayIP(ss.ClusterIP)
		svc.Spec.ClusterIPs = []string{svc.Spec.ClusterIP}
		// The protocol is part of a port's key in server-side apply.
		for i := range svc.Spec.Ports {
			if svc.Spec.Ports[i].Protocol == "" {
				svc.Spec.Ports[i].Protocol = corev1.ProtocolTCP
			}
		}
		u, err := toUnstructured(svc)
		if err != nil {
			return err
		}
		if err := apply(u); err != nil {
			return err
		}
	}

	for _, in := range objs.Other {
		l.log.Debug("applying", "kind", in.GetKind(), "namespace", in.GetNamespace(), "name", in.GetName())
		if err := apply(in); err != nil {
			return err
		}
	}

	// Labels and annotations of pods that keep running.
	if prev != nil {
		for _, want := range objs.Pods {
			have := prev.Pod(want.Namespace, want.Name)
			p := st.pod(want.Namespace, want.Name)
			if have == nil || p == nil || p.Phase == "" {
				continue
			}
			if err := k.patchPodMeta(ctx, have, want); err != nil {
				return err
			}
		}
	}

	// Prune what the lab applied before and no longer wants.
	var errs []error
	for _, ref := range st.Kube.Applied {
		if ref.Kind == "Namespace" && ref.APIVersion == "v1" || slices.Contains(applied, ref) {
			continue
		}
		l.log.Info("deleting", "object", ref.String())
		errs = append(errs, k.deleteObject(ctx, ref))
	}
	for _, ref := range st.Kube.Applied {
		if ref.Kind == "Namespace" && ref.APIVersion == "v1" && !slices.Contains(applied, ref) {
			applied = append(applied, ref)
		}
	}
	st.Kube.Applied = applied
	errs = append(errs, st.save())
	return errors.Join(errs...)
}

// kubeEnsureServiceAccounts creates the ServiceAccounts the pods run as
// ("default" when a pod names none) that do not exist yet: the
// ServiceAccount admission plugin refuses pods without theirs, and no
// controller creates "default" in the lab.
func (l *Lab) kubeEnsureServiceAccounts(ctx context.Context, k *kubeClients, objs *cluster.Snapshot) error {
	seen := map[types.NamespacedName]bool{}
	for _, p := range objs.Pods {
		name := p.Spec.ServiceAccountName
		if name == "" {
			name = p.Spec.DeprecatedServiceAccount
		}
		if name == "" {
			name = "default"
		}
		key := types.NamespacedName{Namespace: p.Namespace, Name: name}
		if seen[key] {
			continue
		}
		seen[key] = true
		if _, err := k.client.CoreV1().ServiceAccounts(key.Namespace).Get(ctx, key.Name, metav1.GetOptions{}); err == nil {
			continue
		} else if !apierrors.IsNotFound(err) {
			return fmt.Errorf("service account %s: %w", key, err)
		}
		sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: key.Name}}
		l.log.Info("creating service account", "serviceAccount", key.String())
		if _, err := k.client.CoreV1().ServiceAccounts(key.Namespace).Create(ctx, sa, metav1.CreateOptions{FieldManager: KubeFieldManager}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("service account %s: %w", key, err)
		}
	}
	return nil
}

// patchPodMeta updates a running pod's labels and annotations from have
// (what the lab applied before) to want, leaving keys others set alone.
func (k *kubeClients) patchPodMeta(ctx context.Context, have, want *corev1.Pod) error {
	diff := func(old, cur map[string]string) map[string]any {
		out := map[string]any{}
		for key := range old {
			if _, ok := cur[key]; !ok {
				out[key] = nil
			}
		}
		for key, v := range cur {
			if ov, ok := old[key]; !ok || ov != v {
				out[key] = v
			}
		}
		return out
	}
	labels, annotations := diff(have.Labels, want.Labels), diff(have.Annotations, want.Annotations)
	if len(labels) == 0 && len(annotations) == 0 {
		return nil
	}
	md := map[string]any{}
	if len(labels) > 0 {
		md["labels"] = labels
	}
	if len(annotations) > 0 {
		md["annotations"] = annotations
	}
	patch, err := json.Marshal(map[string]any{"metadata": md})
	if err != nil {
		return fmt.Errorf("pod %s/%s: %w", want.Namespace, want.Name, err)
	}
	if _, err := k.client.CoreV1().Pods(want.Namespace).Patch(ctx, want.Name, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: KubeFieldManager}); err != nil {
		return fmt.Errorf("pod %s/%s: update labels: %w", want.Namespace, want.Name, err)
	}
	return nil
}

// apiPod is the pod the lab creates in the API server: the YAML's pod
// without what the server owns, and with DefaultContainerImage for
// containers that name no image.
func apiPod(in *corev1.Pod) *corev1.Pod {
	pod := in.DeepCopy()
	pod.APIVersion, pod.Kind = "v1", "Pod"
	pod.UID, pod.ResourceVersion, pod.Generation = "", "", 0
	pod.CreationTimestamp = metav1.Time{}
	pod.DeletionTimestamp, pod.DeletionGracePeriodSeconds = nil, nil
	pod.ManagedFields = nil
	pod.Status = corev1.PodStatus{}
	for i := range pod.Spec.InitContainers {
		if pod.Spec.InitContainers[i].Image == "" {
			pod.Spec.InitContainers[i].Image = DefaultContainerImage
		}
	}
	for i := range pod.Spec.Containers {
		if pod.Spec.Containers[i].Image == "" {
			pod.Spec.Containers[i].Image = DefaultContainerImage
		}
	}
	return pod
}

// kubeCreatePod creates the pod object (what the user and the scheduler do
// before a kubelet sees a pod) and takes its UID from the API server. A
// leftover object of the same name (from an interrupted run) is deleted
// first. l.mu is held.
func (l *Lab) kubeCreatePod(ctx context.Context, in *corev1.Pod, p *podState) error {
	k, err := l.kubeAPI()
	if err != nil {
		return err
	}
	pods := k.client.CoreV1().Pods(p.Namespace)
	key := p.Namespace + "/" + p.Name
	for attempt := 0; ; attempt++ {
		created, err := pods.Create(ctx, apiPod(in), metav1.CreateOptions{FieldManager: KubeFieldManager})
		if err == nil {
			p.UID = string(created.UID)
			p.CreatedAt = created.CreationTimestamp.UTC()
			return nil
		}
		if !apierrors.IsAlreadyExists(err) || attempt > 0 {
			return fmt.Errorf("create pod %s: %w", key, err)
		}
		l.log.Warn("pod object exists already; replacing it", "pod", key)
		if err := pods.Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: ptr(int64(0))}); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("replace pod %s: %w", key, err)
		}
		if err := waitPodGone(ctx, pods, p.Name, ""); err != nil {
			return fmt.Errorf("replace pod %s: %w", key, err)
		}
	}
}

type podGetter interface {
	Get(ctx context.Context, name string, opts metav1.GetOptions) (*corev1.Pod, error)
}

// waitPodGone waits until the named pod (of uid, if given) is gone.
func waitPodGone(ctx context.Context, pods podGetter, name string, uid types.UID) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		p, err := pods.Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) || err == nil && uid != "" && p.UID != uid {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("pod %s still there: %w", name, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// kubePodStatus reports the pod's status as a kubelet would: its IPs and
// host IP once its network exists (Pending), then Running with every
// condition True once its containers are ready. l.mu is held.
func (l *Lab) kubePodStatus(ctx context.Context, p *podState) error {
	k, err := l.kubeAPI()
	if err != nil {
		return err
	}
	in := l.objs.Pod(p.Namespace, p.Name)
	if in == nil {
		return fmt.Errorf("pod %s/%s: not in the lab's objects", p.Namespace, p.Name)
	}
	pods := k.client.CoreV1().Pods(p.Namespace)
	err = l.updatePodStatus(ctx, pods, p.Name, func(live *corev1.Pod) (*podState, error) {
		if string(live.UID) != p.UID {
			return nil, fmt.Errorf("pod object has uid %s, the lab's pod %s", live.UID, p.UID)
		}
		return p, nil
	}, func(live *corev1.Pod, want *corev1.PodStatus) {
		if p.ready() {
			for _, c := range live.Spec.InitContainers {
				want.InitContainerStatuses = append(want.InitContainerStatuses, corev1.ContainerStatus{
					Name: c.Name, Image: c.Image, Ready: true,
					State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
						ExitCode: 0, Reason: "Completed", StartedAt: *want.StartTime, FinishedAt: *want.StartTime,
					}},
				})
			}
		} else {
			for _, c := range live.Spec.Containers {
				want.ContainerStatuses = append(want.ContainerStatuses, corev1.ContainerStatus{
					Name: c.Name, Image: c.Image,
					State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "ContainerCreating"}},
				})
			}
		}
	})
	if err != nil {
		return fmt.Errorf("pod %s/%s: status: %w", p.Namespace, p.Name, err)
	}
	return nil
}

// podStatusUpdater is the part of a pods client updatePodStatus uses.
type podStatusUpdater interface {
	podGetter
	UpdateStatus(ctx context.Context, pod *corev1.Pod, opts metav1.UpdateOptions) (*corev1.Pod, error)
}

// updatePodStatus replaces the status of the pod object name with what a
// kubelet would report for the lab pod labPod returns for the live object
// (podObject; the QOS class stays the one the API server set), with edit,
// if not nil, applied to it. It retries on conflicts.
func (l *Lab) updatePodStatus(ctx context.Context, pods podStatusUpdater, name string,
	labPod func(live *corev1.Pod) (*podState, error), edit func(live *corev1.Pod, want *corev1.PodStatus)) error {
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		live, err := pods.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		ps, err := labPod(live)
		if err != nil {
			return err
		}
		want := l.st.podObject(live, ps).Status
		want.QOSClass = live.Status.QOSClass
		if edit != nil {
			edit(live, &want)
		}
		live.Status = want
		_, err = pods.UpdateStatus(ctx, live, metav1.UpdateOptions{FieldManager: KubeFieldManager})
		return err
	})
}

// kubeDeletePod deletes the pod object of p. With grace > 0 it is the
// user's "kubectl delete pod" (the object stays, terminating, until the
// kubelet is done); with grace 0 it is the kubelet's final delete. A pod
// already gone, or replaced by one with another UID, is left alone. l.mu is
// held.
func (l *Lab) kubeDeletePod(ctx context.Context, p *podState, grace time.Duration) error {
	k, err := l.kubeAPI()
	if err != nil {
		return err
	}
	opts := metav1.DeleteOptions{GracePeriodSeconds: ptr(int64(grace / time.Second))}
	if p.UID != "" {
		opts.Preconditions = &metav1.Preconditions{UID: ptr(types.UID(p.UID))}
	}
	err = k.client.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, opts)
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		return fmt.Errorf("delete pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	return nil
}
