package interop

// Palisade's HBONE client (pkg/hbone.Pool) against Istio's HBONE server
// (istio.io/istio/pkg/hbone.NewServer) behind a mutual-TLS listener.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	istiohbone "istio.io/istio/pkg/hbone"

	"github.com/palisade-net/palisade/pkg/hbone"
	"github.com/palisade-net/palisade/pkg/identity"
)

// istioServer is Istio's HBONE server on a loopback TLS listener that
// presents an SVID for serverID and requires client SVIDs of the trust
// domain. It records the client identities its TLS layer verified.
type istioServer struct {
	addr netip.AddrPort

	mu    sync.Mutex
	peers []spiffeid.ID
}

func (s *istioServer) clientIDs() []spiffeid.ID {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]spiffeid.ID(nil), s.peers...)
}

func startIstioServer(t *testing.T, ca *identity.DevCA) *istioServer {
	t.Helper()
	svid, err := ca.Issue(serverID, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	is := &istioServer{}
	authorize := func(id spiffeid.ID, _ [][]*x509.Certificate) error {
		is.mu.Lock()
		is.peers = append(is.peers, id)
		is.mu.Unlock()
		if !id.MemberOf(trustDomain) {
			return fmt.Errorf("client %s is not in %s", id, trustDomain)
		}
		return nil
	}
	// go-spiffe's server config requires a client certificate and verifies
	// it against the bundle (tls.RequireAnyClientCert plus
	// VerifyPeerCertificate).
	conf := tlsconfig.MTLSServerConfig(svid, ca.Bundle(), authorize)
	conf.MinVersion = tls.VersionTLS13
	conf.NextProtos = []string{"h2"}

	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	is.addr = netip.MustParseAddrPort(raw.Addr().String())
	// As Istio's own echo server does: NewServer's *http.Server serves
	// HTTP/2 on a TLS listener that negotiates h2.
	srv := istiohbone.NewServer()
	done := make(chan error, 1)
	go func() { done <- srv.Serve(tls.NewListener(raw, conf)) }()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
	return is
}

// palisadeClient is a Palisade pool that dials one HBONE server as clientID.
type palisadeClient struct {
	pool *hbone.Pool
	key  hbone.Key
}

func newPalisadeClient(t *testing.T, ca *identity.DevCA, server netip.AddrPort) *palisadeClient {
	t.Helper()
	provider := identity.NewDevProvider(ca, time.Hour, nil)
	t.Cleanup(func() { provider.Close() })
	pool, err := hbone.NewPool(hbone.PoolConfig{Identities: provider})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pool.Close() })
	return &palisadeClient{
		pool: pool,
		key: hbone.Key{
			Src:     clientID,
			Dst:     serverID,
			DstAddr: server,
			SrcIP:   netip.MustParseAddr("127.0.0.1"),
		},
	}
}

// dial opens an HBONE stream to authority with key.
func (pc *palisadeClient) dial(t *testing.T, key hbone.Key, authority string) (net.Conn, error) {
	t.Helper()
	hdr := http.Header{"Forwarded": {`for="127.0.0.1:40000"`}}
	c, err := pc.pool.Dial(testContext(t), key, authority, hdr, func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", key.DstAddr.String())
	})
	if c != nil {
		t.Cleanup(func() { c.Close() })
	}
	return c, err
}

type halfCloser interface {
	CloseWrite() error
}

// readToEOF reads c until io.EOF (the server's END_STREAM).
func readToEOF(t *testing.T, c net.Conn) []byte {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(testTimeout))
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read to EOF: %v (after %d bytes)", err, len(got))
	}
	return got
}

