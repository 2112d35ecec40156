package flowlog

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	"github.com/palisade-net/palisade/pkg/l7"
)

func testRecord(i int, verdict string) *Record {
	return &Record{
		Time: time.Unix(1700000000, 0).UTC(), Type: TypeRequest, Node: "n1", Direction: "inbound-hbone",
		Source:      Endpoint{Pod: "client", Namespace: "shop", Workload: "client", Address: "10.1.0.2:40000", Labels: map[string]string{"app": "client"}},
		Destination: Endpoint{Pod: "api", Namespace: "shop", Workload: "api", Address: "10.1.1.2:8080", Labels: map[string]string{"app": "api", "tier": "backend"}},
		Protocol:    ProtoHTTP, HTTP: &l7.HTTPRecord{Method: "GET", Path: fmt.Sprintf("/item/%d", i), Status: 200},
		Verdict: verdict,
	}
}

func TestWorkloadName(t *testing.T) {
	for _, tc := range []struct {
		pod    string
		labels map[string]string
		want   string
	}{
		{"api-7d9f8c-x2k4p", map[string]string{"app.kubernetes.io/name": "shop-api", "app": "api"}, "shop-api"},
		{"api-7d9f8c-x2k4p", map[string]string{"app": "api"}, "api"},
		{"api-7d9f8c-x2k4p", map[string]string{"pod-template-hash": "7d9f8c"}, "api"},
		{"db-2", map[string]string{"statefulset.kubernetes.io/pod-name": "db-2", "controller-revision-hash": "db-5d8f"}, "db"},
		{"fluentd-x7k2p", map[string]string{"controller-revision-hash": "6b9c7d"}, "fluentd"},
		{"migrate-9xq2z", map[string]string{"batch.kubernetes.io/job-name": "migrate", "job-name": "migrate"}, "migrate"},
		{"backup-28312345-9xq2z", map[string]string{"job-name": "backup-28312345"}, "backup"},
		{"standalone", nil, "standalone"},
	} {
		if got := WorkloadName(tc.pod, tc.labels); got != tc.want {
			t.Errorf("WorkloadName(%q, %v) = %q, want %q", tc.pod, tc.labels, got, tc.want)
		}
	}
}

// TestFileRotationHoldsCap writes far more than the cap from several
// goroutines and checks that no file passes it, that at most MaxFiles
// exist, that every record is either written or counted as dropped, and
// that every line on disk is a whole record.
func TestFileRotationHoldsCap(t *testing.T) {
	dir := t.TempDir()
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	cfg := FileConfig{Path: filepath.Join(dir, "flows.jsonl"), MaxBytes: 64 << 10, MaxFiles: 3, Queue: 256}
	f, err := OpenFile(cfg, m, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	const writers, each = 8, 5000
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				f.Add(testRecord(w*each+i, Allowed))
			}
		})
	}
	wg.Wait()
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	written := testutil.ToFloat64(m.fileWritten)
	dropped := testutil.ToFloat64(m.fileDropped)
	if written+dropped != writers*each {
		t.Fatalf("written %v + dropped %v != %d submitted", written, dropped, writers*each)
	}
	if written == 0 || testutil.ToFloat64(m.rotations) == 0 {
		t.Fatalf("written %v, rotations %v: the test did not exercise rotation", written, testutil.ToFloat64(m.rotations))
	}
	files, _ := filepath.Glob(cfg.Path + "*")
	if len(files) > cfg.MaxFiles {
		t.Errorf("%d files %v, cap %d", len(files), files, cfg.MaxFiles)
	}
	for _, name := range files {
		st, err := os.Stat(name)
		if err != nil {
			t.Fatal(err)
		}
		if st.Size() > cfg.MaxBytes {
			t.Errorf("%s: %d bytes, cap %d", name, st.Size(), cfg.MaxBytes)
		}
		fh, _ := os.Open(name)
		sc := bufio.NewScanner(fh)
		for sc.Scan() {
			var r Record
			if err := json.Unmarshal(sc.Bytes(), &r); err != nil || r.HTTP == nil {
				t.Fatalf("%s: bad line %q: %v", name, sc.Text(), err)
			}
		}
		fh.Close()
	}
}

