package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/util/workqueue"
)

// PolicyResources are the policy kinds a KubeSource follows when the API
// server serves them: Palisade's own (with FlowLog, which selects what the
// node proxies log) and, for migration, Cilium's.
var PolicyResources = []schema.GroupVersionResource{
	{Group: "policy.palisade.dev", Version: "v1alpha1", Resource: "l7policies"},
	{Group: "policy.palisade.dev", Version: "v1alpha1", Resource: "clusterl7policies"},
	{Group: "policy.palisade.dev", Version: "v1alpha1", Resource: "flowlogs"},
	{Group: "cilium.io", Version: "v2", Resource: "ciliumnetworkpolicies"},
	{Group: "cilium.io", Version: "v2", Resource: "ciliumclusterwidenetworkpolicies"},
}

// RESTConfig loads a client configuration: from kubeconfig when given,
// else the in-cluster configuration (service account token, when
// KUBERNETES_SERVICE_HOST is set).
func RESTConfig(kubeconfig string) (*rest.Config, error) {
	var (
		cfg *rest.Config
		err error
	)
	if kubeconfig != "" {
		cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	} else {
		cfg, err = rest.InClusterConfig()
	}
	if err != nil {
		return nil, fmt.Errorf("kubernetes client configuration: %w", err)
	}
	cfg.QPS, cfg.Burst = 50, 100
	return cfg, nil
}

// KubeSource follows the cluster through the Kubernetes API with shared
// informers (Namespaces, Pods, Services, EndpointSlices, and the
// PolicyResources the server serves) and publishes a Snapshot after changes, through a rate-limited
// work queue so that bursts of events (a namespace label enrolling
// hundreds of pods) become a few snapshots. The code after it is the same as
// with FileSource.
//
// Policy kinds whose CRD is not installed are looked for again every
// CRDPollInterval and followed once they appear. The first snapshot is
// published only after every informer has synced, so a starting agent or
// proxy never sees "no policies" for a moment.
type KubeSource struct {
	// Dynamic is the only client: informers of unstructured objects,
	// converted to the typed API objects when a snapshot is built, keep
	// client-go's typed clientset and its scheme of every API group out of
	// the node proxy (they doubled its resident memory).
	Dynamic dynamic.Interface
	// Resources are the policy kinds to follow (default PolicyResources).
	Resources []schema.GroupVersionResource
	// Debounce is how long a change waits for others to join it (default
	// 20ms).
	Debounce time.Duration
	// CRDPollInterval is how often missing policy kinds are looked for
	// (default 10s).
	CRDPollInterval time.Duration
	Logger          *slog.Logger
}

// NewKubeSource returns a source for the API server of cfg.
func NewKubeSource(cfg *rest.Config, log *slog.Logger) (*KubeSource, error) {
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes dynamic client: %w", err)
	}
	return &KubeSource{Dynamic: dyn, Logger: log}, nil
}

const snapshotKey = "snapshot"

