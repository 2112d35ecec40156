package redirect

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/palisade-net/palisade/pkg/netns"
)

// requireRoot skips the test without root, unless CI is set, where missing
// privileges are a failure.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "" {
		t.Skip("needs root to create network namespaces (set CI to make this a failure)")
	}
	t.Fatal("needs root to create network namespaces")
}

func randHex(t *testing.T, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

func ipCmd(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// newNetns creates a named network namespace with loopback up and deletes it
// when the test ends, whatever the outcome.
func newNetns(t *testing.T) (string, *netns.Handle) {
	t.Helper()
	name := "palisade-test-" + randHex(t, 6)
	ipCmd(t, "netns", "add", name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	h, err := netns.Open("/run/netns/" + name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	ipCmd(t, "-n", name, "link", "set", "lo", "up")
	return name, h
}

// testBackends returns the backends whose binaries exist here, for both
// families.
func testBackends(t *testing.T) []Backend {
	t.Helper()
	var out []Backend
	for _, b := range []Backend{BackendDefault, BackendNFT, BackendLegacy} {
		cfg := DefaultConfig()
		cfg.Backend = b
		if _, err := resolve(t.Context(), cfg); err == nil {
			out = append(out, b)
		}
	}
	if len(out) == 0 {
		t.Fatal("no usable iptables binaries")
	}
	return out
}

func backendName(b Backend) string {
	if b == BackendDefault {
		return "path"
	}
	return string(b)
}

func testConfig(b Backend) Config {
	cfg := DefaultConfig()
	cfg.Backend = b
	return cfg
}

func dump(t *testing.T, h *netns.Handle) string {
	t.Helper()
	d, err := Dump(t.Context(), h)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func mustInstall(t *testing.T, h *netns.Handle, cfg Config) {
	t.Helper()
	if err := Install(t.Context(), h, cfg); err != nil {
		t.Fatal(err)
	}
}

func mustInstallNew(t *testing.T, h *netns.Handle, cfg Config) {
	t.Helper()
	if err := InstallNew(t.Context(), h, cfg); err != nil {
		t.Fatal(err)
	}
}

// installedStates returns a new namespace, its dump before Install and its
// dump with the rules installed; Remove has run since.
func installedStates(t *testing.T, cfg Config) (h *netns.Handle, pre, clean string) {
	t.Helper()
	_, h = newNetns(t)
	pre = dump(t, h)
	mustInstall(t, h, cfg)
	clean = dump(t, h)
	mustRemove(t, h, cfg)
	return h, pre, clean
}

func mustRemove(t *testing.T, h *netns.Handle, cfg Config) {
	t.Helper()
	if err := Remove(t.Context(), h, cfg); err != nil {
		t.Fatal(err)
	}
}

func wantInstalled(t *testing.T, h *netns.Handle, cfg Config, want bool) {
	t.Helper()
	got, err := Installed(t.Context(), h, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Fatalf("Installed = %v, want %v\n%s", got, want, dump(t, h))
	}
}

func sameDump(t *testing.T, what, got, want string) {
	t.Helper()
	if got != want {
		t.Fatalf("%s: dump differs\n--- got\n%s--- want\n%s", what, got, want)
	}
}

// applyRaw feeds a restore script to the backend cfg selects, for one family.
func applyRaw(t *testing.T, h *netns.Handle, cfg Config, fam family, script string) {
	t.Helper()
	if script == "" {
		return
	}
	tl, err := findTools(t.Context(), cfg, fam, cfg.Backend)
	if err != nil {
		t.Fatal(err)
	}
	if err := tl.apply(t.Context(), h, script); err != nil {
		t.Fatalf("apply crash state: %v\n%s", err, script)
	}
}

// sectionOf returns the lines of one "### tool" section of a dump.
func sectionOf(d, tool string) []string {
	var out []string
	in := false
	for _, l := range strings.Split(d, "\n") {
		if strings.HasPrefix(l, "### ") {
			in = l == "### "+tool
			continue
		}
		if in && l != "" {
			out = append(out, l)
		}
	}
	return out
}

func countLines(lines []string, want string) int {
	n := 0
	for _, l := range lines {
		if l == want {
			n++
		}
	}
	return n
}

// savedTool is the save binary name under which Dump lists the rules of a
// backend and family.
func savedTool(t *testing.T, b Backend, fam family) string {
	t.Helper()
	tl, err := findTools(t.Context(), testConfig(b), fam, b)
	if err != nil {
		t.Fatal(err)
	}
	if tl.variant == variantLegacy {
		return binaryName(fam, BackendLegacy, "save")
	}
	return binaryName(fam, BackendNFT, "save")
}

// filterLines drops the lines of script for which drop is true.
func filterLines(script string, drop func(string) bool) string {
	var b strings.Builder
	for _, l := range strings.SplitAfter(script, "\n") {
		if l != "" && !drop(l) {
			b.WriteString(l)
		}
	}
	return b.String()
}

// crashStates are states a killed or buggy agent may leave behind. Each
// returns the restore script for one family, applied to a namespace without
// Palisade rules.
var crashStates = []struct {
	name   string
	script func(rules string, fam family) string
}{
	{"chains without jumps", func(r string, _ family) string {
		return filterLines(r, func(l string) bool { return strings.HasPrefix(l, "-I ") })
	}},
	{"empty chains only", func(r string, _ family) string {
		return filterLines(r, func(l string) bool { return strings.HasPrefix(l, "-") })
	}},
	{"jumps into empty chains", func(r string, _ family) string {
		return filterLines(r, func(l string) bool { return strings.HasPrefix(l, "-A ") })
	}},
	{"duplicated jumps", func(r string, _ family) string {
		return strings.Replace(r, "COMMIT\n",
			"-A PREROUTING -j PALISADE_PREROUTING\n-A PREROUTING -j PALISADE_PREROUTING\n-I OUTPUT 1 -j PALISADE_OUTPUT\nCOMMIT\n", 1)
	}},
	{"wrong chain content", func(r string, _ family) string {
		r = strings.Replace(r, "--to-ports 15001", "--to-ports 15999", 1)
		return filterLines(r, func(l string) bool { return strings.Contains(l, "--dport 15008") })
	}},
	{"older version", func(r string, _ family) string {
		r = strings.Replace(r, "-I OUTPUT 1 -j PALISADE_OUTPUT\n", "-A OUTPUT -p tcp -j PALISADE_OUTPUT\n", 1)
		r = strings.Replace(r, ":PALISADE_OUTPUT - [0:0]\n", ":PALISADE_OUTPUT - [0:0]\n:PALISADE_OLD - [0:0]\n", 1)
		r = strings.Replace(r, "COMMIT\n", "-A PALISADE_OLD -j RETURN\n-A POSTROUTING -g PALISADE_OLD\n-A PALISADE_OUTPUT -j PALISADE_OLD\nCOMMIT\n", 1)
		return r + "*mangle\n:PALISADE_MARK - [0:0]\n-A PALISADE_MARK -j MARK --set-xmark 0x111/0xfff\n" +
			"-A PREROUTING -m comment --comment \"palisade: old\" -j PALISADE_MARK\nCOMMIT\n"
	}},
	{"killed between families (v4 only)", func(r string, fam family) string {
		if fam.name == familyV6.name {
			return ""
		}
		return r
	}},
	{"killed between families (v6 only)", func(r string, fam family) string {
		if fam.name == familyV4.name {
			return ""
		}
		return r
	}},
}

func TestInstallIdempotentAndRemoveRestores(t *testing.T) {
	requireRoot(t)
	for _, b := range testBackends(t) {
		t.Run(backendName(b), func(t *testing.T) {
			cfg := testConfig(b)
			_, h := newNetns(t)

			// Listing must not create anything (legacy creates tables it is
			// asked about by name).
			pre := dump(t, h)
			wantInstalled(t, h, cfg, false)
			mustRemove(t, h, cfg)
			sameDump(t, "remove on a fresh netns", dump(t, h), pre)
			if p, err := lookPath("", "iptables-legacy-save"); err == nil {
				out, err := run(t.Context(), h, "", p)
				if err != nil {
					t.Fatal(err)
				}
				if strings.TrimSpace(out) != "" {
					t.Fatalf("Installed/Remove/Dump created legacy tables:\n%s", out)
				}
			}

			mustInstall(t, h, cfg)
			clean := dump(t, h)
			for _, fam := range families(cfg) {
				sec := sectionOf(clean, savedTool(t, b, fam))
				for _, l := range []string{
					":PALISADE_PREROUTING -", ":PALISADE_OUTPUT -",
					"-A PREROUTING -j PALISADE_PREROUTING", "-A OUTPUT -j PALISADE_OUTPUT",
				} {
					if n := countLines(sec, l); n != 1 {
						t.Errorf("%s: %q appears %d times, want once\n%s", savedTool(t, b, fam), l, n, clean)
					}
				}
			}
			wantInstalled(t, h, cfg, true)

			mustInstall(t, h, cfg)
			sameDump(t, "second install", dump(t, h), clean)
			wantInstalled(t, h, cfg, true)

			for _, cs := range crashStates {
				t.Run(cs.name, func(t *testing.T) {
					mustRemove(t, h, cfg)
					sameDump(t, "remove", dump(t, h), pre)
					v4, v6 := Rules(cfg)
					applyRaw(t, h, cfg, familyV4, cs.script(v4, familyV4))
					applyRaw(t, h, cfg, familyV6, cs.script(v6, familyV6))
					wantInstalled(t, h, cfg, false)
					mustInstall(t, h, cfg)
					sameDump(t, "install after crash state", dump(t, h), clean)
					wantInstalled(t, h, cfg, true)
				})
			}

			mustRemove(t, h, cfg)
			sameDump(t, "remove", dump(t, h), pre)
			wantInstalled(t, h, cfg, false)
			mustRemove(t, h, cfg)
			sameDump(t, "second remove", dump(t, h), pre)
		})
	}
}

// TestInstallNew: on a namespace without Palisade's rules InstallNew leaves
// exactly what Install leaves; where rules of ours are (installed, or any
// crash state) its one-restore attempt changes nothing and it converges
// like Install, never duplicating a jump.
func TestInstallNew(t *testing.T) {
	requireRoot(t)
	for _, b := range testBackends(t) {
		t.Run(backendName(b), func(t *testing.T) {
			cfg := testConfig(b)
			h, pre, clean := installedStates(t, cfg)
			sameDump(t, "remove", dump(t, h), pre)

			mustInstallNew(t, h, cfg)
			sameDump(t, "InstallNew on a clean namespace", dump(t, h), clean)
			wantInstalled(t, h, cfg, true)
			mustInstallNew(t, h, cfg)
			sameDump(t, "InstallNew again", dump(t, h), clean)

			for _, cs := range crashStates {
				t.Run(cs.name, func(t *testing.T) {
					mustRemove(t, h, cfg)
					v4, v6 := Rules(cfg)
					applyRaw(t, h, cfg, familyV4, cs.script(v4, familyV4))
					applyRaw(t, h, cfg, familyV6, cs.script(v6, familyV6))
					mustInstallNew(t, h, cfg)
					sameDump(t, "InstallNew after crash state", dump(t, h), clean)
				})
			}
			mustRemove(t, h, cfg)
			sameDump(t, "remove", dump(t, h), pre)
		})
	}
	if err := InstallNew(t.Context(), nil, DefaultConfig()); !errors.Is(err, errNilHandle) {
		t.Errorf("InstallNew(nil handle) = %v", err)
	}

	// What it spares: through wrappers that log each tool run, InstallNew
	// on a clean namespace runs one restore per family and no save; on an
	// installed one it falls back to reading the rules.
	t.Run("runs", func(t *testing.T) {
		dir := t.TempDir()
		log := filepath.Join(dir, "runs.log")
		var wrapped int
		for _, v := range []string{"nft", "legacy"} {
			for _, fam := range []string{"iptables", "ip6tables"} {
				for _, op := range []string{"save", "restore"} {
					name := fam + "-" + v + "-" + op
					real, err := lookPath("", name)
					if err != nil {
						continue
					}
					script := fmt.Sprintf("#!/bin/sh\ncase \"$1\" in --version|--help|-h) ;; *) echo %s >> %s ;; esac\nexec %s \"$@\"\n", name, log, real)
					if err := os.WriteFile(filepath.Join(dir, name), []byte(script), 0o755); err != nil {
						t.Fatal(err)
					}
					wrapped++
				}
			}
		}
		cfg := testConfig(BackendNFT)
		cfg.BinDir = dir
		if _, err := resolve(t.Context(), cfg); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("no iptables-nft tools to wrap (%d wrapped): %v", wrapped, err)
			}
			t.Skipf("no iptables-nft tools to wrap: %v", err)
		}
		runs := func() []string {
			data, _ := os.ReadFile(log)
			os.Remove(log)
			return strings.Fields(string(data))
		}
		_, h := newNetns(t)
		mustInstallNew(t, h, cfg)
		want := []string{"iptables-nft-restore"}
		if cfg.IPv6 {
			want = append(want, "ip6tables-nft-restore")
		}
		if got := runs(); !slices.Equal(got, want) {
			t.Errorf("InstallNew on a clean namespace ran %v, want %v", got, want)
		}
		wantInstalled(t, h, cfg, true)
		runs()
		mustInstallNew(t, h, cfg)
		if got := runs(); !slices.Contains(got, "iptables-nft-save") || countLines(got, "iptables-nft-restore") != 1 {
			t.Errorf("InstallNew on an installed namespace ran %v, want a failed restore, then a save and nothing to apply", got)
		}
	})
}

// TestKilledMidway cancels Install and Remove at many points (the restore
// process is SIGKILLed when the context ends) and checks that the next
// Install converges to the clean state and Remove to the original one.
func TestKilledMidway(t *testing.T) {
	requireRoot(t)
	for _, b := range testBackends(t) {
		t.Run(backendName(b), func(t *testing.T) {
			cfg := testConfig(b)
			h, pre, clean := installedStates(t, cfg)

			killed := 0
			for i := range 30 {
				ctx, cancel := context.WithTimeout(t.Context(), time.Duration(i)*time.Millisecond)
				var err error
				if i%3 == 2 {
					err = Remove(ctx, h, cfg)
				} else {
					err = Install(ctx, h, cfg)
				}
				cancel()
				if err != nil {
					killed++
				}
				mustInstall(t, h, cfg)
				sameDump(t, fmt.Sprintf("install after kill at %dms", i), dump(t, h), clean)
				if i%2 == 0 {
					mustRemove(t, h, cfg)
					sameDump(t, fmt.Sprintf("remove after kill at %dms", i), dump(t, h), pre)
				}
			}
			t.Logf("%d of 30 calls were interrupted", killed)
			if killed == 0 {
				t.Error("no call was interrupted; the test did not exercise anything")
			}
			mustRemove(t, h, cfg)
			sameDump(t, "final remove", dump(t, h), pre)
		})
	}
}

// TestHelperAgent is not a test: TestSIGKILLedAgent runs the test binary
// with PALISADE_REDIRECT_HELPER=<netns path>,<backend> to get an "agent"
// that installs and removes rules in a loop until it is killed.
func TestHelperAgent(t *testing.T) {
	spec := os.Getenv("PALISADE_REDIRECT_HELPER")
	if spec == "" {
		t.Skip("helper process for TestSIGKILLedAgent")
	}
	path, backend, _ := strings.Cut(spec, ",")
	h, err := netns.Open(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	cfg := testConfig(Backend(backend))
	ctx := context.Background()
	fmt.Println("ready")
	for {
		if err := Install(ctx, h, cfg); err != nil {
			fmt.Fprintln(os.Stderr, err)
		}
		if err := Remove(ctx, h, cfg); err != nil {
			fmt.Fprintln(os.Stderr, err)
		}
	}
}

// TestSIGKILLedAgent kills a process group running Install/Remove in a loop
// (agent and iptables children alike, as a container runtime would) at
// varying moments, then checks that Install converges to the clean state
// and Remove to the original one.
func TestSIGKILLedAgent(t *testing.T) {
	requireRoot(t)
	if os.Getenv("PALISADE_REDIRECT_HELPER") != "" {
		t.Skip("inside the helper")
	}
	for _, b := range testBackends(t) {
		t.Run(backendName(b), func(t *testing.T) {
			cfg := testConfig(b)
			name, h := newNetns(t)
			pre := dump(t, h)
			mustInstall(t, h, cfg)
			clean := dump(t, h)
			mustRemove(t, h, cfg)

			seen := map[string]int{}
			defer func() { t.Logf("states found after SIGKILL: %v", seen) }()
			for i := range 12 {
				cmd := exec.Command(os.Args[0], "-test.run=^TestHelperAgent$", "-test.count=1")
				cmd.Env = append(os.Environ(), "PALISADE_REDIRECT_HELPER=/run/netns/"+name+","+string(b))
				cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
				out, err := cmd.StdoutPipe()
				if err != nil {
					t.Fatal(err)
				}
				if err := cmd.Start(); err != nil {
					t.Fatal(err)
				}
				if _, err := bufio.NewReader(out).ReadString('\n'); err != nil {
					t.Fatalf("helper did not start: %v", err)
				}
				time.Sleep(time.Duration(3+7*i) * time.Millisecond)
				if err := syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); err != nil {
					t.Fatal(err)
				}
				_ = cmd.Wait()

				switch dump(t, h) {
				case clean:
					seen["installed"]++
				case pre:
					seen["removed"]++
				default:
					seen["in between"]++
				}
				mustInstall(t, h, cfg)
				sameDump(t, fmt.Sprintf("install after SIGKILL #%d", i), dump(t, h), clean)
				wantInstalled(t, h, cfg, true)
				mustRemove(t, h, cfg)
				sameDump(t, fmt.Sprintf("remove after SIGKILL #%d", i), dump(t, h), pre)
			}
		})
	}
}

// TestForeignRulesUntouched installs around rules of other components: ours
// must go first, theirs must stay, and Remove must restore them exactly.
func TestForeignRulesUntouched(t *testing.T) {
	requireRoot(t)
	for _, b := range testBackends(t) {
		t.Run(backendName(b), func(t *testing.T) {
			cfg := testConfig(b)
			_, h := newNetns(t)
			foreign := []struct {
				fam    family
				script string
			}{
				{familyV4, "*nat\n:CNI_FOO - [0:0]\n-A CNI_FOO -p udp -j RETURN\n-A PREROUTING -p udp -j CNI_FOO\n" +
					"-A OUTPUT -d 10.96.0.10/32 -p tcp -m tcp --dport 53 -j DNAT --to-destination 10.123.0.2:53\nCOMMIT\n" +
					"*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p icmp -j ACCEPT\nCOMMIT\n"},
				{familyV6, "*nat\n-A OUTPUT -d fd00:96::10/128 -p udp -j RETURN\nCOMMIT\n"},
			}
			for _, f := range foreign {
				applyRaw(t, h, cfg, f.fam, f.script)
			}
			pre := dump(t, h)

			mustInstall(t, h, cfg)
			d := dump(t, h)
			sec := sectionOf(d, savedTool(t, b, familyV4))
			idx := func(line string) int {
				for i, l := range sec {
					if l == line {
						return i
					}
				}
				t.Fatalf("%q missing\n%s", line, d)
				return -1
			}
			if idx("-A PREROUTING -j PALISADE_PREROUTING") > idx("-A PREROUTING -p udp -j CNI_FOO") {
				t.Errorf("our PREROUTING jump is not first\n%s", d)
			}
			if idx("-A OUTPUT -j PALISADE_OUTPUT") > idx("-A OUTPUT -d 10.96.0.10/32 -p tcp -m tcp --dport 53 -j DNAT --to-destination 10.123.0.2:53") {
				t.Errorf("our OUTPUT jump is not first\n%s", d)
			}
			idx("-A INPUT -p icmp -j ACCEPT")
			wantInstalled(t, h, cfg, true)

			// Something inserted before our jump: no longer installed, and
			// Install moves ours back to the front without dropping theirs.
			applyRaw(t, h, cfg, familyV4, "*nat\n-I PREROUTING 1 -p tcp -m tcp --dport 9 -j RETURN\nCOMMIT\n")
			wantInstalled(t, h, cfg, false)
			mustInstall(t, h, cfg)
			wantInstalled(t, h, cfg, true)
			sec = sectionOf(dump(t, h), savedTool(t, b, familyV4))
			if idx("-A PREROUTING -j PALISADE_PREROUTING") > idx("-A PREROUTING -p tcp -m tcp --dport 9 -j RETURN") {
				t.Errorf("our PREROUTING jump was not moved first")
			}
			applyRaw(t, h, cfg, familyV4, "*nat\n-D PREROUTING -p tcp -m tcp --dport 9 -j RETURN\nCOMMIT\n")

			mustRemove(t, h, cfg)
			sameDump(t, "remove with foreign rules", dump(t, h), pre)
		})
	}
}

// TestSwitchBackend installs through one backend and then through the other:
// the first one's rules must be gone, or they would capture traffic too.
func TestSwitchBackend(t *testing.T) {
	requireRoot(t)
	bs := testBackends(t)
	if !containsBackend(bs, BackendNFT) || !containsBackend(bs, BackendLegacy) {
		t.Skip("needs both iptables backends")
	}
	_, h := newNetns(t)
	pre := dump(t, h)
	legacy, nft := testConfig(BackendLegacy), testConfig(BackendNFT)
	// A new namespace has no legacy table: nft installs skip the
	// legacy-save there (legacyTablesExist), and must not once there are.
	for _, fam := range []family{familyV4, familyV6} {
		if legacyTablesExist(h, fam) {
			t.Fatalf("%s: legacy tables reported in a new namespace", fam.name)
		}
	}

	mustInstall(t, h, legacy)
	for _, fam := range []family{familyV4, familyV6} {
		if !legacyTablesExist(h, fam) {
			t.Fatalf("%s: no legacy tables reported after a legacy install", fam.name)
		}
	}
	wantInstalled(t, h, legacy, true)
	wantInstalled(t, h, nft, false)
	mustInstall(t, h, nft)
	wantInstalled(t, h, nft, true)
	wantInstalled(t, h, legacy, false)
	d := dump(t, h)
	for _, tool := range []string{"iptables-legacy-save", "ip6tables-legacy-save"} {
		for _, l := range sectionOf(d, tool) {
			if strings.Contains(l, ChainPrefix) {
				t.Fatalf("%s still holds %q after switching to nft\n%s", tool, l, d)
			}
		}
	}

	// Remove through either backend cleans both.
	mustInstall(t, h, legacy)
	applyRaw(t, h, nft, familyV4, strings.Replace(mustRules(nft), "-I OUTPUT 1", "-A OUTPUT", 1))
	mustRemove(t, h, legacy)
	sameDump(t, "remove both backends", dump(t, h), pre)
}

func mustRules(cfg Config) string {
	v4, _ := Rules(cfg)
	return v4
}

func containsBackend(bs []Backend, b Backend) bool {
	for _, x := range bs {
		if x == b {
			return true
		}
	}
	return false
}

func TestNilHandleRefused(t *testing.T) {
	cfg := DefaultConfig()
	if err := Install(t.Context(), nil, cfg); err == nil {
		t.Error("Install(nil) succeeded")
	}
	if err := Remove(t.Context(), nil, cfg); err == nil {
		t.Error("Remove(nil) succeeded")
	}
	if _, err := Installed(t.Context(), nil, cfg); err == nil {
		t.Error("Installed(nil) succeeded")
	}
	if _, err := Dump(t.Context(), nil); err == nil {
		t.Error("Dump(nil) succeeded")
	}
}

func TestInvalidConfigRefused(t *testing.T) {
	requireRoot(t)
	_, h := newNetns(t)
	cfg := DefaultConfig()
	cfg.Mark = 0x1539
	if err := Install(t.Context(), h, cfg); err == nil || !strings.Contains(err.Error(), "Mark") {
		t.Fatalf("Install with a bad config: %v", err)
	}
}

func TestRestoreErrorCarriesStderr(t *testing.T) {
	requireRoot(t)
	_, h := newNetns(t)
	tl, err := findTools(t.Context(), DefaultConfig(), familyV4, BackendDefault)
	if err != nil {
		t.Fatal(err)
	}
	err = tl.apply(t.Context(), h, "*nat\n-A NO_SUCH_CHAIN -j RETURN\nCOMMIT\n")
	if err == nil {
		t.Fatal("bad script accepted")
	}
	// iptables names the failing line or chain on stderr.
	if !strings.Contains(err.Error(), "iptables-restore --noflush") ||
		!(strings.Contains(err.Error(), "NO_SUCH_CHAIN") || strings.Contains(err.Error(), "line 2")) {
		t.Fatalf("error lacks command or stderr: %v", err)
	}
}

// --- behaviour ---

// topo is a pod netns and a peer netns joined by a veth pair.
type topo struct {
	pod, peer         *netns.Handle
	podName, peerName string
	podIP, peerIP     map[string]netip.Addr // by "4" / "6"
	probe             map[string]netip.Addr
}

func newTopo(t *testing.T) *topo {
	t.Helper()
	podName, pod := newNetns(t)
	peerName, peer := newNetns(t)
	sfx := randHex(t, 3)
	a, b := "pal"+sfx+"a", "pal"+sfx+"b"
	ipCmd(t, "-n", podName, "link", "add", a, "type", "veth", "peer", "name", b, "netns", peerName)
	tp := &topo{
		pod: pod, peer: peer, podName: podName, peerName: peerName,
		podIP:  map[string]netip.Addr{"4": netip.MustParseAddr("10.123.0.1"), "6": netip.MustParseAddr("fd00:123::1")},
		peerIP: map[string]netip.Addr{"4": netip.MustParseAddr("10.123.0.2"), "6": netip.MustParseAddr("fd00:123::2")},
		probe:  map[string]netip.Addr{"4": defaultProbeSourceV4, "6": defaultProbeSourceV6},
	}
	ipCmd(t, "-n", podName, "addr", "add", "10.123.0.1/24", "dev", a)
	ipCmd(t, "-n", podName, "addr", "add", "fd00:123::1/64", "dev", a, "nodad")
	ipCmd(t, "-n", peerName, "addr", "add", "10.123.0.2/24", "dev", b)
	ipCmd(t, "-n", peerName, "addr", "add", "fd00:123::2/64", "dev", b, "nodad")
	ipCmd(t, "-n", peerName, "addr", "add", tp.probe["4"].String()+"/32", "dev", b)
	ipCmd(t, "-n", peerName, "addr", "add", tp.probe["6"].String()+"/128", "dev", b, "nodad")
	ipCmd(t, "-n", podName, "link", "set", a, "up")
	ipCmd(t, "-n", peerName, "link", "set", b, "up")
	ipCmd(t, "-n", podName, "route", "add", "default", "via", "10.123.0.2")
	ipCmd(t, "-n", podName, "-6", "route", "add", "default", "via", "fd00:123::2")
	return tp
}

// serve answers every connection on ln with "<name> <original dst>\n".
func serve(t *testing.T, ln net.Listener, name string) {
	t.Helper()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			orig := "-"
			if d, err := OriginalDst(c.(*net.TCPConn)); err == nil {
				orig = d.String()
			} else {
				orig = "error:" + strings.ReplaceAll(err.Error(), " ", "_")
			}
			fmt.Fprintf(c, "%s %s\n", name, orig)
			c.Close()
		}
	}()
	t.Cleanup(func() { ln.Close(); wg.Wait() })
}

func listen(t *testing.T, h *netns.Handle, network, addr, name string) {
	t.Helper()
	var ln net.Listener
	err := h.Do(func() error {
		var err error
		ln, err = (&net.ListenConfig{}).Listen(t.Context(), network, addr)
		return err
	})
	if err != nil {
		t.Fatalf("listen %s %s: %v", network, addr, err)
	}
	serve(t, ln, name)
}

// hit connects and returns which listener answered and the original
// destination it saw.
func hit(t *testing.T, d *netns.Dialer, addr netip.AddrPort) (string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", addr.String())
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("read from %s: %v", addr, err)
	}
	name, orig, _ := strings.Cut(strings.TrimSpace(line), " ")
	return name, orig
}

