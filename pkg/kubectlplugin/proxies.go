// Package kubectlplugin is `kubectl palisade`: status, observe and explain
// for operators. It finds the node proxies through the API server (the
// pods of the palisade-nodeproxy DaemonSet) and talks to each one's admin
// API (127.0.0.1:15000 in the node's network namespace, never exposed)
// through a port-forward of the API server, exactly as `kubectl
// port-forward` would; the caller needs get/list on pods and create on
// pods/portforward in the Palisade namespace.
package kubectlplugin

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/transport/spdy"
)

// Defaults for finding the node proxies.
const (
	DefaultNamespace = "palisade-system"
	DefaultSelector  = "app.kubernetes.io/name=palisade-nodeproxy"
	AdminPort        = 15000
)

// Cluster is the plugin's view of the cluster: the API server, and the
// node proxies found through it.
type Cluster struct {
	Config *rest.Config
	Client kubernetes.Interface
	// Namespace and Selector find the node proxy pods.
	Namespace, Selector string

	mu       sync.Mutex
	forwards []func()
}

// NodeProxy is one node proxy pod.
type NodeProxy struct {
	Node, Pod string
}

// NodeProxies lists the node proxy pods, by node name.
func (c *Cluster) NodeProxies(ctx context.Context) ([]NodeProxy, error) {
	pods, err := c.Client.CoreV1().Pods(c.Namespace).List(ctx, metav1.ListOptions{LabelSelector: c.Selector})
	if err != nil {
		return nil, fmt.Errorf("listing node proxies (%s in %s): %w", c.Selector, c.Namespace, err)
	}
	var out []NodeProxy
	for _, p := range pods.Items {
		if p.Spec.NodeName == "" || p.DeletionTimestamp != nil || p.Status.Phase != corev1.PodRunning {
			continue
		}
		out = append(out, NodeProxy{Node: p.Spec.NodeName, Pod: p.Name})
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no running node proxy pods (%s) in namespace %s", c.Selector, c.Namespace)
	}
	slices.SortFunc(out, func(a, b NodeProxy) int { return strings.Compare(a.Node, b.Node) })
	return out, nil
}

// NodeProxyOn returns the node proxy of node.
func (c *Cluster) NodeProxyOn(ctx context.Context, node string) (NodeProxy, error) {
	all, err := c.NodeProxies(ctx)
	if err != nil {
		return NodeProxy{}, err
	}
	for _, np := range all {
		if np.Node == node {
			return np, nil
		}
	}
	return NodeProxy{}, fmt.Errorf("no running node proxy on node %s", node)
}

// Admin is an HTTP client of one node proxy's admin API.
type Admin struct {
	NodeProxy
	base string
	http *http.Client
}

// Admin opens a port-forward to np's admin port and returns a client of
// it; the forward lives until Close.
func (c *Cluster) Admin(ctx context.Context, np NodeProxy) (*Admin, error) {
	req := c.Client.CoreV1().RESTClient().Post().Resource("pods").Namespace(c.Namespace).Name(np.Pod).SubResource("portforward")
	rt, upgrader, err := spdy.RoundTripperFor(c.Config)
	if err != nil {
		return nil, err
	}
	dialer := spdy.NewDialer(upgrader, &http.Client{Transport: rt}, http.MethodPost, req.URL())
	stop, ready := make(chan struct{}), make(chan struct{})
	fw, err := portforward.NewOnAddresses(dialer, []string{"127.0.0.1"}, []string{fmt.Sprintf("0:%d", AdminPort)}, stop, ready, io.Discard, io.Discard)
	if err != nil {
		return nil, fmt.Errorf("port-forward to %s: %w", np.Pod, err)
	}
	errc := make(chan error, 1)
	go func() { errc <- fw.ForwardPorts() }()
	select {
	case <-ready:
	case err := <-errc:
		return nil, fmt.Errorf("port-forward to node proxy %s on %s: %w", np.Pod, np.Node, err)
	case <-ctx.Done():
		close(stop)
		return nil, ctx.Err()
	}
	ports, err := fw.GetPorts()
	if err != nil || len(ports) != 1 {
		close(stop)
		return nil, fmt.Errorf("port-forward to %s: %v", np.Pod, err)
	}
	c.mu.Lock()
	c.forwards = append(c.forwards, func() { close(stop) })
	c.mu.Unlock()
	return &Admin{NodeProxy: np, base: fmt.Sprintf("http://127.0.0.1:%d", ports[0].Local), http: &http.Client{}}, nil
}

// Close ends every port-forward.
func (c *Cluster) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, stop := range c.forwards {
		stop()
	}
	c.forwards = nil
}

// Get fetches path (with query q) as JSON into out.
func (a *Admin) Get(ctx context.Context, path string, q url.Values, out any) error {
	resp, err := a.open(ctx, path, q)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("node proxy %s: %s: %w", a.Node, path, err)
	}
	return nil
}

// open sends GET path?q and checks the status.
func (a *Admin) open(ctx context.Context, path string, q url.Values) (*http.Response, error) {
	u := a.base + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := a.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("node proxy %s: %w", a.Node, err)
	}
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		return nil, fmt.Errorf("node proxy %s: %s: %s: %s", a.Node, path, resp.Status, strings.TrimSpace(string(body)))
	}
	return resp, nil
}

// forEach opens an admin client to each of nps in parallel and calls fn
// with it; errors are collected per node.
func (c *Cluster) forEach(ctx context.Context, nps []NodeProxy, fn func(*Admin) error) map[string]error {
	var mu sync.Mutex
	errs := map[string]error{}
	var wg sync.WaitGroup
	for _, np := range nps {
		wg.Go(func() {
			fctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			a, err := c.Admin(fctx, np)
			cancel()
			if err == nil {
				err = fn(a)
			}
			if err != nil {
				mu.Lock()
				errs[np.Node] = err
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return errs
}
