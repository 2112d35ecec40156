package e2e

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/palisade-net/palisade/pkg/flowlog"
	"github.com/palisade-net/palisade/pkg/lab"
	"github.com/palisade-net/palisade/pkg/netns"
	"github.com/palisade-net/palisade/pkg/redirect"
)

// ebpfYAML: namespace vault enrolled in strict mode (rogue and vlocal on
// node1, vecho on node2), namespace shop enrolled permissive (client on
// node1, echo2 on node2), namespace plain not enrolled (visitor on node1,
// web on node2). Every server is a TCP echo on 9000.
const ebpfYAML = `
apiVersion: v1
kind: Namespace
metadata: {name: vault, labels: {palisade.dev/mtls: enabled, palisade.dev/mtls-mode: strict}}
---
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {palisade.dev/mtls: enabled}}
---
apiVersion: v1
kind: Namespace
metadata: {name: plain}
---
apiVersion: v1
kind: Pod
metadata: {name: rogue, namespace: vault}
spec:
  nodeName: node1
  containers: [{name: c, command: ["sleep", "infinity"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: vlocal, namespace: vault}
spec:
  nodeName: node1
  containers: [{name: echo, command: ["$(LAB_BIN)", "serve-echo", "--addr", ":9000"], ports: [{containerPort: 9000}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: vecho, namespace: vault}
spec:
  nodeName: node2
  containers: [{name: echo, command: ["$(LAB_BIN)", "serve-echo", "--addr", ":9000"], ports: [{containerPort: 9000}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: shop}
spec:
  nodeName: node1
  containers: [{name: c, command: ["sleep", "infinity"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: echo2, namespace: shop}
spec:
  nodeName: node2
  containers: [{name: echo, command: ["$(LAB_BIN)", "serve-echo", "--addr", ":9000"], ports: [{containerPort: 9000}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: visitor, namespace: plain}
spec:
  nodeName: node1
  containers: [{name: c, command: ["sleep", "infinity"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: plain}
spec:
  nodeName: node2
  containers: [{name: echo, command: ["$(LAB_BIN)", "serve-echo", "--addr", ":9000"], ports: [{containerPort: 9000}]}]
`

// ebpfDrop mirrors the agent's /debug/drops records (pkg/agent/ebpf.Drop).
type ebpfDrop struct {
	Pod            string `json:"pod"`
	Direction      string `json:"direction"`
	Source         string `json:"source"`
	Destination    string `json:"destination"`
	SourcePod      string `json:"sourcePod"`
	DestinationPod string `json:"destinationPod"`
	Protocol       string `json:"protocol"`
	TCPFlags       string `json:"tcpFlags"`
	Reason         string `json:"reason"`
	Interface      string `json:"interface"`
}

// packetRecords fetches a node proxy's packet records (GET
// /flows?type=packet&verdict=dropped&QUERY).
func packetRecords(t *testing.T, node *netns.Handle, query string) []flowlog.Record {
	t.Helper()
	var out []flowlog.Record
	adminGet(t, node, "/flows?type=packet&verdict=dropped&"+query, &out)
	return out
}

func recordsJSON(rs []flowlog.Record) string {
	b, _ := json.Marshal(rs)
	return string(b)
}

// agentDrops fetches GET /debug/drops from a node's agent over its CNI
// socket.
func agentDrops(t *testing.T, l *lab.Lab, node string) []ebpfDrop {
	t.Helper()
	sock := filepath.Join(l.StateDir(), "nodes", node, "cni.sock")
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}}
	resp, err := c.Get("http://agent/debug/drops")
	if err != nil {
		t.Fatalf("GET /debug/drops on %s: %v", node, err)
	}
	defer resp.Body.Close()
	var out []ebpfDrop
	if resp.StatusCode != 200 {
		body, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET /debug/drops on %s: %s %s", node, resp.Status, body)
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatalf("GET /debug/drops on %s: %v", node, err)
	}
	return out
}

