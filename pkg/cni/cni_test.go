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
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
)

// mainEnv makes the test binary act as the plugin binary (see TestMain).
const mainEnv = "PALISADE_CNI_TEST_AS_PLUGIN"

func TestMain(m *testing.M) {
	if os.Getenv(mainEnv) == "1" {
		Main() // exits 1 itself on error
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func testLogger() *slog.Logger {
	if os.Getenv("CNI_TEST_LOG") == "" {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// fakeAgent records the events the Server hands it.
type fakeAgent struct {
	mu      sync.Mutex
	added   []PodEvent
	deleted []PodEvent
	addErr  error
	delErr  error
	block   chan struct{} // if set, PodAdded waits for it (or ctx)
}

func (f *fakeAgent) PodAdded(ctx context.Context, ev PodEvent) error {
	if f.block != nil {
		select {
		case <-f.block:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.added = append(f.added, ev)
	return f.addErr
}

func (f *fakeAgent) PodDeleted(_ context.Context, ev PodEvent) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.deleted = append(f.deleted, ev)
	return f.delErr
}

func (f *fakeAgent) counts() (int, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.added), len(f.deleted)
}

// startAgent serves a Server for h on a socket in a temp dir.
func startAgent(t *testing.T, h Handler) (string, *Server) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "cni.sock")
	s := NewServer(h, ServerOptions{Logger: testLogger(), ShutdownTimeout: time.Second})
	ln, err := ListenUnix(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return path, s
}

// prevResults are what an interface plugin (bridge) returns, by version: the
// host-side bridge (no sandbox) and the pod's eth0 (in the sandbox).
var prevResults = map[string]string{
	"0.4.0": `{"cniVersion":"0.4.0","interfaces":[{"name":"cni0","mac":"0a:58:0a:f4:00:01"},{"name":"eth0","mac":"0a:58:0a:f4:00:05","sandbox":"/var/run/netns/cni-1234"}],` +
		`"ips":[{"version":"4","interface":1,"address":"10.244.0.5/24","gateway":"10.244.0.1"},{"version":"6","interface":1,"address":"fd00:10:244::5/64"},{"version":"4","interface":0,"address":"10.244.0.1/24"}],` +
		`"routes":[{"dst":"0.0.0.0/0","gw":"10.244.0.1"}],"dns":{"nameservers":["10.96.0.10"]}}`,
	"1.0.0": `{"cniVersion":"1.0.0","interfaces":[{"name":"cni0","mac":"0a:58:0a:f4:00:01"},{"name":"eth0","mac":"0a:58:0a:f4:00:05","sandbox":"/var/run/netns/cni-1234"}],` +
		`"ips":[{"interface":1,"address":"10.244.0.5/24","gateway":"10.244.0.1"},{"interface":1,"address":"fd00:10:244::5/64"},{"interface":0,"address":"10.244.0.1/24"}],` +
		`"routes":[{"dst":"0.0.0.0/0","gw":"10.244.0.1"}],"dns":{"nameservers":["10.96.0.10"]}}`,
	"1.1.0": `{"cniVersion":"1.1.0","interfaces":[{"name":"cni0","mac":"0a:58:0a:f4:00:01"},{"name":"eth0","mac":"0a:58:0a:f4:00:05","mtu":1450,"sandbox":"/var/run/netns/cni-1234"}],` +
		`"ips":[{"interface":1,"address":"10.244.0.5/24","gateway":"10.244.0.1"},{"interface":1,"address":"fd00:10:244::5/64"},{"interface":0,"address":"10.244.0.1/24"}],` +
		`"routes":[{"dst":"0.0.0.0/0","gw":"10.244.0.1"}],"dns":{"nameservers":["10.96.0.10"]}}`,
}

var wantIPs = []netip.Addr{netip.MustParseAddr("10.244.0.5"), netip.MustParseAddr("fd00:10:244::5")}

// netConf builds the plugin's stdin as the runtime would.
func netConf(t *testing.T, ver, sock string, extra map[string]any) []byte {
	t.Helper()
	conf := map[string]any{
		"cniVersion":  ver,
		"name":        "k8s-pod-network",
		"type":        "palisade",
		"agentSocket": sock,
	}
	if pr, ok := prevResults[ver]; ok {
		conf["prevResult"] = json.RawMessage(pr)
	}
	for k, v := range extra {
		if v == nil {
			delete(conf, k)
		} else {
			conf[k] = v
		}
	}
	b, err := json.Marshal(conf)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// podNetns is a netns path that is not the test's own (CNI_NETNS must not
// be the plugin's namespace); the fake agent never opens it.
func podNetns(t *testing.T) string { return filepath.Join(t.TempDir(), "cni-1234") }

func cniEnv(t *testing.T, cmd string, extra map[string]string) map[string]string {
	env := map[string]string{
		"CNI_COMMAND":     cmd,
		"CNI_CONTAINERID": "3f6a1b2c9d",
		"CNI_NETNS":       podNetns(t),
		"CNI_IFNAME":      "eth0",
		"CNI_PATH":        "/opt/cni/bin",
		"CNI_ARGS":        "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-7d4b9;K8S_POD_INFRA_CONTAINER_ID=3f6a1b2c9d;K8S_POD_UID=0b9c7e9e-1111-4a4a-9f9f-123456789abc",
	}
	for k, v := range extra {
		env[k] = v
	}
	return env
}

type runOut struct {
	stdout string
	stderr string
	err    error
}

func runPlugin(t *testing.T, env map[string]string, stdin []byte) runOut {
	t.Helper()
	var stdout, stderr bytes.Buffer
	err := Run(context.Background(), func(k string) string { return env[k] }, bytes.NewReader(stdin), &stdout, &stderr)
	return runOut{stdout.String(), stderr.String(), err}
}

// jsonEqual compares two JSON documents structurally.
func jsonEqual(t *testing.T, got, want string) {
	t.Helper()
	var g, w any
	if err := json.Unmarshal([]byte(got), &g); err != nil {
		t.Fatalf("output %q is not JSON: %v", got, err)
	}
	if err := json.Unmarshal([]byte(want), &w); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(g, w) {
		t.Fatalf("output\n%s\nwant\n%s", got, want)
	}
}

// cniError decodes the error JSON a failed plugin printed and checks that
// err is the same *types.Error.
func cniError(t *testing.T, o runOut) *types.Error {
	t.Helper()
	var te *types.Error
	if !errors.As(o.err, &te) {
		t.Fatalf("Run returned %v (%T), want a *types.Error; stdout %q", o.err, o.err, o.stdout)
	}
	var printed types.Error
	if err := json.Unmarshal([]byte(o.stdout), &printed); err != nil {
		t.Fatalf("stdout %q is not a CNI error: %v", o.stdout, err)
	}
	if printed != *te {
		t.Fatalf("printed error %+v, returned %+v", printed, *te)
	}
	return te
}

func TestAddSuccessPrintsPrevResult(t *testing.T) {
	for _, ver := range []string{"0.4.0", "1.0.0", "1.1.0"} {
		t.Run(ver, func(t *testing.T) {
			agent := &fakeAgent{}
			sock, _ := startAgent(t, agent)
			env := cniEnv(t, "ADD", nil)
			o := runPlugin(t, env, netConf(t, ver, sock, nil))
			if o.err != nil {
				t.Fatalf("ADD: %v (stderr %s)", o.err, o.stderr)
			}
			jsonEqual(t, o.stdout, prevResults[ver])

			agent.mu.Lock()
			defer agent.mu.Unlock()
			if len(agent.added) != 1 {
				t.Fatalf("agent got %d adds", len(agent.added))
			}
			want := PodEvent{
				ContainerID: "3f6a1b2c9d", IfName: "eth0",
				Namespace: "shop", Name: "web-7d4b9", UID: "0b9c7e9e-1111-4a4a-9f9f-123456789abc",
				Netns: env["CNI_NETNS"], IPs: wantIPs,
			}
			if !reflect.DeepEqual(agent.added[0], want) {
				t.Errorf("agent got %+v\nwant %+v", agent.added[0], want)
			}
		})
	}
}

func TestAddAgentErrorFailsAdd(t *testing.T) {
	agent := &fakeAgent{addErr: errors.New("install redirect rules in /var/run/netns/cni-1234: iptables-restore: exit status 2")}
	sock, _ := startAgent(t, agent)
	o := runPlugin(t, cniEnv(t, "ADD", nil), netConf(t, "1.0.0", sock, nil))
	te := cniError(t, o)
	if !strings.Contains(te.Msg, "iptables-restore: exit status 2") || !strings.Contains(te.Msg, "shop/web-7d4b9") {
		t.Errorf("CNI error %q does not carry the agent's message and the pod", te.Msg)
	}
	if te.Code != types.ErrInternal {
		t.Errorf("code = %d, want %d", te.Code, types.ErrInternal)
	}
}

func TestAddAgentDownOrSlow(t *testing.T) {
	t.Run("down", func(t *testing.T) {
		sock := filepath.Join(t.TempDir(), "absent.sock")
		o := runPlugin(t, cniEnv(t, "ADD", nil), netConf(t, "1.0.0", sock, nil))
		te := cniError(t, o)
		if te.Code != types.ErrTryAgainLater || !strings.Contains(te.Msg, "unreachable") {
			t.Errorf("CNI error = %+v, want code 11 and 'unreachable'", te)
		}
	})
	t.Run("slow", func(t *testing.T) {
		agent := &fakeAgent{block: make(chan struct{})}
		defer close(agent.block)
		sock, _ := startAgent(t, agent)
		start := time.Now()
		o := runPlugin(t, cniEnv(t, "ADD", nil), netConf(t, "1.0.0", sock, map[string]any{"agentTimeout": "300ms"}))
		te := cniError(t, o)
		if te.Code != types.ErrTryAgainLater || !strings.Contains(te.Msg, "did not answer") {
			t.Errorf("CNI error = %+v, want code 11 and 'did not answer'", te)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("ADD took %s with a 300ms timeout", d)
		}
	})
}

func TestDel(t *testing.T) {
	t.Run("agent down", func(t *testing.T) {
		sock := filepath.Join(t.TempDir(), "absent.sock")
		o := runPlugin(t, cniEnv(t, "DEL", nil), netConf(t, "1.0.0", sock, nil))
		if o.err != nil || o.stdout != "" {
			t.Fatalf("DEL with agent down: err %v, stdout %q", o.err, o.stdout)
		}
	})
	t.Run("agent up", func(t *testing.T) {
		agent := &fakeAgent{}
		sock, _ := startAgent(t, agent)
		env := cniEnv(t, "DEL", map[string]string{"CNI_NETNS": ""}) // netns already gone
		o := runPlugin(t, env, netConf(t, "1.0.0", sock, map[string]any{"prevResult": nil}))
		if o.err != nil {
			t.Fatalf("DEL: %v", o.err)
		}
		agent.mu.Lock()
		defer agent.mu.Unlock()
		if len(agent.deleted) != 1 || agent.deleted[0].Name != "web-7d4b9" || agent.deleted[0].UID == "" {
			t.Fatalf("agent deletes = %+v", agent.deleted)
		}
	})
	t.Run("agent fails", func(t *testing.T) {
		agent := &fakeAgent{delErr: errors.New("boom")}
		sock, _ := startAgent(t, agent)
		o := runPlugin(t, cniEnv(t, "DEL", nil), netConf(t, "1.0.0", sock, map[string]any{"agentTimeout": "bogus"}))
		if o.err != nil {
			t.Fatalf("DEL with a failing agent: %v", o.err)
		}
		if _, d := agent.counts(); d != 1 {
			t.Fatalf("agent got %d deletes", d)
		}
	})
}

func TestMalformedInput(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "absent.sock")
	cases := []struct {
		name  string
		env   map[string]string
		stdin []byte
		code  uint
		msg   string
	}{
		{"not json", nil, []byte(`{"cniVersion": "1.0.0", "name": `), types.ErrDecodingFailure, "unmarshal"},
		{"no name", nil, netConf(t, "1.0.0", sock, map[string]any{"name": nil}), types.ErrInvalidNetworkConfig, "missing network name"},
		{"bad prevResult", nil, netConf(t, "1.0.0", sock, map[string]any{"prevResult": map[string]any{"ips": "nope"}}), types.ErrDecodingFailure, "prevResult"},
		{"no prevResult", nil, netConf(t, "1.0.0", sock, map[string]any{"prevResult": nil}), types.ErrInvalidNetworkConfig, "chained"},
		{"bad timeout", nil, netConf(t, "1.0.0", sock, map[string]any{"agentTimeout": "soon"}), types.ErrInvalidNetworkConfig, "agentTimeout"},
		{"old version", nil, netConf(t, "0.3.1", sock, nil), types.ErrIncompatibleCNIVersion, "incompatible"},
		{"bad CNI_ARGS", map[string]string{"CNI_ARGS": "K8S_POD_NAME"}, netConf(t, "1.0.0", sock, nil), types.ErrInvalidEnvironmentVariables, "CNI_ARGS"},
		{"missing env", map[string]string{"CNI_CONTAINERID": ""}, netConf(t, "1.0.0", sock, nil), types.ErrInvalidEnvironmentVariables, "CNI_CONTAINERID"},
		{"unknown command", map[string]string{"CNI_COMMAND": "FROB"}, netConf(t, "1.0.0", sock, nil), types.ErrInvalidEnvironmentVariables, "FROB"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o := runPlugin(t, cniEnv(t, "ADD", tc.env), tc.stdin)
			te := cniError(t, o)
			if te.Code != tc.code || !strings.Contains(te.Error(), tc.msg) {
				t.Errorf("CNI error = %+v, want code %d containing %q", te, tc.code, tc.msg)
			}
		})
	}
}

func TestAddEdgeCases(t *testing.T) {
	t.Run("not a kubernetes pod", func(t *testing.T) {
		agent := &fakeAgent{}
		sock, _ := startAgent(t, agent)
		o := runPlugin(t, cniEnv(t, "ADD", map[string]string{"CNI_ARGS": ""}), netConf(t, "1.0.0", sock, nil))
		if o.err != nil {
			t.Fatal(o.err)
		}
		jsonEqual(t, o.stdout, prevResults["1.0.0"])
		if a, _ := agent.counts(); a != 0 {
			t.Errorf("agent called for a non-Kubernetes sandbox")
		}
	})
	t.Run("host netns refused", func(t *testing.T) {
		agent := &fakeAgent{}
		sock, _ := startAgent(t, agent)
		o := runPlugin(t, cniEnv(t, "ADD", map[string]string{"CNI_NETNS": "/proc/self/ns/net"}), netConf(t, "1.0.0", sock, nil))
		if te := cniError(t, o); te.Code != types.ErrInvalidNetNS {
			t.Errorf("CNI error = %+v, want code %d", te, types.ErrInvalidNetNS)
		}
		if a, _ := agent.counts(); a != 0 {
			t.Errorf("agent was asked to enroll the host netns")
		}
	})
	t.Run("check", func(t *testing.T) {
		o := runPlugin(t, cniEnv(t, "CHECK", nil), netConf(t, "1.0.0", "/nonexistent.sock", nil))
		if o.err != nil || o.stdout != "" {
			t.Fatalf("CHECK: err %v stdout %q", o.err, o.stdout)
		}
	})
	t.Run("no command prints about", func(t *testing.T) {
		o := runPlugin(t, map[string]string{}, nil)
		if o.err != nil || !strings.Contains(o.stderr, "Palisade") || !strings.Contains(o.stderr, "1.1.0") {
			t.Fatalf("no CNI_COMMAND: err %v stderr %q", o.err, o.stderr)
		}
	})
}

func TestVersion(t *testing.T) {
	o := runPlugin(t, map[string]string{"CNI_COMMAND": "VERSION"}, nil)
	if o.err != nil {
		t.Fatal(o.err)
	}
	var v struct {
		CNIVersion        string   `json:"cniVersion"`
		SupportedVersions []string `json:"supportedVersions"`
	}
	if err := json.Unmarshal([]byte(o.stdout), &v); err != nil {
		t.Fatalf("VERSION output %q: %v", o.stdout, err)
	}
	if want := []string{"0.4.0", "1.0.0", "1.1.0"}; !slices.Equal(v.SupportedVersions, want) {
		t.Errorf("supportedVersions = %v, want %v", v.SupportedVersions, want)
	}
	if v.CNIVersion == "" {
		t.Error("no cniVersion in VERSION output")
	}
}

// pluginBinary returns the path of the plugin as installed in a CNI bin
// directory: "palisade" pointing at this test binary, which TestMain turns
// into the plugin.
func pluginBinary(t *testing.T) (dir, path string) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir = t.TempDir()
	path = filepath.Join(dir, "palisade")
	if err := os.Symlink(self, path); err != nil {
		t.Fatal(err)
	}
	return dir, path
}

// execPlugin runs the plugin binary as a container runtime does (libcni's
// RawExec): a fresh process with CNI_* in its environment, the network
// configuration on stdin, the result or error on stdout.
func execPlugin(t *testing.T, bin string, env map[string]string, stdin []byte) (stdout string, exitCode int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin)
	// GORACE: a -race child otherwise sleeps 1s before a successful exit.
	cmd.Env = []string{mainEnv + "=1", "PATH=" + os.Getenv("PATH"), "GORACE=atexit_sleep_ms=0"}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.Stdin = bytes.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		exitCode = ee.ExitCode()
	default:
		t.Fatalf("exec plugin: %v (stderr %s)", err, errb.String())
	}
	return out.String(), exitCode
}

