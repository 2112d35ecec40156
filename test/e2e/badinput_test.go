//lint:file-ignore SA1019 DESIGN.md asks for golang.org/x/net/http2; its client types are deprecated in favour of net/http's (Go 1.26), the planned migration.

package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/palisade-net/palisade/pkg/hbone"
	"github.com/palisade-net/palisade/pkg/identity"
	"github.com/palisade-net/palisade/pkg/netns"
)

// TestHBONEBadInput sends malformed or unauthorised input straight to an
// enrolled pod's 15008 from a plain pod: each attempt gets the documented
// status or a TLS failure, the node proxy logs the reason, and other
// connections carry on unaffected.
func TestHBONEBadInput(t *testing.T) {
	l := upLab(t, meshYAML)
	client := podNetns(t, l, "shop", "client")
	visitor := podNetns(t, l, "plain", "visitor")
	echo2 := netip.MustParseAddrPort(podAddr(t, l, "shop", "echo2", 9000))
	hboneAddr := netip.AddrPortFrom(echo2.Addr(), hbone.Port).String()
	long := openLong(t, client, echo2.String())

	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	ca, err := identity.LoadOrCreateDevCA(l.CADir(), td)
	if err != nil {
		t.Fatal(err)
	}
	clientID := spiffeid.RequireFromString("spiffe://cluster.local/ns/plain/sa/default")
	echoID := spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/echo")
	provider := identity.NewDevProvider(ca, time.Hour, slog.New(slog.DiscardHandler))
	pool, err := hbone.NewPool(hbone.PoolConfig{Identities: provider})
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	dialTCP := func(ctx context.Context) (net.Conn, error) { return dialFrom(ctx, visitor, hboneAddr) }
	dialHBONE := func(dst spiffeid.ID, authority string, hdr http.Header) (net.Conn, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		key := hbone.Key{Src: clientID, Dst: dst, DstAddr: netip.MustParseAddrPort(hboneAddr)}
		return pool.Dial(ctx, key, authority, hdr, dialTCP)
	}
	mtls := func(t *testing.T, ca *identity.DevCA, id spiffeid.ID) *tls.Config {
		svid, err := ca.Issue(id, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		cfg := tlsconfig.MTLSClientConfig(svid, ca.Bundle(), tlsconfig.AuthorizeAny())
		cfg.NextProtos = []string{"h2"}
		cfg.MinVersion = tls.VersionTLS13
		return cfg
	}
	statusOf := func(err error) int {
		var se *hbone.StatusError
		if errors.As(err, &se) {
			return se.Code
		}
		return 0
	}

	// The sanity case first: a well-formed tunnel from outside the mesh
	// with a valid SVID works (authorization is L4-open in this version).
	c, err := dialHBONE(echoID, echo2.String(), nil)
	if err != nil {
		t.Fatalf("well-formed CONNECT: %v", err)
	}
	c.Write([]byte("ok"))
	buf := make([]byte, 2)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ok" {
		t.Fatalf("well-formed CONNECT echo: %q %v", buf, err)
	}
	c.Close()

	tests := []struct {
		name    string
		attempt func(t *testing.T) error // returns nil when refused as documented
		logHas  string                   // the node proxy's log line names this
	}{
		{"plaintext garbage", func(t *testing.T) error {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c, err := dialFrom(ctx, visitor, hboneAddr)
			if err != nil {
				return err
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
			got, _ := io.ReadAll(c)
			if bytes.Contains(got, []byte("HTTP/1.1")) {
				return fmt.Errorf("plaintext HTTP got an HTTP answer: %q", got)
			}
			return nil
		}, "handshake"},
		{"certificate of another trust domain", func(t *testing.T) error {
			evil, err := identity.LoadOrCreateDevCA(t.TempDir(), spiffeid.RequireTrustDomainFromString("evil.local"))
			if err != nil {
				t.Fatal(err)
			}
			cfg := mtls(t, evil, spiffeid.RequireFromString("spiffe://evil.local/ns/shop/sa/client"))
			cfg.InsecureSkipVerify = true // we are the attacker; we want the server's verdict
			cfg.VerifyPeerCertificate = nil
			return tlsRefused(visitor, hboneAddr, cfg)
		}, "handshake"},
		{"server identity other than the destination's", func(t *testing.T) error {
			_, err := dialHBONE(spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/other"), echo2.String(), nil)
			var pe *hbone.PeerIdentityError
			if !errors.As(err, &pe) {
				return fmt.Errorf("want a PeerIdentityError, got %v", err)
			}
			return nil
		}, ""},
		{"not CONNECT", func(t *testing.T) error {
			tr := &http2.Transport{TLSClientConfig: mtls(t, ca, clientID),
				DialTLSContext: func(ctx context.Context, network, addr string, cfg *tls.Config) (net.Conn, error) {
					c, err := dialFrom(ctx, visitor, hboneAddr)
					if err != nil {
						return nil, err
					}
					tc := tls.Client(c, cfg)
					return tc, tc.HandshakeContext(ctx)
				}}
			defer tr.CloseIdleConnections()
			resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get("https://" + hboneAddr + "/")
			if err != nil {
				return err
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadRequest {
				return fmt.Errorf("GET got %s, want 400", resp.Status)
			}
			return nil
		}, "400"},
		{"authority that is not this workload", func(t *testing.T) error {
			_, err := dialHBONE(echoID, "10.244.1.250:9000", nil)
			if statusOf(err) != http.StatusBadRequest {
				return fmt.Errorf("want 400, got %v", err)
			}
			return nil
		}, "is not this workload"},
		{"unreachable backend", func(t *testing.T) error {
			_, err := dialHBONE(echoID, netip.AddrPortFrom(echo2.Addr(), 9999).String(), nil)
			if statusOf(err) != http.StatusServiceUnavailable {
				return fmt.Errorf("want 503, got %v", err)
			}
			return nil
		}, "backend unreachable"},
		{"oversized headers", func(t *testing.T) error {
			return oversizedHeaders(mtls(t, ca, clientID), visitor, hboneAddr, echo2.String())
		}, "431"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			logMark := logSize(t, l, "node2")
			if err := tt.attempt(t); err != nil {
				t.Fatal(err)
			}
			if tt.logHas != "" {
				eventually(t, 5*time.Second, "node2's log names the reason", func() error {
					if !strings.Contains(logSince(t, l, "node2", logMark), tt.logHas) {
						return fmt.Errorf("no log line containing %q", tt.logHas)
					}
					return nil
				})
			}
		})
	}
	// Nothing above disturbed other traffic.
	if err := long.roundTrip("still alive after bad input"); err != nil {
		t.Fatal(err)
	}
	mustEcho(t, client, echo2.String(), "after-bad-input", 64<<10)
}

// dialTLS connects from the namespace and completes a TLS handshake, with a
// deadline on the whole exchange.
func dialTLS(h *netns.Handle, addr string, cfg *tls.Config) (*tls.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := dialFrom(ctx, h, addr)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	tc := tls.Client(c, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		c.Close()
		return nil, fmt.Errorf("%w: %w", errHandshake, err)
	}
	return tc, nil
}

// errHandshake marks a connection that was made but whose TLS handshake
// failed, as opposed to one that could not be made at all.
var errHandshake = errors.New("TLS handshake failed")

// tlsRefused completes (or fails) a TLS handshake and expects the server to
// reject it: either the handshake fails or the first read does.
func tlsRefused(h *netns.Handle, addr string, cfg *tls.Config) error {
	tc, err := dialTLS(h, addr, cfg)
	if errors.Is(err, errHandshake) {
		return nil // refused during the handshake
	}
	if err != nil {
		return err
	}
	defer tc.Close()
	// TLS 1.3: the client's certificate is checked after the client's
	// handshake completes; the rejection arrives on the first read.
	tc.Write([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"))
	if _, err := tc.Read(make([]byte, 1)); err != nil {
		return nil
	}
	return errors.New("the server accepted a certificate of another trust domain")
}

// oversizedHeaders sends a CONNECT whose header list exceeds the server's
// advertised limit (raw frames: the x/net client would refuse to send it)
// and expects a 431 reply.
func oversizedHeaders(cfg *tls.Config, h *netns.Handle, addr, authority string) error {
	tc, err := dialTLS(h, addr, cfg)
	if err != nil {
		return err
	}
	defer tc.Close()
	io.WriteString(tc, http2.ClientPreface)
	fr := http2.NewFramer(tc, tc)
	fr.MaxHeaderListSize = 1 << 20
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	if err := fr.WriteSettings(); err != nil {
		return err
	}
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	enc.WriteField(hpack.HeaderField{Name: ":method", Value: "CONNECT"})
	enc.WriteField(hpack.HeaderField{Name: ":authority", Value: authority})
	for i := 0; i < 4; i++ {
		enc.WriteField(hpack.HeaderField{Name: fmt.Sprintf("x-pad-%d", i), Value: strings.Repeat("a", 6000), Sensitive: true})
	}
	// Split the block into frames of the default 16 KiB maximum.
	b := block.Bytes()
	first := min(len(b), 16384)
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: b[:first], EndHeaders: first == len(b)}); err != nil {
		return err
	}
	for b = b[first:]; len(b) > 0; {
		n := min(len(b), 16384)
		if err := fr.WriteContinuation(1, n == len(b), b[:n]); err != nil {
			return err
		}
		b = b[n:]
	}
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return fmt.Errorf("no 431 before the connection ended: %w", err)
		}
		switch f := f.(type) {
		case *http2.MetaHeadersFrame:
			if f.StreamID == 1 {
				if s := f.PseudoValue("status"); s != "431" {
					return fmt.Errorf("oversized headers got status %s, want 431", s)
				}
				return nil
			}
		case *http2.GoAwayFrame:
			return fmt.Errorf("GOAWAY %v instead of 431", f.ErrCode)
		}
	}
}

func logSize(t *testing.T, l interface{ StateDir() string }, node string) int64 {
	st, err := os.Stat(l.StateDir() + "/nodes/" + node + "/nodeproxy.log")
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}

func logSince(t *testing.T, l interface{ StateDir() string }, node string, off int64) string {
	data, err := os.ReadFile(l.StateDir() + "/nodes/" + node + "/nodeproxy.log")
	if err != nil {
		t.Fatal(err)
	}
	if off > int64(len(data)) {
		off = 0
	}
	return string(data[off:])
}
