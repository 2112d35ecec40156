package lab

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	delegatedv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/agent/delegatedidentity/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// testSPIREBinDir finds spire-server and spire-agent ("make spire" builds
// them): $PALISADE_TEST_BIN, else the repository's .cache/test-bin. Without
// them the test is skipped, except in CI, where it fails.
func testSPIREBinDir(t *testing.T) string {
	t.Helper()
	dirs := []string{os.Getenv("PALISADE_TEST_BIN"), filepath.Join("..", "..", ".cache", "test-bin")}
	for _, d := range dirs {
		if d == "" {
			continue
		}
		if dir, err := spireBinDir(d, ""); err == nil {
			return dir
		}
	}
	if os.Getenv("CI") == "" {
		t.Skip("spire-server and spire-agent not built (make spire)")
	}
	t.Fatal("spire-server and spire-agent not found in $PALISADE_TEST_BIN or .cache/test-bin; CI must run make spire")
	return ""
}

// spireEntry is an entry as "spire-server entry show -output json" prints it.
type spireEntry struct {
	ID       string `json:"id"`
	SPIFFEID struct {
		TrustDomain string `json:"trust_domain"`
		Path        string `json:"path"`
	} `json:"spiffe_id"`
	ParentID struct {
		TrustDomain string `json:"trust_domain"`
		Path        string `json:"path"`
	} `json:"parent_id"`
	Selectors []struct {
		Type  string `json:"type"`
		Value string `json:"value"`
	} `json:"selectors"`
}

func (e spireEntry) spiffeID() string {
	return "spiffe://" + e.SPIFFEID.TrustDomain + e.SPIFFEID.Path
}

func (e spireEntry) parentID() string {
	return "spiffe://" + e.ParentID.TrustDomain + e.ParentID.Path
}

func (e spireEntry) selectors() []string {
	var out []string
	for _, s := range e.Selectors {
		out = append(out, s.Type+":"+s.Value)
	}
	slices.Sort(out)
	return out
}

func spireEntries(t *testing.T, ctx context.Context, l *Lab) []spireEntry {
	t.Helper()
	out, err := l.SPIREServer(ctx, "entry", "show", "-output", "json")
	if err != nil {
		t.Fatal(err)
	}
	var resp struct {
		Entries []spireEntry `json:"entries"`
	}
	if err := json.Unmarshal(out, &resp); err != nil {
		t.Fatalf("entry show: %v\n%s", err, out)
	}
	return resp.Entries
}

func spireAgentCount(t *testing.T, ctx context.Context, l *Lab) int {
	t.Helper()
	out, err := l.SPIREServer(ctx, "agent", "list", "-output", "json")
	if err != nil {
		t.Fatal(err)
	}
	var resp struct {
		Agents []json.RawMessage `json:"agents"`
	}
	if err := json.Unmarshal(out, &resp); err != nil {
		t.Fatalf("agent list: %v\n%s", err, out)
	}
	return len(resp.Agents)
}

// fetchSVID fetches the caller's X509-SVID from a Workload API socket,
// retrying while the agent has none for it yet.
func fetchSVID(ctx context.Context, socket string) (*x509svid.SVID, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		fctx, fcancel := context.WithTimeout(ctx, 5*time.Second)
		svid, err := workloadapi.FetchX509SVID(fctx, workloadapi.WithAddr("unix://"+socket))
		fcancel()
		if err == nil {
			return svid, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("fetch X509-SVID from %s: %w", socket, err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// delegatedSVIDs subscribes on an admin socket for the workload with the
// given selectors and returns the SPIFFE IDs of the first response that
// has any (or of the first response, if first is set).
func delegatedSVIDs(ctx context.Context, admin string, first bool, selectors ...*types.Selector) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, err := grpc.NewClient("unix://"+admin, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	stream, err := delegatedv1.NewDelegatedIdentityClient(conn).SubscribeToX509SVIDs(ctx, &delegatedv1.SubscribeToX509SVIDsRequest{Selectors: selectors})
	if err != nil {
		return nil, err
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			return nil, err
		}
		var ids []string
		for _, s := range resp.X509Svids {
			ids = append(ids, "spiffe://"+s.X509Svid.Id.TrustDomain+s.X509Svid.Id.Path)
		}
		if first || len(ids) > 0 {
			return ids, nil
		}
	}
}

func procNetns(pid int) string {
	l, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid))
	return l
}

