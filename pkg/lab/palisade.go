package lab

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	pnetns "github.com/palisade-net/palisade/pkg/netns"
)

func (s *state) agentSocket(node string) string { return filepath.Join(s.nodeDir(node), "cni.sock") }
func (s *state) proxySocket(node string) string { return filepath.Join(s.nodeDir(node), "proxy.sock") }

// flowLogPath is where the node's proxy writes its flow log.
func (s *state) flowLogPath(node string) string { return filepath.Join(s.nodeDir(node), "flows.jsonl") }

// clusterSourceArgs tell the agents and node proxies where the cluster
// comes from: the lab's API server (--kubeconfig, with Config.Kube) or the
// cluster state files (--cluster).
func (s *state) clusterSourceArgs() []string {
	if s.kube() {
		return []string{"--kubeconfig", s.nodeKubeconfigPath()}
	}
	return []string{"--cluster", s.clusterDir()}
}

func (s *state) agentArgv(n *nodeState, ip string) []string {
	argv := []string{ip, "netns", "exec", n.Netns,
		filepath.Join(s.BinDir, AgentBinary),
		"--node", n.Name,
	}
	argv = append(argv, s.clusterSourceArgs()...)
	argv = append(argv,
		"--proxy-socket", s.proxySocket(n.Name),
		"--cni-socket", s.agentSocket(n.Name),
	)
	argv = append(argv, s.spireAgentArgs(n)...)
	if s.EBPF {
		argv = append(argv, "--ebpf", "on", "--bpffs", s.bpffsDir(n.Name))
	} else {
		argv = append(argv, "--ebpf", "off")
	}
	return append(argv, s.AgentArgs...)
}

func (s *state) nodeProxyArgv(n *nodeState, ip string) []string {
	argv := []string{ip, "netns", "exec", n.Netns,
		filepath.Join(s.BinDir, NodeProxyBinary),
		"--node", n.Name,
	}
	argv = append(argv, s.clusterSourceArgs()...)
	argv = append(argv, "--agent-socket", s.proxySocket(n.Name))
	if s.spire() {
		argv = append(argv,
			"--identity", IdentitySPIRE,
			"--spire-admin-socket", s.spireAdminSocket(n.Name),
			"--spire-workload-socket", s.spireWorkloadSocket(n.Name),
		)
	} else {
		argv = append(argv, "--dev-ca-dir", s.caDir())
	}
	argv = append(argv, "--trust-domain", s.TrustDomain, "--flow-log", s.flowLogPath(n.Name))
	return append(argv, s.NodeProxyArgs...)
}

func (l *Lab) nodeFor(name string) (*nodeState, error) {
	n := l.st.node(name)
	if n == nil {
		return nil, fmt.Errorf("lab %s: no node %q", l.st.Name, name)
	}
	if l.st.NoPalisade {
		return nil, fmt.Errorf("lab %s: built with --no-palisade", l.st.Name)
	}
	return n, nil
}

// startAgent starts the node's agent inside its netns and waits until it
// is ready. l.mu is held.
func (l *Lab) startAgent(ctx context.Context, n *nodeState) error {
	if l.procs.alive(n.Agent) {
		return fmt.Errorf("node %s: agent is running (pid %d)", n.Name, n.Agent.PID)
	}
	spec := procSpec{
		name: "agent on " + n.Name,
		argv: l.st.agentArgv(n, l.sys.ip),
		env:  os.Environ(),
		log:  filepath.Join(l.st.nodeDir(n.Name), "agent.log"),
	}
	l.log.Info("starting agent", "node", n.Name, "log", spec.log)
	ps, err := l.procs.start(spec)
	if err != nil {
		return fmt.Errorf("node %s: %w", n.Name, err)
	}
	n.Agent = ps
	if err := l.st.save(); err != nil {
		return err
	}
	return l.waitAgentReady(ctx, n)
}