// Run follows the API server until ctx ends, calling onChange with the
// first complete snapshot and then after every change.
func (k *KubeSource) Run(ctx context.Context, onChange func(*Snapshot)) error {
	// The informers run on ctx: returning early with an error stops them.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	log := k.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	debounce := k.Debounce
	if debounce <= 0 {
		debounce = 20 * time.Millisecond
	}
	poll := k.CRDPollInterval
	if poll <= 0 {
		poll = 10 * time.Second
	}
	resources := k.Resources
	if resources == nil {
		resources = PolicyResources
	}

	queue := workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[string](),
		workqueue.TypedRateLimitingQueueConfig[string]{Name: "cluster-snapshot"})
	defer queue.ShutDown()
	changed := cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { queue.AddAfter(snapshotKey, debounce) },
		UpdateFunc: func(oldObj, newObj any) {
			if !onlyBookkeeping(oldObj, newObj) {
				queue.AddAfter(snapshotKey, debounce)
			}
		},
		DeleteFunc: func(any) { queue.AddAfter(snapshotKey, debounce) },
	}

	newInformer := func(gvr schema.GroupVersionResource) (cache.SharedIndexInformer, error) {
		ri := k.Dynamic.Resource(gvr)
		inf := cache.NewSharedIndexInformer(&cache.ListWatch{
			ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
				return ri.List(ctx, o)
			},
			WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
				return ri.Watch(ctx, o)
			},
		}, &unstructured.Unstructured{}, 0, cache.Indexers{})
		// Managed fields are the bulk of a pod object and nobody here
		// reads them.
		if err := inf.SetTransform(stripManagedFields); err != nil {
			return nil, fmt.Errorf("cluster: informer transform: %w", err)
		}
		if _, err := inf.AddEventHandler(changed); err != nil {
			return nil, fmt.Errorf("cluster: informer handler: %w", err)
		}
		go inf.RunWithContext(ctx)
		return inf, nil
	}

	core := map[schema.GroupVersionResource]cache.SharedIndexInformer{}
	for _, gvr := range []schema.GroupVersionResource{gvrNamespaces, gvrPods, gvrServices, gvrEndpointSlices} {
		inf, err := newInformer(gvr)
		if err != nil {
			return err
		}
		core[gvr] = inf
	}

	var (
		mu       sync.Mutex
		policies = map[schema.GroupVersionResource]cache.SharedIndexInformer{}
	)
	// followPolicies starts informers for the policy kinds the server
	// serves now and waits for them to sync.
	followPolicies := func() error {
		var started []cache.InformerSynced
		var names []string
		for _, gvr := range resources {
			mu.Lock()
			_, have := policies[gvr]
			mu.Unlock()
			if have {
				continue
			}
			served, err := k.serves(ctx, gvr)
			if err != nil {
				return err
			}
			if !served {
				continue
			}
			inf, err := newInformer(gvr)
			if err != nil {
				return err
			}
			started = append(started, inf.HasSynced)
			names = append(names, gvr.Resource+"."+gvr.Group)
			mu.Lock()
			policies[gvr] = inf
			mu.Unlock()
		}
		if len(started) == 0 {
			return nil
		}
		if !cache.WaitForCacheSync(ctx.Done(), started...) {
			return ctx.Err()
		}
		log.Info("following policy kinds", "kinds", strings.Join(names, ", "))
		queue.Add(snapshotKey)
		return nil
	}

	if err := followPolicies(); err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	var synced []cache.InformerSynced
	for _, inf := range core {
		synced = append(synced, inf.HasSynced)
	}
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		if ctx.Err() != nil {
			return nil
		}
		return errors.New("cluster: informers did not sync")
	}
	log.Info("cluster view synced from the API server")

	build := func() (*Snapshot, error) {
		s := NewSnapshot()
		for _, o := range core[gvrNamespaces].GetStore().List() {
			var ns corev1.Namespace
			if err := fromUnstructured(o, &ns); err != nil {
				return nil, err
			}
			s.Namespaces[ns.Name] = &ns
		}
		for _, o := range core[gvrPods].GetStore().List() {
			var p corev1.Pod
			if err := fromUnstructured(o, &p); err != nil {
				return nil, err
			}
			if p.DeletionTimestamp != nil && p.Status.Phase != corev1.PodRunning {
				continue
			}
			s.Pods = append(s.Pods, &p)
		}
		for _, o := range core[gvrServices].GetStore().List() {
			var svc corev1.Service
			if err := fromUnstructured(o, &svc); err != nil {
				return nil, err
			}
			s.Services = append(s.Services, &svc)
		}
		for _, o := range core[gvrEndpointSlices].GetStore().List() {
			var es discoveryv1.EndpointSlice
			if err := fromUnstructured(o, &es); err != nil {
				return nil, err
			}
			s.EndpointSlices = append(s.EndpointSlices, &es)
		}
		mu.Lock()
		var stores []cache.Store
		for _, gvr := range resources {
			if inf := policies[gvr]; inf != nil {
				stores = append(stores, inf.GetStore())
			}
		}
		mu.Unlock()
		for _, st := range stores {
			for _, o := range st.List() {
				if u, ok := o.(*unstructured.Unstructured); ok {
					s.Other = append(s.Other, u.DeepCopy())
				}
			}
		}
		s.Sort()
		slices.SortFunc(s.Other, func(a, b *unstructured.Unstructured) int {
			return strings.Compare(a.GetKind()+"/"+a.GetNamespace()+"/"+a.GetName(), b.GetKind()+"/"+b.GetNamespace()+"/"+b.GetName())
		})
		return s, nil
	}

	// Missing policy kinds are looked for again in the background.
	go func() {
		t := time.NewTicker(poll)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			if err := followPolicies(); err != nil && ctx.Err() == nil {
				log.Warn("looking for policy kinds failed", "error", err)
			}
		}
	}()
	go func() {
		<-ctx.Done()
		queue.ShutDown()
	}()

	queue.Add(snapshotKey)
	for {
		key, shutdown := queue.Get()
		if shutdown {
			return nil
		}
		s, err := build()
		if err != nil {
			log.Warn("building the cluster view failed; retrying", "error", err)
			queue.AddRateLimited(key)
		} else {
			queue.Forget(key)
			onChange(s)
		}
		queue.Done(key)
	}
}

// EnrollmentAnnotation is the pod annotation in which each node's agent
// reports the pod's enrollment state (agent.EnrollmentAnnotation).
const EnrollmentAnnotation = "palisade.dev/enrollment"