func TestRedirectBehaviour(t *testing.T) {
	requireRoot(t)
	for _, b := range testBackends(t) {
		t.Run(backendName(b), func(t *testing.T) {
			cfg := testConfig(b)
			tp := newTopo(t)
			// The node proxy's listeners inside the pod, and the real apps.
			listen(t, tp.pod, "tcp", ":15001", "outbound") // dual stack: v4 arrives v4-mapped
			listen(t, tp.pod, "tcp4", "0.0.0.0:15006", "inbound")
			listen(t, tp.pod, "tcp6", "[::]:15006", "inbound")
			listen(t, tp.pod, "tcp", ":15008", "hbone")
			listen(t, tp.pod, "tcp", ":8080", "pod-app")
			listen(t, tp.peer, "tcp", ":8080", "peer-app")
			listen(t, tp.peer, "tcp", ":15008", "peer-hbone")

			fromPod := &netns.Dialer{Netns: tp.pod}
			fromPodMarked := &netns.Dialer{Netns: tp.pod, Options: netns.SocketOptions{Mark: 0x539}}
			fromPodMarkedHigh := &netns.Dialer{Netns: tp.pod, Options: netns.SocketOptions{Mark: 0x7539}}
			fromPodOtherMark := &netns.Dialer{Netns: tp.pod, Options: netns.SocketOptions{Mark: 0x53a}}
			fromPeer := &netns.Dialer{Netns: tp.peer}

			mustInstall(t, tp.pod, cfg)

			for _, v := range []string{"4", "6"} {
				t.Run("ipv"+v, func(t *testing.T) {
					pod, peer := tp.podIP[v], tp.peerIP[v]
					loop := netip.MustParseAddr("127.0.0.1")
					if v == "6" {
						loop = netip.IPv6Loopback()
					}
					fromProbe := &netns.Dialer{Netns: tp.peer, LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(tp.probe[v], 0))}
					ap := netip.AddrPortFrom
					tests := []struct {
						name     string
						d        *netns.Dialer
						to       netip.AddrPort
						wantName string
						wantOrig netip.AddrPort // checked when valid
					}{
						{"outbound is captured", fromPod, ap(peer, 8080), "outbound", ap(peer, 8080)},
						{"outbound to any port is captured", fromPod, ap(peer, 15008), "outbound", ap(peer, 15008)},
						{"outbound with proxy mark is not captured", fromPodMarked, ap(peer, 8080), "peer-app", netip.AddrPort{}},
						{"mark is matched under the mask", fromPodMarkedHigh, ap(peer, 8080), "peer-app", netip.AddrPort{}},
						{"other mark is captured", fromPodOtherMark, ap(peer, 8080), "outbound", ap(peer, 8080)},
						{"loopback is not captured", fromPod, ap(loop, 8080), "pod-app", ap(loop, 8080)},
						{"inbound is captured", fromPeer, ap(pod, 8080), "inbound", ap(pod, 8080)},
						{"inbound to the outbound port is captured", fromPeer, ap(pod, 15001), "inbound", ap(pod, 15001)},
						{"inbound HBONE is not captured", fromPeer, ap(pod, 15008), "hbone", ap(pod, 15008)},
						{"kubelet probe is not captured", fromProbe, ap(pod, 8080), "pod-app", ap(pod, 8080)},
					}
					if v == "4" {
						tests = append(tests, struct {
							name     string
							d        *netns.Dialer
							to       netip.AddrPort
							wantName string
							wantOrig netip.AddrPort
						}{"all of 127/8 is loopback", fromPod, ap(netip.MustParseAddr("127.0.0.2"), 8080), "pod-app", netip.AddrPort{}})
					}
					for _, tc := range tests {
						t.Run(tc.name, func(t *testing.T) {
							name, orig := hit(t, tc.d, tc.to)
							if name != tc.wantName {
								t.Fatalf("connection to %s reached %s (orig %s), want %s", tc.to, name, orig, tc.wantName)
							}
							if tc.wantOrig.IsValid() && orig != tc.wantOrig.String() {
								t.Fatalf("OriginalDst = %s, want %s", orig, tc.wantOrig)
							}
						})
					}

					t.Run("udp is not captured", func(t *testing.T) {
						checkUDP(t, tp, pod, peer)
					})
				})
			}

			mustRemove(t, tp.pod, cfg)
			for _, v := range []string{"4", "6"} {
				pod, peer := tp.podIP[v], tp.peerIP[v]
				for _, tc := range []struct {
					d        *netns.Dialer
					to       netip.AddrPort
					wantName string
				}{
					{fromPod, netip.AddrPortFrom(peer, 8080), "peer-app"},
					{fromPod, netip.AddrPortFrom(peer, 15008), "peer-hbone"},
					{fromPeer, netip.AddrPortFrom(pod, 8080), "pod-app"},
					{fromPeer, netip.AddrPortFrom(pod, 15001), "outbound"},
				} {
					if name, _ := hit(t, tc.d, tc.to); name != tc.wantName {
						t.Errorf("after Remove, connection to %s reached %s, want %s", tc.to, name, tc.wantName)
					}
				}
			}
		})
	}
}

