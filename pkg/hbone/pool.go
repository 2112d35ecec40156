//lint:file-ignore SA1019 DESIGN.md asks for golang.org/x/net/http2; its client types are deprecated in favour of net/http's (Go 1.26), the planned migration.

package hbone

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
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
}

// Pool opens HBONE streams over pooled HTTP/2 connections. It is safe for
// concurrent use.
type Pool struct {
	cfg PoolConfig
	t2  *http2.Transport
	log *slog.Logger

	mu      sync.Mutex
	entries map[Key]*poolEntry
	closed  bool
	sweeper *time.Timer
}

type poolEntry struct {
	conns []*pooledConn
	dial  *dialCall // non-nil while a dial for this key is in flight
}

type dialCall struct {
	done chan struct{}
	err  error
	ctx  context.Context // the dialer's context
}

type pooledConn struct {
	key Key
	cc  *http2.ClientConn
	tc  *tls.Conn
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

	// x/net reads the windows from the net/http HTTP2Config of the
	// http.Transport it is linked to; that transport is never used to send
	// requests.
	t := cfg.Tuning
	t1 := &http.Transport{HTTP2: &http.HTTP2Config{
		MaxReceiveBufferPerConnection: int(t.ConnWindow),
		MaxReceiveBufferPerStream:     int(t.StreamWindow),
		MaxReadFrameSize:              int(t.MaxFrameSize),
		SendPingTimeout:               t.PingInterval,
		PingTimeout:                   t.PingTimeout,
	}}
	t2, err := http2.ConfigureTransports(t1)
	if err != nil {
		return nil, fmt.Errorf("hbone: configure HTTP/2 transport: %w", err)
	}
	t2.MaxReadFrameSize = t.MaxFrameSize
	t2.ReadIdleTimeout = t.PingInterval
	t2.PingTimeout = t.PingTimeout
	t2.IdleConnTimeout = cfg.IdleTimeout
	t2.MaxHeaderListSize = maxResponseHeaderBytes
	t2.DisableCompression = true

	p := &Pool{
		cfg:     cfg,
		t2:      t2,
		log:     log.With("component", "hbone-pool"),
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
		c, err := p.roundTrip(ctx, pc, authority, header)
		if err == nil {
			return c, nil
		}
		if attempt == 0 && ctx.Err() == nil && retryable(err, pc) {
			p.log.Debug("retrying HBONE stream on a new connection", "key", key.String(), "err", err)
			continue
		}
		return nil, err
	}
}

// retryable reports whether a failed stream never reached the server's
// application logic because its connection was unusable.
func retryable(err error, pc *pooledConn) bool {
	var se http2.StreamError
	if errors.As(err, &se) && se.Code == http2.ErrCodeRefusedStream {
		return true
	}
	var sErr *StatusError
	if errors.As(err, &sErr) {
		return false
	}
	st := pc.cc.State()
	return st.Closed || st.Closing
}

// acquire returns a connection for key with one stream reserved, dialling
// when none has room. Dials for one key are serialised: concurrent callers
// wait for the dial in flight and share its result.
func (p *Pool) acquire(ctx context.Context, key Key, dialTCP DialFunc) (*pooledConn, error) {
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
				pc.cc.Close()
			} else if !pc.cc.ReserveNewRequest() {
				err = fmt.Errorf("hbone: new connection to %s unusable", key.DstAddr)
				pc.cc.Close()
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
func (p *Pool) reserveLocked(e *poolEntry) *pooledConn {
	var found *pooledConn
	live := e.conns[:0]
	for _, pc := range e.conns {
		st := pc.cc.State()
		if st.Closed {
			continue
		}
		live = append(live, pc)
		if found != nil || st.Closing {
			continue
		}
		if st.StreamsActive+st.StreamsReserved+st.StreamsPending < p.cfg.MaxStreamsPerConn && pc.cc.ReserveNewRequest() {
			found = pc
		}
	}
	clear(e.conns[len(live):])
	e.conns = live
	return found
}

// dialConn makes a new TLS + HTTP/2 connection for key.
func (p *Pool) dialConn(ctx context.Context, key Key, dialTCP DialFunc) (*pooledConn, error) {
	ctx, cancel := context.WithTimeout(ctx, p.cfg.HandshakeTimeout)
	defer cancel()
	svid, err := p.cfg.Identities.SVID(ctx, key.Src)
	if err != nil {
		return nil, fmt.Errorf("hbone: SVID for %s: %w", key.Src, err)
	}
	raw, err := dialTCP(ctx)
	if err != nil {
		return nil, fmt.Errorf("hbone: dial %s: %w", key.DstAddr, err)
	}
	tc := tls.Client(raw, clientTLSConfig(svid, p.cfg.Identities, key.Dst))
	if err := tc.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, fmt.Errorf("hbone: TLS handshake with %s at %s: %w", key.Dst, key.DstAddr, err)
	}
	if proto := tc.ConnectionState().NegotiatedProtocol; proto != alpnH2 {
		tc.Close()
		return nil, fmt.Errorf("hbone: %s negotiated ALPN %q, want %q", key.DstAddr, proto, alpnH2)
	}
	cc, err := p.t2.NewClientConn(tc)
	if err != nil {
		tc.Close()
		return nil, fmt.Errorf("hbone: HTTP/2 connection to %s: %w", key.DstAddr, err)
	}
	p.log.Debug("HBONE connection opened", "key", key.String(), "local", tc.LocalAddr().String())
	return &pooledConn{key: key, cc: cc, tc: tc}, nil
}

