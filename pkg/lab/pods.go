package lab

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	pnetns "github.com/palisade-net/palisade/pkg/netns"
	"github.com/palisade-net/palisade/pkg/redirect"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// defaultGrace is how long a pod's processes get between SIGTERM and
// SIGKILL when the pod sets no terminationGracePeriodSeconds.
const defaultGrace = 5 * time.Second

// services returns the Services with their ready endpoints; l.mu is held.
func (l *Lab) services() []ServiceInfo { return l.st.topology(l.objs).Services }

// syncServices rewrites the kube-proxy rules of every node and the hosts
// file of every pod; l.mu is held.
func (l *Lab) syncServices(ctx context.Context) error {
	svcs := l.services()
	var errs []error
	for _, n := range l.st.Nodes {
		if err := l.sys.syncProxy(ctx, n.Netns, svcs); err != nil {
			errs = append(errs, err)
		}
	}
	for _, p := range l.st.Pods {
		if p.Phase != "" {
			if err := writePodEtc(p, svcs); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// createPods plays kubelet and CNI for new pods: (with Kube, the pod object
// first, whose UID the pod takes), network, hosts file, cluster state
// (Pending, with IP), CNI ADD, (with Kube) the status with the pod's IP,
// init containers, containers, readiness, then Running and Ready (cluster
// state and status), and Service endpoints. l.mu is held.
func (l *Lab) createPods(ctx context.Context, pods []*podState) error {
	st := l.st
	if len(pods) == 0 {
		return nil
	}
	svcs := l.services()
	for _, p := range pods {
		if st.kube() {
			if err := l.kubeCreatePod(ctx, l.objs.Pod(p.Namespace, p.Name), p); err != nil {
				return err
			}
		}
		n := st.node(p.Node)
		st.addNetns(p.Netns)
		st.addEtcDir(p.Netns)
		if err := st.save(); err != nil {
			return err
		}
		l.log.Info("creating pod", "pod", p.Namespace+"/"+p.Name, "node", p.Node, "ip", p.IP, "netns", p.Netns, "hostVeth", p.HostVeth)
		if err := l.sys.setupPodNetwork(ctx, n, p); err != nil {
			return err
		}
		if err := writePodEtc(p, svcs); err != nil {
			return err
		}
		p.Phase = corev1.PodPending
		if p.CreatedAt.IsZero() || !st.kube() {
			p.CreatedAt = nowUTC()
		}
	}
	if err := st.writeClusterState(l.objs); err != nil {
		return err
	}
	if err := st.save(); err != nil {
		return err
	}
	for _, p := range pods {
		pod := l.objs.Pod(p.Namespace, p.Name)
		if !st.NoPalisade {
			p.CNIAdded = true
			if err := st.save(); err != nil {
				return err
			}
			if err := l.cni(ctx, "ADD", p); err != nil {
				return err
			}
		}
		// A kubelet learns the pod's IP from the CNI result and reports
		// it before it starts the containers.
		if st.kube() {
			if err := l.kubePodStatus(ctx, p); err != nil {
				return err
			}
		}
		if err := l.runInitContainers(ctx, pod, p); err != nil {
			return err
		}
		if err := l.startContainers(pod, p); err != nil {
			return err
		}
		if err := st.save(); err != nil {
			return err
		}
	}
	// Wait for all pods together.
	var wg sync.WaitGroup
	errs := make([]error, len(pods))
	for i, p := range pods {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = l.waitPodReady(ctx, l.objs.Pod(p.Namespace, p.Name), p)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	now := nowUTC()
	for _, p := range pods {
		p.Phase = corev1.PodRunning
		p.StartedAt = now
	}
	if err := st.writeClusterState(l.objs); err != nil {
		return err
	}
	if err := l.kubePodStatuses(ctx, pods); err != nil {
		return err
	}
	if err := l.syncServices(ctx); err != nil {
		return err
	}
	return st.save()
}

// kubePodStatuses reports the pods' status to the API server (with Kube);
// l.mu is held.
func (l *Lab) kubePodStatuses(ctx context.Context, pods []*podState) error {
	if !l.st.kube() {
		return nil
	}
	for _, p := range pods {
		if err := l.kubePodStatus(ctx, p); err != nil {
			return err
		}
	}
	return nil
}

// containerEnv builds a container's environment the way the kubelet does:
// a base (PATH, HOME, HOSTNAME), Service link variables of the pod's
// namespace, then the container's env in order, each value able to refer
// to earlier ones with $(VAR). LAB_BIN is always defined. l.mu is held.
func (l *Lab) containerEnv(pod *corev1.Pod, ps *podState, c *corev1.Container) ([]string, error) {
	path := os.Getenv("PATH")
	if path == "" {
		path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	}
	home := os.Getenv("HOME")
	if home == "" {
		home = "/"
	}
	vars := map[string]string{}
	var order []string
	set := func(k, v string) {
		if _, ok := vars[k]; !ok {
			order = append(order, k)
		}
		vars[k] = v
	}
	set("PATH", path)
	set("HOME", home)
	set("HOSTNAME", pod.Name)
	set(LabBinVar, l.st.LabBin)
	if pod.Spec.EnableServiceLinks == nil || *pod.Spec.EnableServiceLinks {
		for _, svc := range l.services() {
			if svc.Namespace != pod.Namespace || !svc.ClusterIP.IsValid() || len(svc.Ports) == 0 {
				continue
			}
			prefix := strings.ToUpper(strings.ReplaceAll(svc.Name, "-", "_"))
			set(prefix+"_SERVICE_HOST", svc.ClusterIP.String())
			set(prefix+"_SERVICE_PORT", strconv.Itoa(int(svc.Ports[0].Port)))
			for _, sp := range svc.Ports {
				if sp.Name != "" {
					set(prefix+"_SERVICE_PORT_"+strings.ToUpper(strings.ReplaceAll(sp.Name, "-", "_")), strconv.Itoa(int(sp.Port)))
				}
			}
		}
	}
	lookup := func(k string) (string, bool) { v, ok := vars[k]; return v, ok }
	for _, e := range c.Env {
		v := expand(e.Value, lookup)
		if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
			fv, err := fieldRefValue(pod, ps, e.ValueFrom.FieldRef.FieldPath)
			if err != nil {
				return nil, fmt.Errorf("pod %s/%s: env %s: %w", pod.Namespace, pod.Name, e.Name, err)
			}
			v = fv
		}
		set(e.Name, v)
	}
	env := make([]string, 0, len(order))
	for _, k := range order {
		env = append(env, k+"="+vars[k])
	}
	return env, nil
}

// expand replaces $(VAR) references as Kubernetes does for command, args
// and env: a defined variable is replaced, an undefined reference is kept
// as written, and $$ is a literal $.
func expand(s string, lookup func(string) (string, bool)) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' || i+1 >= len(s) {
			b.WriteByte(s[i])
			continue
		}
		switch s[i+1] {
		case '$':
			b.WriteByte('$')
			i++
		case '(':
			end := strings.IndexByte(s[i+2:], ')')
			if end < 0 {
				b.WriteString(s[i:])
				return b.String()
			}
			name := s[i+2 : i+2+end]
			if v, ok := lookup(name); ok {
				b.WriteString(v)
			} else {
				b.WriteString(s[i : i+3+end])
			}
			i += 2 + end
		default:
			b.WriteByte('$')
		}
	}
	return b.String()
}

