package handoff

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/palisade-net/palisade/pkg/workload"
)

const waitFor = 5 * time.Second

func testLogger(t *testing.T) *slog.Logger {
	if os.Getenv("HANDOFF_TEST_LOG") == "" {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("test", t.Name())
}

// recHandler records what the client hands it.
type recHandler struct {
	events chan string // "add:UID", "del:UID", "snap:UID,UID"

	mu        sync.Mutex
	workloads map[string]workload.Workload
	inodes    map[string]uint64
	fsTypes   map[string]int64

	drops    []Drop
	dropGate chan struct{} // when set, Dropped waits for it

	addErr  func(uid string) error
	blockOn string        // uid whose add blocks until release is closed
	release chan struct{} // see blockOn
}

func newRecHandler() *recHandler {
	return &recHandler{
		events:    make(chan string, 1000),
		workloads: map[string]workload.Workload{},
		inodes:    map[string]uint64{},
		fsTypes:   map[string]int64{},
		release:   make(chan struct{}),
	}
}

func (h *recHandler) AddWorkload(ctx context.Context, w workload.Workload, f *os.File) error {
	defer f.Close() // the handler owns the file
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return err
	}
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &sfs); err != nil {
		return err
	}
	if w.UID == h.blockOn {
		select {
		case <-h.release:
		case <-ctx.Done():
		}
	}
	h.mu.Lock()
	h.workloads[w.UID] = w
	h.inodes[w.UID] = st.Ino
	h.fsTypes[w.UID] = sfs.Type
	h.mu.Unlock()
	h.events <- "add:" + w.UID
	if h.addErr != nil {
		return h.addErr(w.UID)
	}
	return nil
}

func (h *recHandler) DeleteWorkload(_ context.Context, uid string) error {
	h.events <- "del:" + uid
	return nil
}

func (h *recHandler) SnapshotDone(_ context.Context, uids map[string]bool) error {
	var l []string
	for u, ok := range uids {
		if ok {
			l = append(l, u)
		}
	}
	sort.Strings(l)
	h.events <- "snap:" + strings.Join(l, ",")
	return nil
}

func (h *recHandler) Dropped(ctx context.Context, drops []Drop) error {
	if h.dropGate != nil {
		select {
		case <-h.dropGate:
		case <-ctx.Done():
		}
	}
	var l []string
	for _, d := range drops {
		l = append(l, d.Source+">"+d.Destination+":"+d.Reason)
	}
	h.mu.Lock()
	h.drops = append(h.drops, drops...)
	h.mu.Unlock()
	h.events <- "drops:" + strings.Join(l, ",")
	return nil
}

func (h *recHandler) expect(t *testing.T, want ...string) {
	t.Helper()
	for _, w := range want {
		select {
		case got := <-h.events:
			if got != w {
				t.Fatalf("handler event = %q, want %q", got, w)
			}
		case <-time.After(waitFor):
			t.Fatalf("timed out waiting for handler event %q", w)
		}
	}
}

func (h *recHandler) expectNone(t *testing.T) {
	t.Helper()
	select {
	case got := <-h.events:
		t.Fatalf("unexpected handler event %q", got)
	case <-time.After(150 * time.Millisecond):
	}
}

func sockPath(t *testing.T) string {
	return filepath.Join(t.TempDir(), "h.sock")
}

type runningServer struct {
	*Server
}

// stop ends serving and releases the server's state.
func (r *runningServer) stop(t *testing.T) {
	t.Helper()
	if err := r.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
}

func startServer(t *testing.T, path string, opts ServerOptions) *runningServer {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = testLogger(t)
	}
	s := NewServer(opts)
	if err := s.Start(path); err != nil {
		t.Fatal(err)
	}
	return &runningServer{Server: s}
}

type runningClient struct {
	*Client
	cancel context.CancelFunc
	done   chan error
}

func (r *runningClient) stop(t *testing.T) {
	t.Helper()
	r.cancel()
	select {
	case err := <-r.done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(waitFor):
		t.Fatal("Run did not return")
	}
}

