package hbone

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"testing"
	"time"
)

func randomBytes(t testing.TB, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestEcho sends payloads through the tunnel to an echo backend while
// reading the echo concurrently, and checks they come back byte for byte.
func TestEcho(t *testing.T) {
	e := newEnv(t, envOpts{})
	be := newBackend(t, echoHandler)
	for _, tc := range []struct {
		name  string
		size  int
		chunk int
	}{
		{"empty", 0, 1},
		{"one byte", 1, 1},
		{"small writes", 10_000, 7},
		{"100KiB", 100 << 10, 32 << 10},
		{"8MiB beyond all windows", 8 << 20, 64 << 10},
		{"8MiB in one write", 8 << 20, 8 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := randomBytes(t, tc.size)
			c := e.mustDial(be.addr)
			defer c.Close()
			errc := make(chan error, 1)
			go func() {
				for p := data; len(p) > 0; {
					n := min(tc.chunk, len(p))
					if _, err := c.Write(p[:n]); err != nil {
						errc <- err
						return
					}
					p = p[n:]
				}
				errc <- c.CloseWrite()
			}()
			got, err := io.ReadAll(c) // until the backend's half-close
			if err != nil {
				t.Fatalf("read: %v", err)
			}
			if err := <-errc; err != nil {
				t.Fatalf("write: %v", err)
			}
			if !bytes.Equal(got, data) {
				t.Fatalf("echo differs: got %d bytes, sent %d", len(got), len(data))
			}
		})
	}
}

// TestDownloadUpload moves several MB one way only, in each direction.
func TestDownloadUpload(t *testing.T) {
	const size = 6 << 20
	payload := randomBytes(t, size)
	received := make(chan []byte, 1)
	be := newBackend(t, func(c *net.TCPConn) {
		var hdr [1]byte
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			return
		}
		switch hdr[0] {
		case 'D': // download: send payload, half-close
			c.Write(payload)
			c.CloseWrite()
			io.Copy(io.Discard, c)
		case 'U': // upload: read everything
			b, _ := io.ReadAll(c)
			received <- b
		}
	})
	e := newEnv(t, envOpts{})

	t.Run("download", func(t *testing.T) {
		c := e.mustDial(be.addr)
		defer c.Close()
		c.Write([]byte("D"))
		got, err := io.ReadAll(c)
		if err != nil || !bytes.Equal(got, payload) {
			t.Fatalf("got %d bytes, err %v", len(got), err)
		}
	})
	t.Run("upload", func(t *testing.T) {
		c := e.mustDial(be.addr)
		defer c.Close()
		c.Write([]byte("U"))
		if _, err := c.Write(payload); err != nil {
			t.Fatal(err)
		}
		c.CloseWrite()
		select {
		case got := <-received:
			if !bytes.Equal(got, payload) {
				t.Fatalf("backend got %d bytes, want %d", len(got), len(payload))
			}
		case <-time.After(10 * time.Second):
			t.Fatal("backend did not receive the upload")
		}
	})
}