// containerArgv returns the command line of a container, nil if it has none
// (a pod with no command only holds its network, like a pause container).
func containerArgv(c *corev1.Container, env []string) []string {
	vars := map[string]string{}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		vars[k] = v
	}
	lookup := func(k string) (string, bool) { v, ok := vars[k]; return v, ok }
	var argv []string
	for _, a := range append(append([]string(nil), c.Command...), c.Args...) {
		argv = append(argv, expand(a, lookup))
	}
	return argv
}

// podLog returns the log file of a pod's container i (init containers
// share the first container's log).
func (s *state) podLog(p *podState, c *corev1.Container, i int) string {
	base := p.Namespace + "_" + p.Name
	if i > 0 {
		base += "_" + c.Name
	}
	return filepath.Join(s.podLogDir(), sanitize(base)+".log")
}

func (l *Lab) podProcSpec(pod *corev1.Pod, p *podState, c *corev1.Container, log string) (procSpec, bool, error) {
	env, err := l.containerEnv(pod, p, c)
	if err != nil {
		return procSpec{}, false, err
	}
	argv := containerArgv(c, env)
	if len(argv) == 0 {
		return procSpec{}, false, nil
	}
	return procSpec{
		name: fmt.Sprintf("pod %s/%s container %s", p.Namespace, p.Name, c.Name),
		argv: append([]string{l.sys.ip, "netns", "exec", p.Netns}, argv...),
		env:  env,
		dir:  c.WorkingDir,
		log:  log,
	}, true, nil
}

