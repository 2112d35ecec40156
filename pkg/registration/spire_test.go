package registration

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	entryv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/entry/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
)

// spireServer is a real spire-server started for one test.
type spireServer struct {
	bin    string
	socket string
	log    string
	port   int
}

// requireSPIREServer returns the spire-server binary built by "make spire",
// skipping (outside CI) or failing (in CI) when the test cannot run.
func requireSPIREServer(t *testing.T) string {
	t.Helper()
	bin := os.Getenv("PALISADE_SPIRE_SERVER")
	if bin == "" {
		root, err := filepath.Abs("../..")
		if err != nil {
			t.Fatal(err)
		}
		bin = filepath.Join(root, ".cache", "test-bin", "spire-server")
	}
	var why string
	if os.Geteuid() != 0 {
		why = "the SPIRE integration test runs as root (as CI does); run sudo make test"
	} else if _, err := os.Stat(bin); err != nil {
		why = fmt.Sprintf("no spire-server at %s (make spire builds it): %v", bin, err)
	}
	if why == "" {
		return bin
	}
	if os.Getenv("CI") != "" {
		t.Fatal(why)
	}
	t.Skip(why)
	return ""
}

// startSPIREServer runs spire-server with a config of its own and waits
// until it is healthy. The process is killed when the test ends, pass or
// fail; on failure its log is printed.
func startSPIREServer(t *testing.T) *spireServer {
	t.Helper()
	bin := requireSPIREServer(t)
	dir := t.TempDir()
	// The socket path must stay short (sun_path is 108 bytes).
	sockDir, err := os.MkdirTemp("/tmp", "spire-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()

	s := &spireServer{bin: bin, socket: filepath.Join(sockDir, "api.sock"), log: filepath.Join(dir, "server.log"), port: port}
	conf := fmt.Sprintf(`server {
  trust_domain = "cluster.local"
  bind_address = "127.0.0.1"
  bind_port = "%d"
  socket_path = %q
  data_dir = %q
  log_level = "DEBUG"
  log_file = %q
}

plugins {
  DataStore "sql" {
    plugin_data {
      database_type = "sqlite3"
      connection_string = %q
    }
  }
  KeyManager "memory" {
    plugin_data {}
  }
  NodeAttestor "join_token" {
    plugin_data {}
  }
}
`, port, s.socket, filepath.Join(dir, "data"), s.log, filepath.Join(dir, "datastore.sqlite3"))
	confPath := filepath.Join(dir, "server.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	runDaemon(t, bin, confPath, filepath.Join(dir, "server.out"), []string{s.log}, 90*time.Second, func() error {
		if b, err := exec.Command(bin, "healthcheck", "-socketPath", s.socket).CombinedOutput(); err != nil {
			return fmt.Errorf("%v: %s", err, b)
		}
		return nil
	})
	return s
}