// startNodeProxy starts the node proxy inside the node netns and waits
// until it is ready. l.mu is held.
func (l *Lab) startNodeProxy(ctx context.Context, n *nodeState) error {
	if l.procs.alive(n.NodeProxy) {
		return fmt.Errorf("node %s: node proxy is running (pid %d)", n.Name, n.NodeProxy.PID)
	}
	spec := procSpec{
		name: "node proxy on " + n.Name,
		argv: l.st.nodeProxyArgv(n, l.sys.ip),
		env:  os.Environ(),
		log:  filepath.Join(l.st.nodeDir(n.Name), "nodeproxy.log"),
	}
	l.log.Info("starting node proxy", "node", n.Name, "log", spec.log)
	ps, err := l.procs.start(spec)
	if err != nil {
		return fmt.Errorf("node %s: %w", n.Name, err)
	}
	n.NodeProxy = ps
	if err := l.st.save(); err != nil {
		return err
	}
	return l.waitNodeProxyReady(ctx, n)
}

// pollReady calls check until it reports success, the process dies, or the
// ready timeout passes.
func (l *Lab) pollReady(ctx context.Context, what string, p *procState, check func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, l.readyTimeout)
	defer cancel()
	var last error
	for {
		if last = check(ctx); last == nil {
			return nil
		}
		if p == nil || !l.procs.alive(p) {
			status := "not running"
			if p != nil {
				if s := l.procs.exitStatus(p); s != "" {
					status = "exited: " + s
				}
				return fmt.Errorf("%s %s (last check: %v)\n%s", what, status, last, logTail(p.Log, 20))
			}
			return fmt.Errorf("%s %s", what, status)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not ready after %s: %v\n%s", what, l.readyTimeout, last, logTail(p.Log, 20))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// getOK GETs url and wants 200 OK.
func getOK(ctx context.Context, client *http.Client, url string) error {
	return getStatus(ctx, client, url, http.StatusOK)
}

// getStatus GETs url, within 2s, and wants the status code want.
func getStatus(ctx context.Context, client *http.Client, url string, want int) error {
	rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != want {
		return fmt.Errorf("GET %s: %s, want %d", url, resp.Status, want)
	}
	return nil
}

// waitAgentReady polls GET /readyz on the agent's CNI socket. l.mu is held.
func (l *Lab) waitAgentReady(ctx context.Context, n *nodeState) error {
	sock := l.st.agentSocket(n.Name)
	client := &http.Client{Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}}
	return l.pollReady(ctx, "agent on node "+n.Name, n.Agent, func(ctx context.Context) error {
		return getOK(ctx, client, "http://agent"+AgentReadyPath)
	})
}

// waitNodeProxyReady polls the node proxy's readiness endpoint from inside
// the node netns. l.mu is held.
func (l *Lab) waitNodeProxyReady(ctx context.Context, n *nodeState) error {
	h, err := pnetns.Open(netnsPath(n.Netns))
	if err != nil {
		return fmt.Errorf("node %s: %w", n.Name, err)
	}
	defer h.Close()
	d := &pnetns.Dialer{Netns: h}
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true, DialContext: d.DialContext}}
	return l.pollReady(ctx, "node proxy on node "+n.Name, n.NodeProxy, func(ctx context.Context) error {
		return getOK(ctx, client, NodeProxyReadyURL)
	})
}

// WaitAgentReady waits until the node's agent answers GET /readyz with 200.
func (l *Lab) WaitAgentReady(ctx context.Context, node string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	n, err := l.nodeFor(node)
	if err != nil {
		return err
	}
	return l.waitAgentReady(ctx, n)
}

// WaitNodeProxyReady waits until the node's proxy reports ready on
// 127.0.0.1:15021 inside the node netns.
func (l *Lab) WaitNodeProxyReady(ctx context.Context, node string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	n, err := l.nodeFor(node)
	if err != nil {
		return err
	}
	return l.waitNodeProxyReady(ctx, n)
}

// StartAgent starts the node's agent again (after StopAgent) and waits
// until it is ready.
func (l *Lab) StartAgent(ctx context.Context, node string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	n, err := l.nodeFor(node)
	if err != nil {
		return err
	}
	return l.startAgent(ctx, n)
}

