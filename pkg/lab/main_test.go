package lab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/palisade-net/palisade/pkg/lab/apps"
)

// The test binary doubles as the programs the lab starts:
//   - "$(LAB_BIN) forward|kubelet-serve" (ForwardCommand,
//     KubeletCommand): the API server forwarder and the nodes' kubelet
//     stand-ins;
//   - "$(LAB_BIN) serve-http|serve-echo": the pod workloads;
//   - invoked as palisade-agent or palisade-nodeproxy (through symlinks in
//     a bin dir): fakes that are ready at once, and a fake CNI plugin. They
//     append what they saw to $LAB_FAKE_RECORD.
func TestMain(m *testing.M) {
	switch filepath.Base(os.Args[0]) {
	case AgentBinary:
		os.Exit(fakeAgent(os.Args[1:]))
	case NodeProxyBinary:
		os.Exit(fakeNodeProxy(os.Args[1:]))
	}
	if len(os.Args) > 1 && os.Args[1] == ForwardCommand {
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
		defer stop()
		if err := RunForward(ctx, os.Args[2:], slog.New(slog.NewTextHandler(os.Stderr, nil))); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	if len(os.Args) > 1 && os.Args[1] == KubeletCommand {
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
		defer stop()
		if err := RunKubelet(ctx, os.Args[2:], slog.New(slog.NewTextHandler(os.Stderr, nil))); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	if len(os.Args) > 1 && (os.Args[1] == "serve-http" || os.Args[1] == "serve-echo") {
		fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
		def := ":8080"
		if os.Args[1] == "serve-echo" {
			def = ":9000"
		}
		addr := fs.String("addr", def, "")
		_ = fs.Parse(os.Args[2:])
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
		defer stop()
		log := slog.New(slog.NewTextHandler(os.Stderr, nil))
		var err error
		if os.Args[1] == "serve-http" {
			err = apps.ServeHTTP(ctx, *addr, log)
		} else {
			err = apps.ServeEcho(ctx, *addr, log)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func record(line string) {
	path := os.Getenv("LAB_FAKE_RECORD")
	if path == "" {
		return
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return
	}
	defer f.Close()
	_, _ = f.WriteString(line + "\n")
}

func selfNetns() string {
	l, _ := os.Readlink("/proc/self/ns/net")
	return l
}

func serveUntilSignal(ln net.Listener, h http.Handler) int {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		ch := make(chan os.Signal, 1)
		signal.Notify(ch, syscall.SIGTERM, os.Interrupt)
		<-ch
		srv.Close()
	}()
	_ = srv.Serve(ln)
	return 0
}

func fakeAgent(args []string) int {
	if len(args) > 0 && args[0] == "cni" {
		return fakeCNI()
	}
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	node := fs.String("node", "", "")
	clusterDir := fs.String("cluster", "", "")
	kubeconfig := fs.String("kubeconfig", "", "")
	proxySock := fs.String("proxy-socket", "", "")
	cniSock := fs.String("cni-socket", "", "")
	entries := fs.String("spire-entries", "", "")
	serverSock := fs.String("spire-server-socket", "", "")
	nodeID := fs.String("spire-node-id", "", "")
	td := fs.String("trust-domain", "", "")
	ttl := fs.String("spire-svid-ttl", "", "")
	ebpf := fs.String("ebpf", "", "")
	bpffs := fs.String("bpffs", "", "")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	_, cerr := os.Stat(*clusterDir)
	// What the real agent would need: the lab's bpffs, visible in the
	// agent's own mount namespace; a directory in it stands for pins.
	var st syscall.Statfs_t
	bpffsMounted := *bpffs != "" && syscall.Statfs(*bpffs, &st) == nil && st.Type == 0xcafe4a11 /* BPF_FS_MAGIC */ && os.MkdirAll(filepath.Join(*bpffs, "links"), 0o700) == nil
	record(fmt.Sprintf("agent node=%s netns=%s cluster=%v proxy-socket=%s spire-entries=%s spire-server-socket=%s spire-node-id=%s trust-domain=%s spire-svid-ttl=%s kubeconfig=%s ebpf=%s bpffs=%s bpffs-mounted=%v",
		*node, selfNetns(), cerr == nil, *proxySock, *entries, *serverSock, *nodeID, *td, *ttl, *kubeconfig, *ebpf, *bpffs, bpffsMounted))
	if *kubeconfig != "" {
		// Reach the API server from the node netns, as the real agent does.
		go func() { record(fmt.Sprintf("agent-kube node=%s %s", *node, fakeKubeCheck(*kubeconfig))) }()
	}
	if os.Getenv("LAB_FAKE_AGENT") == "crash" {
		fmt.Fprintln(os.Stderr, "fake agent: crashing on purpose")
		return 3
	}
	_ = os.Remove(*cniSock)
	ln, err := net.Listen("unix", *cniSock)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if os.Getenv("LAB_FAKE_AGENT") == "never-ready" {
			http.Error(w, "not yet", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	fmt.Fprintln(os.Stderr, "fake agent listening")
	return serveUntilSignal(ln, mux)
}

func fakeNodeProxy(args []string) int {
	fs := flag.NewFlagSet("nodeproxy", flag.ContinueOnError)
	node := fs.String("node", "", "")
	_ = fs.String("cluster", "", "")
	kubeconfig := fs.String("kubeconfig", "", "")
	_ = fs.String("agent-socket", "", "")
	ca := fs.String("dev-ca-dir", "", "")
	_ = fs.String("flow-log", "", "")
	td := fs.String("trust-domain", "", "")
	identity := fs.String("identity", "", "")
	admin := fs.String("spire-admin-socket", "", "")
	workload := fs.String("spire-workload-socket", "", "")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	record(fmt.Sprintf("nodeproxy node=%s netns=%s ca=%s td=%s identity=%s spire-admin-socket=%s spire-workload-socket=%s kubeconfig=%s",
		*node, selfNetns(), *ca, *td, *identity, *admin, *workload, *kubeconfig))
	if *identity == IdentitySPIRE {
		// Fetch our own SVID, as the real node proxy's SPIRE agent
		// attests it.
		go func() {
			svid, err := fetchSVID(context.Background(), *workload)
			id := ""
			if err == nil {
				id = svid.ID.String()
			}
			record(fmt.Sprintf("nodeproxy-svid node=%s id=%s err=%v", *node, id, err))
		}()
	}
	ln, err := net.Listen("tcp", "127.0.0.1:15021")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz/ready", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	return serveUntilSignal(ln, mux)
}

// fakeCNI records the call: environment, config, and how many processes
// already run in the pod's netns (must be 0 at ADD).
func fakeCNI() int {
	conf, _ := io.ReadAll(os.Stdin)
	var c struct {
		CNIVersion  string `json:"cniVersion"`
		Name        string `json:"name"`
		Type        string `json:"type"`
		AgentSocket string `json:"agentSocket"`
		PrevResult  struct {
			Interfaces []struct{ Name, Sandbox string } `json:"interfaces"`
			IPs        []struct {
				Address, Gateway string
				Interface        int
			} `json:"ips"`
		} `json:"prevResult"`
	}
	if err := json.Unmarshal(conf, &c); err != nil {
		fmt.Println(`{"cniVersion":"1.0.0","code":6,"msg":"bad config"}`)
		return 1
	}
	args := map[string]string{}
	for _, kv := range strings.Split(os.Getenv("CNI_ARGS"), ";") {
		k, v, _ := strings.Cut(kv, "=")
		args[k] = v
	}
	if args["K8S_POD_NAME"] == "cni-fail" && os.Getenv("CNI_COMMAND") == "ADD" {
		fmt.Println(`{"cniVersion":"1.0.0","code":999,"msg":"fake plugin refuses cni-fail"}`)
		fmt.Fprintln(os.Stderr, "fake plugin: refused")
		return 1
	}
	var st syscall.Stat_t
	procs := -1
	if err := syscall.Stat(os.Getenv("CNI_NETNS"), &st); err == nil {
		procs = len(pidsInNetns(map[uint64]bool{st.Ino: true}, os.Getpid()))
	}
	ip := ""
	if len(c.PrevResult.IPs) > 0 {
		ip = c.PrevResult.IPs[0].Address + "/gw=" + c.PrevResult.IPs[0].Gateway
	}
	sandbox := ""
	if len(c.PrevResult.Interfaces) > 0 {
		sandbox = c.PrevResult.Interfaces[0].Name + "@" + c.PrevResult.Interfaces[0].Sandbox
	}
	record(fmt.Sprintf("cni %s pod=%s/%s uid=%s container=%s netns=%s ifname=%s path=%s type=%s version=%s sock=%s ip=%s sandbox=%s procs=%d where=%s",
		os.Getenv("CNI_COMMAND"), args["K8S_POD_NAMESPACE"], args["K8S_POD_NAME"], args["K8S_POD_UID"],
		os.Getenv("CNI_CONTAINERID"), os.Getenv("CNI_NETNS"), os.Getenv("CNI_IFNAME"), os.Getenv("CNI_PATH"),
		c.Type, c.CNIVersion, c.AgentSocket, ip, sandbox, procs, selfNetns()))
	fmt.Println(string(conf))
	return 0
}

// needRoot skips (or, in CI, fails) tests that build labs.
func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "" {
		t.Skip("needs root (network namespaces)")
	}
	t.Fatal("needs root (network namespaces); CI must run these tests as root")
}

// labName returns a name unique to this run that is not a prefix of any
// other ("lt" + 8 hex digits).
func labName(t *testing.T) string {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return "lt" + hex.EncodeToString(b[:])
}

// isTestLab reports whether a netns name belongs to a lab of some test
// ("lt" or "ct" and 8 hex digits, then "-").
func isTestLab(n string) bool {
	if len(n) < 11 || n[10] != '-' || (n[:2] != "lt" && n[:2] != "ct") {
		return false
	}
	_, err := hex.DecodeString(n[2:10])
	return err == nil
}

// hostView is what a lab may touch on the host, for before/after checks.
type hostView struct {
	netns, etc, links []string
}

func viewHost(t *testing.T) hostView {
	t.Helper()
	var v hostView
	v.netns, _ = listNetns()
	if entries, err := os.ReadDir(etcNetnsDir); err == nil {
		for _, e := range entries {
			v.etc = append(v.etc, e.Name())
		}
	}
	ifs, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range ifs {
		v.links = append(v.links, i.Name)
	}
	sort.Strings(v.links)
	return v
}

// checkNothingLeft compares the host with a view taken before the lab, and
// checks that no recorded process survives.
func checkNothingLeft(t *testing.T, name string, before hostView, stateDir string, pids []int) {
	t.Helper()
	after := viewHost(t)
	// Other tests (this package's and other packages', run concurrently)
	// create and delete namespaces of their own while this one runs. What
	// this lab must guarantee: none of its own is left (checked below), and
	// nothing that existed before it and is not a test's was removed.
	transient := func(n string) bool {
		return isTestLab(n) || strings.HasPrefix(n, "palisade-test-") || strings.HasPrefix(n, "e2e") || strings.HasPrefix(n, "bench-") ||
			strings.HasPrefix(n, "pal-dp-") // pkg/datapath's tests
	}
	missing := func(beforeList, afterList []string) []string {
		have := map[string]bool{}
		for _, n := range afterList {
			have[n] = true
		}
		var out []string
		for _, n := range beforeList {
			if !have[n] && !transient(n) && !strings.HasPrefix(n, name+"-") {
				out = append(out, n)
			}
		}
		return out
	}
	if m := missing(before.netns, after.netns); len(m) > 0 {
		t.Errorf("netns that existed before the lab are gone: %v", m)
	}
	if m := missing(before.etc, after.etc); len(m) > 0 {
		t.Errorf("/etc/netns entries that existed before the lab are gone: %v", m)
	}
	for _, n := range after.etc {
		if strings.HasPrefix(n, name+"-") {
			t.Errorf("/etc/netns/%s left", n)
		}
	}
	if fmt.Sprint(after.links) != fmt.Sprint(before.links) {
		t.Errorf("root links before %v, after %v", before.links, after.links)
	}
	if _, err := os.Stat(filepath.Join(stateDir, name)); !os.IsNotExist(err) {
		t.Errorf("state dir %s still there (%v)", filepath.Join(stateDir, name), err)
	}
	if m, err := mountsUnder(filepath.Join(stateDir, name)); err != nil || len(m) > 0 {
		t.Errorf("mounts left under the state dir: %v %v", m, err)
	}
	for _, pid := range pids {
		if state, _, err := procStat(pid); err == nil && state != 'Z' {
			t.Errorf("process %d survived (state %c)", pid, state)
		}
	}
	for _, n := range after.netns {
		if strings.HasPrefix(n, name+"-") {
			t.Errorf("netns %s left", n)
		}
	}
}

// testLogger sends the lab's log to t.Log.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// selfBin is the test binary, which serves as $(LAB_BIN).
func selfBin(t *testing.T) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return exe
}

// upForTest builds a lab and registers its teardown.
func upForTest(t *testing.T, cfg Config) *Lab {
	t.Helper()
	l, err := Up(context.Background(), cfg)
	if err != nil {
		t.Fatalf("up: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if err := l.Down(ctx); err != nil {
			t.Errorf("down: %v", err)
		}
	})
	return l
}