// runInitContainers runs the init containers one after the other, each to
// successful completion. l.mu is held.
func (l *Lab) runInitContainers(ctx context.Context, pod *corev1.Pod, p *podState) error {
	for i := range pod.Spec.InitContainers {
		c := &pod.Spec.InitContainers[i]
		spec, ok, err := l.podProcSpec(pod, p, c, l.st.podLog(p, &pod.Spec.Containers[0], 0))
		if err != nil {
			return err
		}
		if !ok {
			continue
		}
		ps, err := l.procs.start(spec)
		if err != nil {
			return err
		}
		wctx, cancel := context.WithTimeout(ctx, l.readyTimeout)
		err = l.procs.waitExit(wctx, ps)
		cancel()
		if err != nil {
			_ = l.procs.stop(context.WithoutCancel(ctx), ps, time.Second)
			return fmt.Errorf("pod %s/%s: init container %s did not finish: %w\n%s", p.Namespace, p.Name, c.Name, err, logTail(spec.log, 20))
		}
		if code := l.procs.exitCode(ps); code != 0 {
			return fmt.Errorf("pod %s/%s: init container %s failed (%s)\n%s", p.Namespace, p.Name, c.Name, l.procs.exitStatus(ps), logTail(spec.log, 20))
		}
	}
	return nil
}

// startContainers starts a pod's containers as detached processes inside
// its netns. l.mu is held.
func (l *Lab) startContainers(pod *corev1.Pod, p *podState) error {
	for i := range pod.Spec.Containers {
		c := &pod.Spec.Containers[i]
		spec, ok, err := l.podProcSpec(pod, p, c, l.st.podLog(p, c, i))
		if err != nil {
			return err
		}
		if !ok {
			continue
		}
		ps, err := l.procs.start(spec)
		if err != nil {
			return fmt.Errorf("pod %s/%s: %w", p.Namespace, p.Name, err)
		}
		p.Procs = append(p.Procs, ps)
	}
	return nil
}

