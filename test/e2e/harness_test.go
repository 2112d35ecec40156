// Package e2e holds Palisade's end-to-end tests. They build a lab of network
// namespaces (pkg/lab) with real agents and node proxies, send real traffic
// from inside pod namespaces, and capture packets on the lab's interfaces.
// They need root; without it they skip outside CI and fail in CI.
package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/palisade-net/palisade/pkg/lab"
	"github.com/palisade-net/palisade/pkg/netns"
)

// requireRoot skips (outside CI) or fails (in CI) when not root.
func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatal("end-to-end tests need root (network namespaces, iptables); CI runs as root")
	}
	t.Skip("end-to-end tests need root (network namespaces, iptables); run sudo make test")
}

var (
	binOnce sync.Once
	binDir  string
	binErr  error
)

// binaries returns a directory with palisade-agent, palisade-nodeproxy,
// lab and kubectl-palisade: $PALISADE_BIN (set by make), or built once into .cache/e2e-bin.
func binaries(t testing.TB) string {
	t.Helper()
	binOnce.Do(func() {
		if d := os.Getenv("PALISADE_BIN"); d != "" {
			binDir = d
			return
		}
		root, err := filepath.Abs("../..")
		if err != nil {
			binErr = err
			return
		}
		binDir = filepath.Join(root, ".cache", "e2e-bin")
		for _, c := range []struct{ out, pkg string }{
			{"palisade-agent", "./cmd/agent"}, {"palisade-nodeproxy", "./cmd/nodeproxy"}, {"lab", "./cmd/lab"},
			{"kubectl-palisade", "./cmd/kubectl-palisade"},
		} {
			cmd := exec.Command("go", "build", "-o", filepath.Join(binDir, c.out), c.pkg)
			cmd.Dir = root
			if out, err := cmd.CombinedOutput(); err != nil {
				binErr = fmt.Errorf("go build %s: %v\n%s", c.pkg, err, out)
				return
			}
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binDir
}

// upLab builds a lab from YAML and tears it down when the test ends,
// printing the Palisade logs of a failed test.
func upLab(t *testing.T, yaml string) *lab.Lab {
	t.Helper()
	return upLabNamed(t, "e2e"+randHex(3), yaml)
}

// upLabNamed is upLab with a chosen lab name (netns names start with it).
func upLabNamed(t *testing.T, name, yaml string) *lab.Lab {
	t.Helper()
	return upLabWith(t, name, yaml, nil)
}

// upLabWith is upLabNamed with a hook that adjusts the lab's configuration
// (for example the identity mode) before it is built.
func upLabWith(t *testing.T, name, yaml string, adjust func(*lab.Config)) *lab.Lab {
	t.Helper()
	requireRoot(t)
	bin := binaries(t)
	objs, err := lab.Decode(yaml)
	if err != nil {
		t.Fatalf("decode lab YAML: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cfg := lab.Config{
		Name:          name,
		StateDir:      filepath.Join(os.TempDir(), "palisade-e2e"),
		BinDir:        bin,
		LabBin:        filepath.Join(bin, "lab"),
		Objects:       objs,
		AgentArgs:     []string{"--log-level", "debug"},
		NodeProxyArgs: []string{"--log-level", "debug", "--drain-timeout", "2s"},
		Logger:        slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}
	if adjust != nil {
		adjust(&cfg)
	}
	l, err := lab.Up(ctx, cfg)
	if err != nil {
		t.Fatalf("lab up: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			dumpLogs(t, l)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := l.Down(ctx); err != nil {
			t.Errorf("lab down: %v", err)
		}
	})
	return l
}

func dumpLogs(t *testing.T, l *lab.Lab) {
	for _, n := range l.Status().Nodes {
		for _, f := range []string{n.AgentLog, n.NodeProxyLog} {
			if f == "" {
				continue
			}
			data, _ := os.ReadFile(f)
			lines := strings.Split(string(data), "\n")
			if len(lines) > 400 {
				lines = lines[len(lines)-400:]
			}
			t.Logf("==== %s (last lines)\n%s", f, strings.Join(lines, "\n"))
		}
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// podNetns opens the pod's network namespace.
func podNetns(t *testing.T, l *lab.Lab, ns, pod string) *netns.Handle {
	t.Helper()
	name, err := l.PodNetns(ns, pod)
	if err != nil {
		t.Fatal(err)
	}
	h, err := netns.Open("/var/run/netns/" + name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

func nodeNetns(t *testing.T, l *lab.Lab, node string) *netns.Handle {
	t.Helper()
	name, err := l.NodeNetns(node)
	if err != nil {
		t.Fatal(err)
	}
	h, err := netns.Open("/var/run/netns/" + name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

// dialFrom connects to addr as the pod's app would: from inside its netns,
// without the proxy mark, so its redirect rules apply.
func dialFrom(ctx context.Context, h *netns.Handle, addr string) (net.Conn, error) {
	d := &netns.Dialer{Netns: h}
	return d.DialContext(ctx, "tcp", addr)
}

// echoRoundTrip sends payload to an echo server at addr from the pod's netns,
// half-closes, and returns what came back.
func echoRoundTrip(ctx context.Context, h *netns.Handle, addr string, payload []byte) ([]byte, error) {
	c, err := dialFrom(ctx, h, addr)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(payload)
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		errc <- err
	}()
	got, rerr := io.ReadAll(c)
	if werr := <-errc; werr != nil {
		return got, fmt.Errorf("write: %w", werr)
	}
	if rerr != nil {
		return got, fmt.Errorf("read: %w", rerr)
	}
	return got, nil
}

// mustEcho asserts a byte-exact echo of a payload carrying marker.
func mustEcho(t *testing.T, h *netns.Handle, addr string, marker string, size int) {
	t.Helper()
	if err := tryEcho(h, addr, marker, size); err != nil {
		t.Fatal(err)
	}
}

// tryEcho is mustEcho returning the failure, for use inside eventually.
func tryEcho(h *netns.Handle, addr string, marker string, size int) error {
	payload := makePayload(marker, size)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	got, err := echoRoundTrip(ctx, h, addr, payload)
	if err != nil {
		return fmt.Errorf("echo via %s: %w", addr, err)
	}
	if !bytes.Equal(got, payload) {
		return fmt.Errorf("echo via %s: got %d bytes, want %d byte-exact", addr, len(got), len(payload))
	}
	return nil
}

// makePayload is random bytes with marker repeated through it, so a capture
// containing any plaintext segment of it is found.
func makePayload(marker string, size int) []byte {
	p := make([]byte, size)
	rand.Read(p)
	for off := 0; off+len(marker) <= size; off += 1000 {
		copy(p[off:], marker)
	}
	return p
}

// eventually polls f until it returns nil or the timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for {
		if err = f(); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still failing after %s: %v", what, timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// adminGet fetches a node proxy admin path from inside the node's netns.
func adminGet(t *testing.T, node *netns.Handle, path string, into any) {
	t.Helper()
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: (&netns.Dialer{Netns: node}).DialContext,
	}}
	resp, err := client.Get("http://127.0.0.1:15000" + path)
	if err != nil {
		t.Fatalf("admin %s: %v", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("admin %s: %s", path, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(into); err != nil {
		t.Fatalf("admin %s: %v", path, err)
	}
}

// flow mirrors nodeproxy.Flow's JSON.
type flow struct {
	Direction    string `json:"direction"`
	Pod          string `json:"pod"`
	Source       string `json:"source"`
	Destination  string `json:"destination"`
	Service      string `json:"service"`
	SrcIdentity  string `json:"sourceIdentity"`
	DstIdentity  string `json:"destinationIdentity"`
	PeerIdentity string `json:"peerIdentity"`
	Transport    string `json:"transport"`
	Protocol     string `json:"protocol"`
	Verdict      string `json:"verdict"`
	Reason       string `json:"reason"`
	BytesSent    int64  `json:"bytesSent"`
	BytesRecv    int64  `json:"bytesReceived"`
}

func flows(t *testing.T, node *netns.Handle) []flow {
	var out []flow
	adminGet(t, node, "/debug/flows", &out)
	return out
}

// capture is a running tcpdump inside a lab netns.
type capture struct {
	t    *testing.T
	cmd  *exec.Cmd
	file string
	done chan error
}

// startCapture records every packet on iface in the named netns until stop.
func startCapture(t *testing.T, netnsName, iface string) *capture {
	t.Helper()
	file := filepath.Join(t.TempDir(), fmt.Sprintf("%s-%s.pcap", netnsName, iface))
	cmd := exec.Command("ip", "netns", "exec", netnsName, "tcpdump", "-i", iface, "-U", "-s", "0", "-n", "-w", file)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("tcpdump: %v", err)
	}
	c := &capture{t: t, cmd: cmd, file: file, done: make(chan error, 1)}
	listening := make(chan struct{})
	var buf bytes.Buffer
	go func() {
		tmp := make([]byte, 512)
		signalled := false
		for {
			n, err := stderr.Read(tmp)
			buf.Write(tmp[:n])
			if !signalled && strings.Contains(buf.String(), "listening on") {
				close(listening)
				signalled = true
			}
			if err != nil {
				break
			}
		}
		c.done <- cmd.Wait()
	}()
	select {
	case <-listening:
	case err := <-c.done:
		t.Fatalf("tcpdump on %s/%s exited: %v: %s", netnsName, iface, err, buf.String())
	case <-time.After(10 * time.Second):
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		t.Fatalf("tcpdump on %s/%s did not start: %s", netnsName, iface, buf.String())
	}
	t.Cleanup(func() { c.stop() })
	return c
}

// stop ends the capture (idempotent) and returns the pcap's bytes.
func (c *capture) stop() []byte {
	if c.cmd.ProcessState == nil {
		time.Sleep(200 * time.Millisecond) // let tcpdump flush the last packets
		syscall.Kill(-c.cmd.Process.Pid, syscall.SIGINT)
		select {
		case <-c.done:
		case <-time.After(5 * time.Second):
			syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
			<-c.done
		}
	}
	data, err := os.ReadFile(c.file)
	if err != nil {
		c.t.Fatalf("read capture: %v", err)
	}
	return data
}

// count returns how many captured packets match a tcpdump filter.
func (c *capture) count(filter string) int {
	c.stop()
	out, err := exec.Command("tcpdump", "-r", c.file, "-nn", filter).Output()
	if err != nil {
		c.t.Fatalf("tcpdump -r %s %q: %v", c.file, filter, err)
	}
	return bytes.Count(out, []byte("\n"))
}

// tlsRecords returns how many packets of port 15008 carry a TLS record
// header (content type 20-23, version 3.x) at the start of the TCP payload.
func (c *capture) tlsRecords() int {
	return c.count("tcp port 15008 and (tcp[((tcp[12]&0xf0)>>2)] >= 0x14 and tcp[((tcp[12]&0xf0)>>2)] <= 0x17 and tcp[((tcp[12]&0xf0)>>2)+1] = 0x03)")
}
