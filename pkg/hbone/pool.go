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
	"golang.org/x/net/http2"

	"github.com/palisade-net/palisade/pkg/identity"
)

// Pool defaults.
const (
	// DefaultMaxStreamsPerConn is how many streams the pool opens on one
	// HTTP/2 connection before it dials another.
	DefaultMaxStreamsPerConn = 100
	// DefaultPoolIdleTimeout releases connections without streams.
	DefaultPoolIdleTimeout = 5 * time.Minute
	// maxResponseHeaderBytes bounds what a server may send us.
	maxResponseHeaderBytes = 64 << 10
)

// Key identifies a set of interchangeable HTTP/2 connections: same source
// and destination identity, same destination node proxy address and same
// source IP (the node proxy dials from inside the source pod's netns).
type Key struct {
	// Src is the identity presented by the client.
	Src spiffeid.ID
	// Dst is the identity the server must present.
	Dst spiffeid.ID
	// DstAddr is the HBONE address, normally destination pod ip:15008.
	DstAddr netip.AddrPort
	// SrcIP is the source address the connection is made from.
	SrcIP netip.Addr
}

// String formats the key for logs.
func (k Key) String() string {
	return fmt.Sprintf("%s→%s@%s from %s", k.Src, k.Dst, k.DstAddr, k.SrcIP)
}

// DialFunc opens the TCP connection for a new HTTP/2 connection. The node
// proxy dials from the source pod's network namespace with its socket mark.
type DialFunc func(ctx context.Context) (net.Conn, error)

// PoolConfig configures a Pool.
type PoolConfig struct {
	// Identities supplies the source SVIDs and the trust bundle.
	Identities identity.Provider
	// Logger receives connection events; nil discards.
	Logger *slog.Logger
	// MaxStreamsPerConn (DefaultMaxStreamsPerConn). The server's
	// SETTINGS_MAX_CONCURRENT_STREAMS applies too when lower.
	MaxStreamsPerConn int
	// IdleTimeout releases connections without streams
	// (DefaultPoolIdleTimeout).
	IdleTimeout time.Duration
	// HandshakeTimeout bounds TCP dial plus TLS handshake
	// (DefaultHandshakeTimeout); the caller's context may end it sooner.
	HandshakeTimeout time.Duration
	// Tuning sets HTTP/2 windows, frame size and keepalive.
	Tuning Tuning
	// OnHandshake, when set, is told how long each TLS handshake took and
	// whether it failed (for metrics).
	OnHandshake func(d time.Duration, err error)
}

// Pool opens HBONE streams over pooled HTTP/2 connections. It is safe for
// concurrent use.
type Pool struct {
	cfg   PoolConfig
	log   *slog.Logger
	bufs  *bufPool
	batch *batchPool

	mu      sync.Mutex
	entries map[Key]*poolEntry
	closed  bool
	sweeper *time.Timer
}

type poolEntry struct {
	conns []*clientConn
	dial  *dialCall // non-nil while a dial for this key is in flight
}

type dialCall struct {
	done chan struct{}
	err  error
	ctx  context.Context // the dialer's context
}

// NewPool returns an empty pool.
func NewPool(cfg PoolConfig) (*Pool, error) {
	if cfg.Identities == nil {
		return nil, errors.New("hbone: pool needs an identity provider")
	}
	if cfg.MaxStreamsPerConn <= 0 {
		cfg.MaxStreamsPerConn = DefaultMaxStreamsPerConn
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = DefaultPoolIdleTimeout
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = DefaultHandshakeTimeout
	}
	cfg.Tuning = cfg.Tuning.withDefaults()
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}

	p := &Pool{
		cfg:     cfg,
		log:     log.With("component", "hbone-pool"),
		bufs:    newBufPool(),
		batch:   newBatchPool(),
		entries: make(map[Key]*poolEntry),
	}
	p.sweeper = time.AfterFunc(p.sweepPeriod(), p.sweep)
	return p, nil
}

