package h2

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/palisade-net/palisade/pkg/l7"
	"github.com/palisade-net/palisade/pkg/l7/internal/l7test"
)

// TestConcurrentStreams runs allowed and denied requests concurrently on
// one connection and checks each answer, what the backend saw and the
// records. Repeated custom headers make both HPACK contexts use their
// dynamic tables, so a desynchronised table would fail the decoding.
func TestConcurrentStreams(t *testing.T) {
	b := startBackend(t, nil)
	p := startProxy(t, newJudge("/deny"), b.addr)
	client := h2cClient(nil)
	base := "http://" + p.Addr
	// One request first, so that the rest share its connection.
	if resp, _, err := do(t, client, "GET", base+"/warmup", nil); err != nil || resp.StatusCode != 200 {
		t.Fatalf("warmup: %v %v", resp, err)
	}
	type result struct {
		method, path string
		status       int
		body, xpath  string
		custom       string
		err          error
	}
	var wg sync.WaitGroup
	results := make(chan result, 400)
	for i := range 200 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			method, path := "GET", fmt.Sprintf("/ok/%d", i)
			var body *strings.Reader
			switch i % 4 {
			case 1:
				path = fmt.Sprintf("/deny/%d", i)
			case 2:
				method, path = "POST", fmt.Sprintf("/deny/post/%d", i)
				body = strings.NewReader(strings.Repeat("p", 20000))
			case 3:
				method, path = "POST", fmt.Sprintf("/upload/%d", i)
				body = strings.NewReader(strings.Repeat("u", 20000))
			}
			req, _ := http.NewRequest(method, base+path, nil)
			if body != nil {
				req, _ = http.NewRequest(method, base+path, body)
			}
			req.Header.Set("X-Custom-Request", "a value repeated on every request")
			resp, err := client.Do(req)
			r := result{method: method, path: path, err: err}
			if err == nil {
				var buf bytes.Buffer
				_, r.err = buf.ReadFrom(resp.Body)
				resp.Body.Close()
				r.status, r.body, r.xpath = resp.StatusCode, buf.String(), resp.Header.Get("X-Path")
				r.custom = resp.Header.Get("X-Custom-Response")
				if resp.StatusCode == 403 {
					checkDenied(t, resp, r.body, false)
				}
			}
			results <- r
		}()
	}
	wg.Wait()
	close(results)
	for r := range results {
		if r.err != nil {
			t.Fatalf("%s %s: %v", r.method, r.path, r.err)
		}
		denied := strings.HasPrefix(r.path, "/deny")
		switch {
		case denied && r.status != 403:
			t.Errorf("%s %s: status %d, want 403", r.method, r.path, r.status)
		case !denied && (r.status != 200 || r.xpath != r.path || r.custom != "same value every time"):
			t.Errorf("%s %s: %d %q x-path %q custom %q", r.method, r.path, r.status, r.body, r.xpath, r.custom)
		}
	}
	if n := p.AcceptedConns(); n != 1 {
		t.Fatalf("%d connections, want 1", n)
	}
	if b.SawPrefix("/deny") {
		t.Fatal("a denied request reached the backend")
	}
	if n := len(b.Requests()); n != 101 {
		t.Fatalf("backend saw %d requests, want 101", n)
	}
	recs := p.Recorded()
	if len(recs) != 201 {
		t.Fatalf("%d records, want 201", len(recs))
	}
	for _, r := range recs {
		if r.Protocol != "h2" || r.HTTP == nil || r.HTTP.Host != p.Addr {
			t.Fatalf("record %+v", r)
		}
		denied := strings.HasPrefix(r.HTTP.Path, "/deny")
		if r.Verdict.Allow == denied || denied && r.HTTP.Status != 403 || !denied && r.HTTP.Status != 200 {
			t.Fatalf("record %+v %+v", r, r.HTTP)
		}
	}
}