func TestPluginBinary(t *testing.T) {
	dir, bin := pluginBinary(t)
	agent := &fakeAgent{}
	sock, _ := startAgent(t, agent)

	env := cniEnv(t, "ADD", map[string]string{"CNI_PATH": dir})
	out, code := execPlugin(t, bin, env, netConf(t, "1.1.0", sock, nil))
	if code != 0 {
		t.Fatalf("ADD exit %d, stdout %s", code, out)
	}
	jsonEqual(t, out, prevResults["1.1.0"])
	if a, _ := agent.counts(); a != 1 {
		t.Fatalf("agent got %d adds", a)
	}

	agent.mu.Lock()
	agent.addErr = errors.New("node proxy not ready")
	agent.mu.Unlock()
	out, code = execPlugin(t, bin, env, netConf(t, "1.1.0", sock, nil))
	var te types.Error
	if code != 1 || json.Unmarshal([]byte(out), &te) != nil || !strings.Contains(te.Msg, "node proxy not ready") {
		t.Fatalf("failing ADD: exit %d, stdout %s", code, out)
	}

	absent := filepath.Join(t.TempDir(), "absent.sock")
	out, code = execPlugin(t, bin, cniEnv(t, "DEL", map[string]string{"CNI_PATH": dir}), netConf(t, "1.1.0", absent, nil))
	if code != 0 || out != "" {
		t.Fatalf("DEL with agent down: exit %d, stdout %q", code, out)
	}

	out, code = execPlugin(t, bin, map[string]string{"CNI_COMMAND": "VERSION"}, nil)
	if code != 0 || !strings.Contains(out, `"supportedVersions":["0.4.0","1.0.0","1.1.0"]`) {
		t.Fatalf("VERSION: exit %d, stdout %s", code, out)
	}
}