// waitPodReady waits until the pod's containers are ready: a container
// with a readinessProbe passes it; one without a probe but with TCP
// containerPorts accepts connections on all of them; any other container is
// ready once started. Probes run inside the pod's netns against 127.0.0.1
// (or the probe's host), so Palisade's redirection never sees them.
func (l *Lab) waitPodReady(ctx context.Context, pod *corev1.Pod, p *podState) error {
	ctx, cancel := context.WithTimeout(ctx, l.readyTimeout)
	defer cancel()
	h, err := pnetns.Open(netnsPath(p.Netns))
	if err != nil {
		return fmt.Errorf("pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	defer h.Close()
	for i := range pod.Spec.Containers {
		c := &pod.Spec.Containers[i]
		var proc *procState
		for _, pr := range p.Procs {
			if strings.HasSuffix(pr.Name, " container "+c.Name) {
				proc = pr
			}
		}
		check := l.readinessCheck(pod, p, c, h)
		if check == nil {
			continue
		}
		var lastErr error
		for {
			if lastErr = check(ctx); lastErr == nil {
				break
			}
			if proc != nil && !l.procs.alive(proc) {
				return fmt.Errorf("pod %s/%s: container %s exited before it was ready (%s)\n%s", p.Namespace, p.Name, c.Name, l.procs.exitStatus(proc), logTail(proc.Log, 20))
			}
			select {
			case <-ctx.Done():
				log := ""
				if proc != nil {
					log = "\n" + logTail(proc.Log, 20)
				}
				return fmt.Errorf("pod %s/%s: container %s not ready after %s: %v%s", p.Namespace, p.Name, c.Name, l.readyTimeout, lastErr, log)
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	return nil
}

// readinessCheck returns one probe attempt for the container, nil if there
// is nothing to wait for.
func (l *Lab) readinessCheck(pod *corev1.Pod, p *podState, c *corev1.Container, h *pnetns.Handle) func(context.Context) error {
	// Probes carry the node proxy's mark, so an enrolled pod's redirect
	// rules let them through to the app, as they let the kubelet's probes
	// through: a probe to the pod IP captured by the proxy would be
	// accepted by the proxy even before the app listens.
	dialer := &pnetns.Dialer{Netns: h, Options: pnetns.SocketOptions{Mark: redirect.DefaultMark}}
	dial := func(ctx context.Context, host string, port int32) error {
		dctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		conn, err := dialer.DialContext(dctx, "tcp", net.JoinHostPort(host, strconv.Itoa(int(port))))
		if err != nil {
			return err
		}
		return conn.Close()
	}
	port := func(ip intstr.IntOrString) int32 {
		n, _ := resolveTargetPort(pod, ip, corev1.ProtocolTCP)
		return n
	}
	probe := c.ReadinessProbe
	if probe == nil {
		var ports []int32
		for _, cp := range c.Ports {
			if cp.Protocol == "" || cp.Protocol == corev1.ProtocolTCP {
				ports = append(ports, cp.ContainerPort)
			}
		}
		if len(ports) == 0 {
			return nil
		}
		return func(ctx context.Context) error {
			for _, pt := range ports {
				// Servers may bind the pod IP only; either address will do.
				if err := dial(ctx, "127.0.0.1", pt); err != nil {
					if err2 := dial(ctx, p.IP.String(), pt); err2 != nil {
						return fmt.Errorf("port %d: %w", pt, err)
					}
				}
			}
			return nil
		}
	}
	timeout := time.Duration(probe.TimeoutSeconds) * time.Second
	if timeout <= 0 {
		timeout = time.Second
	}
	switch {
	case probe.TCPSocket != nil:
		host := probe.TCPSocket.Host
		if host == "" {
			host = "127.0.0.1"
		}
		return func(ctx context.Context) error { return dial(ctx, host, port(probe.TCPSocket.Port)) }
	case probe.HTTPGet != nil:
		g := probe.HTTPGet
		host := g.Host
		if host == "" {
			host = "127.0.0.1"
		}
		scheme := strings.ToLower(string(g.Scheme))
		if scheme == "" {
			scheme = "http"
		}
		url := fmt.Sprintf("%s://%s/%s", scheme, net.JoinHostPort(host, strconv.Itoa(int(port(g.Port)))), strings.TrimPrefix(g.Path, "/"))
		client := &http.Client{
			Timeout: timeout,
			Transport: &http.Transport{
				DialContext:       dialer.DialContext,
				DisableKeepAlives: true,
				TLSClientConfig:   &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // kubelet does not verify probe certificates either
			},
		}
		return func(ctx context.Context) error {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
			if err != nil {
				return err
			}
			for _, hd := range g.HTTPHeaders {
				req.Header.Add(hd.Name, hd.Value)
			}
			resp, err := client.Do(req)
			if err != nil {
				return err
			}
			resp.Body.Close()
			if resp.StatusCode < 200 || resp.StatusCode >= 400 {
				return fmt.Errorf("GET %s: %s", url, resp.Status)
			}
			return nil
		}
	case probe.Exec != nil:
		return func(ctx context.Context) error {
			env, err := l.containerEnv(pod, p, c)
			if err != nil {
				return err
			}
			ectx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			cmd := exec.CommandContext(ectx, l.sys.ip, append([]string{"netns", "exec", p.Netns}, probe.Exec.Command...)...)
			cmd.Env = env
			if out, err := cmd.CombinedOutput(); err != nil {
				return fmt.Errorf("exec probe: %w: %s", err, strings.TrimSpace(string(out)))
			}
			return nil
		}
	}
	return nil
}

// exitCode returns a finished child's exit code (-1 if unknown).
func (c *children) exitCode(p *procState) int {
	if ch := c.get(p.PID); ch != nil && ch.state != nil {
		return ch.state.ExitCode()
	}
	return -1
}

// removePod tears a pod down: out of the Service endpoints, processes
// stopped, CNI DEL, network and files removed, out of the cluster state.
// With Kube it plays both sides of a pod deletion: the user's delete first
// (the object gets a deletion timestamp), the kubelet's final delete last.
// l.mu is held.
func (l *Lab) removePod(ctx context.Context, p *podState) error {
	st := l.st
	key := p.Namespace + "/" + p.Name
	l.log.Info("deleting pod", "pod", key)
	var errs []error
	grace := defaultGrace
	if pod := l.objs.Pod(p.Namespace, p.Name); pod != nil && pod.Spec.TerminationGracePeriodSeconds != nil {
		grace = time.Duration(*pod.Spec.TerminationGracePeriodSeconds) * time.Second
	}
	if st.kube() {
		g := grace
		if g < time.Second {
			g = time.Second
		}
		errs = append(errs, l.kubeDeletePod(ctx, p, g))
	}
	if p.Phase == corev1.PodRunning {
		p.Phase = corev1.PodPending
		if err := l.syncServices(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	errs = append(errs, l.stopPodProcesses(ctx, p, grace))
	if p.CNIAdded && !st.NoPalisade {
		if err := l.cni(ctx, "DEL", p); err != nil {
			errs = append(errs, err)
		}
		p.CNIAdded = false
	}
	if n := st.node(p.Node); n != nil {
		errs = append(errs, deleteLink(n.Netns, p.HostVeth))
	}
	errs = append(errs, l.sys.deleteNetns(ctx, p.Netns), removeEtcDir(p.Netns))
	if st.kube() {
		errs = append(errs, l.kubeDeletePod(ctx, p, 0))
	}
	st.removeNetns(p.Netns)
	st.removeEtcDir(p.Netns)
	st.removePod(p)
	var keep []*corev1.Pod
	for _, q := range l.objs.Pods {
		if q.Namespace != p.Namespace || q.Name != p.Name {
			keep = append(keep, q)
		}
	}
	l.objs.Pods = keep
	errs = append(errs, st.writeClusterState(l.objs), st.save())
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("delete pod %s: %w", key, err)
	}
	return nil
}

// stopPodProcesses stops the pod's containers and anything else left in
// its netns.
func (l *Lab) stopPodProcesses(ctx context.Context, p *podState, grace time.Duration) error {
	var errs []error
	var wg sync.WaitGroup
	var mu sync.Mutex
	for _, pr := range p.Procs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := l.procs.stop(ctx, pr, grace); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if ino := netnsInode(p.Netns); ino != 0 {
		errs = append(errs, killInNetns(ctx, map[uint64]bool{ino: true}))
	}
	return errors.Join(errs...)
}

// DeletePod deletes a pod as "kubectl delete pod" would: it stops being an
// endpoint, its processes get SIGTERM (SIGKILL after the grace period), the
// CNI plugin gets DEL, and its netns, files and cluster state entry go.
func (l *Lab) DeletePod(ctx context.Context, namespace, name string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	p := l.st.pod(namespace, name)
	if p == nil {
		return fmt.Errorf("lab %s: no pod %s/%s", l.st.Name, namespace, name)
	}
	if err := l.removePod(ctx, p); err != nil {
		return err
	}
	return l.syncServices(ctx)
}

// sortedPods returns pods by namespace and name.
func sortedPods(ps []*podState) []*podState {
	out := append([]*podState(nil), ps...)
	sort.Slice(out, func(i, j int) bool {
		return out[i].Namespace+"/"+out[i].Name < out[j].Namespace+"/"+out[j].Name
	})
	return out
}