// runDaemon starts a SPIRE binary ("run -config conf") with its output in
// out, kills it when the test ends (printing out and logs on failure) and
// waits until healthy returns nil, failing early when it exits.
func runDaemon(t *testing.T, bin, conf, out string, logs []string, wait time.Duration, healthy func() error) {
	t.Helper()
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "run", "-config", conf)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", filepath.Base(bin), err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
		f.Close()
		if t.Failed() {
			for _, l := range append([]string{out}, logs...) {
				if b, err := os.ReadFile(l); err == nil {
					t.Logf("%s:\n%s", l, tail(string(b), 100))
				}
			}
		}
	})
	deadline := time.Now().Add(wait)
	for {
		err := healthy()
		if err == nil {
			return
		}
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("%s exited during start-up: %v", filepath.Base(bin), err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not healthy after %s: %v", filepath.Base(bin), wait, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func tail(s string, lines int) string {
	ls := strings.Split(s, "\n")
	if len(ls) > lines {
		ls = ls[len(ls)-lines:]
	}
	return strings.Join(ls, "\n")
}

// cli runs a spire-server subcommand against the test server.
func (s *spireServer) cli(t *testing.T, args ...string) string {
	t.Helper()
	args = append(args[:1:1], append([]string{"-socketPath", s.socket}, args[1:]...)...)
	b, err := exec.Command(s.bin, append([]string{"entry"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("spire-server entry %s: %v\n%s", strings.Join(args, " "), err, b)
	}
	return string(b)
}

// listAll lists every entry on the server.
func listAll(t *testing.T, c entryv1.EntryClient) []*types.Entry {
	t.Helper()
	var out []*types.Entry
	req := &entryv1.ListEntriesRequest{PageSize: 100}
	for {
		resp, err := c.ListEntries(context.Background(), req)
		if err != nil {
			t.Fatalf("ListEntries: %v", err)
		}
		out = append(out, resp.Entries...)
		if resp.NextPageToken == "" {
			return out
		}
		req.PageToken = resp.NextPageToken
	}
}

// summary renders the entries as sorted "spiffe-id parent hint ttl selectors".
func summary(es []*types.Entry) []string {
	var out []string
	for _, e := range es {
		var sels []string
		for _, s := range e.Selectors {
			sels = append(sels, s.Type+":"+s.Value)
		}
		slices.Sort(sels)
		out = append(out, fmt.Sprintf("%s parent=%s hint=%q ttl=%d %s", idString(e.SpiffeId), idString(e.ParentId), e.Hint, e.X509SvidTtl, strings.Join(sels, ",")))
	}
	slices.Sort(out)
	return out
}

// findEntry returns the entry with that SPIFFE ID and parent ID, or nil.
func findEntry(es []*types.Entry, spiffeID, parentID string) *types.Entry {
	for _, e := range es {
		if idString(e.SpiffeId) == spiffeID && idString(e.ParentId) == parentID {
			return e
		}
	}
	return nil
}

// TestAgainstSPIREServer runs the reconciler against a real spire-server:
// creation, idempotence, removal of stale own entries, foreign entries left
// alone, repair of changes and deletions made behind its back.
func TestAgainstSPIREServer(t *testing.T) {
	srv := startSPIREServer(t)
	const (
		parent    = "spiffe://cluster.local/palisade/node/n1"
		otherNode = "spiffe://cluster.local/palisade/node/n2"
	)
	conn, err := Dial(srv.socket)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := entryv1.NewEntryClient(conn)
	ctx := context.Background()

	// Someone else's entries: one for a service account Palisade will want
	// (under this node), one Palisade never wants, one under another node
	// that carries Palisade's hint.
	srv.cli(t, "create", "-parentID", parent, "-spiffeID", "spiffe://cluster.local/ns/shop/sa/legacy", "-selector", "k8s:ns:shop", "-selector", "k8s:sa:legacy")
	srv.cli(t, "create", "-parentID", parent, "-spiffeID", "spiffe://cluster.local/ns/ops/sa/tool", "-selector", "k8s:ns:ops", "-selector", "k8s:sa:tool")
	srv.cli(t, "create", "-parentID", otherNode, "-spiffeID", "spiffe://cluster.local/ns/shop/sa/web", "-selector", "k8s:ns:shop", "-selector", "k8s:sa:web", "-hint", Hint)
	foreignBefore := listAll(t, client)
	if len(foreignBefore) != 3 {
		t.Fatalf("setup: %d entries, want 3", len(foreignBefore))
	}
	checkForeignUntouched := func() {
		t.Helper()
		now := listAll(t, client)
		for _, b := range foreignBefore {
			i := slices.IndexFunc(now, func(e *types.Entry) bool { return e.Id == b.Id })
			if i < 0 {
				t.Fatalf("foreign entry %s (%s) was deleted", b.Id, idString(b.SpiffeId))
			}
			if now[i].RevisionNumber != b.RevisionNumber || key(now[i]) != key(b) || now[i].Hint != b.Hint || now[i].X509SvidTtl != b.X509SvidTtl {
				t.Fatalf("foreign entry %s changed:\n was %v\n now %v", b.Id, b, now[i])
			}
		}
	}

	newRec := func(ttl time.Duration) *Reconciler {
		r, err := New(Config{
			Client:         client,
			TrustDomain:    spiffeid.RequireTrustDomainFromString("cluster.local"),
			ParentID:       spiffeid.RequireFromString(parent),
			SVIDTTL:        ttl,
			Logger:         testLogger(t),
			PageSize:       2, // exercise paging against the real server
			BatchSize:      2,
			Debounce:       20 * time.Millisecond,
			ResyncInterval: 200 * time.Millisecond,
			MinBackoff:     50 * time.Millisecond,
		})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}

	// 1. Create: three service accounts wanted, one already served by a
	// foreign entry.
	r := newRec(0)
	r.Update([]ServiceAccount{{"shop", "web"}, {"shop", "db"}, {"shop", "legacy"}, {"pay", "api"}})
	res, err := r.Sync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := (Result{Created: 3, Foreign: 1}); res != want {
		t.Fatalf("first pass %+v, want %+v", res, want)
	}
	want := []string{
		`spiffe://cluster.local/ns/ops/sa/tool parent=spiffe://cluster.local/palisade/node/n1 hint="" ttl=0 k8s:ns:ops,k8s:sa:tool`,
		`spiffe://cluster.local/ns/pay/sa/api parent=spiffe://cluster.local/palisade/node/n1 hint="palisade" ttl=0 k8s:ns:pay,k8s:sa:api`,
		`spiffe://cluster.local/ns/shop/sa/db parent=spiffe://cluster.local/palisade/node/n1 hint="palisade" ttl=0 k8s:ns:shop,k8s:sa:db`,
		`spiffe://cluster.local/ns/shop/sa/legacy parent=spiffe://cluster.local/palisade/node/n1 hint="" ttl=0 k8s:ns:shop,k8s:sa:legacy`,
		`spiffe://cluster.local/ns/shop/sa/web parent=spiffe://cluster.local/palisade/node/n1 hint="palisade" ttl=0 k8s:ns:shop,k8s:sa:web`,
		`spiffe://cluster.local/ns/shop/sa/web parent=spiffe://cluster.local/palisade/node/n2 hint="palisade" ttl=0 k8s:ns:shop,k8s:sa:web`,
	}
	if got := summary(listAll(t, client)); !slices.Equal(got, want) {
		t.Fatalf("entries after the first pass:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	checkForeignUntouched()

	// 2. Idempotent: a second pass, and a fresh reconciler (an agent
	// restart), change nothing.
	for i, rr := range []*Reconciler{r, newRec(0)} {
		rr.Update([]ServiceAccount{{"shop", "web"}, {"shop", "db"}, {"shop", "legacy"}, {"pay", "api"}})
		res, err := rr.Sync(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if want := (Result{Unchanged: 3, Foreign: 1}); res != want {
			t.Fatalf("pass %d again: %+v, want %+v", i, res, want)
		}
	}
	if got := summary(listAll(t, client)); !slices.Equal(got, want) {
		t.Fatalf("entries after idempotent passes:\n%s", strings.Join(got, "\n"))
	}

	// 3. A service account leaves: its own entry goes, foreign ones stay
	// (including the one whose need is gone too).
	r.Update([]ServiceAccount{{"shop", "web"}, {"pay", "api"}})
	res, err = r.Sync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := (Result{Deleted: 1, Unchanged: 2}); res != want {
		t.Fatalf("after shop/db and shop/legacy left: %+v, want %+v", res, want)
	}
	if findEntry(listAll(t, client), "spiffe://cluster.local/ns/shop/sa/db", parent) != nil {
		t.Fatal("stale own entry shop/db not deleted")
	}
	checkForeignUntouched()

	// 4. A TTL change updates the entries in place.
	before := findEntry(listAll(t, client), "spiffe://cluster.local/ns/shop/sa/web", parent)
	r = newRec(time.Hour)
	r.Update([]ServiceAccount{{"shop", "web"}, {"pay", "api"}})
	res, err = r.Sync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := (Result{Updated: 2}); res != want {
		t.Fatalf("TTL change: %+v, want %+v", res, want)
	}
	web := findEntry(listAll(t, client), "spiffe://cluster.local/ns/shop/sa/web", parent)
	if web == nil || web.Id != before.Id || web.X509SvidTtl != 3600 {
		t.Fatalf("after the TTL change: %v (was %v), want the same entry with ttl 3600", web, before)
	}

	// 5. Run repairs what others do behind its back: a deleted own entry
	// comes back, a changed one is changed back; foreign ones stay.
	passes := make(chan Result, 100)
	r.onPass = func(res Result, err error) {
		if err != nil {
			t.Errorf("pass failed: %v", err)
		}
		select {
		case passes <- res:
		default:
		}
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(rctx) }()
	defer func() {
		cancel()
		<-done
	}()
	// The first pass (started by the last Update) finds everything in
	// step; what follows can only be repaired by the periodic resync.
	select {
	case res := <-passes:
		if res.Changed() {
			t.Fatalf("first pass of Run changed something: %+v", res)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run made no pass within 10s")
	}
	srv.cli(t, "delete", "-entryID", web.Id)
	api := findEntry(listAll(t, client), "spiffe://cluster.local/ns/pay/sa/api", parent)
	upd, err := client.BatchUpdateEntry(ctx, &entryv1.BatchUpdateEntryRequest{
		Entries:   []*types.Entry{{Id: api.Id, X509SvidTtl: 42}},
		InputMask: &types.EntryMask{X509SvidTtl: true},
	})
	if err != nil || upd.Results[0].Status.Code != 0 {
		t.Fatalf("changing an own entry behind the reconciler's back: %v %v", err, upd)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		es := listAll(t, client)
		var own []*types.Entry
		for _, e := range es {
			if idString(e.ParentId) == parent && e.Hint == Hint {
				own = append(own, e)
			}
		}
		w, a := findEntry(own, "spiffe://cluster.local/ns/shop/sa/web", parent), findEntry(own, "spiffe://cluster.local/ns/pay/sa/api", parent)
		if len(own) == 2 && w != nil && w.Id != web.Id && w.X509SvidTtl == 3600 && a != nil && a.Id == api.Id && a.X509SvidTtl == 3600 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("resync did not repair the entries within 20s:\n%s", strings.Join(summary(es), "\n"))
		}
		time.Sleep(100 * time.Millisecond)
	}
	checkForeignUntouched()

	// 6. Run follows Update: the last service account leaving removes
	// every own entry and nothing else.
	r.Update(nil)
	deadline = time.Now().Add(20 * time.Second)
	for {
		es := listAll(t, client)
		if len(es) == len(foreignBefore) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("own entries not removed within 20s:\n%s", strings.Join(summary(es), "\n"))
		}
		time.Sleep(100 * time.Millisecond)
	}
	checkForeignUntouched()
}

// startSPIREAgent runs a spire-agent attested to srv with a join token for
// nodeID and returns its Workload API socket.
func startSPIREAgent(t *testing.T, srv *spireServer, nodeID string) string {
	t.Helper()
	bin := filepath.Join(filepath.Dir(srv.bin), "spire-agent")
	if _, err := os.Stat(bin); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("no spire-agent next to spire-server (make spire builds both): %v", err)
		}
		t.Skipf("no spire-agent next to spire-server (make spire builds both): %v", err)
	}
	dir := t.TempDir()
	sockDir, err := os.MkdirTemp("/tmp", "spire-agent-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	run := func(args ...string) string {
		t.Helper()
		b, err := exec.Command(srv.bin, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("spire-server %s: %v\n%s", strings.Join(args, " "), err, b)
		}
		return string(b)
	}
	bundle := filepath.Join(dir, "bundle.pem")
	if err := os.WriteFile(bundle, []byte(run("bundle", "show", "-socketPath", srv.socket)), 0o600); err != nil {
		t.Fatal(err)
	}
	token := strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(run("token", "generate", "-socketPath", srv.socket, "-spiffeID", nodeID)), "Token:"))
	sock := filepath.Join(sockDir, "api.sock")
	conf := fmt.Sprintf(`agent {
  trust_domain = "cluster.local"
  server_address = "127.0.0.1"
  server_port = "%d"
  socket_path = %q
  data_dir = %q
  trust_bundle_path = %q
  join_token = %q
  log_level = "DEBUG"
}

plugins {
  NodeAttestor "join_token" {
    plugin_data {}
  }
  KeyManager "memory" {
    plugin_data {}
  }
  WorkloadAttestor "unix" {
    plugin_data {}
  }
}
`, srv.port, sock, filepath.Join(dir, "data"), bundle, token)
	confPath := filepath.Join(dir, "agent.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	runDaemon(t, bin, confPath, filepath.Join(dir, "agent.out"), nil, 60*time.Second, func() error {
		return exec.Command(bin, "healthcheck", "-socketPath", sock).Run()
	})
	return sock
}

