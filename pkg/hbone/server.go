package hbone

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/palisade-net/palisade/pkg/identity"
)

// Server defaults.
const (
	// DefaultMaxConcurrentStreams is the SETTINGS_MAX_CONCURRENT_STREAMS the
	// server advertises.
	DefaultMaxConcurrentStreams = 200
	// DefaultServerIdleTimeout closes server connections without streams.
	// It is longer than the client pool's idle timeout, so that clients
	// normally close first.
	DefaultServerIdleTimeout = 10 * time.Minute
)

// Request describes one CONNECT stream the server received and authenticated.
type Request struct {
	// Authority is the parsed :authority, the original destination
	// ip:port the client wants to reach.
	Authority netip.AddrPort
	// Peer is the SPIFFE ID of the client, verified against the trust
	// bundle and trust domain.
	Peer spiffeid.ID
	// Forwarded is the value of the "forwarded" request header, normally
	// `for="<client ip:port>"`, or "".
	Forwarded string
	// Header holds all regular request headers (canonical keys), including
	// forwarded, baggage and traceparent.
	Header http.Header
	// RemoteAddr is the TCP address of the peer node proxy.
	RemoteAddr net.Addr
	// LocalAddr is the TCP address the tunnel arrived on.
	LocalAddr net.Addr
}

// ConnectFunc decides a CONNECT request and, when allowed, returns the
// backend connection the tunnel is spliced to. It returns status 200 with a
// backend, or a refusal status: 400 (authority is not this workload), 401
// (authorization denied), 503 (backend unreachable). err, when non-nil,
// gives the reason that is logged and sent to the client; a non-nil err
// with status 0 or 200 is a 503.
//
// ctx ends when the client resets the stream or the server is closed.
// If the backend implements CloseWrite (like *net.TCPConn) the client's
// half-close is propagated to it. If it is a *net.TCPConn or implements
// TryWriter, the connection's read loop writes the client's bytes into it
// directly whenever the socket takes them without blocking, which saves a
// goroutine hand-off per DATA frame; wrappers (byte counters, for example)
// should implement TryWriter for that, with NewTryWriter. A backend that
// implements StreamTaker is not spliced: it is handed the stream itself.
type ConnectFunc func(ctx context.Context, req *Request) (backend net.Conn, status int, err error)

// ServerConfig configures a Server.
type ServerConfig struct {
	// Identity is the local workload identity the server presents.
	Identity spiffeid.ID
	// Identities supplies the SVID of Identity and the trust bundle.
	Identities identity.Provider
	// TrustDomain is the trust domain clients must belong to.
	TrustDomain spiffeid.TrustDomain
	// Logger receives one line per refusal; nil discards.
	Logger *slog.Logger
	// Connect is called for every well-formed CONNECT stream.
	Connect ConnectFunc

	// MaxConcurrentStreams per connection (DefaultMaxConcurrentStreams).
	MaxConcurrentStreams uint32
	// MaxHeaderBytes limits the request header list (DefaultMaxHeaderBytes,
	// counted as HPACK does: name + value + 32 per field) and is advertised
	// as SETTINGS_MAX_HEADER_LIST_SIZE, so Pool.Dial (and x/net clients)
	// refuse to send more: the dial fails without a request. A client
	// that sends more anyway gets, as decided by x/net's Framer:
	//   - a 431 reply and RST_STREAM(NO_ERROR) when the fields add up to
	//     more than the limit; the connection survives;
	//   - GOAWAY COMPRESSION_ERROR when a single name or value is longer
	//     than the limit, and GOAWAY PROTOCOL_ERROR when the encoded block
	//     is more than twice the limit (CONTINUATION flood defence); the
	//     connection is closed.
	MaxHeaderBytes uint32
	// HandshakeTimeout bounds the TLS handshake and HTTP/2 preface
	// (DefaultHandshakeTimeout).
	HandshakeTimeout time.Duration
	// IdleTimeout closes connections that carried no stream for that long
	// (DefaultServerIdleTimeout; negative disables).
	IdleTimeout time.Duration
	// Tuning sets HTTP/2 windows, frame size and keepalive.
	Tuning Tuning
	// OnHandshake, when set, is told how long each TLS handshake took and
	// whether it failed (for metrics).
	OnHandshake func(d time.Duration, err error)
}

// Server serves HBONE for one local workload identity. Create it with
// NewServer, run Serve on one or more listeners, stop it with Shutdown or
// Close.
type Server struct {
	cfg     ServerConfig
	tuning  Tuning
	tlsConf *tls.Config
	log     *slog.Logger
	bufs    *bufPool
	batch   *batchPool

	// ctx is cancelled by Close/forced shutdown; it parents stream contexts.
	ctx    context.Context
	cancel context.CancelFunc

	wg sync.WaitGroup // connection and stream goroutines

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	rawConns  map[net.Conn]struct{} // accepted, not yet serving HTTP/2
	conns     map[*serverConn]struct{}
	shutdown  bool
}

