package ebpf

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/palisade-net/palisade/pkg/datapath"
)

// TestDropRecords: events become records naming the pods of both indexes
// and this node's pod on whose interface the packet was dropped; the ring
// keeps the newest; /debug/drops serves them oldest first with ?limit; log
// lines are limited per second and say how many were left out.
func TestDropRecords(t *testing.T) {
	var logs bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&logs, nil))
	m := &Manager{
		log:     log,
		byIndex: map[uint32]*endpoint{7: {key: "shop/a", local: true, index: 7}, 9: {key: "shop/b", index: 9}},
		ifnames: map[uint32]string{12: "veth-p3"},
		drops:   newDropLog(3, log),
	}
	ev := datapath.Event{
		Time:     time.Unix(1700000000, 0),
		Src:      netip.MustParseAddrPort("10.244.1.5:40000"),
		Dst:      netip.MustParseAddrPort("10.244.2.7:8080"),
		SrcIndex: 7, DstIndex: 9, Ifindex: 12, Len: 74, Protocol: 6, TCPFlags: 0x02,
		Reason: datapath.ReasonPlaintext, Direction: datapath.FromPod,
	}
	d := m.dropOf(ev)
	want := Drop{
		Time: ev.Time, Pod: "shop/a", Direction: "from_pod", Source: "10.244.1.5:40000", Destination: "10.244.2.7:8080",
		SourcePod: "shop/a", DestinationPod: "shop/b", Protocol: "tcp", TCPFlags: "SYN",
		Reason: "plaintext_between_enrolled", Interface: "veth-p3", Length: 74,
	}
	if d != want {
		t.Fatalf("record\n%+v, want\n%+v", d, want)
	}
	// Into this node's pod from outside the mesh, on an interface the
	// Manager did not attach (an earlier agent's).
	ev2 := ev
	ev2.Src, ev2.SrcIndex, ev2.Dst, ev2.DstIndex = netip.MustParseAddrPort("10.0.0.1:5555"), 0, netip.MustParseAddrPort("10.244.1.5:80"), 7
	ev2.Direction, ev2.Reason, ev2.Ifindex, ev2.TCPFlags = datapath.ToPod, datapath.ReasonStrict, 99, 0x12
	if d := m.dropOf(ev2); d.Pod != "shop/a" || d.SourcePod != "" || d.Interface != "ifindex 99" || d.TCPFlags != "SYN|ACK" || d.Reason != "strict_plaintext_inbound" {
		t.Errorf("inbound record %+v", d)
	}

	for i := range 5 {
		d := want
		d.Length = uint32(i)
		m.drops.add(d)
	}
	var lens []uint32
	for _, d := range m.Drops() {
		lens = append(lens, d.Length)
	}
	if fmt.Sprint(lens) != "[2 3 4]" {
		t.Errorf("kept %v, want the newest 3 oldest first", lens)
	}
	for _, tc := range []struct {
		query string
		code  int
		n     int
	}{{"", 200, 3}, {"?limit=2", 200, 2}, {"?limit=10", 200, 3}, {"?limit=x", 400, 0}} {
		rec := httptest.NewRecorder()
		m.DropsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/debug/drops"+tc.query, nil))
		if rec.Code != tc.code {
			t.Errorf("GET /debug/drops%s: %d %s", tc.query, rec.Code, rec.Body)
			continue
		}
		if tc.code != 200 {
			continue
		}
		var got []Drop
		if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil || len(got) != tc.n || got[len(got)-1].Length != 4 {
			t.Errorf("GET /debug/drops%s: %v %s", tc.query, err, rec.Body)
		}
	}
	rec := httptest.NewRecorder()
	m.DropsHandler().ServeHTTP(rec, httptest.NewRequest("POST", "/debug/drops", nil))
	if rec.Code != 405 {
		t.Errorf("POST: %d", rec.Code)
	}

	logs.Reset()
	m.drops = newDropLog(3, log)
	clock := time.Unix(1700000000, 0)
	m.drops.now = func() time.Time { return clock }
	for range logBurst + 5 {
		m.drops.add(want)
	}
	if n := strings.Count(logs.String(), "datapath dropped a packet"); n != logBurst {
		t.Errorf("%d lines logged in one window, want %d", n, logBurst)
	}
	clock = clock.Add(time.Second)
	m.drops.add(want)
	lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
	var last map[string]any
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &last); err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]any{
		"pod": "shop/a", "src": "10.244.1.5:40000", "dst": "10.244.2.7:8080", "reason": "plaintext_between_enrolled",
		"src_pod": "shop/a", "dst_pod": "shop/b", "direction": "from_pod", "not_logged_before": float64(5),
	} {
		if last[k] != v {
			t.Errorf("log line %s=%v, want %v (%s)", k, last[k], v, lines[len(lines)-1])
		}
	}
}
