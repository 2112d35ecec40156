package cni

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"time"

	"github.com/containernetworking/cni/pkg/ns"
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
)

// DefaultAgentTimeout bounds each call to the agent unless the network
// configuration sets "agentTimeout".
const DefaultAgentTimeout = 30 * time.Second

// About is printed on stderr when the plugin runs without CNI_COMMAND.
const About = "Palisade chained CNI plugin: enrolls pods with the node's Palisade agent"

// SupportedVersions returns the CNI specification versions the plugin
// speaks.
func SupportedVersions() version.PluginInfo {
	return version.PluginSupports("0.4.0", "1.0.0", "1.1.0")
}

// NetConf is the plugin's network configuration: the standard fields plus
// Palisade's own.
type NetConf struct {
	types.PluginConf
	// AgentSocket is the agent's unix socket; default DefaultAgentSocket.
	AgentSocket string `json:"agentSocket,omitempty"`
	// AgentTimeout is a Go duration ("30s") bounding each call to the
	// agent; default DefaultAgentTimeout.
	AgentTimeout string `json:"agentTimeout,omitempty"`
	// LogLevel is the level of the plugin's stderr log: debug, info, warn
	// (default) or error.
	LogLevel string `json:"logLevel,omitempty"`
}

// Main is the plugin's entry point for a binary (the agent's "cni"
// subcommand): it reads the CNI environment, stdin and stdout of the process
// through skel, and exits with status 1 after printing the CNI error if the
// command fails.
func Main() {
	p := newPlugin(context.Background(), os.Stdout, os.Stderr)
	skel.PluginMainFuncs(p.funcs(), SupportedVersions(), About)
}

// Run executes one plugin invocation without touching the process: getenv
// supplies the CNI_* variables, stdin the network configuration, and the
// result or the CNI error JSON is written to stdout, as a runtime expects
// it. It returns nil on success and the *types.Error it printed otherwise,
// so that a caller can choose the exit status. ctx bounds the calls to the
// agent.
func Run(ctx context.Context, getenv func(string) string, stdin io.Reader, stdout, stderr io.Writer) error {
	p := newPlugin(ctx, stdout, stderr)
	if e := dispatch(getenv, stdin, stdout, stderr, p.funcs(), SupportedVersions(), About); e != nil {
		if err := printJSON(stdout, e); err != nil {
			return fmt.Errorf("write CNI error %q: %w", e.Msg, err)
		}
		return e
	}
	return nil
}

// plugin holds one invocation's environment.
type plugin struct {
	ctx    context.Context
	stdout io.Writer
	stderr io.Writer
	level  *slog.LevelVar
	log    *slog.Logger
}

func newPlugin(ctx context.Context, stdout, stderr io.Writer) *plugin {
	level := new(slog.LevelVar)
	level.Set(slog.LevelWarn)
	return &plugin{
		ctx:    ctx,
		stdout: stdout,
		stderr: stderr,
		level:  level,
		log:    slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level})).With("plugin", "palisade"),
	}
}

func (p *plugin) funcs() skel.CNIFuncs {
	return skel.CNIFuncs{Add: p.cmdAdd, Del: p.cmdDel, Check: p.cmdCheck}
}

// config is a parsed NetConf.
type config struct {
	NetConf
	timeout time.Duration
}

// parseConf decodes stdin. With lenient set (DEL), problems with Palisade's
// own fields fall back to defaults instead of failing.
func (p *plugin) parseConf(data []byte, lenient bool) (*config, error) {
	c := &config{}
	if err := json.Unmarshal(data, &c.NetConf); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, fmt.Sprintf("palisade: parse network configuration: %v", err), "")
	}
	if c.LogLevel != "" {
		var l slog.Level
		if err := l.UnmarshalText([]byte(c.LogLevel)); err == nil {
			p.level.Set(l)
		} else {
			p.log.Warn("ignoring invalid logLevel", "logLevel", c.LogLevel)
		}
	}
	if c.AgentSocket == "" {
		c.AgentSocket = DefaultAgentSocket
	}
	c.timeout = DefaultAgentTimeout
	if c.AgentTimeout != "" {
		d, err := time.ParseDuration(c.AgentTimeout)
		if err != nil || d <= 0 {
			if !lenient {
				return nil, types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("palisade: invalid agentTimeout %q: want a positive Go duration such as \"30s\"", c.AgentTimeout), "")
			}
			p.log.Warn("ignoring invalid agentTimeout", "agentTimeout", c.AgentTimeout)
		} else {
			c.timeout = d
		}
	}
	if err := version.ParsePrevResult(&c.PluginConf); err != nil {
		if !lenient {
			return nil, types.NewError(types.ErrDecodingFailure, fmt.Sprintf("palisade: %v", err), "")
		}
		p.log.Warn("ignoring unparsable prevResult", "err", err)
	}
	return c, nil
}

