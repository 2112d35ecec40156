package hbone

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/palisade-net/palisade/pkg/identity"
)

var (
	testTD   = spiffeid.RequireTrustDomainFromString("cluster.local")
	clientID = spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/web")
	serverID = spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/db")
	otherID  = spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/other")
)

// logBuffer collects log lines for assertions.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// waitFor polls cond until it holds or the timeout passes.
func (l *logBuffer) waitFor(t *testing.T, substr string) string {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		for _, line := range strings.Split(l.String(), "\n") {
			if strings.Contains(line, substr) {
				return line
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("no log line containing %q in:\n%s", substr, l.String())
	return ""
}

func newProvider(t testing.TB, td spiffeid.TrustDomain) *identity.DevProvider {
	t.Helper()
	ca, err := identity.LoadOrCreateDevCA(t.TempDir(), td)
	if err != nil {
		t.Fatal(err)
	}
	p := identity.NewDevProvider(ca, time.Hour, nil)
	t.Cleanup(func() { p.Close() })
	return p
}

// env is one HBONE server in front of loopback backends plus a client pool.
type env struct {
	t        testing.TB
	provider *identity.DevProvider
	srv      *Server
	ln       net.Listener
	addr     netip.AddrPort
	pool     *Pool
	logs     *logBuffer
	accepted atomic.Int32 // TCP connections the HBONE listener accepted
	dials    atomic.Int32 // dialTCP calls
	connects atomic.Int32 // Connect calls
	lastReq  atomic.Pointer[Request]
	connect  ConnectFunc // nil: dial req.Authority
}

type envOpts struct {
	server  func(*ServerConfig)
	pool    func(*PoolConfig)
	connect ConnectFunc
}

func newEnv(t testing.TB, o envOpts) *env {
	t.Helper()
	e := &env{t: t, provider: newProvider(t, testTD), logs: &logBuffer{}, connect: o.connect}
	logger := slog.New(slog.NewJSONHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	cfg := ServerConfig{
		Identity:    serverID,
		Identities:  e.provider,
		TrustDomain: testTD,
		Logger:      logger,
		Connect: func(ctx context.Context, req *Request) (net.Conn, int, error) {
			e.connects.Add(1)
			e.lastReq.Store(req)
			if e.connect != nil {
				return e.connect(ctx, req)
			}
			var d net.Dialer
			c, err := d.DialContext(ctx, "tcp", req.Authority.String())
			if err != nil {
				return nil, http.StatusServiceUnavailable, err
			}
			return c, http.StatusOK, nil
		},
	}
	if o.server != nil {
		o.server(&cfg)
	}
	srv, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.srv, e.ln = srv, &countingListener{Listener: ln, n: &e.accepted}
	e.addr = netip.MustParseAddrPort(ln.Addr().String())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(e.ln) }()

	pcfg := PoolConfig{Identities: e.provider, Logger: logger}
	if o.pool != nil {
		o.pool(&pcfg)
	}
	e.pool, err = NewPool(pcfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		e.pool.Close()
		srv.Close()
		if err := <-served; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v", err)
		}
	})
	return e
}

type countingListener struct {
	net.Listener
	n *atomic.Int32
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

func (e *env) key() Key {
	return Key{Src: clientID, Dst: serverID, DstAddr: e.addr, SrcIP: netip.MustParseAddr("127.0.0.1")}
}

func (e *env) dialTCP(ctx context.Context) (net.Conn, error) {
	e.dials.Add(1)
	var d net.Dialer
	return d.DialContext(ctx, "tcp", e.addr.String())
}

func (e *env) dial(ctx context.Context, authority string, h http.Header) (*Conn, error) {
	c, err := e.pool.Dial(ctx, e.key(), authority, h, e.dialTCP)
	if err != nil {
		return nil, err
	}
	return c.(*Conn), nil
}

func (e *env) mustDial(authority string) *Conn {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := e.dial(ctx, authority, nil)
	if err != nil {
		e.t.Fatalf("dial %s: %v", authority, err)
	}
	return c
}

// backend is a loopback TCP server whose handler runs per connection.
type backend struct {
	ln   net.Listener
	addr string
	wg   sync.WaitGroup
}

func newBackend(t testing.TB, handle func(c *net.TCPConn)) *backend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &backend{ln: ln, addr: ln.Addr().String()}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b.wg.Add(1)
			go func() {
				defer b.wg.Done()
				defer c.Close()
				handle(c.(*net.TCPConn))
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		b.wg.Wait()
	})
	return b
}

// echoHandler echoes until EOF, then half-closes: the echo of a client's
// half-close.
func echoHandler(c *net.TCPConn) {
	io.Copy(c, c)
	c.CloseWrite()
	io.Copy(io.Discard, c)
}

// rawTLS opens an mTLS connection to the env's server as id, with ALPN h2,
// without the pool: for tests that speak HTTP/2 themselves.
func (e *env) rawTLS(t testing.TB, svid *x509svid.SVID, bundles x509bundle.Source) *tls.Conn {
	t.Helper()
	cfg := clientTLSConfig(svid, bundles, serverID)
	c, err := tls.Dial("tcp", e.addr.String(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func (e *env) svid(t testing.TB, id spiffeid.ID) *x509svid.SVID {
	t.Helper()
	s, err := e.provider.SVID(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func netipMust(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