func startClient(t *testing.T, path string, h Handler) *runningClient {
	t.Helper()
	c := &Client{Logger: testLogger(t), MinBackoff: 10 * time.Millisecond, MaxBackoff: 100 * time.Millisecond}
	ctx, cancel := context.WithCancel(context.Background())
	r := &runningClient{Client: c, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- c.Run(ctx, path, h) }()
	return r
}

func waitReady(t *testing.T, c *runningClient) {
	t.Helper()
	select {
	case <-c.ReadyC():
	case <-time.After(waitFor):
		t.Fatal("client not ready")
	}
}

func waitProxies(t *testing.T, s *runningServer, n int) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for s.Proxies() != n {
		if time.Now().After(deadline) {
			t.Fatalf("server has %d proxies, want %d", s.Proxies(), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func selfNetns(t *testing.T) (*os.File, uint64) {
	t.Helper()
	f, err := os.Open("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	return f, st.Ino
}

func wl(uid string) workload.Workload {
	return workload.Workload{
		UID:            uid,
		Name:           "pod-" + uid,
		Namespace:      "shop",
		ServiceAccount: "web",
		Node:           "node-1",
		IPs:            []netip.Addr{netip.MustParseAddr("10.0.0.7"), netip.MustParseAddr("fd00::7")},
		Labels:         map[string]string{"app": "web"},
		Mode:           workload.Strict,
		Enrolled:       true,
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	t.Cleanup(cancel)
	return ctx
}

func TestAddDeleteRoundTrip(t *testing.T) {
	path := sockPath(t)
	s := startServer(t, path, ServerOptions{})
	defer s.stop(t)
	h := newRecHandler()
	c := startClient(t, path, h)
	defer c.stop(t)

	h.expect(t, "snap:") // empty snapshot
	waitReady(t, c)
	if !c.Ready() {
		t.Fatal("Ready() = false after snapshot")
	}

	ns, ino := selfNetns(t)
	want := wl("u1")
	if err := s.AddWorkload(ctxT(t), want, ns); err != nil {
		t.Fatalf("AddWorkload: %v", err)
	}
	h.expect(t, "add:u1")
	h.mu.Lock()
	got, gotIno, fsType := h.workloads["u1"], h.inodes["u1"], h.fsTypes["u1"]
	h.mu.Unlock()
	if gotIno != ino {
		t.Errorf("received netns inode %d, want %d", gotIno, ino)
	}
	if fsType != unix.NSFS_MAGIC {
		t.Errorf("received fd on fs type %#x, want nsfs %#x", fsType, unix.NSFS_MAGIC)
	}
	gj, _ := json.Marshal(got)
	wj, _ := json.Marshal(want)
	if string(gj) != string(wj) {
		t.Errorf("workload = %s, want %s", gj, wj)
	}
	// The caller keeps its file: the server holds a duplicate.
	if _, err := ns.Stat(); err != nil {
		t.Errorf("caller's netns file unusable after AddWorkload: %v", err)
	}
	if ws := s.Workloads(); len(ws) != 1 || ws[0].UID != "u1" {
		t.Errorf("Workloads() = %v", ws)
	}

	if err := s.DeleteWorkload(ctxT(t), "u1"); err != nil {
		t.Fatalf("DeleteWorkload: %v", err)
	}
	h.expect(t, "del:u1")
	if ws := s.Workloads(); len(ws) != 0 {
		t.Errorf("Workloads() after delete = %v", ws)
	}
	// Deleting an unknown uid is still sent (a proxy may know it).
	if err := s.DeleteWorkload(ctxT(t), "ghost"); err != nil {
		t.Fatalf("DeleteWorkload(ghost): %v", err)
	}
	h.expect(t, "del:ghost")
}

func TestNoProxyRecordsAndReplays(t *testing.T) {
	path := sockPath(t)
	s := startServer(t, path, ServerOptions{})
	defer s.stop(t)
	ns, ino := selfNetns(t)

	err := s.AddWorkload(ctxT(t), wl("u1"), ns)
	if !errors.Is(err, ErrNoProxy) {
		t.Fatalf("AddWorkload without proxy = %v, want ErrNoProxy", err)
	}
	if err := s.DeleteWorkload(ctxT(t), "nothing"); err != nil {
		t.Fatalf("DeleteWorkload without proxy = %v, want nil", err)
	}

	h := newRecHandler()
	c := startClient(t, path, h)
	defer c.stop(t)
	h.expect(t, "add:u1", "snap:u1")
	waitReady(t, c)
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.inodes["u1"] != ino {
		t.Errorf("replayed netns inode %d, want %d", h.inodes["u1"], ino)
	}
}

func TestSnapshotReplayOnReconnect(t *testing.T) {
	path := sockPath(t)
	s := startServer(t, path, ServerOptions{})
	defer s.stop(t)
	ns, ino := selfNetns(t)

	h1 := newRecHandler()
	c1 := startClient(t, path, h1)
	h1.expect(t, "snap:")
	for _, u := range []string{"u1", "u2", "u3"} {
		if err := s.AddWorkload(ctxT(t), wl(u), ns); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.DeleteWorkload(ctxT(t), "u2"); err != nil {
		t.Fatal(err)
	}
	h1.expect(t, "add:u1", "add:u2", "add:u3", "del:u2")

	// Kill the proxy's connection; the state stays with the agent.
	c1.stop(t)
	waitProxies(t, s, 0)
	if err := s.AddWorkload(ctxT(t), wl("u4"), ns); !errors.Is(err, ErrNoProxy) {
		t.Fatalf("AddWorkload after disconnect = %v, want ErrNoProxy", err)
	}

	h2 := newRecHandler()
	c2 := startClient(t, path, h2)
	defer c2.stop(t)
	h2.expect(t, "add:u1", "add:u3", "add:u4", "snap:u1,u3,u4")
	waitReady(t, c2)
	h2.mu.Lock()
	for _, u := range []string{"u1", "u3", "u4"} {
		if h2.inodes[u] != ino {
			t.Errorf("%s: netns inode %d, want %d", u, h2.inodes[u], ino)
		}
	}
	h2.mu.Unlock()
}

func TestTwoProxies(t *testing.T) {
	path := sockPath(t)
	s := startServer(t, path, ServerOptions{})
	defer s.stop(t)
	ns, _ := selfNetns(t)

	old := newRecHandler()
	cOld := startClient(t, path, old)
	defer cOld.stop(t)
	old.expect(t, "snap:")
	if err := s.AddWorkload(ctxT(t), wl("u1"), ns); err != nil {
		t.Fatal(err)
	}
	old.expect(t, "add:u1")

	nw := newRecHandler()
	cNew := startClient(t, path, nw)
	nw.expect(t, "add:u1", "snap:u1")
	waitProxies(t, s, 2)

	// Adds go to the newest proxy only.
	if err := s.AddWorkload(ctxT(t), wl("u2"), ns); err != nil {
		t.Fatal(err)
	}
	nw.expect(t, "add:u2")
	old.expectNone(t)

	// Deletes go to both.
	if err := s.DeleteWorkload(ctxT(t), "u1"); err != nil {
		t.Fatal(err)
	}
	nw.expect(t, "del:u1")
	old.expect(t, "del:u1")

	// The new proxy goes away: the old one is the newest again and gets a
	// snapshot with what it missed.
	cNew.stop(t)
	old.expect(t, "add:u2", "snap:u2")
	if err := s.AddWorkload(ctxT(t), wl("u3"), ns); err != nil {
		t.Fatal(err)
	}
	old.expect(t, "add:u3")
}

func TestHandlerErrorPropagates(t *testing.T) {
	path := sockPath(t)
	s := startServer(t, path, ServerOptions{})
	defer s.stop(t)
	ns, _ := selfNetns(t)
	h := newRecHandler()
	h.addErr = func(uid string) error {
		if uid == "bad" {
			return errors.New("listen 15001 in pod netns: address already in use")
		}
		return nil
	}
	c := startClient(t, path, h)
	defer c.stop(t)
	h.expect(t, "snap:")

	err := s.AddWorkload(ctxT(t), wl("bad"), ns)
	var re *RemoteError
	if !errors.As(err, &re) {
		t.Fatalf("AddWorkload = %v, want a *RemoteError", err)
	}
	if !strings.Contains(err.Error(), "address already in use") {
		t.Errorf("error %q does not carry the proxy's message", err)
	}
	h.expect(t, "add:bad")
	// The connection survives a refused message.
	if err := s.AddWorkload(ctxT(t), wl("good"), ns); err != nil {
		t.Fatalf("AddWorkload after a refusal: %v", err)
	}
	h.expect(t, "add:good")
}

func TestAckTimeoutClosesConnection(t *testing.T) {
	path := sockPath(t)
	s := startServer(t, path, ServerOptions{AckTimeout: 300 * time.Millisecond})
	defer s.stop(t)
	ns, _ := selfNetns(t)
	h := newRecHandler()
	h.blockOn = "slow"
	c := startClient(t, path, h)
	defer c.stop(t)
	h.expect(t, "snap:")

	err := s.AddWorkload(ctxT(t), wl("slow"), ns)
	if !errors.Is(err, ErrConnLost) || !errors.Is(err, ErrNoProxy) {
		t.Fatalf("AddWorkload to a stuck proxy = %v, want ErrConnLost (matching ErrNoProxy)", err)
	}
	close(h.release)
	// The proxy finishes, finds the connection gone, reconnects and gets the
	// workload again in the snapshot.
	h.expect(t, "add:slow", "add:slow", "snap:slow")
}

func TestAgentRestart(t *testing.T) {
	path := sockPath(t)
	ns, ino := selfNetns(t)
	s1 := startServer(t, path, ServerOptions{})
	h := newRecHandler()
	c := startClient(t, path, h)
	defer c.stop(t)
	h.expect(t, "snap:")
	if err := s1.AddWorkload(ctxT(t), wl("u1"), ns); err != nil {
		t.Fatal(err)
	}
	h.expect(t, "add:u1")
	s1.stop(t)
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Errorf("socket file after shutdown: %v", err)
	}

	// A new agent, which has rediscovered u2 only before serving.
	s2 := NewServer(ServerOptions{Logger: testLogger(t)})
	defer s2.Close()
	if err := s2.AddWorkload(ctxT(t), wl("u2"), ns); !errors.Is(err, ErrNoProxy) {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- s2.ListenAndServe(ctx, path) }()
	defer func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("ListenAndServe: %v", err)
		}
	}()

	h.expect(t, "add:u2", "snap:u2")
	if !c.Ready() {
		t.Error("client not ready after reconnect")
	}
	h.mu.Lock()
	if h.inodes["u2"] != ino {
		t.Errorf("netns inode %d, want %d", h.inodes["u2"], ino)
	}
	h.mu.Unlock()
}

// rawConn connects to the agent without the Client.
func rawConn(t *testing.T, path string) *net.UnixConn {
	t.Helper()
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// expectClosed reads until the peer closes c, failing on timeout.
func expectClosed(t *testing.T, c *net.UnixConn) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(waitFor))
	buf := make([]byte, MaxMessageSize)
	for {
		_, err := c.Read(buf)
		if err == io.EOF {
			return
		}
		if err != nil {
			t.Fatalf("waiting for close: %v", err)
		}
	}
}

func TestBadPacketsCloseOnlyThatConnection(t *testing.T) {
	path := sockPath(t)
	s := startServer(t, path, ServerOptions{})
	defer s.stop(t)
	ns, _ := selfNetns(t)
	h := newRecHandler()
	c := startClient(t, path, h)
	defer c.stop(t)
	h.expect(t, "snap:")

	hello := `{"version":1,"type":"hello"}`
	cases := []struct {
		name    string
		packets []string
		withFD  bool
	}{
		{"garbage", []string{"\x00\x01not json at all"}, false},
		{"garbage after hello", []string{hello, "{{{{"}, false},
		{"oversized", []string{strings.Repeat("x", MaxMessageSize+10)}, false},
		{"wrong version", []string{`{"version":2,"type":"hello"}`}, false},
		{"unknown type", []string{hello, `{"version":1,"type":"launch","id":1}`}, false},
		{"fd on hello", []string{hello}, true},
		{"unsolicited ack", []string{hello, `{"version":1,"type":"ack","id":99}`}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rc := rawConn(t, path)
			for i, p := range tc.packets {
				var oob []byte
				if tc.withFD && i == len(tc.packets)-1 {
					oob = unix.UnixRights(int(ns.Fd()))
				}
				if _, _, err := rc.WriteMsgUnix([]byte(p), oob, nil); err != nil {
					t.Fatal(err)
				}
			}
			expectClosed(t, rc)
		})
	}

	// The well-behaved proxy is still connected and working.
	if err := s.AddWorkload(ctxT(t), wl("u1"), ns); err != nil {
		t.Fatalf("AddWorkload after bad peers: %v", err)
	}
	h.expect(t, "add:u1")
	h.expectNone(t) // no reconnect, no second snapshot
}

func TestClientDropsGarbageFromAgent(t *testing.T) {
	path := sockPath(t)
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	h := newRecHandler()
	c := startClient(t, path, h)
	defer c.stop(t)

	readHello := func(conn *net.UnixConn) {
		t.Helper()
		buf := make([]byte, MaxMessageSize)
		_ = conn.SetReadDeadline(time.Now().Add(waitFor))
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		var m message
		if err := json.Unmarshal(buf[:n], &m); err != nil || m.Type != typeHello {
			t.Fatalf("first packet %q is not a hello (%v)", buf[:n], err)
		}
	}
	_ = ln.SetDeadline(time.Now().Add(waitFor))
	conn, err := ln.AcceptUnix()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	readHello(conn)
	if _, err := conn.Write([]byte("definitely not json")); err != nil {
		t.Fatal(err)
	}
	expectClosed(t, conn)

	// The client comes back.
	conn2, err := ln.AcceptUnix()
	if err != nil {
		t.Fatal(err)
	}
	defer conn2.Close()
	readHello(conn2)
	// An add without a descriptor is refused in the ack, not fatal.
	if _, err := conn2.Write([]byte(`{"version":1,"type":"add","id":1,"workload":{"uid":"x"}}`)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, MaxMessageSize)
	n, err := conn2.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	var ack message
	if err := json.Unmarshal(buf[:n], &ack); err != nil || ack.Type != typeAck || ack.ID != 1 || !strings.Contains(ack.Error, "descriptor") {
		t.Fatalf("ack = %s (%v)", buf[:n], err)
	}
	if c.Ready() {
		t.Error("client ready without a snapshot")
	}
	// A drops message without drops is a protocol error.
	if _, err := conn2.Write([]byte(`{"version":1,"type":"drops","id":2}`)); err != nil {
		t.Fatal(err)
	}
	expectClosed(t, conn2)
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.drops) != 0 {
		t.Errorf("handler got drops %v from an empty message", h.drops)
	}
}