// Dial opens one CONNECT stream to authority (the original destination
// ip:port) through a pooled connection for key, creating the TCP
// connection with dialTCP when no pooled connection has room. header is
// sent as request headers (for example forwarded: for="ip:port",
// baggage, traceparent) and is not modified. ctx bounds the setup only; the
// returned *Conn lives until closed.
//
// Failures: *StatusError when the server answers other than 200, an error
// wrapping *PeerIdentityError when the server is not key.Dst, ErrPoolClosed
// after Close. A stream refused because its connection was going away is
// retried once on a fresh connection: no application byte has been sent
// before Dial returns, so that is always safe.
func (p *Pool) Dial(ctx context.Context, key Key, authority string, header http.Header, dialTCP DialFunc) (net.Conn, error) {
	switch {
	case key.Src.IsZero() || key.Dst.IsZero():
		return nil, errors.New("hbone: dial: key needs source and destination identities")
	case authority == "":
		return nil, errors.New("hbone: dial: empty authority")
	case dialTCP == nil:
		return nil, errors.New("hbone: dial: nil dialTCP")
	}
	for attempt := 0; ; attempt++ {
		pc, err := p.acquire(ctx, key, dialTCP)
		if err != nil {
			return nil, err
		}
		c, err := pc.openStream(ctx, authority, header)
		if err == nil {
			return c, nil
		}
		if attempt == 0 && ctx.Err() == nil && retryable(err) {
			p.log.Debug("retrying HBONE stream on a new connection", "key", key.String(), "err", err)
			continue
		}
		var sErr *StatusError
		if errors.As(err, &sErr) {
			return nil, err
		}
		return nil, fmt.Errorf("hbone: CONNECT %s via %s: %w", authority, key.DstAddr, err)
	}
}

// retryable reports whether a failed stream never reached the server's
// application logic: refused, or its connection went away before the
// server took it.
func retryable(err error) bool {
	var re *StreamResetError
	if errors.As(err, &re) {
		return re.Code == http2.ErrCodeRefusedStream
	}
	return errors.Is(err, errConnGoAway) || errors.Is(err, errConnClosed) || errors.Is(err, errIDsExhausted)
}

// acquire returns a connection for key with one stream reserved, dialling
// when none has room. Dials for one key are serialised: concurrent callers
// wait for the dial in flight and share its result.
func (p *Pool) acquire(ctx context.Context, key Key, dialTCP DialFunc) (*clientConn, error) {
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return nil, ErrPoolClosed
		}
		e := p.entries[key]
		if e == nil {
			e = &poolEntry{}
			p.entries[key] = e
		}
		if pc := p.reserveLocked(e); pc != nil {
			p.mu.Unlock()
			return pc, nil
		}
		if call := e.dial; call != nil {
			p.mu.Unlock()
			select {
			case <-call.done:
			case <-ctx.Done():
				return nil, fmt.Errorf("hbone: waiting for connection to %s: %w", key.DstAddr, ctx.Err())
			}
			// Share the dial's failure, unless it failed only because the
			// dialer's own context ended.
			if call.err != nil && call.ctx.Err() == nil {
				return nil, call.err
			}
			continue
		}
		call := &dialCall{done: make(chan struct{}), ctx: ctx}
		e.dial = call
		p.mu.Unlock()

		pc, err := p.dialConn(ctx, key, dialTCP)

		p.mu.Lock()
		e.dial = nil
		call.err = err
		if err == nil {
			if p.closed {
				err = ErrPoolClosed
				pc.closeNow(nil)
			} else if !pc.tryReserve(p.cfg.MaxStreamsPerConn) {
				err = fmt.Errorf("hbone: new connection to %s unusable", key.DstAddr)
				pc.closeNow(nil)
			} else {
				e.conns = append(e.conns, pc)
			}
		}
		if err != nil && len(e.conns) == 0 && p.entries[key] == e {
			delete(p.entries, key)
		}
		close(call.done)
		p.mu.Unlock()
		if err != nil {
			return nil, err
		}
		return pc, nil
	}
}

// reserveLocked reserves a stream on a pooled connection with room, dropping
// connections that closed.
func (p *Pool) reserveLocked(e *poolEntry) *clientConn {
	var found *clientConn
	live := e.conns[:0]
	for _, pc := range e.conns {
		if pc.state().closed {
			continue
		}
		live = append(live, pc)
		if found == nil && pc.tryReserve(p.cfg.MaxStreamsPerConn) {
			found = pc
		}
	}
	clear(e.conns[len(live):])
	e.conns = live
	return found
}