// TestRunMatchesSkel checks that Run (which cannot use skel's unexported
// dispatcher) behaves exactly like the binary's skel.PluginMainFuncs path.
func TestRunMatchesSkel(t *testing.T) {
	dir, bin := pluginBinary(t)
	sock, _ := startAgent(t, &fakeAgent{})
	refusing, _ := startAgent(t, &fakeAgent{addErr: errors.New("refused")})
	absent := filepath.Join(t.TempDir(), "absent.sock")
	base := map[string]string{"CNI_PATH": dir}
	with := func(kv ...string) map[string]string {
		m := map[string]string{"CNI_PATH": dir}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	cases := []struct {
		name  string
		cmd   string
		env   map[string]string
		stdin []byte
	}{
		{"add ok", "ADD", base, netConf(t, "1.0.0", sock, nil)},
		{"add 0.4.0", "ADD", base, netConf(t, "0.4.0", sock, nil)},
		{"add refused", "ADD", base, netConf(t, "1.0.0", refusing, nil)},
		{"add old version", "ADD", base, netConf(t, "0.3.1", sock, nil)},
		{"add not json", "ADD", base, []byte("{")},
		{"add no name", "ADD", base, netConf(t, "1.0.0", sock, map[string]any{"name": nil})},
		{"add bad network name", "ADD", base, netConf(t, "1.0.0", sock, map[string]any{"name": "a/b"})},
		{"add bad container id", "ADD", with("CNI_CONTAINERID", "x y"), netConf(t, "1.0.0", sock, nil)},
		{"add bad ifname", "ADD", with("CNI_IFNAME", "this-name-is-too-long-for-linux"), netConf(t, "1.0.0", sock, nil)},
		{"add missing netns", "ADD", with("CNI_NETNS", ""), netConf(t, "1.0.0", sock, nil)},
		{"add missing path", "ADD", with("CNI_PATH", ""), netConf(t, "1.0.0", sock, nil)},
		{"add own netns", "ADD", with("CNI_NETNS", "/proc/self/ns/net"), netConf(t, "1.0.0", sock, nil)},
		{"del agent down", "DEL", base, netConf(t, "1.0.0", absent, nil)},
		{"del own netns", "DEL", with("CNI_NETNS", "/proc/self/ns/net"), netConf(t, "1.0.0", absent, nil)},
		{"del own netns override", "DEL", with("CNI_NETNS", "/proc/self/ns/net", "CNI_NETNS_OVERRIDE", "true"), netConf(t, "1.0.0", absent, nil)},
		{"check", "CHECK", base, netConf(t, "1.0.0", sock, nil)},
		{"check 0.3.0", "CHECK", base, netConf(t, "0.3.0", sock, nil)},
		{"gc 1.1.0", "GC", base, netConf(t, "1.1.0", sock, nil)},
		{"gc 1.0.0", "GC", base, netConf(t, "1.0.0", sock, nil)},
		{"status", "STATUS", base, netConf(t, "1.1.0", sock, nil)},
		{"version", "VERSION", nil, nil},
		{"unknown", "FROB", base, netConf(t, "1.0.0", sock, nil)},
		{"unknown bad stdin", "FROB", base, []byte("nope")},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			env := cniEnv(t, tc.cmd, tc.env)
			if tc.cmd == "VERSION" {
				env = map[string]string{"CNI_COMMAND": "VERSION"}
			}
			binOut, binCode := execPlugin(t, bin, env, tc.stdin)
			o := runPlugin(t, env, tc.stdin)
			runCode := 0
			if o.err != nil {
				runCode = 1
			}
			if binCode != runCode {
				t.Fatalf("exit: skel %d, Run %d (skel stdout %q, Run stdout %q)", binCode, runCode, binOut, o.stdout)
			}
			if binOut == o.stdout {
				return
			}
			if binOut == "" || o.stdout == "" {
				t.Fatalf("stdout: skel %q, Run %q", binOut, o.stdout)
			}
			jsonEqual(t, o.stdout, binOut)
		})
	}
}

