package manifests_test

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// cniEnv is a node's CNI directories in a temporary directory, and a fake
// agent binary (a script that prints its arguments).
type cniEnv struct {
	t                        *testing.T
	binDir, netDir, stateDir string
	agent                    string
}

func newCNIEnv(t *testing.T) *cniEnv {
	t.Helper()
	lookPath(t, "jq")
	lookPath(t, "sha256sum")
	d := t.TempDir()
	e := &cniEnv{t: t, binDir: filepath.Join(d, "bin"), netDir: filepath.Join(d, "net.d"), stateDir: filepath.Join(d, "state"), agent: filepath.Join(d, "palisade-agent")}
	for _, dir := range []string{e.binDir, e.netDir, e.stateDir} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	e.writeAgent("v1")
	return e
}

func (e *cniEnv) writeAgent(version string) {
	e.t.Helper()
	script := "#!/bin/sh\necho " + version + " \"$@\"\n"
	if err := os.WriteFile(e.agent, []byte(script), 0o755); err != nil {
		e.t.Fatal(err)
	}
}

func (e *cniEnv) cmd(mode string) *exec.Cmd {
	cmd := exec.Command("/bin/sh", "cni-install.sh", mode)
	cmd.Env = append(os.Environ(),
		"CNI_BIN_DIR="+e.binDir, "CNI_NET_DIR="+e.netDir, "STATE_DIR="+e.stateDir,
		"PALISADE_AGENT_BIN="+e.agent, "PALISADE_CNI_SOCKET=/var/run/palisade/cni.sock",
		"CNI_WATCH_INTERVAL=1")
	return cmd
}

// run runs the script and reports whether it exited 0.
func (e *cniEnv) run(mode string) bool {
	e.t.Helper()
	out, err := e.cmd(mode).CombinedOutput()
	if err != nil {
		if _, ok := err.(*exec.ExitError); !ok {
			e.t.Fatal(err)
		}
		e.t.Logf("cni-install.sh %s: %v\n%s", mode, err, out)
		return false
	}
	return true
}

func (e *cniEnv) write(name, content string) {
	e.t.Helper()
	if err := os.WriteFile(filepath.Join(e.netDir, name), []byte(content), 0o644); err != nil {
		e.t.Fatal(err)
	}
}

func (e *cniEnv) read(name string) string {
	e.t.Helper()
	b, err := os.ReadFile(filepath.Join(e.netDir, name))
	if err != nil {
		e.t.Fatal(err)
	}
	return string(b)
}

// pluginTypes lists the types of a configuration's plugins.
func (e *cniEnv) pluginTypes(name string) []string {
	e.t.Helper()
	var conf struct {
		Name       string `json:"name"`
		CNIVersion string `json:"cniVersion"`
		Plugins    []struct {
			Type        string `json:"type"`
			AgentSocket string `json:"agentSocket"`
		} `json:"plugins"`
	}
	if err := json.Unmarshal([]byte(e.read(name)), &conf); err != nil {
		e.t.Fatalf("%s: %v", name, err)
	}
	if conf.Name == "" || conf.CNIVersion == "" {
		e.t.Errorf("%s lost its name or cniVersion", name)
	}
	var out []string
	for _, p := range conf.Plugins {
		out = append(out, p.Type)
		if p.Type == "palisade" && p.AgentSocket != "/var/run/palisade/cni.sock" {
			e.t.Errorf("agentSocket %q", p.AgentSocket)
		}
	}
	return out
}

func (e *cniEnv) files() []string {
	e.t.Helper()
	ents, err := os.ReadDir(e.netDir)
	if err != nil {
		e.t.Fatal(err)
	}
	var out []string
	for _, d := range ents {
		out = append(out, d.Name())
	}
	return out
}

const (
	calico  = `{"name": "k8s-pod-network", "cniVersion": "0.3.1", "plugins": [{"type": "calico"}, {"type": "portmap", "capabilities": {"portMappings": true}}]}`
	flannel = `{"name": "cbr0", "cniVersion": "1.0.0", "type": "flannel", "delegate": {"isDefaultGateway": true}}`
)