// k8sArgs are the CNI_ARGS that the kubelet's runtimes pass.
type k8sArgs struct {
	types.CommonArgs
	K8S_POD_NAMESPACE          types.UnmarshallableString //nolint:revive // names fixed by the runtimes
	K8S_POD_NAME               types.UnmarshallableString //nolint:revive
	K8S_POD_UID                types.UnmarshallableString //nolint:revive
	K8S_POD_INFRA_CONTAINER_ID types.UnmarshallableString //nolint:revive
}

func parseK8sArgs(s string) (*k8sArgs, error) {
	a := &k8sArgs{}
	a.IgnoreUnknown = true // runtimes add keys of their own
	if err := types.LoadArgs(s, a); err != nil {
		return nil, types.NewError(types.ErrInvalidEnvironmentVariables, fmt.Sprintf("palisade: parse CNI_ARGS: %v", err), "")
	}
	return a, nil
}

func (p *plugin) cmdAdd(args *skel.CmdArgs) error {
	conf, err := p.parseConf(args.StdinData, false)
	if err != nil {
		return err
	}
	if conf.PrevResult == nil {
		return types.NewError(types.ErrInvalidNetworkConfig, "palisade: no prevResult: the plugin must be chained after an interface plugin", "")
	}
	prev, err := types100.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, fmt.Sprintf("palisade: convert prevResult: %v", err), "")
	}
	k, err := parseK8sArgs(args.Args)
	if err != nil {
		return err
	}
	log := p.log.With("container", args.ContainerID)
	if k.K8S_POD_NAMESPACE == "" || k.K8S_POD_NAME == "" {
		log.Info("not a Kubernetes pod; passing through")
		return p.printResult(conf)
	}
	ev := PodEvent{
		ContainerID: args.ContainerID,
		IfName:      args.IfName,
		Namespace:   string(k.K8S_POD_NAMESPACE),
		Name:        string(k.K8S_POD_NAME),
		UID:         string(k.K8S_POD_UID),
		Netns:       args.Netns,
		IPs:         sandboxIPs(prev),
	}
	log = log.With("pod", ev.Key(), "uid", ev.UID)
	// Redirect rules in the host's namespace would capture the node's own
	// traffic: refuse before the agent acts.
	if own, terr := ns.CheckNetNS(args.Netns); terr != nil {
		return terr
	} else if own {
		return types.NewError(types.ErrInvalidNetNS, fmt.Sprintf("palisade: CNI_NETNS %s is the plugin's own network namespace; refusing to enroll pod %s", args.Netns, ev.Key()), "")
	}

	start := time.Now()
	if err := p.post(conf, PathAdd, &ev); err != nil {
		log.Error("enrollment failed", "err", err)
		return err
	}
	log.Info("pod enrolled by agent", "ips", ev.IPs, "took", time.Since(start))
	return p.printResult(conf)
}

func (p *plugin) cmdDel(args *skel.CmdArgs) error {
	conf, err := p.parseConf(args.StdinData, true)
	if err != nil {
		p.log.Warn("DEL with unreadable configuration; nothing to do", "err", err)
		return nil
	}
	k, err := parseK8sArgs(args.Args)
	if err != nil {
		p.log.Warn("DEL with unreadable CNI_ARGS; nothing to do", "err", err)
		return nil
	}
	if k.K8S_POD_NAMESPACE == "" || k.K8S_POD_NAME == "" {
		return nil
	}
	ev := PodEvent{
		ContainerID: args.ContainerID,
		IfName:      args.IfName,
		Namespace:   string(k.K8S_POD_NAMESPACE),
		Name:        string(k.K8S_POD_NAME),
		UID:         string(k.K8S_POD_UID),
		Netns:       args.Netns,
	}
	if err := p.post(conf, PathDel, &ev); err != nil {
		// The agent also reconciles deleted pods; DEL must not wedge sandbox
		// teardown.
		p.log.Warn("agent did not confirm pod removal; ignoring", "pod", ev.Key(), "uid", ev.UID, "err", err)
	}
	return nil
}