// agentClient talks to a Server directly.
func agentClient(sock string) *http.Client {
	return &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}}
}

func do(t *testing.T, c *http.Client, method, path string, body io.Reader) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(method, "http://agent"+path, body)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); method != http.MethodHead && ct != "application/json" {
		t.Errorf("%s %s: content-type %q", method, path, ct)
	}
	var m map[string]any
	if method != http.MethodHead {
		if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
			t.Fatalf("%s %s: body is not JSON: %v", method, path, err)
		}
	}
	return resp.StatusCode, m
}

func TestServerAPI(t *testing.T) {
	agent := &fakeAgent{}
	sock, s := startAgent(t, agent)
	c := agentClient(sock)

	fi, err := os.Lstat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want 0600", fi.Mode().Perm())
	}

	if code, body := do(t, c, "GET", PathReadyz, nil); code != 503 || body["error"] == nil {
		t.Errorf("readyz before SetReady: %d %v", code, body)
	}
	s.SetReady(true)
	if code, body := do(t, c, "GET", PathReadyz, nil); code != 200 || body["status"] != "ready" {
		t.Errorf("readyz after SetReady(true): %d %v", code, body)
	}
	s.SetReady(false)
	if code, _ := do(t, c, "GET", PathReadyz, nil); code != 503 {
		t.Errorf("readyz after SetReady(false): %d", code)
	}

	good := `{"containerID":"c1","namespace":"shop","name":"web","uid":"u1","netns":"/var/run/netns/x","ips":["10.0.0.1"]}`
	cases := []struct {
		method, path, body string
		code               int
		errPart            string
	}{
		{"POST", PathAdd, good, 200, ""},
		{"POST", PathDel, `{"namespace":"shop","name":"web"}`, 200, ""},
		{"GET", PathAdd, "", 405, "POST"},
		{"POST", PathReadyz, "", 405, "GET"},
		{"POST", "/v2/whatever", "", 404, "no such endpoint"},
		{"POST", PathAdd, "{not json", 400, "malformed"},
		{"POST", PathAdd, `{"namespace":"shop","name":"web"} trailing`, 400, "malformed"},
		{"POST", PathAdd, `{"namespace":"shop","name":"web"}`, 400, "netns"},
		{"POST", PathDel, `{"uid":"u1"}`, 400, "namespace, name"},
		{"POST", PathAdd, `{"namespace":"shop","name":"web","netns":"/x","ips":["not-an-ip"]}`, 400, "malformed"},
		{"POST", PathAdd, `{"namespace":"` + strings.Repeat("a", DefaultMaxRequestBytes) + `"}`, 413, "larger than"},
	}
	for _, tc := range cases {
		code, body := do(t, c, tc.method, tc.path, strings.NewReader(tc.body))
		if code != tc.code {
			t.Errorf("%s %s %.40q: status %d, want %d (%v)", tc.method, tc.path, tc.body, code, tc.code, body)
			continue
		}
		if tc.errPart != "" {
			msg, _ := body["error"].(string)
			if !strings.Contains(msg, tc.errPart) {
				t.Errorf("%s %s: error %q does not contain %q", tc.method, tc.path, msg, tc.errPart)
			}
		}
	}
	if a, d := agent.counts(); a != 1 || d != 1 {
		t.Errorf("handler calls: %d adds, %d dels; want 1, 1", a, d)
	}
}

