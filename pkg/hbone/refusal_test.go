//lint:file-ignore SA1019 DESIGN.md asks for golang.org/x/net/http2; its client types are deprecated in favour of net/http's (Go 1.26), the planned migration.

package hbone

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/palisade-net/palisade/pkg/identity"
)

func TestClientRefusesWrongServerIdentity(t *testing.T) {
	e := newEnv(t, envOpts{})
	be := newBackend(t, echoHandler)
	key := e.key()
	key.Dst = otherID // the server presents serverID
	_, err := e.pool.Dial(context.Background(), key, be.addr, nil, e.dialTCP)
	var pe *PeerIdentityError
	if !errors.As(err, &pe) {
		t.Fatalf("err = %v, want a PeerIdentityError", err)
	}
	if pe.Want != otherID || pe.Got != serverID {
		t.Errorf("PeerIdentityError = %+v", pe)
	}
	if n := e.connects.Load(); n != 0 {
		t.Errorf("Connect called %d times", n)
	}
}

// bundleSet serves several trust domains' bundles.
type bundleSet map[spiffeid.TrustDomain]*x509bundle.Bundle

func (s bundleSet) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	if b, ok := s[td]; ok {
		return b, nil
	}
	return nil, errors.New("no bundle")
}

// TestServerRefusesUntrustedClients: clients from another trust domain or
// signed by an unknown CA fail the handshake, are logged, and never reach
// Connect.
func TestServerRefusesUntrustedClients(t *testing.T) {
	e := newEnv(t, envOpts{})
	be := newBackend(t, echoHandler)
	serverBundle, _ := e.provider.GetX509BundleForTrustDomain(testTD)

	evilTD := spiffeid.RequireTrustDomainFromString("evil.example")
	evil := newProvider(t, evilTD)
	evilID := spiffeid.RequireFromString("spiffe://evil.example/ns/shop/sa/web")
	evilBundle, _ := evil.GetX509BundleForTrustDomain(evilTD)

	rogue := newProvider(t, testTD) // same trust domain name, different CA

	for _, tc := range []struct {
		name    string
		src     spiffeid.ID
		svidsOf *identity.DevProvider
		reason  string
	}{
		{"other trust domain", evilID, evil, "TLS handshake"},
		{"unknown CA for our trust domain", clientID, rogue, "TLS handshake"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			svid, err := tc.svidsOf.SVID(context.Background(), tc.src)
			if err != nil {
				t.Fatal(err)
			}
			// The client trusts the real server, so only the server's check
			// can fail.
			bundles := bundleSet{testTD: serverBundle, evilTD: evilBundle}
			c, err := tls.Dial("tcp", e.addr.String(), clientTLSConfig(svid, bundles, serverID))
			if err == nil {
				// TLS 1.3: the server's verdict on our certificate arrives
				// after the client's handshake completes.
				defer c.Close()
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				_, err = c.Read(make([]byte, 1))
			}
			if err == nil || !strings.Contains(err.Error(), "certificate") {
				t.Fatalf("err = %v, want a TLS certificate alert", err)
			}
			line := e.logs.waitFor(t, "hbone connection refused")
			if !strings.Contains(line, tc.reason) {
				t.Errorf("log line lacks the reason: %s", line)
			}
			if n := e.connects.Load(); n != 0 {
				t.Errorf("Connect called %d times", n)
			}
		})
	}

	t.Run("via the pool", func(t *testing.T) {
		p, err := NewPool(PoolConfig{Identities: mixedProvider{svids: evil, bundles: bundleSet{testTD: serverBundle}}})
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		key := e.key()
		key.Src = evilID
		_, err = p.Dial(context.Background(), key, be.addr, nil, e.dialTCP)
		if err == nil {
			t.Fatal("foreign client got a stream")
		}
	})
}

// mixedProvider takes SVIDs from one provider and bundles from a set.
type mixedProvider struct {
	svids   *identity.DevProvider
	bundles bundleSet
}

func (m mixedProvider) SVID(ctx context.Context, id spiffeid.ID) (*x509svid.SVID, error) {
	return m.svids.SVID(ctx, id)
}
func (m mixedProvider) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return m.bundles.GetX509BundleForTrustDomain(td)
}
func (m mixedProvider) Release(spiffeid.ID) {}