// TestHalfClose checks that each side's half-close reaches the other while
// the opposite direction keeps flowing.
func TestHalfClose(t *testing.T) {
	type result struct {
		got []byte
		err error
	}
	t.Run("client closes write first", func(t *testing.T) {
		results := make(chan result, 1)
		be := newBackend(t, func(c *net.TCPConn) {
			got, err := io.ReadAll(c) // returns at the client's half-close
			results <- result{got, err}
			// The backend can still answer after the client's FIN.
			c.Write([]byte("reply after your FIN"))
			c.CloseWrite()
		})
		e := newEnv(t, envOpts{})
		c := e.mustDial(be.addr)
		defer c.Close()
		c.Write([]byte("request"))
		if err := c.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write([]byte("x")); err == nil {
			t.Error("write after CloseWrite succeeded")
		}
		r := <-results
		if r.err != nil || string(r.got) != "request" {
			t.Fatalf("backend read %q, %v", r.got, r.err)
		}
		got, err := io.ReadAll(c)
		if err != nil || string(got) != "reply after your FIN" {
			t.Fatalf("client read %q, %v", got, err)
		}
	})

	t.Run("backend closes write first", func(t *testing.T) {
		results := make(chan result, 1)
		be := newBackend(t, func(c *net.TCPConn) {
			c.Write([]byte("banner"))
			c.CloseWrite() // FIN towards the client, keep reading
			got, err := io.ReadAll(c)
			results <- result{got, err}
		})
		e := newEnv(t, envOpts{})
		c := e.mustDial(be.addr)
		defer c.Close()
		got, err := io.ReadAll(c) // EOF must arrive while we still write
		if err != nil || string(got) != "banner" {
			t.Fatalf("client read %q, %v", got, err)
		}
		for i := range 3 {
			if _, err := fmt.Fprintf(c, "after-eof-%d;", i); err != nil {
				t.Fatalf("write after the server's END_STREAM: %v", err)
			}
		}
		c.CloseWrite()
		select {
		case r := <-results:
			if r.err != nil || string(r.got) != "after-eof-0;after-eof-1;after-eof-2;" {
				t.Fatalf("backend read %q, %v", r.got, r.err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("backend never saw the client's data or FIN")
		}
	})
}

// TestBackendReset: a backend that resets its connection resets the stream.
func TestBackendReset(t *testing.T) {
	be := newBackend(t, func(c *net.TCPConn) {
		buf := make([]byte, 1)
		c.Read(buf)
		c.SetLinger(0)
		c.Close()
	})
	e := newEnv(t, envOpts{})
	c := e.mustDial(be.addr)
	defer c.Close()
	c.Write([]byte("x"))
	_, err := io.ReadAll(c)
	if err == nil {
		t.Fatal("read after backend RST succeeded without error")
	}
}

// TestClientCloseResetsBackend: closing the client conn mid-stream closes the
// backend connection.
func TestClientCloseResetsBackend(t *testing.T) {
	closed := make(chan error, 1)
	be := newBackend(t, func(c *net.TCPConn) {
		_, err := io.Copy(io.Discard, c)
		closed <- err
	})
	e := newEnv(t, envOpts{})
	c := e.mustDial(be.addr)
	c.Write([]byte("hello"))
	time.Sleep(20 * time.Millisecond)
	c.Close()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("backend connection not closed after client Close")
	}
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
		t.Errorf("read after Close: %v", err)
	}
}