// TestFileDropsWhenQueueFull stalls the writer and checks that Add never
// blocks and counts what it could not queue.
func TestFileDropsWhenQueueFull(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	f := &File{cfg: FileConfig{Queue: 4}, m: m, wake: make(chan struct{}, 1)} // no writer running
	for i := range 10 {
		f.Add(testRecord(i, Allowed))
	}
	if got := testutil.ToFloat64(m.fileDropped); got != 6 {
		t.Errorf("dropped %v, want 6", got)
	}
}

func TestFileRefusesOversizedRecordAndCountsIt(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	path := filepath.Join(t.TempDir(), "f.jsonl")
	f, err := OpenFile(FileConfig{Path: path, MaxBytes: 1000, MaxFiles: 2}, m, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	big := testRecord(0, Denied)
	big.Reason = strings.Repeat("x", 1200)
	f.Add(big)
	f.Add(testRecord(1, Allowed))
	f.Close()
	if testutil.ToFloat64(m.fileDropped) != 1 || testutil.ToFloat64(m.fileWritten) != 1 {
		t.Errorf("dropped %v written %v, want 1 and 1", testutil.ToFloat64(m.fileDropped), testutil.ToFloat64(m.fileWritten))
	}
}

func flowLogObjects(t *testing.T, docs ...string) []*unstructured.Unstructured {
	t.Helper()
	var out []*unstructured.Unstructured
	for _, d := range docs {
		var m map[string]any
		if err := yaml.Unmarshal([]byte(d), &m); err != nil {
			t.Fatal(err)
		}
		out = append(out, &unstructured.Unstructured{Object: m})
	}
	return out
}

func TestSelection(t *testing.T) {
	const head = "apiVersion: policy.palisade.dev/v1alpha1\nkind: FlowLog\nmetadata: {name: %s}\nspec:\n"
	denied := testRecord(1, Denied)
	allowed := testRecord(2, Allowed)
	other := testRecord(3, Denied)
	other.Source.Namespace, other.Destination.Namespace = "bank", "bank"
	conn := testRecord(4, Allowed)
	conn.Type, conn.Protocol, conn.HTTP = TypeConnection, ProtoTCP, nil
	drop := testRecord(5, Dropped)
	drop.Type, drop.Protocol, drop.HTTP, drop.Packet = TypePacket, ProtoUDP, nil, &Packet{Interface: "veth0", Length: 60}
	for _, tc := range []struct {
		name, spec string
		want       map[*Record]bool
	}{
		{"everything", "  {}", map[*Record]bool{denied: true, allowed: true, other: true, conn: true, drop: true}},
		{"datapath drops", "  verdicts: [dropped]", map[*Record]bool{drop: true}},
		{"udp", "  protocols: [udp, icmp]", map[*Record]bool{drop: true}},
		{"denied in shop", "  namespaces: [shop]\n  verdicts: [denied]", map[*Record]bool{denied: true}},
		{"backend pods", "  podSelector: {matchLabels: {tier: backend}}\n  protocols: [http]", map[*Record]bool{denied: true, allowed: true, other: true}},
		{"tcp only", "  protocols: [tcp]", map[*Record]bool{conn: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sel, problems := Compile(flowLogObjects(t, fmt.Sprintf(head, "a")+tc.spec))
			if len(problems) > 0 || sel.Len() != 1 {
				t.Fatalf("problems %v, len %d", problems, sel.Len())
			}
			for _, r := range []*Record{denied, allowed, other, conn, drop} {
				if got := sel.Selects(r); got != tc.want[r] {
					t.Errorf("record %s %s %s: selected %v, want %v", r.Protocol, r.Verdict, r.Source.Namespace, got, tc.want[r])
				}
			}
		})
	}
	var none *Selection
	if none.Selects(denied) || (&Selection{}).Selects(denied) {
		t.Error("no FlowLog must select nothing")
	}
	_, problems := Compile(flowLogObjects(t,
		fmt.Sprintf(head, "bad")+"  protocols: [smtp]",
		fmt.Sprintf(head, "worse")+"  podSelector: {matchExpressions: [{key: a, operator: Nearly}]}",
		fmt.Sprintf(head, "typo")+"  namespace: [shop]"))
	if len(problems) != 3 || !strings.Contains(problems[0].Message, "spec.protocols[0]") || problems[1].Name != "worse" ||
		!strings.Contains(problems[2].Message, "namespace") {
		t.Errorf("problems = %+v", problems)
	}
}

func TestFilter(t *testing.T) {
	r := testRecord(1, Denied)
	for _, tc := range []struct {
		query string
		want  bool
	}{
		{"", true},
		{"namespace=shop&verdict=denied", true},
		{"namespace=bank", false},
		{"pod=shop/api&protocol=http,grpc", true},
		{"pod=api", true},
		{"pod=other/api", false},
		{"verdict=allowed", false},
		{"type=connection", false},
		{"type=packet,request&verdict=denied,dropped", true},
		{"type=packet", false},
	} {
		q, _ := url.ParseQuery(tc.query)
		f, err := ParseFilter(q)
		if err != nil {
			t.Fatalf("%q: %v", tc.query, err)
		}
		if got := f.Matches(r); got != tc.want {
			t.Errorf("%q: %v, want %v", tc.query, got, tc.want)
		}
		back, _ := ParseFilter(f.Query())
		if back.Matches(r) != tc.want {
			t.Errorf("%q: Query() does not round-trip", tc.query)
		}
	}
	if _, err := ParseFilter(url.Values{"verdict": {"maybe"}}); err == nil || !strings.Contains(err.Error(), "verdict") {
		t.Errorf("bad verdict: %v", err)
	}
}

// TestStreamDeliversLiveAndReportsLost follows the stream over HTTP: a
// record published after the reader connected arrives, filtered, and a
// reader that fell behind gets a lost marker with the count.
func TestStreamDeliversLiveAndReportsLost(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	hub := NewHub(10, m)
	p := NewPipeline(hub, nil)
	srv := httptest.NewServer(p)
	defer srv.Close()

	client := &http.Client{Timeout: time.Minute}
	resp, err := client.Get(srv.URL + "/?follow=1&verdict=denied")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	waitSubs(t, hub, 1)
	p.Add(testRecord(1, Allowed))
	p.Add(testRecord(2, Denied))
	br := bufio.NewReader(resp.Body)
	got := readRecord(t, br)
	if got.Verdict != Denied || got.HTTP.Path != "/item/2" {
		t.Fatalf("first streamed record %+v", got)
	}

	// Without follow: the recent records, filtered, as a JSON array.
	resp2, err := http.Get(srv.URL + "/?verdict=allowed")
	if err != nil {
		t.Fatal(err)
	}
	var recent []Record
	json.NewDecoder(resp2.Body).Decode(&recent)
	resp2.Body.Close()
	if len(recent) != 1 || recent[0].Verdict != Allowed {
		t.Errorf("recent allowed = %+v", recent)
	}
	// Publish without reading until the stream's socket buffers and the
	// subscriber's buffer are full and records are dropped.
	published := 0
	for testutil.ToFloat64(m.streamDropped) == 0 {
		if published > 1_000_000 {
			t.Fatal("no stream drop counted")
		}
		hub.Publish(testRecord(3, Denied))
		published++
	}
	// Reading on, a lost marker must come before the records published
	// so far run out (the client's timeout ends a stuck read).
	lost := false
	for range published {
		r := readRecord(t, br)
		if r.Type == TypeLost {
			if r.Lost < 1 {
				t.Fatalf("lost marker %+v", r)
			}
			lost = true
			break
		}
	}
	if !lost {
		t.Fatalf("no lost marker among %d records (dropped %v)", published, testutil.ToFloat64(m.streamDropped))
	}

	if r, _ := http.Get(srv.URL + "/?protocol=smtp"); r.StatusCode != 400 {
		t.Errorf("bad filter: status %d, want 400", r.StatusCode)
	}
}

func waitSubs(t *testing.T, h *Hub, n int) {
	t.Helper()
	subs := func() int {
		h.mu.RLock()
		defer h.mu.RUnlock()
		return len(h.subs)
	}
	for i := 0; subs() < n; i++ {
		if i > 500 {
			t.Fatal("subscriber did not register")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func readRecord(t *testing.T, br *bufio.Reader) Record {
	t.Helper()
	for {
		line, err := br.ReadBytes('\n')
		if err != nil && err != io.EOF {
			t.Fatal(err)
		}
		if strings.TrimSpace(string(line)) == "" {
			if err == io.EOF {
				t.Fatal("stream ended")
			}
			continue
		}
		var r Record
		if err := json.Unmarshal(line, &r); err != nil {
			t.Fatalf("line %q: %v", line, err)
		}
		return r
	}
}

func BenchmarkAppendJSON(b *testing.B) {
	r := testRecord(1, Allowed)
	var buf []byte
	b.ReportAllocs()
	for b.Loop() {
		buf, _ = appendJSON(buf[:0], r)
	}
}
