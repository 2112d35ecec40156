package nodeproxy

import (
	"bytes"
	"crypto/rand"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"io"
	"net"
	"testing"
	"time"
)

func TestForwardedFor(t *testing.T) {
	tests := []struct{ in, want string }{
		{`for="10.0.0.1:5000"`, "10.0.0.1:5000"},
		{`proto=https; for="[fd00::1]:80"`, "[fd00::1]:80"},
		{`FOR=10.0.0.2:1`, "10.0.0.2:1"},
		{``, ``},
		{`by=x`, `by=x`},
	}
	for _, tt := range tests {
		if got := forwardedFor(tt.in); got != tt.want {
			t.Errorf("forwardedFor(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestFlowRing(t *testing.T) {
	r := newRing[Flow](3)
	if got := r.list(); len(got) != 0 {
		t.Fatalf("empty ring lists %d", len(got))
	}
	for i := range 5 {
		r.add(Flow{Pod: string(rune('a' + i))})
	}
	var pods string
	for _, f := range r.list() {
		pods += f.Pod
	}
	if pods != "cde" {
		t.Fatalf("ring keeps %q, want the newest three oldest first (cde)", pods)
	}
}

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	acc := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		acc <- c
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s := <-acc
	t.Cleanup(func() { c.Close(); s.Close() })
	return c, s
}

// TestPipeHalfClose: a client that half-closes after its request still gets
// the whole response, byte counts are right, and both ends are closed.
func TestPipeHalfClose(t *testing.T) {
	for _, name := range []string{"tcp-tcp (splice)", "pooled-buffer"} {
		t.Run(name, func(t *testing.T) {
			app, proxyDown := tcpPair(t)   // app ⇄ proxy
			proxyUp, backend := tcpPair(t) // proxy ⇄ backend
			var down, up net.Conn = proxyDown, proxyUp
			if name == "pooled-buffer" {
				down, up = halfConn{proxyDown.(*net.TCPConn)}, halfConn{proxyUp.(*net.TCPConn)}
			}
			req := make([]byte, 300<<10)
			rand.Read(req)
			resp := bytes.Repeat([]byte("r"), 200<<10)
			type result struct{ ab, ba int64 }
			done := make(chan result, 1)
			go func() {
				ab, ba, _ := newBufPool().pipe(down, up)
				done <- result{ab, ba}
			}()
			// Backend: read the request to EOF (the client's half-close must
			// arrive), then answer and close.
			bdone := make(chan []byte, 1)
			go func() {
				got, _ := io.ReadAll(backend)
				backend.Write(resp)
				backend.Close()
				bdone <- got
			}()
			app.Write(req)
			app.(*net.TCPConn).CloseWrite()
			app.SetReadDeadline(time.Now().Add(10 * time.Second))
			got, err := io.ReadAll(app)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(<-bdone, req) {
				t.Fatal("backend did not receive the request byte-exact")
			}
			if !bytes.Equal(got, resp) {
				t.Fatalf("app got %d bytes, want %d", len(got), len(resp))
			}
			r := <-done
			if r.ab != int64(len(req)) || r.ba != int64(len(resp)) {
				t.Fatalf("counted %d/%d, want %d/%d", r.ab, r.ba, len(req), len(resp))
			}
		})
	}
}

// halfConn hides *net.TCPConn so pipe takes its generic path.
type halfConn struct{ *net.TCPConn }

func (h halfConn) CloseWrite() error { return h.TCPConn.CloseWrite() }

func TestFinishRecordsFlowAndMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	p := &Proxy{flows: newRing[Flow](4), metrics: newMetrics(reg)}
	p.finish(&Flow{Direction: dirInboundHBONE, Start: time.Now()}, 100, 7, nil)
	p.finish(&Flow{Direction: dirInboundHBONE, Start: time.Now()}, 1, 1, nil)
	p.finish(&Flow{Direction: dirOutbound, Start: time.Now()}, 5, 5, nil)
	if got := testutil.ToFloat64(p.metrics.closed.WithLabelValues(dirInboundHBONE)); got != 2 {
		t.Errorf("closed inbound-hbone = %v, want 2", got)
	}
	if got := testutil.ToFloat64(p.metrics.sent.WithLabelValues(dirInboundHBONE)); got != 101 {
		t.Errorf("sent inbound-hbone = %v, want 101", got)
	}
	if got := testutil.ToFloat64(p.metrics.recv.WithLabelValues(dirOutbound)); got != 5 {
		t.Errorf("received outbound = %v, want 5", got)
	}
	fl := p.Flows()
	if len(fl) != 3 || fl[0].Verdict != "allowed" || fl[0].BytesSent != 100 || fl[0].BytesRecv != 7 {
		t.Errorf("flows = %+v", fl)
	}
}