// TestFlowControl proves the flow-control bookkeeping: denied uploads
// consume the client's connection window, which the backend never
// credits, and denial bodies use the client's receive window, which the
// client credits to the backend. Both windows are small here (64 KiB on
// the backend's and the client's side), so a missing credit stalls the
// transfers and an excess one overflows a window (FLOW_CONTROL_ERROR).
func TestFlowControl(t *testing.T) {
	// The connection windows are the binding ones: streams get more.
	small := &http.HTTP2Config{MaxReceiveBufferPerConnection: 64 << 10, MaxReceiveBufferPerStream: 1 << 20}
	b := startBackend(t, small)
	p := startProxy(t, newJudge("/deny"), b.addr)
	client := h2cClient(small)
	base := "http://" + p.Addr
	for i := range 100 {
		resp, body, err := do(t, client, "POST", fmt.Sprintf("%s/deny/%d", base, i), bytes.NewReader(make([]byte, 64<<10)))
		if err != nil {
			t.Fatalf("denied POST %d: %v", i, err)
		}
		checkDenied(t, resp, body, false)
	}
	const size = 10 << 20
	resp, body, err := do(t, client, "POST", base+"/upload", bytes.NewReader(make([]byte, size)))
	if err != nil || resp.StatusCode != 200 || body != fmt.Sprintf("ok POST /upload %d", size) {
		t.Fatalf("upload after denials: %v %q", err, body)
	}
	// Many small denial bodies, then a download larger than the
	// client's window many times over.
	for i := range 300 {
		resp, body, err := do(t, client, "GET", fmt.Sprintf("%s/deny/get/%d", base, i), nil)
		if err != nil {
			t.Fatalf("denied GET %d: %v", i, err)
		}
		checkDenied(t, resp, body, false)
	}
	resp, body, err = do(t, client, "GET", fmt.Sprintf("%s/download/%d", base, size), nil)
	if err != nil || resp.StatusCode != 200 || len(body) != size {
		t.Fatalf("download after denials: %v, %d bytes", err, len(body))
	}
	// A slow reader keeps the backend at the edge of the client's window,
	// where a backend credited for the proxy's bytes would overrun it.
	resp, err = client.Get(fmt.Sprintf("%s/download/%d", base, 1<<20))
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4<<10)
	total := 0
	for {
		n, err := resp.Body.Read(buf)
		total += n
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("slow download after %d bytes: %v", total, err)
		}
		time.Sleep(200 * time.Microsecond)
	}
	resp.Body.Close()
	if total != 1<<20 {
		t.Fatalf("slow download: %d bytes", total)
	}
	if n := p.AcceptedConns(); n != 1 {
		t.Fatalf("%d connections, want 1", n)
	}
	if b.SawPrefix("/deny") {
		t.Fatal("a denied request reached the backend")
	}
}

// TestFlowBookkeeping checks the arithmetic of flow directly.
func TestFlowBookkeeping(t *testing.T) {
	f := newFlow()
	for range 2 {
		if !f.inject(15) {
			t.Fatal("inject refused with a full window")
		}
	}
	if f.window != initialWindow-30 || f.debt != 30 {
		t.Fatalf("window %d debt %d", f.window, f.debt)
	}
	if got := f.credit(10); got != 0 {
		t.Fatalf("forwarded %d of a credit smaller than the debt", got)
	}
	if got := f.credit(100); got != 80 {
		t.Fatalf("forwarded %d, want 80", got)
	}
	if f.debt != 0 || f.window != initialWindow+80 {
		t.Fatalf("window %d debt %d", f.window, f.debt)
	}
	if !f.take(initialWindow + 80) {
		t.Fatal("take refused")
	}
	if f.inject(1) {
		t.Fatal("inject into a closed window")
	}
	// With debt, backend DATA beyond the client's window waits for
	// credit.
	g := newFlow()
	g.inject(15)
	done := make(chan bool)
	go func() { done <- g.take(initialWindow) }()
	select {
	case <-done:
		t.Fatal("take did not wait for credit")
	default:
	}
	if fwd := g.credit(15); fwd != 0 {
		t.Fatalf("forwarded %d", fwd)
	}
	if !<-done {
		t.Fatal("take failed")
	}
}