func procExe(pid int) string {
	l, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	return l
}

func TestSPIREConfig(t *testing.T) {
	bin := t.TempDir()
	for _, b := range []string{SPIREServerBinary, SPIREAgentBinary} {
		if err := os.WriteFile(filepath.Join(bin, b), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	empty := t.TempDir()
	base := Config{Name: "lab", TrustDomain: "example.org", BinDir: empty}

	for _, tc := range []struct {
		name string
		cfg  func(c *Config)
		want string
	}{
		{"unknown identity", func(c *Config) { c.Identity = "vault" }, `identity "vault"`},
		{"entries without spire", func(c *Config) { c.SPIREEntries = SPIREEntriesOff }, "need Identity"},
		{"ttl without spire", func(c *Config) { c.SPIRESVIDTTL = time.Minute }, "need Identity"},
		{"bad entries", func(c *Config) { c.Identity, c.SPIREEntries, c.SPIREBinDir = IdentitySPIRE, "sometimes", bin }, `entries "sometimes"`},
		{"negative ttl", func(c *Config) { c.Identity, c.SPIRESVIDTTL, c.SPIREBinDir = IdentitySPIRE, -time.Second, bin }, "negative"},
		{"bad trust domain", func(c *Config) { c.Identity, c.TrustDomain, c.SPIREBinDir = IdentitySPIRE, "Bad Domain", bin }, "trust domain"},
		{"no binaries there", func(c *Config) { c.Identity, c.SPIREBinDir = IdentitySPIRE, empty }, "make spire"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("PALISADE_TEST_BIN", "")
			t.Setenv("PATH", empty)
			cfg := base
			tc.cfg(&cfg)
			err := configureSPIRE(cfg, &state{Name: "lab"})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want %q", err, tc.want)
			}
		})
	}

	t.Run("dev", func(t *testing.T) {
		st := &state{Name: "lab", StateRoot: "/run/x", BinDir: empty, TrustDomain: "example.org"}
		if err := configureSPIRE(base, st); err != nil || st.Identity != IdentityDev || st.spire() {
			t.Fatalf("%v %+v", err, st)
		}
		n := &nodeState{Name: "n1", Netns: "lab-node-n1"}
		argv := strings.Join(st.nodeProxyArgv(n, "ip"), " ")
		if !strings.Contains(argv, "--dev-ca-dir /run/x/lab/ca --trust-domain example.org") || strings.Contains(argv, "spire") {
			t.Errorf("node proxy: %s", argv)
		}
		if argv := strings.Join(st.agentArgv(n, "ip"), " "); strings.Contains(argv, "spire") {
			t.Errorf("agent: %s", argv)
		}
	})

	t.Run("spire bin dir from PALISADE_TEST_BIN", func(t *testing.T) {
		t.Setenv("PALISADE_TEST_BIN", bin)
		t.Setenv("PATH", empty)
		st := &state{Name: "lab"}
		cfg := base
		cfg.Identity = IdentitySPIRE
		if err := configureSPIRE(cfg, st); err != nil || st.SPIRE.BinDir != bin || st.SPIRE.Entries != SPIREEntriesManage {
			t.Fatalf("%v %+v", err, st.SPIRE)
		}
		if want := filepath.Join(empty, NodeProxyBinary); st.SPIRE.NodeProxyPath != want {
			t.Errorf("node proxy path %s, want %s", st.SPIRE.NodeProxyPath, want)
		}
	})

	t.Run("node proxy path resolves symlinks", func(t *testing.T) {
		pbin := fakeBinDir(t)
		cfg := base
		cfg.Identity, cfg.SPIREBinDir, cfg.BinDir = IdentitySPIRE, bin, pbin
		st := &state{Name: "lab"}
		if err := configureSPIRE(cfg, st); err != nil {
			t.Fatal(err)
		}
		self, _ := filepath.EvalSymlinks(selfBin(t))
		if st.SPIRE.NodeProxyPath != self {
			t.Errorf("node proxy path %s, want %s", st.SPIRE.NodeProxyPath, self)
		}
	})

	st := &state{
		Name: "lab", StateRoot: "/run/x", BinDir: "/bin", TrustDomain: "example.org",
		AgentArgs: []string{"--extra"}, NodeProxyArgs: []string{"--more"},
		Identity: IdentitySPIRE, SPIRE: &spireState{BinDir: "/spire", Entries: SPIREEntriesManage, SVIDTTL: 90 * time.Second, NodeProxyPath: "/bin/palisade-nodeproxy"},
	}
	n := &nodeState{Name: "n1", Netns: "lab-node-n1"}

	t.Run("agent and node proxy flags", func(t *testing.T) {
		want := "ip netns exec lab-node-n1 /bin/palisade-agent --node n1 --cluster /run/x/lab/cluster --proxy-socket /run/x/lab/nodes/n1/proxy.sock --cni-socket /run/x/lab/nodes/n1/cni.sock" +
			" --spire-entries manage --spire-server-socket /run/x/lab/spire/server/api.sock --spire-node-id spiffe://example.org/palisade/node/n1 --trust-domain example.org --spire-svid-ttl 1m30s --ebpf off --extra"
		if got := strings.Join(st.agentArgv(n, "ip"), " "); got != want {
			t.Errorf("agent:\n got %s\nwant %s", got, want)
		}
		want = "ip netns exec lab-node-n1 /bin/palisade-nodeproxy --node n1 --cluster /run/x/lab/cluster --agent-socket /run/x/lab/nodes/n1/proxy.sock" +
			" --identity spire --spire-admin-socket /run/x/lab/nodes/n1/spire-agent/admin/admin.sock --spire-workload-socket /run/x/lab/nodes/n1/spire-agent/workload/api.sock --trust-domain example.org --flow-log /run/x/lab/nodes/n1/flows.jsonl --more"
		if got := strings.Join(st.nodeProxyArgv(n, "ip"), " "); got != want {
			t.Errorf("node proxy:\n got %s\nwant %s", got, want)
		}
		off := *st
		off.SPIRE = &spireState{Entries: SPIREEntriesOff, SVIDTTL: time.Minute}
		got := strings.Join(off.agentArgv(n, "ip"), " ")
		if !strings.HasSuffix(got, "/cni.sock --spire-entries off --ebpf off --extra") {
			t.Errorf("agent with entries off: %s", got)
		}
	})

	t.Run("spire-server argv", func(t *testing.T) {
		for _, tc := range []struct{ in, want string }{
			{"healthcheck", "healthcheck -socketPath S"},
			{"entry show -output json", "entry show -socketPath S -output json"},
			{"entry create -parentID P -spiffeID I -selector unix:uid:0", "entry create -socketPath S -parentID P -spiffeID I -selector unix:uid:0"},
		} {
			got := strings.Join(st.spireServerArgv(strings.Fields(tc.in)), " ")
			got = strings.ReplaceAll(got, st.spireServerSocket(), "S")
			if got != "/spire/spire-server "+tc.want {
				t.Errorf("%s: %s", tc.in, got)
			}
		}
	})

	t.Run("configuration files", func(t *testing.T) {
		server := st.spireServerConf()
		for _, want := range []string{
			`bind_address = "127.0.0.1"`, `bind_port = 8081`, `socket_path = "/run/x/lab/spire/server/api.sock"`,
			`trust_domain = "example.org"`, `data_dir = "/run/x/lab/spire/server/data"`, `KeyManager "disk"`,
			`keys_path = "/run/x/lab/spire/server/data/keys.json"`, `database_type = "sqlite3"`, `NodeAttestor "join_token"`,
			`ca_ttl = "24h"`, `default_x509_svid_ttl = "1h"`,
		} {
			if !strings.Contains(server, want) {
				t.Errorf("server.conf lacks %s:\n%s", want, server)
			}
		}
		agent := st.spireAgentConf("n1", "tok-1")
		for _, want := range []string{
			`data_dir = "/run/x/lab/nodes/n1/spire-agent/data"`, `server_address = "127.0.0.1"`, `server_port = 8081`,
			`trust_bundle_path = "/run/x/lab/spire/bundle.pem"`, `join_token = "tok-1"`,
			`socket_path = "/run/x/lab/nodes/n1/spire-agent/workload/api.sock"`,
			`admin_socket_path = "/run/x/lab/nodes/n1/spire-agent/admin/admin.sock"`,
			`authorized_delegates = ["spiffe://example.org/palisade/nodeproxy/n1"]`,
			`directory = "/run/x/lab/nodes/n1/spire-agent/data"`, `WorkloadAttestor "unix"`, `discover_workload_path = true`,
		} {
			if !strings.Contains(agent, want) {
				t.Errorf("agent.conf lacks %s:\n%s", want, agent)
			}
		}
		if strings.Contains(st.spireAgentConf("n1", ""), "join_token =") {
			t.Error("agent.conf without a token names one")
		}
		if filepath.Dir(st.spireWorkloadSocket("n1")) == filepath.Dir(st.spireAdminSocket("n1")) {
			t.Error("admin and workload sockets share a directory")
		}
	})
}