func TestManyConcurrentStreams(t *testing.T) {
	e := newEnv(t, envOpts{})
	be := newBackend(t, echoHandler)
	const streams = 250
	var wg, opened sync.WaitGroup
	errs := make(chan error, streams)
	opened.Add(streams)
	for i := range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			c, err := e.dial(ctx, be.addr, nil)
			opened.Done()
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			opened.Wait() // all streams open at once
			msg := bytes.Repeat([]byte{byte(i)}, 20_000+i)
			go func() {
				c.Write(msg)
				c.CloseWrite()
			}()
			got, err := io.ReadAll(c)
			if err != nil || !bytes.Equal(got, msg) {
				errs <- fmt.Errorf("stream %d: %d bytes, %v", i, len(got), err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// 250 streams at most 100 per connection: at least 3 connections.
	if n := e.accepted.Load(); n < 3 {
		t.Errorf("%d connections for %d concurrent streams", n, streams)
	}
}

// TestPoolReuse: sequential streams share one connection; a new connection
// is opened only when the open streams reach the limit.
func TestPoolReuse(t *testing.T) {
	e := newEnv(t, envOpts{pool: func(c *PoolConfig) { c.MaxStreamsPerConn = 3 }})
	be := newBackend(t, echoHandler)

	for range 5 {
		c := e.mustDial(be.addr)
		c.Write([]byte("ping"))
		c.CloseWrite()
		io.ReadAll(c)
		c.Close()
	}
	if n := e.dials.Load(); n != 1 {
		t.Fatalf("%d dials for 5 sequential streams, want 1", n)
	}

	var open []*Conn
	for i := range 7 {
		c := e.mustDial(be.addr)
		open = append(open, c)
		want := int32(1 + i/3)
		if n := e.dials.Load(); n != want {
			t.Fatalf("after %d open streams: %d connections, want %d", i+1, n, want)
		}
	}
	if s := e.pool.Stats(); s.Conns != 3 || s.Streams != 7 || s.Keys != 1 {
		t.Errorf("stats = %+v", s)
	}
	for _, c := range open {
		c.Close()
	}
	// Freed slots are reused without dialling.
	c := e.mustDial(be.addr)
	c.Close()
	if n := e.dials.Load(); n != 3 {
		t.Errorf("%d connections after reuse, want 3", n)
	}
}

// TestDialsSerialised: concurrent first dials for one key make one TCP
// connection; a failing dial is shared instead of retried by every waiter.
func TestDialsSerialised(t *testing.T) {
	e := newEnv(t, envOpts{})
	be := newBackend(t, echoHandler)
	gate := make(chan struct{})
	slowDial := func(ctx context.Context) (net.Conn, error) {
		<-gate
		return e.dialTCP(ctx)
	}
	const n = 30
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := e.pool.Dial(context.Background(), e.key(), be.addr, nil, slowDial)
			if err != nil {
				errs <- err
				return
			}
			c.Close()
		}()
	}
	time.Sleep(50 * time.Millisecond)
	close(gate)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if d := e.dials.Load(); d != 1 {
		t.Errorf("%d TCP dials for %d concurrent streams", d, n)
	}

	t.Run("shared failure", func(t *testing.T) {
		var count int32
		var mu sync.Mutex
		failing := func(ctx context.Context) (net.Conn, error) {
			mu.Lock()
			count++
			mu.Unlock()
			time.Sleep(50 * time.Millisecond)
			return nil, errors.New("no route to host")
		}
		key := e.key()
		key.DstAddr = netipMust("127.0.0.1:1")
		var wg sync.WaitGroup
		for range 10 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := e.pool.Dial(context.Background(), key, be.addr, nil, failing); err == nil {
					t.Error("dial succeeded")
				}
			}()
		}
		wg.Wait()
		if count > 2 {
			t.Errorf("%d dial attempts for 10 concurrent callers", count)
		}
	})
}

