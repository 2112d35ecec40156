package nodeproxy

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/palisade-net/palisade/pkg/hbone"
	"github.com/palisade-net/palisade/pkg/identity"
)

// TestPipeOverHBONE: the outbound relay between an app connection and an
// HBONE stream (the tunnel → app direction takes hbone.Conn.WriteTo, whose
// read loop writes into the app socket directly) carries both directions
// byte-exact, propagates both half-closes and counts every byte.
func TestPipeOverHBONE(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	src := spiffeid.RequireFromString("spiffe://cluster.local/ns/a/sa/client")
	dst := spiffeid.RequireFromString("spiffe://cluster.local/ns/b/sa/server")
	ca, err := identity.LoadOrCreateDevCA(t.TempDir(), td)
	if err != nil {
		t.Fatal(err)
	}
	ids := identity.NewDevProvider(ca, time.Hour, nil)
	t.Cleanup(func() { ids.Close() })

	// Backend: read the request to EOF (the app's half-close must arrive),
	// then answer and half-close.
	bln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer bln.Close()
	resp := make([]byte, 3<<20)
	rand.Read(resp)
	got := make(chan []byte, 1)
	go func() {
		c, err := bln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		b, _ := io.ReadAll(c)
		got <- b
		c.Write(resp)
		c.(*net.TCPConn).CloseWrite()
		io.Copy(io.Discard, c)
	}()

	srv, err := hbone.NewServer(hbone.ServerConfig{
		Identity: dst, Identities: ids, TrustDomain: td,
		Connect: func(ctx context.Context, req *hbone.Request) (net.Conn, int, error) {
			var d net.Dialer
			c, err := d.DialContext(ctx, "tcp", req.Authority.String())
			if err != nil {
				return nil, http.StatusServiceUnavailable, err
			}
			return c, http.StatusOK, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	hln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(hln)
	defer srv.Close()
	pool, err := hbone.NewPool(hbone.PoolConfig{Identities: ids})
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	key := hbone.Key{Src: src, Dst: dst, DstAddr: netip.MustParseAddrPort(hln.Addr().String())}
	up, err := pool.Dial(context.Background(), key, bln.Addr().String(), nil, func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", hln.Addr().String())
	})
	if err != nil {
		t.Fatal(err)
	}

	app, down := tcpPair(t)
	type result struct{ ab, ba int64 }
	done := make(chan result, 1)
	go func() {
		ab, ba, _ := newBufPool().pipe(down, up)
		done <- result{ab, ba}
	}()
	req := make([]byte, 1<<20+17)
	rand.Read(req)
	app.Write(req)
	app.(*net.TCPConn).CloseWrite()
	app.SetReadDeadline(time.Now().Add(20 * time.Second))
	back, err := io.ReadAll(app)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(<-got, req) {
		t.Fatal("backend did not receive the request byte-exact")
	}
	if !bytes.Equal(back, resp) {
		t.Fatalf("app got %d bytes, want %d", len(back), len(resp))
	}
	r := <-done
	if r.ab != int64(len(req)) || r.ba != int64(len(resp)) {
		t.Fatalf("counted %d/%d, want %d/%d", r.ab, r.ba, len(req), len(resp))
	}
}

// sizedReader serves data in reads of at most chunk bytes and records the
// buffer size each Read was offered.
type sizedReader struct {
	data   []byte
	chunk  int
	offers []int
}

func (r *sizedReader) Read(p []byte) (int, error) {
	r.offers = append(r.offers, len(p))
	if len(r.data) == 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), r.chunk)], r.data)
	r.data = r.data[n:]
	return n, nil
}

// TestCopyGrowsForBulk checks the relay's buffer: connections start with a
// small one and move to the bulk one only once a read fills it, and every
// byte arrives in order either way.
func TestCopyGrowsForBulk(t *testing.T) {
	data := make([]byte, 1<<20+123)
	for i := range data {
		data[i] = byte(i * 7)
	}
	for _, tc := range []struct {
		name  string
		chunk int // bytes per read the source has ready
		grows bool
	}{
		{"small reads stay small", 1500, false},
		{"reads just under the buffer stay small", copyBufSize - 1, false},
		{"bulk source", 1 << 20, true},
		// Full small reads grow the buffer; the next, no larger, shrinks it.
		{"a full read grows, a small one shrinks", copyBufSize, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := &sizedReader{data: data, chunk: tc.chunk}
			var dst bytes.Buffer
			n, err := newBufPool().copy(&dst, src)
			if err != nil || n != int64(len(data)) || !bytes.Equal(dst.Bytes(), data) {
				t.Fatalf("copied %d bytes (%v), equal %v; want %d", n, err, bytes.Equal(dst.Bytes(), data), len(data))
			}
			if src.offers[0] != copyBufSize {
				t.Errorf("first read offered %d bytes, want %d", src.offers[0], copyBufSize)
			}
			last := src.offers[len(src.offers)-1]
			if want := map[bool]int{false: copyBufSize, true: bulkCopyBufSize}[tc.grows]; last != want {
				t.Errorf("last read offered %d bytes, want %d (offers %v)", last, want, src.offers)
			}
			if tc.chunk >= copyBufSize && !slices.Contains(src.offers, bulkCopyBufSize) {
				t.Errorf("reads that fill the small buffer never got the bulk one (offers %v)", src.offers)
			}
		})
	}
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("peer gone") }

// TestCopyWriteError: a failed write ends the copy with that error.
func TestCopyWriteError(t *testing.T) {
	src := &sizedReader{data: make([]byte, 100), chunk: 100}
	if n, err := newBufPool().copy(failingWriter{}, src); err == nil || n != 0 {
		t.Fatalf("copy to a failing writer: %d bytes, %v; want 0 and its error", n, err)
	}
}

// TestInspectedBackendFinishesOnce: an inspected inbound connection's flow
// is finished exactly once, by the inspector when the HBONE server hands
// over the stream, or by Close when the backend is closed before that (a
// client reset or a policy change first).
func TestInspectedBackendFinishesOnce(t *testing.T) {
	for _, tc := range []struct {
		name        string
		closeFirst  bool
		wantTake    int
		wantUntaken int
	}{
		{name: "taken, then closed", wantTake: 1},
		{name: "closed before the stream came", closeFirst: true, wantUntaken: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			app, peer := net.Pipe()
			defer peer.Close()
			var took, untaken int
			b := &inspectedBackend{countedConn: &countedConn{Conn: app}}
			b.take = func(*hbone.Stream) { took++ }
			b.untaken = func() { untaken++ }
			if tc.closeFirst {
				b.Close()
			}
			if !tc.closeFirst {
				b.TakeStream(nil) // (a closed backend resets the stream it is given)
			}
			b.Close()
			b.Close()
			if took != tc.wantTake || untaken != tc.wantUntaken {
				t.Fatalf("take ran %d times, untaken %d; want %d and %d", took, untaken, tc.wantTake, tc.wantUntaken)
			}
			if _, err := peer.Read(make([]byte, 1)); err == nil {
				t.Error("app connection still open after Close")
			}
		})
	}
}