// NewServer validates cfg and returns a server.
func NewServer(cfg ServerConfig) (*Server, error) {
	switch {
	case cfg.Identity.IsZero():
		return nil, errors.New("hbone: server needs an identity")
	case cfg.Identities == nil:
		return nil, errors.New("hbone: server needs an identity provider")
	case cfg.TrustDomain.IsZero():
		return nil, errors.New("hbone: server needs a trust domain")
	case cfg.Connect == nil:
		return nil, errors.New("hbone: server needs a Connect callback")
	}
	if cfg.MaxConcurrentStreams == 0 {
		cfg.MaxConcurrentStreams = DefaultMaxConcurrentStreams
	}
	if cfg.MaxHeaderBytes == 0 {
		cfg.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if cfg.IdleTimeout == 0 {
		cfg.IdleTimeout = DefaultServerIdleTimeout
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{
		cfg:       cfg,
		tuning:    cfg.Tuning.withDefaults(),
		tlsConf:   serverTLSConfig(cfg.Identities, cfg.Identity, cfg.TrustDomain),
		log:       log.With("component", "hbone-server", "identity", cfg.Identity.String()),
		bufs:      newBufPool(),
		batch:     newBatchPool(),
		ctx:       ctx,
		cancel:    cancel,
		listeners: make(map[net.Listener]struct{}),
		rawConns:  make(map[net.Conn]struct{}),
		conns:     make(map[*serverConn]struct{}),
	}, nil
}

// Serve accepts connections on ln until Shutdown or Close, which make it
// return ErrServerClosed; other accept errors are returned as they are.
// Serve takes ownership of ln.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.shutdown {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
		ln.Close()
	}()

	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if s.isShutdown() {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || isTemporaryAcceptError(err) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.log.Warn("accept failed; retrying", "err", err, "retry_in", backoff)
				time.Sleep(backoff)
				continue
			}
			return fmt.Errorf("hbone: accept: %w", err)
		}
		backoff = 0
		s.mu.Lock()
		if s.shutdown {
			s.mu.Unlock()
			c.Close()
			return ErrServerClosed
		}
		s.rawConns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go s.handleConn(c)
	}
}

func (s *Server) isShutdown() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.shutdown
}

// handleConn runs the TLS handshake and then the HTTP/2 connection.
func (s *Server) handleConn(c net.Conn) {
	defer s.wg.Done()
	sc, err := s.handshake(c)
	s.mu.Lock()
	delete(s.rawConns, c)
	if err == nil && s.shutdown {
		err = ErrServerClosed
	}
	if err == nil {
		s.conns[sc] = struct{}{}
	}
	s.mu.Unlock()
	if err != nil {
		if !errors.Is(err, ErrServerClosed) && !s.isShutdown() {
			s.log.Warn("hbone connection refused", "reason", err.Error(), "peer", "", "authority", "", "remote", c.RemoteAddr().String())
		}
		c.Close()
		return
	}
	sc.serve()
	s.mu.Lock()
	delete(s.conns, sc)
	s.mu.Unlock()
}

func (s *Server) handshake(c net.Conn) (*serverConn, error) {
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.HandshakeTimeout)
	defer cancel()
	raw := newBufConn(c, s.batch)
	tc := tls.Server(raw, s.tlsConf)
	start := time.Now()
	err := tc.HandshakeContext(ctx)
	if s.cfg.OnHandshake != nil {
		s.cfg.OnHandshake(time.Since(start), err)
	}
	if err != nil {
		return nil, fmt.Errorf("TLS handshake: %w", err)
	}
	cs := tc.ConnectionState()
	if cs.NegotiatedProtocol != alpnH2 {
		return nil, fmt.Errorf("client did not negotiate ALPN %q", alpnH2)
	}
	peer, err := peerID(cs)
	if err != nil {
		return nil, err
	}
	return newServerConn(s, tc, raw, peer), nil
}

// Shutdown stops the listeners, sends GOAWAY on every connection and waits
// for open streams to finish. When ctx ends first, the remaining connections
// and streams are closed and ctx's error is returned.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.shutdown = true
	for ln := range s.listeners {
		ln.Close()
	}
	for c := range s.rawConns {
		c.Close() // still handshaking: nothing to drain
	}
	conns := make([]*serverConn, 0, len(s.conns))
	for sc := range s.conns {
		conns = append(conns, sc)
	}
	s.mu.Unlock()

	for _, sc := range conns {
		sc.startDrain()
	}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		s.mu.Lock()
		n := len(s.conns) + len(s.rawConns)
		s.mu.Unlock()
		if n == 0 {
			s.cancel()
			s.wg.Wait()
			return nil
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			s.Close()
			return fmt.Errorf("hbone: shutdown: %w", ctx.Err())
		}
	}
}

// Close stops the listeners and closes every connection and stream at once.
func (s *Server) Close() error {
	s.mu.Lock()
	s.shutdown = true
	for ln := range s.listeners {
		ln.Close()
	}
	for c := range s.rawConns {
		c.Close()
	}
	conns := make([]*serverConn, 0, len(s.conns))
	for sc := range s.conns {
		conns = append(conns, sc)
	}
	s.mu.Unlock()
	s.cancel()
	for _, sc := range conns {
		sc.closeNow(ErrServerClosed)
	}
	s.wg.Wait()
	return nil
}

// refused logs one line for a refused stream.
func (s *Server) refused(sc *serverConn, status int, reason, authority string) {
	level := slog.LevelInfo
	if status >= 500 {
		level = slog.LevelWarn
	}
	s.log.Log(context.Background(), level, "hbone stream refused",
		"status", status, "reason", reason, "peer", sc.peer.String(), "authority", authority,
		"remote", sc.remote.String())
}
