package l7test

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/palisade-net/palisade/pkg/l7"
)

// Proxy runs an inspector's Serve for every connection accepted on a
// loopback listener, each with a new connection to a backend, and keeps
// what the sessions report: records, logs, and the error each Serve
// returned.
type Proxy struct {
	// Addr is the address the proxy listens on.
	Addr string
	// Logs is what the sessions logged.
	Logs LogBuffer
	// Wait is how long NextErr waits for a connection to end
	// (StartProxy sets 10s).
	Wait time.Duration

	mu       sync.Mutex
	records  []l7.Record
	errs     chan error
	accepted int
}

// StartProxy starts a Proxy running serve with judge towards
// backendAddr. Each connection gets its own session, observed and logged
// into the Proxy. tb's cleanup ends the sessions' context, closes the
// listener and waits for every Serve to return.
func StartProxy(tb testing.TB, serve l7.ServeFunc, judge l7.Judge, backendAddr string) *Proxy {
	tb.Helper()
	ln := Listen(tb)
	p := &Proxy{Addr: ln.Addr().String(), Wait: 10 * time.Second, errs: make(chan error, 1000)}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		accept(ln, backendAddr, func() {
			p.mu.Lock()
			p.accepted++
			p.mu.Unlock()
		}, func(c, b net.Conn) {
			s := &l7.Session{
				Judge: judge,
				Observe: func(r l7.Record) {
					p.mu.Lock()
					p.records = append(p.records, r)
					p.mu.Unlock()
				},
				Log: slog.New(slog.NewTextHandler(&p.Logs, nil)),
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				err := serve(ctx, c, b, s)
				select {
				case p.errs <- err:
				default:
				}
			}()
		}, func(err error) { p.errs <- err })
	}()
	tb.Cleanup(func() {
		cancel()
		ln.Close()
		wg.Wait()
	})
	return p
}

// NextErr returns the error of the next connection to end (or the
// error of a failed dial to the backend); it fails tb if none ends within
// p.Wait.
func (p *Proxy) NextErr(tb testing.TB) error {
	tb.Helper()
	select {
	case err := <-p.errs:
		return err
	case <-time.After(p.Wait):
		tb.Fatal("Serve did not return")
		return nil
	}
}

// ExpectMalformed fails tb unless the next connection to end returned
// an error that wraps malformed and says reason, and reason was logged.
func (p *Proxy) ExpectMalformed(tb testing.TB, malformed error, reason string) {
	tb.Helper()
	err := p.NextErr(tb)
	if !errors.Is(err, malformed) || !strings.Contains(err.Error(), reason) {
		tb.Fatalf("Serve returned %v, want %q with %q", err, malformed, reason)
	}
	if !strings.Contains(p.Logs.String(), reason) {
		tb.Fatalf("reason %q not logged", reason)
	}
}

// Recorded returns the records observed so far.
func (p *Proxy) Recorded() []l7.Record {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]l7.Record(nil), p.records...)
}

// AcceptedConns returns how many connections the proxy accepted.
func (p *Proxy) AcceptedConns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.accepted
}

// Dial connects to addr over TCP with a deadline 10s away for all I/O,
// failing tb if it cannot; tb's cleanup closes the connection.
func Dial(tb testing.TB, addr string) net.Conn {
	tb.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return c
}

// ExpectCanceled runs serve on client and backend with s, calls feed (if
// not nil) while it runs, then ends serve's context; it fails tb unless
// serve returns context.Canceled within 5s.
func ExpectCanceled(tb testing.TB, serve l7.ServeFunc, client, backend net.Conn, s *l7.Session, feed func()) {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- serve(ctx, client, backend, s) }()
	if feed != nil {
		feed()
	}
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			tb.Fatalf("Serve: %v", err)
		}
	case <-time.After(5 * time.Second):
		tb.Fatal("Serve did not return")
	}
}

// ServeLoopback runs serve with s for every connection accepted on a new
// loopback listener, each with a new connection to backendAddr, and
// returns the listener's address. tb's cleanup closes the listener; it
// neither ends nor waits for the connections: benchmarks use it, where a
// Proxy's bookkeeping would be measured too.
func ServeLoopback(tb testing.TB, serve l7.ServeFunc, s *l7.Session, backendAddr string) string {
	tb.Helper()
	ln := Listen(tb)
	tb.Cleanup(func() { ln.Close() })
	go accept(ln, backendAddr, nil, func(c, b net.Conn) {
		go func() { _ = serve(context.Background(), c, b, s) }()
	}, nil)
	return ln.Addr().String()
}

// accept takes connections from ln until it is closed, calling accepted
// (if not nil) for each, dialing backendAddr for it and handing both to
// handle. A failed dial closes the client's connection and goes to
// dialFailed (if not nil).
func accept(ln net.Listener, backendAddr string, accepted func(), handle func(client, backend net.Conn), dialFailed func(error)) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		if accepted != nil {
			accepted()
		}
		b, err := net.Dial("tcp", backendAddr)
		if err != nil {
			c.Close()
			if dialFailed != nil {
				dialFailed(err)
			}
			continue
		}
		handle(c, b)
	}
}