type panicky struct{ fakeAgent }

func (p *panicky) PodAdded(context.Context, PodEvent) error { panic("handler bug") }

func TestServerHandlerPanic(t *testing.T) {
	sock, _ := startAgent(t, &panicky{})
	code, body := do(t, agentClient(sock), "POST", PathAdd, strings.NewReader(`{"namespace":"a","name":"b","netns":"/x"}`))
	if code != 500 || body["error"] == nil {
		t.Fatalf("panicking handler: %d %v", code, body)
	}
}

func TestListenReplacesStaleSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "run", "cni.sock")
	l1, err := ListenUnix(path)
	if err != nil {
		t.Fatal(err)
	}
	// A second agent (an upgrade) takes over; the first one's Close must
	// leave the new socket alone.
	s2, err := Listen(path, &fakeAgent{}, testLogger())
	if err != nil {
		t.Fatalf("Listen over a live socket: %v", err)
	}
	l1.Close()
	if _, err := os.Lstat(path); err != nil {
		t.Fatalf("old listener removed the new socket: %v", err)
	}
	s2.SetReady(true)
	if code, _ := do(t, agentClient(path), "GET", PathReadyz, nil); code != 200 {
		t.Errorf("readyz on the new server: %d", code)
	}
	if err := s2.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if err := s2.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Errorf("socket left after Close: %v", err)
	}
	if err := s2.Start(path); err == nil {
		t.Error("Start after Close succeeded")
	}
	notSock := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(notSock, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ListenUnix(notSock); err == nil {
		t.Error("ListenUnix over a regular file succeeded")
	}
}

// TestServerDebug: paths under /debug/ go to ServerOptions.Debug, and are
// 404 without it.
func TestServerDebug(t *testing.T) {
	sock, _ := startAgent(t, &fakeAgent{})
	if code, body := do(t, agentClient(sock), "GET", "/debug/drops", nil); code != 404 || body["error"] == nil {
		t.Errorf("/debug/drops without a debug handler: %d %v", code, body)
	}
	path := filepath.Join(t.TempDir(), "cni.sock")
	s := NewServer(&fakeAgent{}, ServerOptions{Logger: testLogger(), Debug: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"path":%q}`, r.URL.Path)
	})})
	if err := s.Start(path); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	c := agentClient(path)
	if code, body := do(t, c, "GET", "/debug/drops", nil); code != 200 || body["path"] != "/debug/drops" {
		t.Errorf("/debug/drops: %d %v", code, body)
	}
	if code, body := do(t, c, "GET", "/debugging", nil); code != 404 {
		t.Errorf("/debugging: %d %v, want 404", code, body)
	}
	if code, _ := do(t, c, "GET", PathReadyz, nil); code != 503 {
		t.Errorf("readyz with a debug handler: %d", code)
	}
}