func TestAddWorkloadValidation(t *testing.T) {
	s := NewServer(ServerOptions{Logger: testLogger(t)})
	defer s.Close()
	ns, _ := selfNetns(t)
	if err := s.AddWorkload(ctxT(t), workload.Workload{Name: "x"}, ns); err == nil {
		t.Error("AddWorkload without uid succeeded")
	}
	if err := s.AddWorkload(ctxT(t), wl("u1"), nil); err == nil {
		t.Error("AddWorkload without netns succeeded")
	}
	big := wl("big")
	big.Labels = map[string]string{}
	for i := range 2000 {
		big.Labels[fmt.Sprintf("label-%d", i)] = strings.Repeat("v", 60)
	}
	if err := s.AddWorkload(ctxT(t), big, ns); err == nil || !strings.Contains(err.Error(), "limit") {
		t.Errorf("AddWorkload of an oversized workload = %v", err)
	}
	tmpf, err := os.CreateTemp(t.TempDir(), "notns")
	if err != nil {
		t.Fatal(err)
	}
	defer tmpf.Close()
	if err := s.AddWorkload(ctxT(t), wl("u2"), tmpf); err == nil {
		t.Error("AddWorkload with a regular file as netns succeeded")
	}
	if ws := s.Workloads(); len(ws) != 0 {
		t.Errorf("rejected workloads were recorded: %v", ws)
	}
	s.Close()
	if err := s.AddWorkload(ctxT(t), wl("u3"), ns); !errors.Is(err, ErrClosed) {
		t.Errorf("AddWorkload after Close = %v, want ErrClosed", err)
	}
}

func TestSocketFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "a.sock")
	// A stale socket from a dead agent is replaced.
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		t.Fatal(err)
	}
	stale, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	stale.SetUnlinkOnClose(false)
	stale.Close()

	s1, err := Listen(path, testLogger(t))
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 || fi.Mode().Type() != os.ModeSocket {
		t.Errorf("socket mode = %v, want 0600 socket", fi.Mode())
	}
	// A newer agent takes the path over; the old one stopping must not
	// remove the new one's socket.
	s2, err := Listen(path, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	s1.Close()
	if _, err := os.Lstat(path); err != nil {
		t.Fatalf("old server's Close removed the new socket: %v", err)
	}
	h := newRecHandler()
	c := startClient(t, path, h)
	h.expect(t, "snap:")
	c.stop(t)
	s2.Close()
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Errorf("socket left after Close: %v", err)
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 0 {
		t.Errorf("files left behind: %v", entries)
	}
	if err := s2.Start(path); err == nil {
		t.Error("Start after Close succeeded")
	}

	regular := filepath.Join(dir, "file")
	if err := os.WriteFile(regular, []byte("data"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(regular, testLogger(t)); err == nil {
		t.Error("Listen over a regular file succeeded")
	}
}

func TestWaitForSync(t *testing.T) {
	path := sockPath(t)
	ns, _ := selfNetns(t)
	s := startServer(t, path, ServerOptions{WaitForSync: true})
	defer s.stop(t)
	// The restarted agent has found u1 so far.
	if err := s.AddWorkload(ctxT(t), wl("u1"), ns); !errors.Is(err, ErrNoProxy) {
		t.Fatal(err)
	}
	h := newRecHandler()
	c := startClient(t, path, h)
	defer c.stop(t)
	waitProxies(t, s, 1)
	h.expectNone(t) // no (incomplete) snapshot yet
	if c.Ready() {
		t.Fatal("client ready before the agent synced")
	}
	// Live adds still reach the proxy.
	if err := s.AddWorkload(ctxT(t), wl("u2"), ns); err != nil {
		t.Fatal(err)
	}
	h.expect(t, "add:u2")
	if err := s.AddWorkload(ctxT(t), wl("u3"), ns); err != nil {
		t.Fatal(err)
	}
	h.expect(t, "add:u3")
	if err := s.DeleteWorkload(ctxT(t), "u3"); err != nil {
		t.Fatal(err)
	}
	h.expect(t, "del:u3")
	s.MarkSynced()
	h.expect(t, "add:u1", "add:u2", "snap:u1,u2")
	waitReady(t, c)
	s.MarkSynced() // idempotent
	h.expectNone(t)

	// Later proxies get their snapshot on hello.
	h2 := newRecHandler()
	c2 := startClient(t, path, h2)
	defer c2.stop(t)
	h2.expect(t, "add:u1", "add:u2", "snap:u1,u2")
}

func countFDs(t *testing.T) int {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(entries)
}

func fdList() []string {
	entries, _ := os.ReadDir("/proc/self/fd")
	var out []string
	for _, e := range entries {
		target, _ := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
		out = append(out, e.Name()+"->"+target)
	}
	return out
}

// TestNoLeaks runs the whole life cycle and checks that every goroutine and
// descriptor is gone afterwards. It must not run in parallel with others.
func TestNoLeaks(t *testing.T) {
	runtime.GC()
	fdsBefore, fdNames := countFDs(t), fdList()
	goroutinesBefore := runtime.NumGoroutine()

	func() {
		path := sockPath(t)
		ns, err := os.Open("/proc/self/ns/net")
		if err != nil {
			t.Fatal(err)
		}
		defer ns.Close()
		s := startServer(t, path, ServerOptions{AckTimeout: time.Second})
		h1, h2 := newRecHandler(), newRecHandler()
		c1 := startClient(t, path, h1)
		h1.expect(t, "snap:")
		for _, u := range []string{"a", "b", "c"} {
			if err := s.AddWorkload(ctxT(t), wl(u), ns); err != nil {
				t.Fatal(err)
			}
		}
		h1.expect(t, "add:a", "add:b", "add:c")
		c2 := startClient(t, path, h2)
		h2.expect(t, "add:a", "add:b", "add:c", "snap:a,b,c")
		if err := s.AddWorkload(ctxT(t), wl("a"), ns); err != nil { // replace
			t.Fatal(err)
		}
		if err := s.DeleteWorkload(ctxT(t), "b"); err != nil {
			t.Fatal(err)
		}
		// A bad peer with a descriptor attached.
		rc, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: path, Net: "unixpacket"})
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := rc.WriteMsgUnix([]byte("junk"), unix.UnixRights(int(ns.Fd())), nil); err != nil {
			t.Fatal(err)
		}
		expectClosed(t, rc)
		rc.Close()
		c2.stop(t)
		h1.expect(t, "del:b", "add:a", "add:c", "snap:a,c")
		// Agent restart under a running client.
		s.stop(t)
		s2 := startServer(t, path, ServerOptions{})
		h1.expect(t, "snap:")
		c1.stop(t)
		s2.stop(t)
	}()

	deadline := time.Now().Add(waitFor)
	for {
		runtime.GC()
		g, fds := runtime.NumGoroutine(), countFDs(t)
		if g <= goroutinesBefore && fds <= fdsBefore {
			return
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			n := runtime.Stack(buf, true)
			after := fdList()
			var extra []string
			for _, f := range after {
				if !slices.Contains(fdNames, f) {
					extra = append(extra, f)
				}
			}
			t.Fatalf("leak: goroutines %d → %d, fds %d → %d (new: %v)\n%s", goroutinesBefore, g, fdsBefore, fds, extra, buf[:n])
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestReportDrops: drops reach the newest proxy that takes them, in order,
// split into messages of at most MaxDropsPerMessage, with every field; with
// no proxy, or only one whose hello did not list the feature (an older
// proxy, which would close the connection on the unknown type), nothing
// is sent and the error says so.
func TestReportDrops(t *testing.T) {
	path := sockPath(t)
	s := startServer(t, path, ServerOptions{})
	defer s.stop(t)

	drop := func(i int) Drop {
		return Drop{
			Time: time.Date(2026, 11, 22, 10, 0, 0, i, time.UTC), Pod: "vault/rogue", Direction: "from_pod",
			Source: fmt.Sprintf("10.0.1.4:%d", 40000+i), Destination: "10.0.2.5:9000",
			SourcePod: "vault/rogue", DestinationPod: "vault/vecho", Protocol: "tcp", TCPFlags: "SYN",
			Reason: "plaintext_between_enrolled", Interface: "veth0", Length: 60,
		}
	}
	if err := s.ReportDrops(ctxT(t), []Drop{drop(0)}); !errors.Is(err, ErrNoProxy) {
		t.Fatalf("ReportDrops without a proxy = %v, want ErrNoProxy", err)
	}

	// An older proxy: hello without features.
	old := rawConn(t, path)
	if _, _, err := old.WriteMsgUnix([]byte(`{"version":1,"type":"hello"}`), nil, nil); err != nil {
		t.Fatal(err)
	}
	waitProxies(t, s, 1)
	if err := s.ReportDrops(ctxT(t), []Drop{drop(0)}); !errors.Is(err, ErrDropsNotTaken) {
		t.Fatalf("ReportDrops to a proxy without the feature = %v", err)
	}
	// Nothing reached it (it would have closed the connection).
	_ = old.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	buf := make([]byte, MaxMessageSize)
	for {
		n, err := old.Read(buf)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			break
		}
		if err != nil {
			t.Fatalf("reading on the older proxy's connection: %v", err)
		}
		if strings.Contains(string(buf[:n]), `"drops"`) {
			t.Fatalf("the older proxy got %q", buf[:n])
		}
	}
	old.Close()
	waitProxies(t, s, 0)

	h := newRecHandler()
	c := startClient(t, path, h)
	defer c.stop(t)
	h.expect(t, "snap:")
	n := 2*MaxDropsPerMessage + 3
	var drops []Drop
	for i := range n {
		drops = append(drops, drop(i))
	}
	if err := s.ReportDrops(ctxT(t), drops); err != nil {
		t.Fatalf("ReportDrops: %v", err)
	}
	for range 3 { // three messages
		select {
		case ev := <-h.events:
			if !strings.HasPrefix(ev, "drops:") {
				t.Fatalf("handler event %q, want drops", ev)
			}
		case <-time.After(waitFor):
			t.Fatal("drops not delivered")
		}
	}
	h.expectNone(t)
	h.mu.Lock()
	got := h.drops
	h.mu.Unlock()
	if len(got) != n {
		t.Fatalf("proxy got %d drops, want %d", len(got), n)
	}
	for i := range got {
		if !got[i].Time.Equal(drops[i].Time) {
			t.Fatalf("drop %d at %v, want %v: out of order", i, got[i].Time, drops[i].Time)
		}
		got[i].Time = drops[i].Time
		if got[i] != drops[i] {
			t.Fatalf("drop %d = %+v, want %+v", i, got[i], drops[i])
		}
	}
	if err := s.ReportDrops(ctxT(t), nil); err != nil {
		t.Errorf("ReportDrops(nil) = %v", err)
	}

	// Drops too large for MaxDropsPerMessage in one packet go in smaller
	// messages.
	big := make([]Drop, MaxDropsPerMessage)
	for i := range big {
		big[i] = drop(i)
		big[i].Pod = strings.Repeat("p", 2000)
	}
	h.mu.Lock()
	h.drops = nil
	h.mu.Unlock()
	if err := s.ReportDrops(ctxT(t), big); err != nil {
		t.Fatalf("ReportDrops of large drops: %v", err)
	}
	msgs := 0
	for {
		select {
		case ev := <-h.events:
			if !strings.HasPrefix(ev, "drops:") {
				t.Fatalf("handler event %q", ev)
			}
			msgs++
			continue
		case <-time.After(100 * time.Millisecond):
		}
		break
	}
	h.mu.Lock()
	n = len(h.drops)
	h.mu.Unlock()
	if msgs < 2 || n != len(big) {
		t.Errorf("%d large drops arrived in %d messages, want %d in several", n, msgs, len(big))
	}
}

// TestReportDropsAbandoned: messages of a report whose caller stopped
// waiting are not sent, so workload adds queued after them do not wait
// behind a slow proxy's drops.
func TestReportDropsAbandoned(t *testing.T) {
	path := sockPath(t)
	s := startServer(t, path, ServerOptions{})
	defer s.stop(t)
	h := newRecHandler()
	h.dropGate = make(chan struct{})
	c := startClient(t, path, h)
	defer c.stop(t)
	h.expect(t, "snap:")

	drops := make([]Drop, 3*MaxDropsPerMessage)
	for i := range drops {
		drops[i] = Drop{Source: fmt.Sprintf("10.0.0.1:%d", i), Destination: "10.0.0.2:80", Reason: "r"}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := s.ReportDrops(ctx, drops); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("ReportDrops to a stuck proxy = %v, want the deadline", err)
	}
	ns, _ := selfNetns(t)
	added := make(chan error, 1)
	go func() { added <- s.AddWorkload(ctxT(t), wl("u1"), ns) }()
	close(h.dropGate) // the proxy gets going again
	if err := <-added; err != nil {
		t.Fatalf("AddWorkload after an abandoned report: %v", err)
	}
	h.mu.Lock()
	got := len(h.drops)
	h.mu.Unlock()
	if got != MaxDropsPerMessage {
		t.Errorf("the proxy got %d drops, want %d (the message in flight, not the abandoned ones)", got, MaxDropsPerMessage)
	}
}