// dialConn makes a new TLS + HTTP/2 connection for key.
func (p *Pool) dialConn(ctx context.Context, key Key, dialTCP DialFunc) (*clientConn, error) {
	ctx, cancel := context.WithTimeout(ctx, p.cfg.HandshakeTimeout)
	defer cancel()
	svid, err := p.cfg.Identities.SVID(ctx, key.Src)
	if err != nil {
		return nil, fmt.Errorf("hbone: SVID for %s: %w", key.Src, err)
	}
	c, err := dialTCP(ctx)
	if err != nil {
		return nil, fmt.Errorf("hbone: dial %s: %w", key.DstAddr, err)
	}
	raw := newBufConn(c, p.batch)
	tc := tls.Client(raw, clientTLSConfig(svid, p.cfg.Identities, key.Dst))
	start := time.Now()
	err = tc.HandshakeContext(ctx)
	if p.cfg.OnHandshake != nil {
		p.cfg.OnHandshake(time.Since(start), err)
	}
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("hbone: TLS handshake with %s at %s: %w", key.Dst, key.DstAddr, err)
	}
	if proto := tc.ConnectionState().NegotiatedProtocol; proto != alpnH2 {
		c.Close()
		return nil, fmt.Errorf("hbone: %s negotiated ALPN %q, want %q", key.DstAddr, proto, alpnH2)
	}
	cc, err := newClientConn(p, key, tc, raw)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("hbone: HTTP/2 connection to %s: %w", key.DstAddr, err)
	}
	p.log.Debug("HBONE connection opened", "key", key.String(), "local", tc.LocalAddr().String())
	return cc, nil
}

// PoolStats is a snapshot of a pool.
type PoolStats struct {
	// Keys is the number of keys with at least one connection.
	Keys int
	// Conns is the number of open HTTP/2 connections.
	Conns int
	// Streams is the number of active or reserved streams.
	Streams int
}

// Stats returns a snapshot of the pool.
func (p *Pool) Stats() PoolStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	var s PoolStats
	for _, e := range p.entries {
		n := 0
		for _, pc := range e.conns {
			st := pc.state()
			if st.closed {
				continue
			}
			n++
			s.Streams += st.streams
		}
		if n > 0 {
			s.Keys++
			s.Conns += n
		}
	}
	return s
}

func (p *Pool) sweepPeriod() time.Duration {
	return min(max(p.cfg.IdleTimeout/2, 10*time.Millisecond), time.Minute)
}

// sweep drops connections that closed (each closes itself after
// IdleTimeout without streams) and keys left without connections.
func (p *Pool) sweep() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return
	}
	for k, e := range p.entries {
		pruneLocked(e)
		if len(e.conns) == 0 && e.dial == nil {
			delete(p.entries, k)
		}
	}
	p.sweeper.Reset(p.sweepPeriod())
}

// pruneLocked drops closed connections from e.
func pruneLocked(e *poolEntry) {
	live := e.conns[:0]
	for _, pc := range e.conns {
		if !pc.state().closed {
			live = append(live, pc)
		}
	}
	clear(e.conns[len(live):])
	e.conns = live
}

func (p *Pool) takeAll() []*clientConn {
	p.mu.Lock()
	defer p.mu.Unlock()
	var all []*clientConn
	for k, e := range p.entries {
		all = append(all, e.conns...)
		e.conns = nil
		if e.dial == nil {
			delete(p.entries, k)
		}
	}
	return all
}

// Evict closes, at once, every connection whose key matches, resetting its
// streams; for example all connections of a workload that went away
// (their sockets live in its network namespace).
func (p *Pool) Evict(match func(Key) bool) {
	p.mu.Lock()
	var victims []*clientConn
	for k, e := range p.entries {
		if !match(k) {
			continue
		}
		victims = append(victims, e.conns...)
		e.conns = nil
		if e.dial == nil {
			delete(p.entries, k)
		}
	}
	p.mu.Unlock()
	for _, pc := range victims {
		pc.closeNow(nil)
	}
}

// CloseIdle closes connections that carry no stream.
func (p *Pool) CloseIdle() {
	p.mu.Lock()
	var idle []*clientConn
	for _, e := range p.entries {
		live := e.conns[:0]
		for _, pc := range e.conns {
			if pc.state().streams == 0 {
				idle = append(idle, pc)
				continue
			}
			live = append(live, pc)
		}
		clear(e.conns[len(live):])
		e.conns = live
	}
	p.mu.Unlock()
	for _, pc := range idle {
		pc.closeGracefully()
	}
}

// Drain sends GOAWAY on every pooled connection, so that no new stream uses
// them, and waits for their streams to finish; idle connections close at
// once. When ctx ends first, the remaining connections are closed. Dial keeps
// working afterwards (on new connections) until Close.
func (p *Pool) Drain(ctx context.Context) error {
	conns := p.takeAll()
	var wg sync.WaitGroup
	for _, pc := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pc.Shutdown(ctx)
		}()
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("hbone: drain: %w", err)
	}
	return nil
}

// Close closes every connection and stream at once; Dial fails with
// ErrPoolClosed afterwards.
func (p *Pool) Close() error {
	p.mu.Lock()
	p.closed = true
	p.sweeper.Stop()
	p.mu.Unlock()
	for _, pc := range p.takeAll() {
		pc.closeNow(nil)
	}
	return nil
}
