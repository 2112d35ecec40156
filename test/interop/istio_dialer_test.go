package interop

// Istio's HBONE dialer (istio.io/istio/pkg/hbone.NewDialer) against
// Palisade's HBONE server (pkg/hbone.Server).

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	istiohbone "istio.io/istio/pkg/hbone"

	"github.com/palisade-net/palisade/pkg/hbone"
	"github.com/palisade-net/palisade/pkg/identity"
)

// palisadeServer is a Palisade HBONE server on loopback that lets clients
// reach exactly one backend address and records every request its Connect
// callback saw.
type palisadeServer struct {
	addr string

	mu   sync.Mutex
	reqs []*hbone.Request
}

func (s *palisadeServer) requests() []*hbone.Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*hbone.Request(nil), s.reqs...)
}

func startPalisadeServer(t *testing.T, ca *identity.DevCA, allowed string) *palisadeServer {
	t.Helper()
	provider := identity.NewDevProvider(ca, time.Hour, nil)
	t.Cleanup(func() { provider.Close() })
	ps := &palisadeServer{}
	srv, err := hbone.NewServer(hbone.ServerConfig{
		Identity:    serverID,
		Identities:  provider,
		TrustDomain: trustDomain,
		Connect: func(ctx context.Context, req *hbone.Request) (net.Conn, int, error) {
			ps.mu.Lock()
			ps.reqs = append(ps.reqs, req)
			ps.mu.Unlock()
			if req.Authority.String() != allowed {
				return nil, http.StatusBadRequest, fmt.Errorf("authority %s is not this workload", req.Authority)
			}
			var d net.Dialer
			c, err := d.DialContext(ctx, "tcp", allowed)
			if err != nil {
				return nil, http.StatusServiceUnavailable, err
			}
			return c, http.StatusOK, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ps.addr = ln.Addr().String()
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
	return ps
}

// istioDialer returns Istio's HBONE dialer for proxy, presenting an SVID for
// clientID issued by issuer and (unlike Istio's dialer itself, which checks
// no identity) requiring the server to present serverID, verified against
// trusted's bundle.
func istioDialer(t *testing.T, issuer, trusted *identity.DevCA, proxy string) istiohbone.Dialer {
	t.Helper()
	svid, err := issuer.Issue(clientID, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	conf := tlsconfig.MTLSClientConfig(svid, trusted.Bundle(), tlsconfig.AuthorizeID(serverID))
	conf.MinVersion = tls.VersionTLS13
	conf.NextProtos = []string{"h2"}
	timeout := testTimeout
	return istiohbone.NewDialer(istiohbone.Config{
		ProxyAddress: proxy,
		TLS:          conf,
		Timeout:      &timeout,
	})
}

// dialIstio opens an HBONE stream to authority with Istio's dialer. Its
// DialContext ignores the context ("TODO: use context"), so the deadline is
// enforced here.
func dialIstio(t *testing.T, d istiohbone.Dialer, authority string) (net.Conn, error) {
	t.Helper()
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		c, err := d.DialContext(context.Background(), "tcp", authority)
		ch <- result{c, err}
	}()
	select {
	case r := <-ch:
		if r.c != nil {
			t.Cleanup(func() { r.c.Close() })
		}
		return r.c, r.err
	case <-time.After(testTimeout):
		t.Fatalf("Istio dialer: CONNECT %s did not finish in %s", authority, testTimeout)
		return nil, nil
	}
}

// TestIstioDialerToPalisadeServer runs Istio's HBONE dialer, with an SVID from
// Palisade's development CA, against Palisade's HBONE server.
func TestIstioDialerToPalisadeServer(t *testing.T) {
	ca := newCA(t)
	echoBackend := newBackend(t, echo)
	srv := startPalisadeServer(t, ca, echoBackend.addr)
	d := istioDialer(t, ca, ca, srv.addr)

	t.Run("EchoSmall", func(t *testing.T) {
		c, err := dialIstio(t, d, echoBackend.addr)
		if err != nil {
			t.Fatal(err)
		}
		first, second := []byte("hello, palisade\n"), []byte("second write, same stream\n")
		exchange(t, c, first)
		exchange(t, c, second)
		c.Close()
		checkReceived(t, echoBackend.next(t), append(first, second...))
	})

	t.Run("Echo1MiB", func(t *testing.T) {
		c, err := dialIstio(t, d, echoBackend.addr)
		if err != nil {
			t.Fatal(err)
		}
		payload := randomBytes(t, 1<<20)
		exchange(t, c, payload)
		c.Close()
		// The backend hashes what it received: the client→server direction
		// is checked on its own, not only through the echo.
		checkReceived(t, echoBackend.next(t), payload)
	})

	t.Run("ConcurrentStreams", func(t *testing.T) {
		const streams, size = 8, 64 << 10
		payloads := make([][]byte, streams)
		for i := range payloads {
			payloads[i] = randomBytes(t, size)
		}
		var wg sync.WaitGroup
		errs := make(chan error, streams)
		for i := range streams {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c, err := d.DialContext(context.Background(), "tcp", echoBackend.addr)
				if err != nil {
					errs <- err
					return
				}
				defer c.Close()
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
		for range streams {
			if r := echoBackend.next(t); r.n != size {
				t.Errorf("backend received %d bytes on a stream, want %d", r.n, size)
			}
		}
	})

	t.Run("ServerSawIstioClientIdentity", func(t *testing.T) {
		before := len(srv.requests())
		c, err := dialIstio(t, d, echoBackend.addr)
		if err != nil {
			t.Fatal(err)
		}
		exchange(t, c, []byte("who am I?"))
		c.Close()
		checkReceived(t, echoBackend.next(t), []byte("who am I?"))
		reqs := srv.requests()[before:]
		if len(reqs) != 1 {
			t.Fatalf("Connect called %d times, want 1", len(reqs))
		}
		r := reqs[0]
		if r.Peer != clientID {
			t.Errorf("peer %s, want %s", r.Peer, clientID)
		}
		if r.Authority.String() != echoBackend.addr {
			t.Errorf("authority %s, want %s", r.Authority, echoBackend.addr)
		}
		// Istio's dialer sends no forwarded/baggage/traceparent headers
		// (its Config.Headers are never put on the request).
		t.Logf("Istio's request: forwarded=%q headers=%v", r.Forwarded, r.Header)
	})

	t.Run("DisallowedAuthorityRefused400", func(t *testing.T) {
		other := closedPort(t)
		before := len(srv.requests())
		c, err := dialIstio(t, d, other)
		if err == nil {
			c.Close()
			t.Fatalf("CONNECT %s succeeded, want 400", other)
		}
		if !strings.Contains(err.Error(), "400") {
			t.Fatalf("CONNECT %s: %v, want a 400 refusal", other, err)
		}
		reqs := srv.requests()[before:]
		if len(reqs) != 1 || reqs[0].Authority.String() != other || reqs[0].Peer != clientID {
			t.Fatalf("Connect saw %d requests (%v), want one for %s from %s", len(reqs), reqs, other, clientID)
		}
		t.Logf("Istio dialer reports: %v", err)

		// The refusal ends only that stream: the connection still works.
		c, err = dialIstio(t, d, echoBackend.addr)
		if err != nil {
			t.Fatalf("CONNECT after a refusal: %v", err)
		}
		exchange(t, c, []byte("still alive"))
		c.Close()
		checkReceived(t, echoBackend.next(t), []byte("still alive"))
	})

	t.Run("NonIPAuthorityRefused400", func(t *testing.T) {
		before := len(srv.requests())
		c, err := dialIstio(t, d, "localhost:80")
		if err == nil {
			c.Close()
			t.Fatal("CONNECT localhost:80 succeeded, want 400")
		}
		if !strings.Contains(err.Error(), "400") {
			t.Fatalf("CONNECT localhost:80: %v, want a 400 refusal", err)
		}
		if n := len(srv.requests()) - before; n != 0 {
			t.Fatalf("Connect was called %d times for an authority that is not ip:port", n)
		}
	})

	t.Run("UntrustedClientCertRefused", func(t *testing.T) {
		// Same trust domain, another CA issued the client's SVID: the
		// server must not accept the chain (the client still trusts the
		// server, so the refusal is the server's).
		foreign := istioDialer(t, newCA(t), ca, srv.addr)
		before := len(srv.requests())
		c, err := dialIstio(t, foreign, echoBackend.addr)
		if err == nil {
			c.Close()
			t.Fatal("CONNECT with a certificate from a foreign CA succeeded")
		}
		if n := len(srv.requests()) - before; n != 0 {
			t.Fatalf("Connect was called %d times for an untrusted client", n)
		}
		t.Logf("foreign client refused: %v", err)
	})
}