func TestCNIInstall(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup map[string]string
		// files after install, and the plugin types of the active one
		wantOK     bool
		wantFiles  []string
		active     string
		wantTypes  []string
		untouched  map[string]string
		wantChecks bool
	}{
		{
			name:   "conflist gets the plugin last",
			setup:  map[string]string{"10-calico.conflist": calico},
			wantOK: true, wantFiles: []string{"10-calico.conflist"},
			active: "10-calico.conflist", wantTypes: []string{"calico", "portmap", "palisade"}, wantChecks: true,
		},
		{
			name:   "single plugin .conf becomes a .conflist",
			setup:  map[string]string{"10-flannel.conf": flannel},
			wantOK: true, wantFiles: []string{"10-flannel.conflist"},
			active: "10-flannel.conflist", wantTypes: []string{"flannel", "palisade"}, wantChecks: true,
		},
		{
			name: "only the first configuration in byte order is the runtime's",
			setup: map[string]string{
				"05-cilium.conflist": strings.Replace(calico, "calico", "cilium-cni", 1),
				"10-calico.conflist": calico, "00-notes.txt": "not a config", ".hidden.conflist.tmp": "x",
			},
			wantOK: true, wantFiles: []string{".hidden.conflist.tmp", "00-notes.txt", "05-cilium.conflist", "10-calico.conflist"},
			active: "05-cilium.conflist", wantTypes: []string{"cilium-cni", "portmap", "palisade"},
			untouched: map[string]string{"10-calico.conflist": calico}, wantChecks: true,
		},
		{
			name:   "a .json conflist is kept as .json",
			setup:  map[string]string{"10-net.json": calico},
			wantOK: true, wantFiles: []string{"10-net.json"},
			active: "10-net.json", wantTypes: []string{"calico", "portmap", "palisade"}, wantChecks: true,
		},
		{
			name:   "no configuration yet",
			setup:  map[string]string{},
			wantOK: false,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newCNIEnv(t)
			for n, c := range tc.setup {
				e.write(n, c)
			}
			if ok := e.run("install"); ok != tc.wantOK {
				t.Fatalf("install succeeded=%v, want %v", ok, tc.wantOK)
			}
			if got := e.run("check"); got != tc.wantChecks {
				t.Errorf("check=%v, want %v", got, tc.wantChecks)
			}
			if !tc.wantOK {
				return
			}
			if got := e.files(); !slices.Equal(got, tc.wantFiles) {
				t.Errorf("files %v, want %v", got, tc.wantFiles)
			}
			if got := e.pluginTypes(tc.active); !slices.Equal(got, tc.wantTypes) {
				t.Errorf("%s plugins %v, want %v", tc.active, got, tc.wantTypes)
			}
			for n, c := range tc.untouched {
				if e.read(n) != c {
					t.Errorf("%s changed", n)
				}
			}
			// Idempotent: a second install changes nothing.
			before := e.read(tc.active)
			st1, _ := os.Stat(filepath.Join(e.netDir, tc.active))
			if !e.run("install") {
				t.Fatal("second install failed")
			}
			st2, _ := os.Stat(filepath.Join(e.netDir, tc.active))
			if e.read(tc.active) != before || !st1.ModTime().Equal(st2.ModTime()) || !os.SameFile(st1, st2) {
				t.Error("a second install rewrote the configuration")
			}
			// The plugin runs "palisade-agent cni" with the runtime's arguments.
			out, err := exec.Command(filepath.Join(e.binDir, "palisade"), "x").Output()
			if err != nil || strings.TrimSpace(string(out)) != "v1 cni x" {
				t.Errorf("the plugin ran %q (%v), want the agent with arguments cni x", out, err)
			}
		})
	}
}

func TestCNIInstallUpgradeAndUninstall(t *testing.T) {
	e := newCNIEnv(t)
	e.write("10-calico.conflist", calico)
	if !e.run("install") {
		t.Fatal("install failed")
	}
	e.writeAgent("v2")
	if !e.run("install") {
		t.Fatal("install of v2 failed")
	}
	if out, _ := exec.Command(filepath.Join(e.binDir, "palisade")).Output(); strings.TrimSpace(string(out)) != "v2 cni" {
		t.Errorf("after the upgrade the plugin runs %q", out)
	}
	if !e.run("uninstall") {
		t.Fatal("uninstall failed")
	}
	if got := e.pluginTypes("10-calico.conflist"); !slices.Equal(got, []string{"calico", "portmap"}) {
		t.Errorf("after uninstall: %v", got)
	}
	for _, b := range []string{"palisade", "palisade-agent"} {
		if _, err := os.Stat(filepath.Join(e.binDir, b)); !os.IsNotExist(err) {
			t.Errorf("%s still installed (%v)", b, err)
		}
	}
	if e.run("check") {
		t.Error("check passes after uninstall")
	}
	if e.run("bogus") {
		t.Error("an unknown mode succeeded")
	}
}

// TestCNIInstallWatch rewrites the configuration as a primary CNI plugin
// does on its restart; the watch puts the plugin back, and on SIGTERM it
// exits 0 leaving the plugin in place. After uninstall it stops.
func TestCNIInstallWatch(t *testing.T) {
	e := newCNIEnv(t)
	e.write("10-calico.conflist", calico)
	cmd := e.cmd("watch")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	defer func() {
		cmd.Process.Kill()
		<-done
	}()
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			if cond() {
				return
			}
		}
		t.Fatalf("timed out waiting for %s", what)
	}
	installed := func() bool {
		b, err := os.ReadFile(filepath.Join(e.netDir, "10-calico.conflist"))
		return err == nil && strings.Contains(string(b), `"palisade"`)
	}
	waitFor("the first install", installed)
	waitFor("the heartbeat", func() bool {
		_, err := os.Stat(filepath.Join(e.stateDir, "palisade-cni-heartbeat"))
		return err == nil
	})
	e.write("10-calico.conflist", calico)
	waitFor("the plugin to come back", installed)

	if !e.run("uninstall") {
		t.Fatal("uninstall failed")
	}
	time.Sleep(2500 * time.Millisecond) // two watch intervals
	if installed() {
		t.Error("the watch installed the plugin again after uninstall")
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		done <- err
		if err != nil {
			t.Errorf("watch exited with %v on SIGTERM, want 0", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("watch did not exit on SIGTERM")
	}
}