// onlyBookkeeping reports whether two versions of an object differ in
// nothing a snapshot's reader acts on: the resource version and the
// agents' own EnrollmentAnnotation (managed fields are gone already:
// stripManagedFields). Without it each
// annotation an agent writes would make every agent and node proxy convert
// every object into a new view and reconcile against it, once per pod of a
// namespace being enrolled, and the 2 CPUs of a small node would spend the
// enrollment rebuilding views. (The agents keep what they wrote
// themselves; the next real change brings the annotations in.)
func onlyBookkeeping(oldObj, newObj any) bool {
	a, ok := oldObj.(*unstructured.Unstructured)
	if !ok {
		return false
	}
	b, ok := newObj.(*unstructured.Unstructured)
	if !ok {
		return false
	}
	return reflect.DeepEqual(withoutBookkeeping(a.Object), withoutBookkeeping(b.Object))
}

// withoutBookkeeping returns o without what onlyBookkeeping ignores,
// copying only the maps it changes.
func withoutBookkeeping(o map[string]any) map[string]any {
	md, ok := o["metadata"].(map[string]any)
	if !ok {
		return o
	}
	md = maps.Clone(md)
	delete(md, "resourceVersion")
	if ann, ok := md["annotations"].(map[string]any); ok {
		if _, ours := ann[EnrollmentAnnotation]; ours {
			ann = maps.Clone(ann)
			delete(ann, EnrollmentAnnotation)
		}
		if len(ann) == 0 {
			delete(md, "annotations")
		} else {
			md["annotations"] = ann
		}
	}
	c := maps.Clone(o)
	c["metadata"] = md
	return c
}

// serves reports whether the API server serves gvr (its CRD is
// installed): a one-item list answers NotFound when it does not.
func (k *KubeSource) serves(ctx context.Context, gvr schema.GroupVersionResource) (bool, error) {
	_, err := k.Dynamic.Resource(gvr).List(ctx, metav1.ListOptions{Limit: 1})
	switch {
	case err == nil:
		return true, nil
	case apierrors.IsNotFound(err):
		return false, nil
	}
	return false, fmt.Errorf("looking for %s: %w", gvr, err)
}

// The core kinds every snapshot is built from.
var (
	gvrNamespaces     = corev1.SchemeGroupVersion.WithResource("namespaces")
	gvrPods           = corev1.SchemeGroupVersion.WithResource("pods")
	gvrServices       = corev1.SchemeGroupVersion.WithResource("services")
	gvrEndpointSlices = discoveryv1.SchemeGroupVersion.WithResource("endpointslices")
)

// fromUnstructured converts an informer's object into a typed API object
// (a fresh copy: consumers may not change the informer's cache).
func fromUnstructured(o any, into any) error {
	u, ok := o.(*unstructured.Unstructured)
	if !ok {
		return fmt.Errorf("cluster: unexpected %T in an informer", o)
	}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, into); err != nil {
		return fmt.Errorf("cluster: %s %s/%s: %w", u.GetKind(), u.GetNamespace(), u.GetName(), err)
	}
	return nil
}

// Source is what both daemons run to learn the cluster: a FileSource in
// standalone mode, a KubeSource with Kubernetes.
type Source interface {
	Run(ctx context.Context, onChange func(*Snapshot)) error
}

// NewSource picks the cluster source: files when paths are given, else the
// API server of kubeconfig, else the in-cluster API server.
func NewSource(paths []string, kubeconfig string, log *slog.Logger) (Source, string, error) {
	switch {
	case len(paths) > 0 && kubeconfig != "":
		return nil, "", errors.New("--cluster and --kubeconfig exclude each other")
	case len(paths) > 0:
		return &FileSource{Paths: paths, Logger: log}, "files " + strings.Join(paths, ","), nil
	case kubeconfig == "" && os.Getenv("KUBERNETES_SERVICE_HOST") == "":
		return nil, "", errors.New("no cluster source: give --cluster (standalone mode) or --kubeconfig, or run in a pod (in-cluster configuration)")
	}
	cfg, err := RESTConfig(kubeconfig)
	if err != nil {
		return nil, "", err
	}
	src, err := NewKubeSource(cfg, log)
	if err != nil {
		return nil, "", err
	}
	desc := "API server " + cfg.Host
	if kubeconfig == "" {
		desc += " (in-cluster)"
	}
	return src, desc, nil
}

// stripManagedFields drops managedFields from objects before they enter an
// informer's cache: they are the bulk of a pod object and nothing here reads
// them.
func stripManagedFields(obj any) (any, error) {
	if m, ok := obj.(interface {
		SetManagedFields([]metav1.ManagedFieldsEntry)
	}); ok {
		m.SetManagedFields(nil)
	}
	return obj, nil
}