// TestDialTCPWithAdminSVID reaches the server API over TCP with mutual TLS,
// as an agent DaemonSet does: the caller's SVID comes from the local SPIRE
// agent's Workload API and belongs to an admin entry.
func TestDialTCPWithAdminSVID(t *testing.T) {
	srv := startSPIREServer(t)
	const node = "spiffe://cluster.local/palisade/node/t1"
	sock := startSPIREAgent(t, srv, node)
	srv.cli(t, "create", "-parentID", node, "-spiffeID", "spiffe://cluster.local/palisade/agent/t1", "-selector", "unix:uid:0", "-admin")

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr("unix://"+sock)))
	if err != nil {
		t.Fatalf("agent SVID from the Workload API: %v", err)
	}
	defer src.Close()
	conn, err := DialTCP(fmt.Sprintf("127.0.0.1:%d", srv.port), src, spiffeid.RequireTrustDomainFromString("cluster.local"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	rec, err := New(Config{
		Client:      entryv1.NewEntryClient(conn),
		TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local"),
		ParentID:    spiffeid.RequireFromString(node),
		Logger:      testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	rec.Update([]ServiceAccount{{Namespace: "shop", Name: "web"}})
	res, err := rec.Sync(ctx)
	if err != nil || res.Created != 1 {
		t.Fatalf("sync over TCP: %+v %v", res, err)
	}
	if out := srv.cli(t, "show", "-spiffeID", "spiffe://cluster.local/ns/shop/sa/web"); !strings.Contains(out, "Found 1 entry") {
		t.Fatalf("entry not created over TCP:\n%s", out)
	}

	// A server presenting another identity than spiffe://<td>/spire/server
	// is refused: here, the caller expects the server of another trust
	// domain.
	bad, err := DialTCP(fmt.Sprintf("127.0.0.1:%d", srv.port), src, spiffeid.RequireTrustDomainFromString("other.example"))
	if err != nil {
		t.Fatal(err)
	}
	defer bad.Close()
	if _, err := entryv1.NewEntryClient(bad).ListEntries(ctx, &entryv1.ListEntriesRequest{}); err == nil {
		t.Fatal("a server of the wrong identity was accepted")
	}
}