// checkUDP sends a datagram from the pod to the peer and expects it to
// arrive there, from the pod's address.
func checkUDP(t *testing.T, tp *topo, pod, peer netip.Addr) {
	t.Helper()
	var pc net.PacketConn
	if err := tp.peer.Do(func() error {
		var err error
		pc, err = net.ListenPacket("udp", netip.AddrPortFrom(peer, 0).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	dst := pc.LocalAddr().(*net.UDPAddr).AddrPort()
	var c net.Conn
	if err := tp.pod.Do(func() error {
		var err error
		c, err = net.Dial("udp", dst.String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	pc.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 16)
	n, from, err := pc.ReadFrom(buf)
	if err != nil {
		t.Fatalf("udp datagram did not reach the peer: %v", err)
	}
	if string(buf[:n]) != "ping" || from.(*net.UDPAddr).AddrPort().Addr().Unmap() != pod {
		t.Fatalf("got %q from %s, want ping from %s", buf[:n], from, pod)
	}
}

// TestOriginalDstErrors covers the paths that have no conntrack entry.
func TestOriginalDstErrors(t *testing.T) {
	requireRoot(t)
	if _, err := OriginalDst(nil); err == nil {
		t.Error("OriginalDst(nil) succeeded")
	}
	// A fresh namespace without NAT rules has no conntrack hooks, so the
	// kernel finds no entry for a loopback connection.
	_, h := newNetns(t)
	for _, network := range []string{"tcp4", "tcp6"} {
		t.Run(network, func(t *testing.T) {
			addr := "127.0.0.1:0"
			if network == "tcp6" {
				addr = "[::1]:0"
			}
			var ln net.Listener
			if err := h.Do(func() error {
				var err error
				ln, err = net.Listen(network, addr)
				return err
			}); err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			errc := make(chan error, 1)
			go func() {
				c, err := ln.Accept()
				if err != nil {
					errc <- err
					return
				}
				defer c.Close()
				_, err = OriginalDst(c.(*net.TCPConn))
				errc <- err
			}()
			c, err := (&netns.Dialer{Netns: h}).DialContext(t.Context(), network, ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			err = <-errc
			if err == nil {
				t.Skip("conntrack is active in a fresh namespace on this kernel")
			}
			if !strings.Contains(err.Error(), "ORIGINAL_DST") || errors.Unwrap(err) == nil {
				t.Fatalf("error is not descriptive or not wrapped: %v", err)
			}
		})
	}
}