// TestPalisadePoolToIstioServer runs Palisade's HBONE pool against Istio's
// HBONE server; both use SVIDs from Palisade's development CA.
func TestPalisadePoolToIstioServer(t *testing.T) {
	ca := newCA(t)
	srv := startIstioServer(t, ca)
	client := newPalisadeClient(t, ca, srv.addr)

	t.Run("EchoSmall", func(t *testing.T) {
		b := newBackend(t, echo)
		c, err := client.dial(t, client.key, b.addr)
		if err != nil {
			t.Fatal(err)
		}
		first, second := []byte("hello, istio\n"), []byte("second write, same stream\n")
		exchange(t, c, first)
		exchange(t, c, second)
		if err := c.(halfCloser).CloseWrite(); err != nil {
			t.Fatal(err)
		}
		if rest := readToEOF(t, c); len(rest) != 0 {
			t.Fatalf("%d unexpected bytes before EOF", len(rest))
		}
		checkReceived(t, b.next(t), append(first, second...))
	})

	t.Run("Echo1MiB", func(t *testing.T) {
		b := newBackend(t, echo)
		c, err := client.dial(t, client.key, b.addr)
		if err != nil {
			t.Fatal(err)
		}
		payload := randomBytes(t, 1<<20)
		exchange(t, c, payload)
		if err := c.(halfCloser).CloseWrite(); err != nil {
			t.Fatal(err)
		}
		if rest := readToEOF(t, c); len(rest) != 0 {
			t.Fatalf("%d unexpected bytes before EOF", len(rest))
		}
		checkReceived(t, b.next(t), payload)
	})

	t.Run("HalfCloseClientFirst", func(t *testing.T) {
		// The backend answers only after EOF: the reply proves that our
		// END_STREAM became a FIN at the backend while the direction back
		// to us stayed open, and the final EOF that Istio's END_STREAM
		// arrived after the backend's FIN.
		b := newBackend(t, drainThenReply)
		c, err := client.dial(t, client.key, b.addr)
		if err != nil {
			t.Fatal(err)
		}
		payload := randomBytes(t, 1<<20)
		_ = c.SetWriteDeadline(time.Now().Add(testTimeout))
		if _, err := c.Write(payload); err != nil {
			t.Fatal(err)
		}
		if err := c.(halfCloser).CloseWrite(); err != nil {
			t.Fatal(err)
		}
		got := readToEOF(t, c)
		if len(got) != len(payload) || firstDiff(got, payload) != len(payload) {
			t.Fatalf("reply after half-close: %d bytes, differs at %d; want the %d bytes sent",
				len(got), firstDiff(got, payload), len(payload))
		}
		checkReceived(t, b.next(t), payload)
	})

	t.Run("HalfCloseServerFirst", func(t *testing.T) {
		// The backend sends a banner and half-closes first. Istio's server
		// turns that into the end of the response (END_STREAM), which we
		// must surface as the banner followed by a clean io.EOF. Istio's
		// server cannot keep reading the client's side afterwards (it
		// closes the request body when the backend's side ends), so what
		// the client writes after that EOF is not checked.
		b := newBackend(t, bannerThenDrain)
		c, err := client.dial(t, client.key, b.addr)
		if err != nil {
			t.Fatal(err)
		}
		if got := readToEOF(t, c); string(got) != banner {
			t.Fatalf("read %q, want %q then EOF", got, banner)
		}
		c.Close()
		r := b.next(t)
		t.Logf("backend received %d bytes after its half-close (err %v)", r.n, r.err)
	})

	t.Run("ConcurrentStreamsShareOneConnection", func(t *testing.T) {
		b := newBackend(t, echo)
		const streams, size = 8, 64 << 10
		payloads := make([][]byte, streams)
		for i := range payloads {
			payloads[i] = randomBytes(t, size)
		}
		conns := make([]net.Conn, streams)
		for i := range conns {
			c, err := client.dial(t, client.key, b.addr)
			if err != nil {
				t.Fatalf("stream %d: %v", i, err)
			}
			conns[i] = c
		}
		var wg sync.WaitGroup
		errs := make(chan error, streams)
		for i, c := range conns {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := exchangeErr(c, payloads[i]); err != nil {
					errs <- fmt.Errorf("stream %d: %w", i, err)
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		if st := client.pool.Stats(); st.Conns != 1 || st.Streams < streams {
			t.Errorf("pool stats %+v: want 1 connection carrying %d streams", st, streams)
		}
		for _, c := range conns {
			c.Close()
		}
	})

	t.Run("IstioServerSawPalisadeClientIdentity", func(t *testing.T) {
		// A fresh pool, so that this stream makes its own TLS handshake.
		fresh := newPalisadeClient(t, ca, srv.addr)
		before := len(srv.clientIDs())
		b := newBackend(t, echo)
		c, err := fresh.dial(t, fresh.key, b.addr)
		if err != nil {
			t.Fatal(err)
		}
		exchange(t, c, []byte("who am I?"))
		c.Close()
		ids := srv.clientIDs()[before:]
		if len(ids) != 1 || ids[0] != clientID {
			t.Fatalf("Istio's TLS listener verified clients %v, want [%s]", ids, clientID)
		}
	})

	t.Run("WrongServerIdentityRejected", func(t *testing.T) {
		b := newBackend(t, echo)
		key := client.key
		key.Dst = otherID
		c, err := client.dial(t, key, b.addr)
		if err == nil {
			c.Close()
			t.Fatalf("Dial with Dst %s succeeded against a server presenting %s", otherID, serverID)
		}
		var pie *hbone.PeerIdentityError
		if !errors.As(err, &pie) || pie.Got != serverID || pie.Want != otherID {
			t.Fatalf("Dial: %v, want a PeerIdentityError got=%s want=%s", err, serverID, otherID)
		}
	})

	t.Run("UnreachableBackend", func(t *testing.T) {
		// Istio's server flushes the 200 response headers before it dials
		// the backend, so a refused backend connection is seen as an
		// accepted stream that ends at once rather than as a 503. Accept
		// either, but never data and never a hang.
		c, err := client.dial(t, client.key, closedPort(t))
		var se *hbone.StatusError
		switch {
		case errors.As(err, &se):
			if se.Code != http.StatusServiceUnavailable {
				t.Fatalf("Dial: %v, want 503", err)
			}
			t.Logf("Istio's server refused with %v", err)
		case err != nil:
			t.Fatalf("Dial: %v", err)
		default:
			_ = c.SetReadDeadline(time.Now().Add(testTimeout))
			got, rerr := io.ReadAll(c)
			if len(got) != 0 || errors.Is(rerr, os.ErrDeadlineExceeded) {
				t.Fatalf("read %d bytes, err %v; want the stream to end without data", len(got), rerr)
			}
			t.Logf("Istio's server answered 200 and ended the stream (read err %v)", rerr)
		}
	})
}