func TestIdleRelease(t *testing.T) {
	e := newEnv(t, envOpts{pool: func(c *PoolConfig) { c.IdleTimeout = 150 * time.Millisecond }})
	be := newBackend(t, echoHandler)
	c := e.mustDial(be.addr)
	// An open stream keeps the connection even past the idle timeout.
	time.Sleep(400 * time.Millisecond)
	if s := e.pool.Stats(); s.Conns != 1 {
		t.Fatalf("connection with an open stream released: %+v", s)
	}
	c.Write([]byte("x"))
	c.CloseWrite()
	io.ReadAll(c)
	c.Close()
	deadline := time.Now().Add(3 * time.Second)
	for e.pool.Stats().Conns != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("idle connection not released: %+v", e.pool.Stats())
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The server sees the connection go away too.
	deadline = time.Now().Add(3 * time.Second)
	for {
		e.srv.mu.Lock()
		n := len(e.srv.conns)
		e.srv.mu.Unlock()
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("server still holds the released connection")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// And the next dial makes a new connection.
	e.mustDial(be.addr).Close()
	if n := e.dials.Load(); n != 2 {
		t.Errorf("%d dials, want 2", n)
	}
}

func TestRequestFields(t *testing.T) {
	e := newEnv(t, envOpts{})
	be := newBackend(t, echoHandler)
	h := http.Header{}
	h.Set("Forwarded", `for="10.1.2.3:45678"`)
	h.Set("Baggage", "k8s.namespace.name=shop")
	h.Set("Traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
	c, err := e.dial(context.Background(), be.addr, h)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	req := e.lastReq.Load()
	if req.Authority.String() != be.addr {
		t.Errorf("authority = %s, want %s", req.Authority, be.addr)
	}
	if req.Peer != clientID {
		t.Errorf("peer = %s", req.Peer)
	}
	if req.Forwarded != `for="10.1.2.3:45678"` {
		t.Errorf("forwarded = %q", req.Forwarded)
	}
	if req.Header.Get("Baggage") != "k8s.namespace.name=shop" || req.Header.Get("Traceparent") == "" {
		t.Errorf("header = %v", req.Header)
	}
	if len(h) != 3 {
		t.Errorf("Dial modified the caller's header: %v", h)
	}
}

func TestConnDeadline(t *testing.T) {
	be := newBackend(t, func(c *net.TCPConn) { io.Copy(io.Discard, c) }) // never answers
	e := newEnv(t, envOpts{})
	c := e.mustDial(be.addr)
	defer c.Close()
	// A deadline extended before it expires does nothing.
	c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	c.SetReadDeadline(time.Time{})
	time.Sleep(40 * time.Millisecond)
	if _, err := c.Write([]byte("still open")); err != nil {
		t.Fatalf("stream aborted by a cleared deadline: %v", err)
	}
	c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	start := time.Now()
	_, err := c.Read(make([]byte, 10))
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read error = %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("deadline fired after %v", d)
	}
}

// TestConcurrentBulk pushes more than the connection window through several
// streams of one connection at once, in both directions.
func TestConcurrentBulk(t *testing.T) {
	e := newEnv(t, envOpts{})
	be := newBackend(t, echoHandler)
	const streams, size = 8, 4 << 20 // 32 MiB each way > 16 MiB window
	var wg sync.WaitGroup
	for i := range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			data := bytes.Repeat([]byte{byte(i), byte(i >> 8), 0xAA}, size/3)
			c := e.mustDial(be.addr)
			defer c.Close()
			go func() {
				c.Write(data)
				c.CloseWrite()
			}()
			got, err := io.ReadAll(c)
			if err != nil || !bytes.Equal(got, data) {
				t.Errorf("stream %d: %d bytes, %v", i, len(got), err)
			}
		}()
	}
	wg.Wait()
	if n := e.dials.Load(); n != 1 {
		t.Errorf("%d connections, want 1", n)
	}
}

// TestStalledStreamDoesNotBlockOthers: a backend that stops reading fills
// its stream's window only; other streams on the connection keep flowing.
func TestStalledStreamDoesNotBlockOthers(t *testing.T) {
	stall := make(chan struct{})
	defer close(stall)
	stalled := newBackend(t, func(c *net.TCPConn) { <-stall })
	be := newBackend(t, echoHandler)
	e := newEnv(t, envOpts{})

	s := e.mustDial(stalled.addr)
	defer s.Close()
	wrote := make(chan int64, 1)
	go func() {
		// Blocks once the stream window and socket buffers are full.
		n, _ := io.Copy(s, io.LimitReader(zeroReader{}, 64<<20))
		wrote <- n
	}()
	time.Sleep(300 * time.Millisecond)

	for i := range 5 {
		c := e.mustDial(be.addr)
		msg := bytes.Repeat([]byte{'m'}, 1<<20)
		go func() {
			c.Write(msg)
			c.CloseWrite()
		}()
		got, err := io.ReadAll(c)
		c.Close()
		if err != nil || len(got) != len(msg) {
			t.Fatalf("stream %d beside a stalled one: %d bytes, %v", i, len(got), err)
		}
	}
	select {
	case n := <-wrote:
		t.Fatalf("stalled stream accepted all %d bytes: no back-pressure", n)
	default:
	}
	if n := e.dials.Load(); n != 1 {
		t.Errorf("%d connections, want 1", n)
	}
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}