// StartNodeProxy starts the node's proxy again and waits until it is ready.
func (l *Lab) StartNodeProxy(ctx context.Context, node string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	n, err := l.nodeFor(node)
	if err != nil {
		return err
	}
	return l.startNodeProxy(ctx, n)
}

// StopAgent sends sig (for example SIGTERM, or SIGKILL to simulate a crash)
// to the node's agent and waits until it has exited. SIGSTOP, SIGTSTP and
// SIGCONT are sent without waiting.
func (l *Lab) StopAgent(ctx context.Context, node string, sig syscall.Signal) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	n, err := l.nodeFor(node)
	if err != nil {
		return err
	}
	return l.stopDaemon(ctx, n.Agent, sig)
}

// StopNodeProxy sends sig to the node's proxy and waits until it has exited
// (see StopAgent).
func (l *Lab) StopNodeProxy(ctx context.Context, node string, sig syscall.Signal) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	n, err := l.nodeFor(node)
	if err != nil {
		return err
	}
	return l.stopDaemon(ctx, n.NodeProxy, sig)
}

func (l *Lab) stopDaemon(ctx context.Context, p *procState, sig syscall.Signal) error {
	if !l.procs.alive(p) {
		return errors.New("not running")
	}
	if err := l.procs.signal(p, sig); err != nil {
		return err
	}
	switch sig {
	case syscall.SIGSTOP, syscall.SIGTSTP, syscall.SIGCONT:
		return nil
	}
	return l.procs.waitExit(ctx, p)
}

// cniConfig is the network configuration the lab hands the chained plugin,
// with the result of the (imaginary) main plugin as prevResult.
func (s *state) cniConfig(p *podState) ([]byte, error) {
	n := s.node(p.Node)
	conf := map[string]any{
		"cniVersion":  "1.0.0",
		"name":        "palisade-lab",
		"type":        AgentBinary,
		"agentSocket": s.agentSocket(p.Node),
		"prevResult": map[string]any{
			"cniVersion": "1.0.0",
			"interfaces": []map[string]any{{"name": PodInterface, "sandbox": netnsPath(p.Netns)}},
			"ips": []map[string]any{{
				"address":   fmt.Sprintf("%s/%d", p.IP, n.PodCIDR.Bits()),
				"gateway":   n.Gateway.String(),
				"interface": 0,
			}},
		},
	}
	data, err := json.Marshal(conf)
	if err != nil {
		return nil, fmt.Errorf("cni config: %w", err)
	}
	return data, nil
}

// cni runs "palisade-agent cni" as a container runtime would, inside the
// node's netns, for command ADD or DEL. l.mu is held.
func (l *Lab) cni(ctx context.Context, command string, p *podState) error {
	st := l.st
	n := st.node(p.Node)
	if n == nil {
		return fmt.Errorf("CNI %s for pod %s/%s: node %q unknown", command, p.Namespace, p.Name, p.Node)
	}
	conf, err := st.cniConfig(p)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, l.sys.ip, "netns", "exec", n.Netns, filepath.Join(st.BinDir, AgentBinary), "cni")
	cmd.Env = append(os.Environ(),
		"CNI_COMMAND="+command,
		"CNI_CONTAINERID="+p.UID,
		"CNI_NETNS="+netnsPath(p.Netns),
		"CNI_IFNAME="+PodInterface,
		"CNI_PATH="+st.BinDir,
		fmt.Sprintf("CNI_ARGS=K8S_POD_NAMESPACE=%s;K8S_POD_NAME=%s;K8S_POD_UID=%s", p.Namespace, p.Name, p.UID),
	)
	cmd.Stdin = bytes.NewReader(conf)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	l.log.Info("CNI "+command, "pod", p.Namespace+"/"+p.Name, "node", p.Node)
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("CNI %s for pod %s/%s failed: %w\nstdout: %s\nstderr: %s", command, p.Namespace, p.Name, err,
			strings.TrimSpace(stdout.String()), strings.TrimSpace(stderr.String()))
	}
	return nil
}