func (p *plugin) cmdCheck(*skel.CmdArgs) error { return nil }

// printResult prints prevResult, unchanged, in the configuration's version.
func (p *plugin) printResult(conf *config) error {
	r, err := conf.PrevResult.GetAsVersion(conf.CNIVersion)
	if err != nil {
		return types.NewError(types.ErrIncompatibleCNIVersion, fmt.Sprintf("palisade: prevResult as version %s: %v", conf.CNIVersion, err), "")
	}
	if err := r.PrintTo(p.stdout); err != nil {
		return types.NewError(types.ErrIOFailure, fmt.Sprintf("palisade: print result: %v", err), "")
	}
	return nil
}

// sandboxIPs returns the addresses of prevResult that live inside the pod
// sandbox (interfaces with a sandbox path, or with no interface named),
// de-duplicated.
func sandboxIPs(r *types100.Result) []netip.Addr {
	var out []netip.Addr
	seen := map[netip.Addr]bool{}
	for _, ipc := range r.IPs {
		if ipc == nil {
			continue
		}
		if i := ipc.Interface; i != nil && *i >= 0 && *i < len(r.Interfaces) && r.Interfaces[*i].Sandbox == "" {
			continue // host side of a veth, a bridge
		}
		a, ok := netip.AddrFromSlice(ipc.Address.IP)
		if !ok {
			continue
		}
		a = a.Unmap()
		if !seen[a] {
			seen[a] = true
			out = append(out, a)
		}
	}
	return out
}

// post sends ev to the agent and waits for its verdict. Every error is a
// *types.Error: code 11 (try again later) when the agent cannot be reached
// or does not answer in time, 999 with the agent's message when it refuses.
func (p *plugin) post(conf *config, path string, ev *PodEvent) error {
	body, err := json.Marshal(ev)
	if err != nil {
		return types.NewError(types.ErrInternal, fmt.Sprintf("palisade: encode request: %v", err), "")
	}
	ctx, cancel := context.WithTimeout(p.ctx, conf.timeout)
	defer cancel()
	sock := conf.AgentSocket
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
		DisableKeepAlives: true,
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://palisade-agent"+path, bytes.NewReader(body))
	if err != nil {
		return types.NewError(types.ErrInternal, fmt.Sprintf("palisade: build request: %v", err), "")
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return types.NewError(types.ErrTryAgainLater, fmt.Sprintf("palisade agent at %s did not answer %s for pod %s within %s", sock, path, ev.Key(), conf.timeout), "")
		}
		return types.NewError(types.ErrTryAgainLater, fmt.Sprintf("palisade agent unreachable at %s: %v", sock, unwrapURLError(err)), "")
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, DefaultMaxRequestBytes))
	if err != nil {
		return types.NewError(types.ErrTryAgainLater, fmt.Sprintf("palisade agent at %s: read answer for pod %s: %v", sock, ev.Key(), unwrapURLError(err)), "")
	}
	if resp.StatusCode/100 == 2 {
		return nil
	}
	msg := string(bytes.TrimSpace(data))
	var eb errorBody
	if json.Unmarshal(data, &eb) == nil && eb.Error != "" {
		msg = eb.Error
	}
	if msg == "" {
		msg = resp.Status
	}
	return types.NewError(types.ErrInternal, fmt.Sprintf("palisade agent refused pod %s: %s", ev.Key(), msg), "")
}

// unwrapURLError drops net/http's "Post \"http://…\":" prefix, which names a
// made-up host.
func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// printJSON writes v the way skel prints errors.
func printJSON(w io.Writer, v any) error {
	data, err := json.MarshalIndent(v, "", "    ")
	if err != nil {
		return err
	}
	_, err = w.Write(data)
	return err
}