// agentMetrics scrapes the node's agent at 127.0.0.1:15022 inside the node
// netns.
func agentMetrics(t *testing.T, node *netns.Handle) string {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext:       (&netns.Dialer{Netns: node}).DialContext,
	}}
	resp, err := c.Get("http://127.0.0.1:15022/metrics")
	if err != nil {
		t.Fatalf("agent metrics: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("agent metrics: %s %v", resp.Status, err)
	}
	return string(body)
}

// metricValue returns name{labels} (labels sorted by name, as exposed) or
// -1 when the series is absent.
func metricValue(text, name, labels string) float64 {
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name+"{"+labels+"}") + ` (\S+)$`).FindStringSubmatch(text)
	if m == nil {
		return -1
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	return v
}

const (
	rogueDrops  = `direction="from_pod",pod="vault/rogue",reason="plaintext_between_enrolled",verdict="drop"`
	vechoStrict = `direction="to_pod",pod="vault/vecho",reason="strict_plaintext_inbound",verdict="drop"`
)

// mustNotConnect asserts that a plaintext connection from the pod's netns
// to addr, carrying payload, fails: the guard drops its SYN, so the dial
// times out (nothing answers, not even a reset).
func mustNotConnect(t *testing.T, h *netns.Handle, addr string, payload []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	got, err := echoRoundTrip(ctx, h, addr, payload)
	if err == nil || len(got) > 0 {
		t.Fatalf("plaintext to %s: got %d bytes back (err %v), want the connection blocked", addr, len(got), err)
	}
}

// sendRawSegment sends, from inside the pod's netns, one TCP segment
// (PSH|ACK, as in the middle of a connection) carrying payload to dst, as a
// pod that got around its rules with a raw socket would.
func sendRawSegment(t *testing.T, h *netns.Handle, src netip.Addr, dst netip.AddrPort, payload []byte) {
	t.Helper()
	seg := make([]byte, 20+len(payload))
	binary.BigEndian.PutUint16(seg[0:], 40404)
	binary.BigEndian.PutUint16(seg[2:], dst.Port())
	binary.BigEndian.PutUint32(seg[4:], 1000)
	binary.BigEndian.PutUint32(seg[8:], 2000)
	seg[12] = 5 << 4
	seg[13] = 0x18 // PSH|ACK
	binary.BigEndian.PutUint16(seg[14:], 65535)
	copy(seg[20:], payload)
	// Checksum over the pseudo header and the segment.
	s4, d4 := src.As4(), dst.Addr().As4()
	pseudo := append(append(append(s4[:], d4[:]...), 0, unix.IPPROTO_TCP), byte(len(seg)>>8), byte(len(seg)))
	binary.BigEndian.PutUint16(seg[16:], checksum(append(pseudo, seg...)))
	err := h.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_TCP)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		return unix.Sendto(fd, seg, 0, &unix.SockaddrInet4{Addr: d4})
	})
	if err != nil {
		t.Fatalf("raw TCP segment to %s: %v", dst, err)
	}
}

func checksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

// syncCapture sends a UDP datagram carrying a fresh sentinel from the
// netns from to addr (UDP passes the guard) until the capture's file holds
// it: tcpdump hands packets over in blocks, so once the sentinel is in the
// file, so is everything the interface saw before it.
func syncCapture(t *testing.T, c *capture, from *netns.Handle, addr string) {
	t.Helper()
	sentinel := []byte("SYNC-" + randHex(8))
	eventually(t, 20*time.Second, "sentinel in capture "+c.file, func() error {
		err := from.Do(func() error {
			conn, err := net.Dial("udp", addr)
			if err != nil {
				return err
			}
			defer conn.Close()
			_, err = conn.Write(sentinel)
			return err
		})
		if err != nil {
			return err
		}
		data, err := os.ReadFile(c.file)
		if err != nil {
			return err
		}
		if !bytes.Contains(data, sentinel) {
			return fmt.Errorf("not there yet")
		}
		return nil
	})
}

// linkPins lists the pinned TCX links under a node's bpffs.
func linkPins(t *testing.T, l *lab.Lab, node string) []string {
	t.Helper()
	info, err := l.Node(node)
	if err != nil {
		t.Fatal(err)
	}
	if info.BPFFS == "" {
		t.Fatalf("node %s has no bpffs: the lab was not built with EBPF", node)
	}
	entries, err := os.ReadDir(filepath.Join(info.BPFFS, "links"))
	if err != nil {
		t.Fatalf("pinned links of %s: %v", node, err)
	}
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out
}