func TestServerRefusesClientWithoutCertificate(t *testing.T) {
	e := newEnv(t, envOpts{})
	bundle, _ := e.provider.GetX509BundleForTrustDomain(testTD)
	cfg := clientTLSConfig(nil, bundle, serverID)
	cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
		return &tls.Certificate{}, nil // no certificate
	}
	c, err := tls.Dial("tcp", e.addr.String(), cfg)
	if err == nil {
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = c.Read(make([]byte, 1))
	}
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("err = %v, want a certificate-required alert", err)
	}
	e.logs.waitFor(t, "hbone connection refused")
}

func TestServerRefusesTLS12AndMissingALPN(t *testing.T) {
	e := newEnv(t, envOpts{})
	bundle, _ := e.provider.GetX509BundleForTrustDomain(testTD)
	svid := e.svid(t, clientID)
	t.Run("TLS 1.2", func(t *testing.T) {
		cfg := clientTLSConfig(svid, bundle, serverID)
		cfg.MinVersion, cfg.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
		if c, err := tls.Dial("tcp", e.addr.String(), cfg); err == nil {
			c.Close()
			t.Fatal("TLS 1.2 handshake succeeded")
		}
	})
	t.Run("no ALPN", func(t *testing.T) {
		cfg := clientTLSConfig(svid, bundle, serverID)
		cfg.NextProtos = nil
		c, err := tls.Dial("tcp", e.addr.String(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil {
			t.Fatal("server kept a connection without ALPN h2")
		}
		e.logs.waitFor(t, `ALPN`)
	})
}

// h2Client opens a raw x/net HTTP/2 client connection as clientID.
func (e *env) h2Client(t *testing.T) *http2.ClientConn {
	t.Helper()
	bundle, _ := e.provider.GetX509BundleForTrustDomain(testTD)
	tc := e.rawTLS(t, e.svid(t, clientID), bundle)
	cc, err := (&http2.Transport{}).NewClientConn(tc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

func TestBadRequests(t *testing.T) {
	e := newEnv(t, envOpts{})
	cc := e.h2Client(t)
	for _, tc := range []struct {
		name   string
		method string
		url    string
		host   string
		reason string
	}{
		{"GET", http.MethodGet, "https://127.0.0.1:8080/", "127.0.0.1:8080", "not CONNECT"},
		{"POST", http.MethodPost, "https://127.0.0.1:8080/x", "127.0.0.1:8080", "not CONNECT"},
		{"host name authority", http.MethodConnect, "", "example.com:80", "not ip:port"},
		{"no port", http.MethodConnect, "", "127.0.0.1", "not ip:port"},
		{"port zero", http.MethodConnect, "", "127.0.0.1:0", "not ip:port"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var req *http.Request
			if tc.method == http.MethodConnect {
				req, _ = http.NewRequest(tc.method, "", nil)
				req.URL.Host = tc.host
				req.Host = tc.host
			} else {
				req, _ = http.NewRequest(tc.method, tc.url, nil)
			}
			resp, err := cc.RoundTrip(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadRequest {
				t.Fatalf("status = %d, want 400", resp.StatusCode)
			}
			if r := resp.Header.Get(reasonHeader); !strings.Contains(r, tc.reason) {
				t.Errorf("reason = %q", r)
			}
			line := e.logs.waitFor(t, tc.reason)
			for _, want := range []string{`"status":400`, `"peer":"` + clientID.String() + `"`, `"authority":`} {
				if !strings.Contains(line, want) {
					t.Errorf("log line lacks %s: %s", want, line)
				}
			}
		})
	}
	if n := e.connects.Load(); n != 0 {
		t.Errorf("Connect called %d times for bad requests", n)
	}
	// The connection survives bad requests.
	if !cc.CanTakeNewRequest() {
		t.Error("connection unusable after bad requests")
	}
}

func TestConnectRefusals(t *testing.T) {
	var status int
	var cerr error
	e := newEnv(t, envOpts{connect: func(ctx context.Context, req *Request) (net.Conn, int, error) {
		if status == -1 {
			panic("boom")
		}
		return nil, status, cerr
	}})
	for _, tc := range []struct {
		name     string
		status   int
		err      error
		want     int
		inReason string
	}{
		{"not this workload", http.StatusBadRequest, errors.New("10.0.0.9 is not this workload"), 400, "not this workload"},
		{"authorization denied", http.StatusUnauthorized, errors.New("policy shop/deny-all"), 401, "policy shop/deny-all"},
		{"backend unreachable", http.StatusServiceUnavailable, errors.New("connection refused"), 503, "connection refused"},
		{"error without status", 0, errors.New("boom"), 503, "boom"},
		{"no backend", http.StatusOK, nil, 503, "no backend"},
		{"Connect panics", -1, nil, 503, "internal error: boom"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, cerr = tc.status, tc.err
			_, err := e.dial(context.Background(), "127.0.0.1:9", nil)
			var se *StatusError
			if !errors.As(err, &se) {
				t.Fatalf("err = %v, want *StatusError", err)
			}
			if se.Code != tc.want || !strings.Contains(se.Reason, tc.inReason) {
				t.Fatalf("StatusError = %+v", se)
			}
			line := e.logs.waitFor(t, tc.inReason)
			for _, want := range []string{`"peer":"` + clientID.String() + `"`, `"authority":"127.0.0.1:9"`, `"reason":`} {
				if !strings.Contains(line, want) {
					t.Errorf("log line lacks %s: %s", want, line)
				}
			}
		})
	}
	// Refusals do not poison the connection.
	if n := e.dials.Load(); n != 1 {
		t.Errorf("%d connections for refused streams, want 1", n)
	}
}

func TestOversizedHeaders(t *testing.T) {
	e := newEnv(t, envOpts{})
	be := newBackend(t, echoHandler)
	e.mustDial(be.addr).Close() // the client now knows the server's limit

	t.Run("client refuses to send", func(t *testing.T) {
		h := http.Header{"X-Big": {strings.Repeat("a", 20<<10)}}
		_, err := e.dial(context.Background(), be.addr, h)
		if err == nil {
			t.Fatal("oversized request accepted")
		}
		var se *StatusError
		if errors.As(err, &se) && se.Code != http.StatusRequestHeaderFieldsTooLarge {
			t.Fatalf("status %d, want the request refused locally or 431", se.Code)
		}
	})

	// Clients that ignore SETTINGS_MAX_HEADER_LIST_SIZE.
	for _, tc := range []struct {
		name   string
		fields int // header fields of 1 KiB hex each...
		size   int // ...or of this size
		want   string
	}{
		{"many fields over the limit: 431", 20, 1 << 10, "431"},
		{"one field over the limit: GOAWAY", 1, 20 << 10, "GOAWAY COMPRESSION_ERROR"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bundle, _ := e.provider.GetX509BundleForTrustDomain(testTD)
			tc2 := e.rawTLS(t, e.svid(t, clientID), bundle)
			tc2.SetDeadline(time.Now().Add(10 * time.Second))
			io.WriteString(tc2, http2.ClientPreface)
			fr := http2.NewFramer(tc2, tc2)
			fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
			fr.WriteSettings()
			var hb bytes.Buffer
			enc := hpack.NewEncoder(&hb)
			enc.WriteField(hpack.HeaderField{Name: ":method", Value: "CONNECT"})
			enc.WriteField(hpack.HeaderField{Name: ":authority", Value: be.addr})
			for i := range tc.fields {
				// Hex digits: over the limit once decoded, but less than
				// twice the limit on the wire.
				enc.WriteField(hpack.HeaderField{Name: fmt.Sprintf("x-big-%d", i), Value: fmt.Sprintf("%x", randomBytes(t, tc.size/2))})
			}
			block := hb.Bytes()
			half := len(block) / 2
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block[:half], EndHeaders: false})
			fr.WriteContinuation(1, true, block[half:])
			got := ""
			for got == "" {
				f, err := fr.ReadFrame()
				if err != nil {
					t.Fatalf("no reply: %v", err)
				}
				switch f := f.(type) {
				case *http2.MetaHeadersFrame:
					got = f.PseudoValue("status")
				case *http2.GoAwayFrame:
					got = "GOAWAY " + f.ErrCode.String()
				}
			}
			if got != tc.want {
				t.Fatalf("got %s, want %s", got, tc.want)
			}
		})
	}
	e.logs.waitFor(t, "request headers exceed")
	e.logs.waitFor(t, "COMPRESSION_ERROR")
	if n := e.connects.Load(); n != 1 {
		t.Errorf("Connect called %d times, want 1 (the warm-up)", n)
	}
}

// TestServerStreamLimit: when the server allows fewer concurrent streams
// than the pool would open, the pool opens more connections instead of
// queueing.
func TestServerStreamLimit(t *testing.T) {
	e := newEnv(t, envOpts{server: func(c *ServerConfig) { c.MaxConcurrentStreams = 1 }})
	be := newBackend(t, func(c *net.TCPConn) { io.Copy(io.Discard, c) })
	c1 := e.mustDial(be.addr)
	defer c1.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c2, err := e.dial(ctx, be.addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if n := e.dials.Load(); n != 2 {
		t.Errorf("%d connections, want 2", n)
	}
}