func TestLabSPIRE(t *testing.T) {
	needRoot(t)
	spireBin := testSPIREBinDir(t)
	name := labName(t)
	stateDir := t.TempDir()
	before := viewHost(t)
	objs, err := Decode(`
apiVersion: v1
kind: Pod
metadata: {name: a}
spec: {nodeName: node1, containers: [{name: c, command: ["sleep", "infinity"]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b}
spec: {nodeName: node2, containers: [{name: c, command: ["sleep", "infinity"]}]}
`)
	if err != nil {
		t.Fatal(err)
	}
	// The node proxy binary is a symlink to this test binary, so this test
	// is attested as the node proxy.
	bin := fakeBinDir(t)
	start := time.Now()
	l := upForTest(t, Config{
		Name: name, StateDir: stateDir, BinDir: bin, Objects: objs, NoPalisade: true,
		Identity: IdentitySPIRE, SPIREBinDir: spireBin, TrustDomain: "lab.test",
		LabBin: selfBin(t), Logger: testLogger(t), ReadyTimeout: 60 * time.Second,
	})
	t.Logf("lab with SPIRE up in %s", time.Since(start).Round(time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	nodes := []string{"node1", "node2"}
	self, err := filepath.EvalSymlinks(selfBin(t))
	if err != nil {
		t.Fatal(err)
	}
	underlay := fmt.Sprintf("net:[%d]", netnsInode(l.UnderlayNetns()))
	td := spiffeid.RequireTrustDomainFromString("lab.test")
	var pids []int

	t.Run("processes", func(t *testing.T) {
		if l.Identity() != IdentitySPIRE {
			t.Errorf("identity %q", l.Identity())
		}
		topo := l.Status()
		if topo.Identity != IdentitySPIRE || topo.SPIRE == nil || topo.SPIRE.ServerPID == 0 {
			t.Fatalf("status: %+v %+v", topo.Identity, topo.SPIRE)
		}
		pids = append(pids, topo.SPIRE.ServerPID)
		if got := procNetns(topo.SPIRE.ServerPID); got != underlay {
			t.Errorf("server in netns %s, want the underlay's %s", got, underlay)
		}
		if got, want := procExe(topo.SPIRE.ServerPID), filepath.Join(spireBin, SPIREServerBinary); got != want {
			t.Errorf("server is %s, want %s", got, want)
		}
		for _, n := range topo.Nodes {
			if n.SPIREAgentPID == 0 {
				t.Errorf("node %s: no SPIRE agent", n.Name)
				continue
			}
			pids = append(pids, n.SPIREAgentPID)
			if got := procNetns(n.SPIREAgentPID); got != underlay {
				t.Errorf("node %s: agent in netns %s, want %s", n.Name, got, underlay)
			}
			if got, want := procExe(n.SPIREAgentPID), filepath.Join(spireBin, SPIREAgentBinary); got != want {
				t.Errorf("node %s: agent is %s, want %s", n.Name, got, want)
			}
			w, a := l.SPIREAgentSockets(n.Name)
			if w != n.SPIREWorkloadSocket || a != n.SPIREAdminSocket || filepath.Dir(w) == filepath.Dir(a) {
				t.Errorf("node %s: sockets %s %s, status %+v", n.Name, w, a, n)
			}
		}
		if _, err := l.SPIREServer(ctx, "healthcheck"); err != nil {
			t.Error(err)
		}
		for _, n := range nodes {
			if err := l.WaitSPIREAgentReady(ctx, n); err != nil {
				t.Error(err)
			}
		}
		if c := spireAgentCount(t, ctx, l); c != len(nodes) {
			t.Errorf("%d attested agents, want %d", c, len(nodes))
		}
		// The server listens on the underlay's loopback only.
		out, err := l.sys.inNetns(ctx, l.UnderlayNetns(), nil, "ss", "-Htlnp")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(out), "127.0.0.1:8081") || strings.Contains(string(out), "0.0.0.0:8081") || strings.Contains(string(out), "*:8081") {
			t.Errorf("listeners in the underlay:\n%s", out)
		}
	})

	t.Run("entries", func(t *testing.T) {
		entries := spireEntries(t, ctx, l)
		for _, node := range nodes {
			nodeID := l.SPIRENodeID(node)
			if nodeID.String() != "spiffe://lab.test/palisade/node/"+node || nodeID.TrustDomain() != td {
				t.Errorf("node ID %s", nodeID)
			}
			var alias, proxy []spireEntry
			for _, e := range entries {
				if e.spiffeID() == nodeID.String() && strings.HasPrefix(e.parentID(), "spiffe://lab.test/spire/agent/join_token/") {
					alias = append(alias, e)
				}
				if e.spiffeID() == l.SPIRENodeProxyID(node).String() {
					proxy = append(proxy, e)
				}
			}
			if len(alias) != 1 {
				t.Errorf("node %s: alias entries %+v", node, alias)
			}
			if len(proxy) != 1 {
				t.Fatalf("node %s: node proxy entries %+v", node, proxy)
			}
			if proxy[0].parentID() != nodeID.String() {
				t.Errorf("node %s: node proxy entry's parent %s", node, proxy[0].parentID())
			}
			if got, want := proxy[0].selectors(), []string{"unix:path:" + self, "unix:uid:0"}; !slices.Equal(got, want) {
				t.Errorf("node %s: node proxy selectors %v, want %v", node, got, want)
			}
		}
		if len(entries) != 2*len(nodes) {
			t.Errorf("%d entries, want %d", len(entries), 2*len(nodes))
		}
	})

	bundlePEM, err := l.SPIREBundlePEM()
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(bundlePEM) {
		t.Fatalf("bundle is not PEM certificates:\n%s", bundlePEM)
	}
	if b, _ := pem.Decode(bundlePEM); b == nil || b.Type != "CERTIFICATE" {
		t.Fatalf("bundle: %s", bundlePEM)
	}

	checkNodeProxySVID := func(t *testing.T, node string) {
		t.Helper()
		w, _ := l.SPIREAgentSockets(node)
		svid, err := fetchSVID(ctx, w)
		if err != nil {
			t.Fatal(err)
		}
		if svid.ID != l.SPIRENodeProxyID(node) {
			t.Errorf("node %s: SVID %s, want %s", node, svid.ID, l.SPIRENodeProxyID(node))
		}
		inter := x509.NewCertPool()
		for _, c := range svid.Certificates[1:] {
			inter.AddCert(c)
		}
		if _, err := svid.Certificates[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter}); err != nil {
			t.Errorf("node %s: SVID does not chain to the bundle: %v", node, err)
		}
	}

	t.Run("node proxy identity through the Workload API", func(t *testing.T) {
		for _, node := range nodes {
			checkNodeProxySVID(t, node)
		}
	})

	t.Run("delegated identity for a pod", func(t *testing.T) {
		id := "spiffe://lab.test/ns/shop/sa/web"
		if _, err := l.SPIREServer(ctx, "entry", "create", "-parentID", l.SPIRENodeID("node1").String(), "-spiffeID", id,
			"-selector", "k8s:ns:shop", "-selector", "k8s:sa:web"); err != nil {
			t.Fatal(err)
		}
		sel := []*types.Selector{{Type: "k8s", Value: "ns:shop"}, {Type: "k8s", Value: "sa:web"}}
		_, admin := l.SPIREAgentSockets("node1")
		ids, err := delegatedSVIDs(ctx, admin, false, sel...)
		if err != nil || !slices.Equal(ids, []string{id}) {
			t.Fatalf("delegated SVIDs on node1: %v %v", ids, err)
		}
		// Node2's agent holds no entry of node1's pods.
		_, admin2 := l.SPIREAgentSockets("node2")
		if ids, err := delegatedSVIDs(ctx, admin2, true, sel...); err != nil || len(ids) != 0 {
			t.Errorf("delegated SVIDs on node2: %v %v", ids, err)
		}
	})

	t.Run("server restart keeps CA and entries", func(t *testing.T) {
		n := len(spireEntries(t, ctx, l))
		if err := l.StopSPIREServer(ctx, syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if s := l.Status().SPIRE; s.ServerPID != 0 {
			t.Errorf("server still running: %+v", s)
		}
		if _, err := l.SPIREServer(ctx, "healthcheck"); err == nil {
			t.Error("healthcheck passes with the server stopped")
		}
		if err := l.StartSPIREServer(ctx); err != nil {
			t.Fatal(err)
		}
		if err := l.StartSPIREServer(ctx); err == nil {
			t.Error("second start of a running server succeeded")
		}
		if got := spireAgentCount(t, ctx, l); got != len(nodes) {
			t.Errorf("%d agents after the restart", got)
		}
		if got := len(spireEntries(t, ctx, l)); got != n {
			t.Errorf("%d entries after the restart, want %d", got, n)
		}
		after, err := l.SPIREBundlePEM()
		if err != nil {
			t.Fatal(err)
		}
		if string(after) != string(bundlePEM) {
			t.Errorf("bundle changed across the restart:\n%s\n%s", bundlePEM, after)
		}
		pids = append(pids, l.Status().SPIRE.ServerPID)
	})

	t.Run("agent restart reuses its SVID", func(t *testing.T) {
		n := len(spireEntries(t, ctx, l))
		if err := l.StopSPIREAgent(ctx, "node1", syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		if info, _ := l.Node("node1"); info.SPIREAgentPID != 0 {
			t.Errorf("agent still running: %+v", info)
		}
		if err := l.StartSPIREAgent(ctx, "node1"); err != nil {
			t.Fatal(err)
		}
		if err := l.StartSPIREAgent(ctx, "node1"); err == nil {
			t.Error("second start of a running agent succeeded")
		}
		info, _ := l.Node("node1")
		pids = append(pids, info.SPIREAgentPID)
		logData, _ := os.ReadFile(info.SPIREAgentLog)
		restart := strings.LastIndex(string(logData), "palisade lab: starting")
		if restart < 0 || !strings.Contains(string(logData[restart:]), "SVID loaded") {
			t.Errorf("restarted agent did not load its SVID from disk:\n%s", logTail(info.SPIREAgentLog, 30))
		}
		if got := spireAgentCount(t, ctx, l); got != len(nodes) {
			t.Errorf("%d agents after the restart", got)
		}
		if got := len(spireEntries(t, ctx, l)); got != n {
			t.Errorf("%d entries after the restart, want %d (a new join token?)", got, n)
		}
		checkNodeProxySVID(t, "node1")
	})

	t.Run("reopened lab", func(t *testing.T) {
		l2, err := Load(name, stateDir)
		if err != nil {
			t.Fatal(err)
		}
		if l2.Identity() != IdentitySPIRE || l2.SPIREServerSocket() != l.SPIREServerSocket() {
			t.Errorf("reopened: %s %s", l2.Identity(), l2.SPIREServerSocket())
		}
		if err := l2.StopSPIREAgent(ctx, "node2", syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if err := l2.StartSPIREAgent(ctx, "node2"); err != nil {
			t.Fatal(err)
		}
		info, _ := l2.Node("node2")
		pids = append(pids, info.SPIREAgentPID)
		checkNodeProxySVID(t, "node2")
	})

	t.Run("down", func(t *testing.T) {
		l3, err := Load(name, stateDir)
		if err != nil {
			t.Fatal(err)
		}
		if err := l3.Down(ctx); err != nil {
			t.Fatal(err)
		}
		for _, node := range nodes {
			w, a := l.SPIREAgentSockets(node)
			for _, s := range []string{w, a} {
				if _, err := os.Stat(s); err == nil {
					t.Errorf("socket %s left", s)
				}
			}
		}
		if _, err := os.Stat(l.SPIREServerSocket()); err == nil {
			t.Errorf("server socket left")
		}
		checkNothingLeft(t, name, before, stateDir, pids)
	})
}

func TestLabSPIREWithPalisadeFakes(t *testing.T) {
	needRoot(t)
	spireBin := testSPIREBinDir(t)
	recordFile := filepath.Join(t.TempDir(), "record")
	t.Setenv("LAB_FAKE_RECORD", recordFile)
	name := labName(t)
	stateDir := t.TempDir()
	before := viewHost(t)
	objs, err := Decode(`
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {palisade.dev/mtls: enabled}}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: shop}
spec: {nodeName: node1, containers: [{name: c, command: ["sleep", "infinity"]}]}
`)
	if err != nil {
		t.Fatal(err)
	}
	l := upForTest(t, Config{
		Name: name, StateDir: stateDir, BinDir: fakeBinDir(t), Objects: objs,
		Identity: IdentitySPIRE, SPIREBinDir: spireBin, SPIRESVIDTTL: 2 * time.Minute,
		LabBin: selfBin(t), Logger: testLogger(t), ReadyTimeout: 60 * time.Second,
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	w, a := l.SPIREAgentSockets("node1")
	rec := readRecord(t, recordFile)
	if got := grepLines(rec, "agent node=node1 ", "spire-entries=manage", "spire-server-socket="+l.SPIREServerSocket(),
		"spire-node-id=spiffe://cluster.local/palisade/node/node1", "trust-domain=cluster.local", "spire-svid-ttl=2m0s"); len(got) != 1 {
		t.Errorf("agent flags:\n%s", strings.Join(rec, "\n"))
	}
	if got := grepLines(rec, "nodeproxy node=node1 ", "identity=spire", "spire-admin-socket="+a, "spire-workload-socket="+w, "ca= "); len(got) != 1 {
		t.Errorf("node proxy flags:\n%s", strings.Join(rec, "\n"))
	}
	// The fake node proxy, started by the lab in the node's netns, fetches
	// its own SVID: the entry's selectors match the process the lab runs.
	want := "nodeproxy-svid node=node1 id=spiffe://cluster.local/palisade/nodeproxy/node1 err=<nil>"
	for !slices.Contains(readRecord(t, recordFile), want) {
		if ctx.Err() != nil {
			t.Fatalf("node proxy got no SVID:\n%s", strings.Join(readRecord(t, recordFile), "\n"))
		}
		time.Sleep(100 * time.Millisecond)
	}
	var pids []int
	topo := l.Status()
	pids = append(pids, topo.SPIRE.ServerPID, topo.Nodes[0].SPIREAgentPID, topo.Nodes[0].AgentPID, topo.Nodes[0].NodeProxyPID)
	if err := l.Down(ctx); err != nil {
		t.Fatal(err)
	}
	checkNothingLeft(t, name, before, stateDir, pids)
}