// TestEBPFGuard is issue 6's end-to-end check, on a two-node lab whose
// agents run the eBPF datapath. A strict pod whose redirect rules were
// flushed (as a pod with NET_ADMIN could) cannot send plaintext to another
// enrolled pod on either node, by connecting or with a raw socket: each
// drop is counted in the agent's metrics, reported with its reason at
// /debug/drops and in the agent's log, and captures past the guard (the
// underlay, the destinations' veths) never see the payload's marker, while
// one on the rogue pod's own veth does see the attempts. HBONE between
// other pods and permissive plaintext keep working, and a strict pod is
// guarded from plaintext connection attempts from outside the mesh. SIGKILL
// of the agent leaves the programs attached (the guard still drops during
// the downtime, the link pins are there) and the restarted agent reports
// the counters including the downtime's drops (not reset) and the drops
// the kernel kept for it; it re-installs the flushed rules, and the guard
// it took over still drops when they are flushed again.
func TestEBPFGuard(t *testing.T) {
	l := upLabWith(t, "e2e"+randHex(3), ebpfYAML, func(c *lab.Config) { c.EBPF = true })
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	node1, node2 := nodeNetns(t, l, "node1"), nodeNetns(t, l, "node2")
	rogue := podNetns(t, l, "vault", "rogue")
	client := podNetns(t, l, "shop", "client")
	visitor := podNetns(t, l, "plain", "visitor")
	vecho := podAddr(t, l, "vault", "vecho", 9000)
	vlocal := podAddr(t, l, "vault", "vlocal", 9000)
	echo2 := podAddr(t, l, "shop", "echo2", 9000)
	web := podAddr(t, l, "plain", "web", 9000)
	rogueIP, err := l.PodIP("vault", "rogue")
	if err != nil {
		t.Fatal(err)
	}

	for _, n := range []*netns.Handle{node1, node2} {
		if m := agentMetrics(t, n); metricValue(m, "palisade_datapath_mode", `mode="ebpf"`) != 1 {
			t.Fatalf("agent not in eBPF mode:\n%s", m)
		}
	}
	// Programs on every enrolled pod of node1 (rogue, vlocal, client), in
	// both directions; none on visitor.
	if pins := linkPins(t, l, "node1"); len(pins) != 6 {
		t.Fatalf("node1 link pins %v, want 6 (3 enrolled pods, 2 directions)", pins)
	}

	// Before the flush: everything works through the mesh, and a strict pod
	// is closed to plaintext from outside the mesh.
	mustEcho(t, rogue, vecho, "rules-in-place", 4096)
	mustEcho(t, client, echo2, "hbone-before", 4096)
	mustEcho(t, visitor, echo2, "permissive-before", 4096)
	mustNotConnect(t, visitor, vecho, []byte("plaintext into strict"))
	eventually(t, 10*time.Second, "node2 counts and reports the strict drop", func() error {
		if v := metricValue(agentMetrics(t, node2), "palisade_ebpf_packets_total", vechoStrict); v < 1 {
			return fmt.Errorf("palisade_ebpf_packets_total{%s} = %v", vechoStrict, v)
		}
		for _, d := range agentDrops(t, l, "node2") {
			if d.Pod == "vault/vecho" && d.Reason == "strict_plaintext_inbound" && d.Destination == vecho && d.Direction == "to_pod" {
				return nil
			}
		}
		return fmt.Errorf("no strict drop for %s in /debug/drops", vecho)
	})

	marker := "EBPF-GUARD-" + randHex(8)
	payload := makePayload(marker, 1200)
	underlay := startCapture(t, l.UnderlayNetns(), lab.UnderlayBridge)
	vechoNS, vechoVeth := hostVeth(t, l, "vault", "vecho")
	vechoCap := startCapture(t, vechoNS, vechoVeth)
	vlocalNS, vlocalVeth := hostVeth(t, l, "vault", "vlocal")
	vlocalCap := startCapture(t, vlocalNS, vlocalVeth)
	echo2NS, echo2Veth := hostVeth(t, l, "shop", "echo2")
	echo2Cap := startCapture(t, echo2NS, echo2Veth)
	rogueNS, rogueVeth := hostVeth(t, l, "vault", "rogue")
	rogueCap := startCapture(t, rogueNS, rogueVeth)

	// The attack: the pod's redirect rules are gone.
	if err := redirect.Remove(ctx, rogue, redirect.DefaultConfig()); err != nil {
		t.Fatal(err)
	}
	if rulesInstalled(t, rogue) {
		t.Fatal("rules still installed after the flush")
	}
	mustNotConnect(t, rogue, vecho, payload)  // strict, other node
	mustNotConnect(t, rogue, vlocal, payload) // strict, same node
	mustNotConnect(t, rogue, echo2, payload)  // permissive, other node
	sendRawSegment(t, rogue, rogueIP, netip.MustParseAddrPort(vecho), payload)
	// Plaintext to a pod outside the mesh is not the guard's business.
	mustEcho(t, rogue, web, "rogue-to-plain", 4096)
	// Everyone else is unaffected: HBONE, strict to strict through the
	// mesh, permissive plaintext from outside the mesh.
	mustEcho(t, client, echo2, "hbone-during", 64<<10)
	mustEcho(t, client, vecho, "hbone-into-strict", 4096)
	mustEcho(t, visitor, echo2, "permissive-during", 4096)
	waitFlowTo(t, node1, echo2, "hbone")

	var before float64
	eventually(t, 10*time.Second, "node1 counts the rogue pod's drops", func() error {
		before = metricValue(agentMetrics(t, node1), "palisade_ebpf_packets_total", rogueDrops)
		if before < 4 { // at least one SYN per connection attempt and the raw segment
			return fmt.Errorf("palisade_ebpf_packets_total{%s} = %v, want >= 4", rogueDrops, before)
		}
		return nil
	})
	eventually(t, 10*time.Second, "node1 reports the drops with their reason", func() error {
		var syn, raw, local bool
		for _, d := range agentDrops(t, l, "node1") {
			if d.Pod != "vault/rogue" || d.Reason != "plaintext_between_enrolled" || d.SourcePod != "vault/rogue" ||
				d.Direction != "from_pod" || d.Interface != rogueVeth || !strings.HasPrefix(d.Source, rogueIP.String()+":") {
				continue
			}
			switch {
			case d.Destination == vecho && d.DestinationPod == "vault/vecho" && d.TCPFlags == "SYN":
				syn = true
			case d.Destination == vecho && d.TCPFlags == "PSH|ACK" && d.Source == rogueIP.String()+":40404":
				raw = true
			case d.Destination == vlocal && d.DestinationPod == "vault/vlocal":
				local = true
			}
		}
		if !syn || !raw || !local {
			return fmt.Errorf("connection attempt to %s %v, raw segment %v, same-node attempt %v", vecho, syn, raw, local)
		}
		return nil
	})
	// The agent hands the drops to its node proxy: they are flow records
	// (what kubectl palisade observe streams), both sides named with
	// their identities.
	eventually(t, 10*time.Second, "node1's node proxy records the rogue pod's drops", func() error {
		for _, r := range packetRecords(t, node1, "pod=vault/rogue") {
			if r.Node == "node1" && r.Pod == "vault/rogue" && r.Direction == "outbound" && r.Protocol == "tcp" &&
				r.Reason == "plaintext_between_enrolled" && r.Source.Pod == "rogue" && strings.HasSuffix(r.Source.Identity, "/ns/vault/sa/default") &&
				r.Destination.Pod == "vecho" && r.Destination.Address == vecho && r.Destination.Identity != "" &&
				r.Packet != nil && r.Packet.TCPFlags == "SYN" && r.Packet.Interface == rogueVeth {
				return nil
			}
		}
		return fmt.Errorf("no dropped SYN to %s among node1's packet records %s", vecho, recordsJSON(packetRecords(t, node1, "")))
	})
	eventually(t, 10*time.Second, "node2's node proxy records the strict drop", func() error {
		for _, r := range packetRecords(t, node2, "pod=vault/vecho") {
			if r.Pod == "vault/vecho" && r.Direction == "inbound-plaintext" && r.Reason == "strict_plaintext_inbound" &&
				r.Destination.Pod == "vecho" && r.Source.Pod == "visitor" && r.Source.Namespace == "plain" {
				return nil
			}
		}
		return fmt.Errorf("no strict drop into vecho among node2's packet records %s", recordsJSON(packetRecords(t, node2, "")))
	})
	info1, err := l.Node("node1")
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "node1's agent logs the drop", func() error {
		data, err := os.ReadFile(info1.AgentLog)
		if err != nil {
			return err
		}
		for _, line := range strings.Split(string(data), "\n") {
			if strings.Contains(line, `msg="datapath dropped a packet"`) && strings.Contains(line, "pod=vault/rogue") &&
				strings.Contains(line, "reason=plaintext_between_enrolled") && strings.Contains(line, "dst="+vecho) &&
				strings.Contains(line, "src="+rogueIP.String()+":") {
				return nil
			}
		}
		return fmt.Errorf("no drop line for vault/rogue -> %s in %s", vecho, info1.AgentLog)
	})

	// No byte of the payload got past the guard; the attempts did reach it.
	visitorAddr := podAddr(t, l, "plain", "visitor", 9)
	syncCapture(t, underlay, visitor, podAddr(t, l, "shop", "echo2", 9))
	syncCapture(t, vechoCap, visitor, podAddr(t, l, "vault", "vecho", 9))
	syncCapture(t, vlocalCap, visitor, podAddr(t, l, "vault", "vlocal", 9))
	syncCapture(t, echo2Cap, visitor, podAddr(t, l, "shop", "echo2", 9))
	syncCapture(t, rogueCap, rogue, visitorAddr)
	// The rogue pod's plaintext to enrolled pods (its plaintext to web, out
	// of the mesh, is allowed).
	webIP, _, _ := strings.Cut(web, ":")
	rogueFilter := fmt.Sprintf("src host %s and tcp and not port 15008 and not dst host %s", rogueIP, webIP)
	for _, c := range []struct {
		name string
		cap  *capture
	}{{"underlay", underlay}, {"vecho's veth", vechoCap}, {"vlocal's veth", vlocalCap}, {"echo2's veth", echo2Cap}} {
		if n := c.cap.count(rogueFilter); n != 0 {
			t.Errorf("%s: %d plaintext packets of the rogue pod got past the guard", c.name, n)
		}
		if bytes.Contains(c.cap.stop(), []byte(marker)) {
			t.Errorf("%s: the payload's marker %s escaped", c.name, marker)
		}
	}
	// Controls: the underlay capture did see the rogue pod's allowed
	// plaintext to web and the other pods' HBONE.
	if n := underlay.count(fmt.Sprintf("src host %s and dst host %s and tcp", rogueIP, webIP)); n == 0 {
		t.Error("the rogue pod's plaintext to web is not on the underlay: the capture missed traffic")
	}
	if n := underlay.tlsRecords(); n == 0 {
		t.Error("no TLS on 15008 on the underlay: the HBONE traffic was not captured")
	}
	if n := rogueCap.count(fmt.Sprintf("src host %s and dst port 9000 and tcp[tcpflags] & tcp-syn != 0", rogueIP)); n < 3 {
		t.Errorf("the rogue pod's veth saw %d connection attempts, want >= 3 (the capture runs before the guard)", n)
	}
	if !bytes.Contains(rogueCap.stop(), []byte(marker)) {
		t.Error("the raw segment's marker is not on the rogue pod's own veth: the capture cannot have missed it elsewhere")
	}

	// Restart: the guard goes on without the agent, and its counters with
	// it.
	rawRecords := func() int {
		n := 0
		for _, r := range packetRecords(t, node1, "pod=vault/rogue") {
			if r.Packet != nil && r.Packet.TCPFlags == "PSH|ACK" && r.Destination.Address == vecho {
				n++
			}
		}
		return n
	}
	var rawBefore int
	eventually(t, 10*time.Second, "node1's node proxy records the raw segment", func() error {
		if rawBefore = rawRecords(); rawBefore == 0 {
			return errors.New("no PSH|ACK packet record")
		}
		return nil
	})
	pins := linkPins(t, l, "node1")
	if err := l.StopAgent(ctx, "node1", syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	mustNotConnect(t, rogue, vecho, payload)
	sendRawSegment(t, rogue, rogueIP, netip.MustParseAddrPort(vecho), payload)
	mustEcho(t, client, echo2, "hbone-agent-down", 4096)
	if got := linkPins(t, l, "node1"); !slices.Equal(got, pins) {
		t.Errorf("link pins while the agent is down %v, want %v", got, pins)
	}
	agentLog := filepath.Join(l.StateDir(), "nodes", "node1", "agent.log")
	restartMark := fileSize(t, agentLog)
	if err := l.StartAgent(ctx, "node1"); err != nil {
		t.Fatal(err)
	}
	// The restarted agent may reconcile before the node proxy has
	// reconnected; it then retries the hand-off (re-installing rules) until
	// the proxy takes the pod. Flushing rules before that would race it.
	eventually(t, 20*time.Second, "the restarted agent hands the rogue pod to the node proxy", func() error {
		data, err := os.ReadFile(agentLog)
		if err != nil {
			return err
		}
		for _, line := range strings.Split(string(data[min(restartMark, int64(len(data))):]), "\n") {
			if strings.Contains(line, `msg="pod enrolled"`) && strings.Contains(line, "pod=vault/rogue") {
				return nil
			}
		}
		return errors.New(`no "pod enrolled" line for vault/rogue since the restart`)
	})
	after := metricValue(agentMetrics(t, node1), "palisade_ebpf_packets_total", rogueDrops)
	if after < before+2 {
		t.Errorf("after the restart palisade_ebpf_packets_total{%s} = %v, want >= %v: the counters were reset or missed the downtime", rogueDrops, after, before+2)
	}
	// The new agent starts with an empty list: what it reports of the
	// rogue pod's drops is what the kernel kept during the downtime.
	eventually(t, 10*time.Second, "the restarted agent reports the downtime's drops", func() error {
		for _, d := range agentDrops(t, l, "node1") {
			if d.Pod == "vault/rogue" && d.Destination == vecho && d.TCPFlags == "PSH|ACK" && d.Reason == "plaintext_between_enrolled" {
				return nil
			}
		}
		return fmt.Errorf("no raw segment drop in %v", agentDrops(t, l, "node1"))
	})
	// ... and hands them to the node proxy, which kept running.
	eventually(t, 10*time.Second, "the node proxy records the downtime's drops", func() error {
		if n := rawRecords(); n <= rawBefore {
			return fmt.Errorf("%d raw segment records, as many as before the restart", n)
		}
		return nil
	})
	if got := linkPins(t, l, "node1"); !slices.Equal(got, pins) {
		t.Errorf("link pins after the restart %v, want the same %v (taken over, not recreated)", got, pins)
	}
	// The restarted agent re-enrolled the pod, rules included; the guard
	// it took over still drops when they are flushed again.
	if !rulesInstalled(t, rogue) {
		t.Error("the restarted agent did not re-install the rogue pod's rules")
	}
	mustEcho(t, rogue, vecho, "rules-back", 4096)
	if err := redirect.Remove(ctx, rogue, redirect.DefaultConfig()); err != nil {
		t.Fatal(err)
	}
	mustNotConnect(t, rogue, vecho, payload)
	eventually(t, 10*time.Second, "the restarted agent counts new drops", func() error {
		if v := metricValue(agentMetrics(t, node1), "palisade_ebpf_packets_total", rogueDrops); v <= after {
			return fmt.Errorf("palisade_ebpf_packets_total{%s} = %v, want > %v", rogueDrops, v, after)
		}
		return nil
	})
	mustEcho(t, client, echo2, "hbone-after-restart", 4096)
	mustEcho(t, visitor, echo2, "permissive-after-restart", 4096)
}

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}
