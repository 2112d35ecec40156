package interop

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	istiolog "istio.io/istio/pkg/log"

	"github.com/palisade-net/palisade/pkg/identity"
)

var (
	trustDomain = spiffeid.RequireTrustDomainFromString("cluster.local")
	clientID    = spiffeid.RequireFromString("spiffe://cluster.local/ns/interop/sa/client")
	serverID    = spiffeid.RequireFromString("spiffe://cluster.local/ns/interop/sa/server")
	otherID     = spiffeid.RequireFromString("spiffe://cluster.local/ns/interop/sa/other")
)

// testTimeout bounds every dial, read and write: nothing in these tests may
// hang.
const testTimeout = 20 * time.Second

func TestMain(m *testing.M) {
	// Istio's scopes log every CONNECT at info level; keep -v readable.
	if s := istiolog.FindScope("hbone"); s != nil {
		s.SetOutputLevel(istiolog.WarnLevel)
	}
	os.Exit(m.Run())
}

// newCA creates a fresh development CA in a temporary directory.
func newCA(t testing.TB) *identity.DevCA {
	t.Helper()
	ca, err := identity.LoadOrCreateDevCA(t.TempDir(), trustDomain)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func randomBytes(t testing.TB, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// backendMode says what a loopback backend does with each connection.
type backendMode int

const (
	// echo copies every byte back as it arrives and half-closes when the
	// client half-closes.
	echo backendMode = iota
	// drainThenReply reads until EOF, and only then writes everything it
	// read back and closes: a reply can only arrive if the client's
	// half-close reached the backend while the reverse direction stayed
	// open.
	drainThenReply
	// bannerThenDrain writes a banner, half-closes its sending side, then
	// reads until EOF.
	bannerThenDrain
)

// banner is what a bannerThenDrain backend sends.
const banner = "220 palisade interop backend\r\n"

// received is what a backend got on one connection.
type received struct {
	n   int
	sum [sha256.Size]byte
	err error
}

// backend is a loopback TCP server that reports what it received on every
// connection.
type backend struct {
	addr string
	got  chan received
}

func newBackend(t testing.TB, mode backendMode) *backend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &backend{addr: ln.Addr().String(), got: make(chan received, 64)}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				b.serve(c.(*net.TCPConn), mode)
			}()
		}
	}()
	return b
}

func (b *backend) serve(c *net.TCPConn, mode backendMode) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(testTimeout))
	h := sha256.New()
	var r received
	switch mode {
	case echo:
		var n int64
		n, r.err = io.Copy(c, io.TeeReader(c, h))
		r.n = int(n)
		_ = c.CloseWrite()
	case drainThenReply:
		var data []byte
		data, r.err = io.ReadAll(c)
		r.n = len(data)
		h.Write(data)
		if r.err == nil {
			_, r.err = c.Write(data)
		}
		_ = c.CloseWrite()
	case bannerThenDrain:
		if _, r.err = io.WriteString(c, banner); r.err == nil {
			r.err = c.CloseWrite()
		}
		var n int64
		n, err := io.Copy(h, c)
		r.n = int(n)
		if r.err == nil {
			r.err = err
		}
	}
	copy(r.sum[:], h.Sum(nil))
	b.got <- r
}

// next returns what the backend received on its next finished connection.
func (b *backend) next(t testing.TB) received {
	t.Helper()
	select {
	case r := <-b.got:
		return r
	case <-time.After(testTimeout):
		t.Fatal("backend connection did not finish")
		return received{}
	}
}

// closedPort returns a loopback address nobody listens on.
func closedPort(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// exchange writes payload on c while reading len(payload) bytes back, and
// fails unless they are byte-for-byte equal.
func exchange(t testing.TB, c net.Conn, payload []byte) {
	t.Helper()
	if err := exchangeErr(c, payload); err != nil {
		t.Fatal(err)
	}
}

// exchangeErr is exchange for goroutines other than the test's.
func exchangeErr(c net.Conn, payload []byte) error {
	_ = c.SetDeadline(time.Now().Add(testTimeout))
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(payload)
		werr <- err
	}()
	got := make([]byte, len(payload))
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("read echo of %d bytes: %w", len(payload), err)
	}
	if err := <-werr; err != nil {
		return fmt.Errorf("write %d bytes: %w", len(payload), err)
	}
	if !bytes.Equal(got, payload) {
		return fmt.Errorf("echo of %d bytes differs at offset %d", len(payload), firstDiff(got, payload))
	}
	return nil
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// checkReceived fails unless the backend got exactly payload.
func checkReceived(t testing.TB, r received, payload []byte) {
	t.Helper()
	if r.err != nil && !errors.Is(r.err, net.ErrClosed) {
		t.Errorf("backend: %v", r.err)
	}
	if want := sha256.Sum256(payload); r.n != len(payload) || r.sum != want {
		t.Fatalf("backend received %d bytes (sha256 %x…), want %d bytes (sha256 %x…)",
			r.n, r.sum[:8], len(payload), want[:8])
	}
}

func testContext(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}
