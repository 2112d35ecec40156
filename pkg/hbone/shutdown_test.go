package hbone

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

func TestShutdownDrains(t *testing.T) {
	e := newEnv(t, envOpts{})
	be := newBackend(t, echoHandler)
	c := e.mustDial(be.addr)
	defer c.Close()
	if _, err := c.Write([]byte("before ")); err != nil {
		t.Fatal(err)
	}

	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		done <- e.srv.Shutdown(ctx)
	}()

	// New streams fail once the GOAWAY is seen and the listener is closed.
	deadline := time.Now().Add(5 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		nc, err := e.dial(ctx, be.addr, nil)
		cancel()
		if err != nil {
			break
		}
		nc.Close()
		if time.Now().After(deadline) {
			t.Fatal("new streams still accepted during shutdown")
		}
		time.Sleep(10 * time.Millisecond)
	}
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned %v with a stream open", err)
	default:
	}

	// The open stream still works both ways, to its natural end.
	if _, err := c.Write([]byte("during drain")); err != nil {
		t.Fatalf("write during drain: %v", err)
	}
	c.CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "before during drain" {
		t.Fatalf("read %q, %v", got, err)
	}
	c.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Shutdown did not return after the last stream ended")
	}
}

func TestShutdownDeadlineForcesClose(t *testing.T) {
	e := newEnv(t, envOpts{})
	be := newBackend(t, func(c *net.TCPConn) { io.Copy(io.Discard, c) }) // never ends
	c := e.mustDial(be.addr)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := e.srv.Shutdown(ctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown = %v, want deadline exceeded", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Shutdown took %v", d)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, io.EOF) {
		t.Fatalf("stream survived a forced shutdown: %v", err)
	}
}

// TestPoolDrain: Drain sends GOAWAY; the open stream finishes and the next
// Dial makes a new connection.
func TestPoolDrain(t *testing.T) {
	e := newEnv(t, envOpts{})
	be := newBackend(t, echoHandler)
	c := e.mustDial(be.addr)
	e.mustDial(be.addr).Close()
	done := make(chan error, 1)
	go func() { done <- e.pool.Drain(context.Background()) }()
	time.Sleep(50 * time.Millisecond)
	c.Write([]byte("still here"))
	c.CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "still here" {
		t.Fatalf("read %q, %v", got, err)
	}
	c.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Drain did not return")
	}
	e.mustDial(be.addr).Close()
	if n := e.dials.Load(); n != 2 {
		t.Errorf("%d dials, want 2 (one after the drain)", n)
	}
}

// TestKeepalive: the server pings a silent client and closes the
// connection when nothing comes back.
func TestKeepalive(t *testing.T) {
	e := newEnv(t, envOpts{server: func(c *ServerConfig) {
		c.Tuning = Tuning{PingInterval: 100 * time.Millisecond, PingTimeout: 200 * time.Millisecond}
	}})
	bundle, _ := e.provider.GetX509BundleForTrustDomain(testTD)
	tc := e.rawTLS(t, e.svid(t, clientID), bundle)
	tc.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(tc, http2.ClientPreface)
	fr := http2.NewFramer(tc, tc)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	fr.WriteSettings()
	start := time.Now()
	sawPing := false
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			break // closed by the server
		}
		if p, ok := f.(*http2.PingFrame); ok && !p.IsAck() {
			sawPing = true
		}
	}
	if !sawPing {
		t.Error("server sent no PING to a silent client")
	}
	if d := time.Since(start); d < 250*time.Millisecond || d > 5*time.Second {
		t.Errorf("connection closed after %v, want about 300ms", d)
	}
	e.logs.waitFor(t, "peer silent")

	// A client that answers PINGs stays connected.
	e2 := newEnv(t, envOpts{server: func(c *ServerConfig) {
		c.Tuning = Tuning{PingInterval: 50 * time.Millisecond, PingTimeout: 100 * time.Millisecond}
	}, pool: func(c *PoolConfig) {
		c.Tuning = Tuning{PingInterval: time.Hour}
	}})
	be := newBackend(t, echoHandler)
	c := e2.mustDial(be.addr)
	defer c.Close()
	time.Sleep(500 * time.Millisecond)
	c.Write([]byte("alive"))
	c.CloseWrite()
	if got, err := io.ReadAll(c); err != nil || !bytes.Equal(got, []byte("alive")) {
		t.Fatalf("read %q, %v", got, err)
	}
}

// TestServerIdleTimeout: the server closes connections without streams.
func TestServerIdleTimeout(t *testing.T) {
	e := newEnv(t, envOpts{server: func(c *ServerConfig) { c.IdleTimeout = 100 * time.Millisecond }})
	be := newBackend(t, echoHandler)
	e.mustDial(be.addr).Close()
	deadline := time.Now().Add(3 * time.Second)
	for e.pool.Stats().Conns != 0 {
		if time.Now().After(deadline) {
			t.Fatal("idle connection not closed by the server")
		}
		time.Sleep(20 * time.Millisecond)
	}
	e.mustDial(be.addr).Close() // and the pool recovers
}

func TestPoolEvict(t *testing.T) {
	e := newEnv(t, envOpts{})
	be := newBackend(t, func(c *net.TCPConn) { io.Copy(io.Discard, c) })
	c := e.mustDial(be.addr)
	defer c.Close()
	e.pool.Evict(func(k Key) bool { return k.Src != clientID }) // no match
	if s := e.pool.Stats(); s.Conns != 1 {
		t.Fatalf("non-matching evict closed connections: %+v", s)
	}
	e.pool.Evict(func(k Key) bool { return k.Src == clientID })
	if s := e.pool.Stats(); s.Conns != 0 {
		t.Fatalf("stats after evict: %+v", s)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, io.EOF) {
		t.Fatalf("stream survived eviction: %v", err)
	}
}