// roundTrip sends the CONNECT request on pc, which holds a reservation.
func (p *Pool) roundTrip(ctx context.Context, pc *pooledConn, authority string, header http.Header) (*Conn, error) {
	if header == nil {
		header = http.Header{}
	}
	pr, pw := io.Pipe()
	// The stream outlives ctx: it gets its own context, cancelled by
	// Conn.Close, and ctx only aborts the setup below.
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	req := (&http.Request{
		Method:        http.MethodConnect,
		URL:           &url.URL{Host: authority},
		Host:          authority,
		Header:        header,
		Body:          pr,
		ContentLength: -1,
		Proto:         "HTTP/2.0",
		ProtoMajor:    2,
	}).WithContext(sctx)
	stop := context.AfterFunc(ctx, cancel)
	resp, err := pc.cc.RoundTrip(req)
	if !stop() {
		// ctx ended during setup.
		if err == nil {
			resp.Body.Close()
		}
		pw.CloseWithError(ctx.Err())
		return nil, fmt.Errorf("hbone: CONNECT %s via %s: %w", authority, pc.key.DstAddr, ctx.Err())
	}
	if err != nil {
		cancel()
		pw.CloseWithError(err)
		return nil, fmt.Errorf("hbone: CONNECT %s via %s: %w", authority, pc.key.DstAddr, err)
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		cancel()
		pw.CloseWithError(net.ErrClosed)
		return nil, &StatusError{Code: resp.StatusCode, Reason: resp.Header.Get(reasonHeader)}
	}
	return &Conn{
		body:   resp.Body,
		pw:     pw,
		cancel: cancel,
		local:  pc.tc.LocalAddr(),
		remote: pc.tc.RemoteAddr(),
	}, nil
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
			st := pc.cc.State()
			if st.Closed {
				continue
			}
			n++
			s.Streams += st.StreamsActive + st.StreamsReserved + st.StreamsPending
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

// sweep drops connections that closed (x/net closes idle ones itself after
// IdleTimeout) and keys left without connections.
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
		if !pc.cc.State().Closed {
			live = append(live, pc)
		}
	}
	clear(e.conns[len(live):])
	e.conns = live
}

func (p *Pool) takeAll() []*pooledConn {
	p.mu.Lock()
	defer p.mu.Unlock()
	var all []*pooledConn
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
	var victims []*pooledConn
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
		pc.cc.Close()
	}
}

// CloseIdle closes connections that carry no stream.
func (p *Pool) CloseIdle() {
	p.mu.Lock()
	var idle []*pooledConn
	for _, e := range p.entries {
		live := e.conns[:0]
		for _, pc := range e.conns {
			st := pc.cc.State()
			if st.StreamsActive+st.StreamsReserved+st.StreamsPending == 0 {
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
		pc.cc.Close()
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
			if err := pc.cc.Shutdown(ctx); err != nil {
				pc.cc.Close()
			}
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
		pc.cc.Close()
	}
	return nil
}