// TestHeaderEdits checks that a verdict's edits are what the backend
// sees and that protected headers are not edited.
func TestHeaderEdits(t *testing.T) {
	b := startBackend(t, nil)
	judge := &l7test.Judge{Policy: testPolicy, Edits: map[string][]l7.HeaderEdit{"/edit": {
		{Action: l7.HeaderAdd, Name: "X-Added", Value: "yes"},
		{Action: l7.HeaderDelete, Name: "X-Secret"},
		{Action: l7.HeaderReplace, Name: "x-replace", Value: "new"},
		{Action: l7.HeaderReplace, Name: "Content-Length", Value: "0"},
		{Action: l7.HeaderAdd, Name: "Connection", Value: "close"},
	}}}
	p := startProxy(t, judge, b.addr)
	req, _ := http.NewRequest("POST", "http://"+p.Addr+"/edit", strings.NewReader("abc"))
	req.Header.Add("X-Secret", "1")
	req.Header.Add("X-Secret", "2")
	req.Header.Add("X-Replace", "old")
	req.Header.Add("X-Replace", "old2")
	req.Header.Set("X-Keep", "k")
	resp, err := h2cClient(nil).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	seen := b.Requests()[0]
	for k, want := range map[string]string{"X-Added": "yes", "X-Secret": "", "X-Replace": "new", "X-Keep": "k"} {
		if got := strings.Join(seen.Header.Values(k), ","); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	if len(seen.Body) != 3 {
		t.Errorf("body %d bytes", len(seen.Body))
	}
	if !strings.Contains(p.Logs.String(), "header edit skipped") {
		t.Error("skipped edits not logged")
	}
}

// TestDeniedHEAD checks that a denied HEAD gets headers only.
func TestDeniedHEAD(t *testing.T) {
	b := startBackend(t, nil)
	p := startProxy(t, newJudge("/deny"), b.addr)
	client := h2cClient(nil)
	resp, body, err := do(t, client, "HEAD", "http://"+p.Addr+"/deny", nil)
	if err != nil {
		t.Fatal(err)
	}
	checkDenied(t, resp, body, true)
	if resp, _, err := do(t, client, "GET", "http://"+p.Addr+"/status/204", nil); err != nil || resp.StatusCode != 204 {
		t.Fatalf("after HEAD: %v %v", resp, err)
	}
}

// TestHeaderTableSizes runs requests with large repeated headers while
// either side advertises a small or zero HEADER_TABLE_SIZE: the proxy's
// encoder must follow the backend's setting and its decoders the sizes
// each peer's encoder may use.
func TestHeaderTableSizes(t *testing.T) {
	for _, tt := range []struct{ backend, client int }{{0, 0}, {128, 4096}, {4096, 128}, {65536, 65536}} {
		t.Run(fmt.Sprintf("backend %d client %d", tt.backend, tt.client), func(t *testing.T) {
			// net/http treats 0 as "default"; 1 is as good as zero here.
			b := startBackend(t, &http.HTTP2Config{MaxDecoderHeaderTableSize: max(tt.backend, 1), MaxEncoderHeaderTableSize: max(tt.backend, 1)})
			p := startProxy(t, newJudge("/deny"), b.addr)
			client := h2cClient(&http.HTTP2Config{MaxDecoderHeaderTableSize: max(tt.client, 1), MaxEncoderHeaderTableSize: max(tt.client, 1)})
			for i := range 40 {
				path := fmt.Sprintf("/ok/%d", i)
				if i%3 == 1 {
					path = fmt.Sprintf("/deny/%d", i)
				}
				req, _ := http.NewRequest("GET", "http://"+p.Addr+path, nil)
				req.Header.Set("X-Big", strings.Repeat("b", 100+i%7))
				req.Header.Set("X-Same", "same")
				resp, err := client.Do(req)
				if err != nil {
					t.Fatalf("%s: %v", path, err)
				}
				resp.Body.Close()
				want := 200
				if i%3 == 1 {
					want = 403
				}
				if resp.StatusCode != want || want == 200 && resp.Header.Get("X-Custom-Response") != "same value every time" {
					t.Fatalf("%s: %d %v", path, resp.StatusCode, resp.Header)
				}
			}
			for _, r := range b.Requests() {
				if r.Header.Get("X-Same") != "same" {
					t.Fatalf("backend saw %v", r.Header)
				}
			}
		})
	}
}

// TestContinuationWithDenials interleaves responses whose header blocks
// span CONTINUATION frames with denials the proxy injects: an injected
// frame inside a header block would be a connection error for the client.
func TestContinuationWithDenials(t *testing.T) {
	b := startBackend(t, nil)
	p := startProxy(t, newJudge("/deny"), b.addr)
	client := h2cClient(nil)
	if _, _, err := do(t, client, "GET", "http://"+p.Addr+"/warmup", nil); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for i := range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			path := "/bighead"
			if i%2 == 1 {
				path = "/deny"
			}
			resp, body, err := do(t, client, "GET", "http://"+p.Addr+path, nil)
			switch {
			case err != nil:
				errs <- err
			case path == "/bighead" && (resp.StatusCode != 200 || len(resp.Header.Get("X-Big")) != 50000 || body != "big"):
				errs <- fmt.Errorf("bighead: %d %q", resp.StatusCode, body)
			case path == "/deny" && resp.StatusCode != 403:
				errs <- fmt.Errorf("deny: %d", resp.StatusCode)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if n := p.AcceptedConns(); n != 1 {
		t.Fatalf("%d connections", n)
	}
}
