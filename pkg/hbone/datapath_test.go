package hbone

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// rawServer is an HTTP/2 server written frame by frame in the test, for
// checking what the pool's client sends and how it reacts.
type rawServer struct {
	addr  netip.AddrPort
	pool  *Pool
	conns chan *rawPeer
}

// rawPeer is one accepted connection of a rawServer, past the preface.
type rawPeer struct {
	t  *testing.T
	tc *tls.Conn
	fr *http2.Framer
	mu sync.Mutex // write side of fr
}

func (p *rawPeer) write(f func(fr *http2.Framer) error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := f(p.fr); err != nil {
		p.t.Errorf("raw server write: %v", err)
	}
}

// reply answers a CONNECT on stream id.
func (p *rawPeer) reply(id uint32, status string, end bool) {
	var hb bytes.Buffer
	hpack.NewEncoder(&hb).WriteField(hpack.HeaderField{Name: ":status", Value: status})
	p.write(func(fr *http2.Framer) error {
		return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hb.Bytes(), EndHeaders: true, EndStream: end})
	})
}

// next reads the next frame; DATA is copied, SETTINGS are acknowledged.
func (p *rawPeer) next() (http2.Frame, []byte) {
	for {
		f, err := p.fr.ReadFrame()
		if err != nil {
			return nil, nil
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				p.write(func(fr *http2.Framer) error { return fr.WriteSettingsAck() })
			}
			continue
		case *http2.DataFrame:
			return f, append([]byte(nil), f.Data()...)
		}
		return f, nil
	}
}

// newRawServer starts a TLS listener presenting serverID that sends
// settings after the client preface and hands each connection to the test.
func newRawServer(t *testing.T, settings ...http2.Setting) *rawServer {
	t.Helper()
	p := newProvider(t, testTD)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", serverTLSConfig(p, serverID, testTD))
	if err != nil {
		t.Fatal(err)
	}
	rs := &rawServer{addr: netip.MustParseAddrPort(ln.Addr().String()), conns: make(chan *rawPeer, 4)}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			tc := c.(*tls.Conn)
			tc.SetDeadline(time.Now().Add(20 * time.Second))
			preface := make([]byte, len(http2.ClientPreface))
			if _, err := io.ReadFull(tc, preface); err != nil {
				tc.Close()
				continue
			}
			fr := http2.NewFramer(tc, tc)
			fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
			peer := &rawPeer{t: t, tc: tc, fr: fr}
			peer.write(func(fr *http2.Framer) error { return fr.WriteSettings(settings...) })
			rs.conns <- peer
		}
	}()
	pool, err := NewPool(PoolConfig{Identities: p})
	if err != nil {
		t.Fatal(err)
	}
	rs.pool = pool
	t.Cleanup(func() {
		pool.Close()
		ln.Close()
		wg.Wait()
		close(rs.conns)
		for c := range rs.conns {
			c.tc.Close()
		}
	})
	return rs
}

// dial opens a stream to the raw server; the test answers it on the
// returned peer (the first HEADERS frame is read here).
func (rs *rawServer) dial(t *testing.T) (<-chan dialResult, *rawPeer, *http2.MetaHeadersFrame) {
	t.Helper()
	res := make(chan dialResult, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := rs.pool.Dial(ctx, Key{Src: clientID, Dst: serverID, DstAddr: rs.addr}, "127.0.0.1:80", nil, func(ctx context.Context) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", rs.addr.String())
		})
		var conn *Conn
		if c != nil {
			conn = c.(*Conn)
		}
		res <- dialResult{conn, err}
	}()
	var peer *rawPeer
	select {
	case peer = <-rs.conns:
	case <-time.After(10 * time.Second):
		t.Fatal("no connection")
	}
	for {
		f, _ := peer.next()
		if f == nil {
			t.Fatal("connection ended before HEADERS")
		}
		if h, ok := f.(*http2.MetaHeadersFrame); ok {
			return res, peer, h
		}
	}
}

type dialResult struct {
	c   *Conn
	err error
}

func (r dialResult) must(t *testing.T) *Conn {
	t.Helper()
	if r.err != nil {
		t.Fatal(r.err)
	}
	return r.c
}

// TestClientFrameSizes: DATA frames the client sends respect the server's
// SETTINGS_MAX_FRAME_SIZE and our own cap, and carry the bytes in order.
func TestClientFrameSizes(t *testing.T) {
	for _, tc := range []struct {
		name     string
		maxFrame uint32
		want     int
	}{
		{"server allows 16 KiB", 16 << 10, 16 << 10},
		{"server allows 1 MiB: our cap", 1 << 20, maxDataFrame},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rs := newRawServer(t,
				http2.Setting{ID: http2.SettingMaxFrameSize, Val: tc.maxFrame},
				http2.Setting{ID: http2.SettingInitialWindowSize, Val: 8 << 20})
			res, peer, h := rs.dial(t)
			peer.write(func(fr *http2.Framer) error { return fr.WriteWindowUpdate(0, 8<<20) })
			peer.reply(h.StreamID, "200", false)
			c := (<-res).must(t)
			defer c.Close()
			data := randomBytes(t, 700<<10)
			go func() {
				c.Write(data)
				c.CloseWrite()
			}()
			var got []byte
			largest := 0
			for {
				f, payload := peer.next()
				if f == nil {
					t.Fatal("connection ended early")
				}
				d, ok := f.(*http2.DataFrame)
				if !ok {
					continue
				}
				largest = max(largest, len(payload))
				if len(payload) > tc.want {
					t.Fatalf("DATA frame of %d bytes, limit %d", len(payload), tc.want)
				}
				got = append(got, payload...)
				if d.StreamEnded() {
					break
				}
			}
			if !bytes.Equal(got, data) {
				t.Fatalf("got %d bytes, sent %d (or out of order)", len(got), len(data))
			}
			if largest != tc.want {
				t.Errorf("largest frame %d bytes, want frames of %d for a 700 KiB write", largest, tc.want)
			}
		})
	}
}

// TestClientSendWindow: the client never sends beyond the stream window the
// server granted, and resumes exactly when WINDOW_UPDATE arrives.
func TestClientSendWindow(t *testing.T) {
	rs := newRawServer(t, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1000})
	res, peer, h := rs.dial(t)
	peer.reply(h.StreamID, "200", false)
	c := (<-res).must(t)
	defer c.Close()
	data := randomBytes(t, 5000)
	wrote := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		wrote <- err
	}()
	var got []byte
	readUntil := func(n int) {
		for len(got) < n {
			f, payload := peer.next()
			if f == nil {
				t.Fatal("connection ended early")
			}
			got = append(got, payload...)
		}
	}
	readUntil(1000)
	if len(got) != 1000 {
		t.Fatalf("client sent %d bytes into a 1000-byte window", len(got))
	}
	select {
	case err := <-wrote:
		t.Fatalf("Write returned (%v) before the window opened", err)
	default:
	}
	peer.write(func(fr *http2.Framer) error { return fr.WriteWindowUpdate(h.StreamID, 4000) })
	readUntil(5000)
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("bytes differ")
	}
}

// TestClientReceiveWindow: the client returns consumed bytes to both
// windows (never more than consumed) and resets a stream whose window the
// server overruns.
func TestClientReceiveWindow(t *testing.T) {
	rs := newRawServer(t)
	res, peer, h := rs.dial(t)
	peer.reply(h.StreamID, "200", false)
	c := (<-res).must(t)
	defer c.Close()

	// Send 3 MiB in 16 KiB frames while the client reads it all.
	const total = 3 << 20
	chunk := bytes.Repeat([]byte{'w'}, 16<<10)
	readDone := make(chan int64, 1)
	go func() {
		n, _ := io.Copy(io.Discard, io.LimitReader(c, total))
		readDone <- n
	}()
	for sent := 0; sent < total; sent += len(chunk) {
		peer.write(func(fr *http2.Framer) error { return fr.WriteData(h.StreamID, false, chunk) })
	}
	if n := <-readDone; n != total {
		t.Fatalf("client read %d bytes, want %d", n, total)
	}
	// The updates arrive in quarter-window batches: 1 MiB for the stream,
	// 4 MiB for the connection (none yet: 3 MiB < 4 MiB).
	var streamInc, connInc int64
	for streamInc < 3<<20 {
		f, _ := peer.next()
		if f == nil {
			t.Fatal("connection ended")
		}
		if wu, ok := f.(*http2.WindowUpdateFrame); ok {
			if wu.StreamID == 0 {
				connInc += int64(wu.Increment)
			} else {
				streamInc += int64(wu.Increment)
			}
		}
	}
	if streamInc != 3<<20 || connInc != 0 {
		t.Errorf("WINDOW_UPDATE totals: stream %d, connection %d; want %d and 0", streamInc, connInc, 3<<20)
	}

	// Overrun the stream window (4 MiB, 1 MiB of it unreturned... send 5).
	for range (5 << 20) / len(chunk) {
		peer.write(func(fr *http2.Framer) error { return fr.WriteData(h.StreamID, false, chunk) })
	}
	for {
		f, _ := peer.next()
		if f == nil {
			t.Fatal("connection ended instead of a stream reset")
		}
		if rst, ok := f.(*http2.RSTStreamFrame); ok {
			if rst.StreamID != h.StreamID || rst.ErrCode != http2.ErrCodeFlowControl {
				t.Fatalf("RST_STREAM %v on %d", rst.ErrCode, rst.StreamID)
			}
			break
		}
	}
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Error("read on a stream reset for flow control succeeded")
	}
}

// TestClientKeepsResponseAfterResetNoError: RST_STREAM(NO_ERROR) after the
// server's END_STREAM asks the client to stop sending (RFC 9113 §8.1); the
// response stays readable.
func TestClientKeepsResponseAfterResetNoError(t *testing.T) {
	rs := newRawServer(t)
	res, peer, h := rs.dial(t)
	peer.reply(h.StreamID, "200", false)
	c := (<-res).must(t)
	defer c.Close()
	peer.write(func(fr *http2.Framer) error { return fr.WriteData(h.StreamID, true, []byte("banner")) })
	peer.write(func(fr *http2.Framer) error { return fr.WriteRSTStream(h.StreamID, http2.ErrCodeNo) })
	// Wait until the client processed the reset: a write fails.
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := c.Write([]byte("x")); err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("writes still accepted after RST_STREAM")
		}
		time.Sleep(5 * time.Millisecond)
	}
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "banner" {
		t.Fatalf("read %q, %v", got, err)
	}
}

// TestBufConnBatchesRecords: one flush of frames larger than a TLS record
// reaches the socket in one write.
func TestBufConnBatchesRecords(t *testing.T) {
	w, cw, server := tlsPipeWriter(t)
	data := randomBytes(t, 100<<10) // 7 records
	got := make(chan []byte, 1)
	go func() {
		fr := http2.NewFramer(nil, server)
		var all []byte
		for len(all) < len(data) {
			f, err := fr.ReadFrame()
			if err != nil {
				break
			}
			all = append(all, f.(*http2.DataFrame).Data()...)
		}
		got <- all
	}()
	before := cw.writes.Load()
	w.lock()
	if err := w.appendData(1, false, data, 16<<10, nil); err != nil {
		t.Fatal(err)
	}
	if err := w.unlock(); err != nil {
		t.Fatal(err)
	}
	if n := cw.writes.Load() - before; n != 1 {
		t.Errorf("%d socket writes for one flush of %d bytes, want 1", n, len(data))
	}
	if g := <-got; !bytes.Equal(g, data) {
		t.Fatalf("peer read %d bytes, want %d", len(g), len(data))
	}
}

// tlsPipeWriter returns a frameWriter on the client side of a TLS
// connection over net.Pipe (whose writes wait for the peer to read), the
// socket under it, and the server side to read frames from.
func tlsPipeWriter(t *testing.T) (*frameWriter, *countingConn, *tls.Conn) {
	t.Helper()
	e := newEnv(t, envOpts{})
	bundle, _ := e.provider.GetX509BundleForTrustDomain(testTD)
	a, b := net.Pipe()
	t.Cleanup(func() { a.Close(); b.Close() })
	cw := &countingConn{Conn: a}
	raw := newBufConn(cw, newBatchPool())
	client := tls.Client(raw, clientTLSConfig(e.svid(t, clientID), bundle, serverID))
	server := tls.Server(b, serverTLSConfig(e.provider, serverID, testTD))
	errc := make(chan error, 1)
	go func() { errc <- server.Handshake() }()
	if err := client.Handshake(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	w, _ := newFrameWriter(client, raw, DefaultMaxFrameSize, 0)
	return w, cw, server
}

// TestWriteCombining: while one goroutine writes a batch, the frames other
// goroutines append leave with the next batch, in order and in one socket
// write, and those goroutines do not wait for the socket (unless they ask
// to, or too much is pending).
func TestWriteCombining(t *testing.T) {
	w, cw, server := tlsPipeWriter(t)
	cw.entered = make(chan struct{}, 16)
	before := cw.writes.Load() // the handshake's

	returned := func(done chan error) bool {
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
			return true
		case <-time.After(50 * time.Millisecond):
			return false
		}
	}

	// A writes and blocks in the socket: nobody reads the pipe yet.
	doneA := appendAndRelease(w, 1, []byte("a"), false)
	<-cw.entered
	// B appends and returns at once; A will write its frame.
	awaitDone(t, appendAndRelease(w, 3, []byte("b"), false),
		"a goroutine waited for another's socket write instead of leaving its frames to it")
	// C asks to wait until its frames are written.
	n := pendingBytes(w)
	doneC := appendAndRelease(w, 5, []byte("c"), true)
	waitAppended(t, w, n)
	if returned(doneC) {
		t.Fatal("unlockWait returned before its frames were written")
	}
	// D appends a full batch: it waits until the writer takes it.
	big := randomBytes(t, maxWriteBatch)
	doneD := appendAndRelease(w, 7, big, false)
	waitAppended(t, w, maxWriteBatch-1)
	if returned(doneD) {
		t.Fatal("a writer returned with a full batch pending")
	}

	type frame struct {
		id   uint32
		data []byte
	}
	frames := make(chan frame, 64)
	go func() {
		fr := http2.NewFramer(nil, server)
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				close(frames)
				return
			}
			df := f.(*http2.DataFrame)
			frames <- frame{df.StreamID, bytes.Clone(df.Data())}
		}
	}()
	got := map[uint32][]byte{}
	var order []uint32
	for len(got[7]) < len(big) {
		f, ok := <-frames
		if !ok {
			t.Fatal("connection ended early")
		}
		if len(order) == 0 || order[len(order)-1] != f.id {
			order = append(order, f.id)
		}
		got[f.id] = append(got[f.id], f.data...)
	}
	for _, done := range []chan error{doneA, doneC, doneD} {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	if fmt.Sprint(order) != "[1 3 5 7]" {
		t.Errorf("streams' frames arrived in the order %v, want [1 3 5 7]", order)
	}
	if string(got[1]) != "a" || string(got[3]) != "b" || string(got[5]) != "c" || !bytes.Equal(got[7], big) {
		t.Errorf("frames' payloads differ from what was appended")
	}
	// A's batch, then B's, C's and D's together.
	if n := cw.writes.Load() - before; n != 2 {
		t.Errorf("%d socket writes, want 2 (B's, C's and D's frames in one)", n)
	}
}

// TestWriterStopsWritingForOthers: a goroutine that became the writer
// writes its own batch and one of others' frames, then leaves the rest to
// a goroutine of its own, however busy the other streams are.
func TestWriterStopsWritingForOthers(t *testing.T) {
	w, cw, server := tlsPipeWriter(t)
	cw.entered = make(chan struct{}, 16)
	fr := http2.NewFramer(nil, server)
	readData := func() string {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatal(err)
		}
		return string(f.(*http2.DataFrame).Data())
	}

	doneA := appendAndRelease(w, 1, []byte("a"), false)
	<-cw.entered // A writes its batch
	if err := <-appendAndRelease(w, 3, []byte("b"), false); err != nil {
		t.Fatal(err)
	}
	if got := readData(); got != "a" {
		t.Fatalf("read %q, want a", got)
	}
	<-cw.entered // A writes B's frames
	if err := <-appendAndRelease(w, 5, []byte("c"), false); err != nil {
		t.Fatal(err)
	}
	waitAppended(t, w, 0)
	if got := readData(); got != "b" {
		t.Fatalf("read %q, want b", got)
	}
	// C's frames are pending and A has written two batches: A returns
	// while another goroutine writes C's (blocked until the peer reads).
	awaitDone(t, doneA, "the writer went on writing other streams' frames")
	if got := readData(); got != "c" {
		t.Fatalf("read %q, want c", got)
	}
}

// appendAndRelease appends a DATA frame with p on stream id and releases
// the write lock (unlockWait when wait), in a goroutine; the channel gets
// the result.
func appendAndRelease(w *frameWriter, id uint32, p []byte, wait bool) chan error {
	done := make(chan error, 1)
	go func() {
		w.lock()
		err := w.appendData(id, false, p, 16<<10, nil)
		if wait {
			err = errors.Join(err, w.unlockWait())
		} else {
			err = errors.Join(err, w.unlock())
		}
		done <- err
	}()
	return done
}

// pendingBytes is how many bytes of frames wait for the writer.
func pendingBytes(w *frameWriter) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.buf.b)
}

// waitAppended waits until more than n bytes are pending.
func waitAppended(t *testing.T, w *frameWriter, n int) {
	t.Helper()
	for i := 0; pendingBytes(w) <= n; i++ {
		if i == 10000 {
			t.Fatal("frames were not appended")
		}
		time.Sleep(time.Millisecond)
	}
}

// awaitDone waits for a result from done and fails with msg if none comes
// (the goroutine is stuck).
func awaitDone(t *testing.T, done chan error, msg string) {
	t.Helper()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal(msg)
	}
}

type countingConn struct {
	net.Conn
	writes  atomic.Int32
	entered chan struct{} // if not nil, gets a value as each write starts
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	if c.entered != nil {
		c.entered <- struct{}{}
	}
	return c.Conn.Write(p)
}

// TestTryWriter: a socket TryWriter writes what fits and stops without
// blocking when the peer does not read.
func TestTryWriter(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	peer, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	tw := NewTryWriter(c)
	if tw == nil {
		t.Fatal("no TryWriter for a TCP connection")
	}
	if NewTryWriter(opaqueConn{c}) != nil {
		t.Error("TryWriter for a connection that is not a socket")
	}
	chunk := make([]byte, 1<<20)
	var total int
	for {
		n, err := tw.TryWrite(chunk)
		if err != nil {
			t.Fatal(err)
		}
		total += n
		if n < len(chunk) {
			break // full: returned instead of blocking
		}
	}
	got, err := io.CopyN(io.Discard, peer, int64(total))
	if err != nil || got != int64(total) {
		t.Fatalf("peer read %d of %d bytes: %v", got, total, err)
	}
	peer.(*net.TCPConn).SetLinger(0)
	peer.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := tw.TryWrite(chunk[:1024]); err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("writes to a reset connection keep succeeding")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// slowEcho echoes with small reads and pauses, so that socket buffers fill
// and direct delivery falls back to the queue and back again.
func slowEcho(c *net.TCPConn) {
	buf := make([]byte, 3000)
	time.Sleep(20 * time.Millisecond) // let the socket fill first
	for i := 0; ; i++ {
		n, err := c.Read(buf)
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			break
		}
		if i%20 == 0 {
			time.Sleep(time.Millisecond)
		}
	}
	c.CloseWrite()
}

// TestManyStreamsLargeBodies: concurrent streams with large bodies come
// back byte for byte, through Read and through WriteTo into a socket (the
// direct path), with a fast and a slow backend.
func TestManyStreamsLargeBodies(t *testing.T) {
	for _, bc := range []struct {
		name    string
		handler func(*net.TCPConn)
		streams int
		size    int
	}{
		{"fast backend", echoHandler, 24, 2 << 20},
		{"slow backend", slowEcho, 8, 1 << 20},
	} {
		t.Run(bc.name, func(t *testing.T) {
			e := newEnv(t, envOpts{connect: smallBufferBackend})
			be := newBackend(t, bc.handler)
			var wg sync.WaitGroup
			for i := range bc.streams {
				wg.Add(1)
				go func() {
					defer wg.Done()
					data := randomBytes(t, bc.size+i*997)
					c := e.mustDial(be.addr)
					defer c.Close()
					go func() {
						c.Write(data)
						c.CloseWrite()
					}()
					var got []byte
					var err error
					if i%2 == 0 {
						got, err = io.ReadAll(c)
					} else {
						got, err = viaSocket(c)
					}
					if err != nil || !bytes.Equal(got, data) {
						t.Errorf("stream %d: %d of %d bytes back, %v", i, len(got), len(data), err)
					}
				}()
			}
			wg.Wait()
		})
	}
}

// smallBufferBackend dials the backend with a small, fixed send buffer, so
// that the server's direct writes into it fall back to its queue at times.
func smallBufferBackend(ctx context.Context, req *Request) (net.Conn, int, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", req.Authority.String())
	if err != nil {
		return nil, 503, err
	}
	c.(*net.TCPConn).SetWriteBuffer(32 << 10)
	return c, 200, nil
}

// viaSocket copies c into a fresh loopback TCP connection with WriteTo
// and returns what the other end read, checking WriteTo's count.
func viaSocket(c *Conn) ([]byte, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	defer ln.Close()
	out, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		return nil, err
	}
	// A small, fixed send buffer fills quickly: direct writes then fall
	// back to the queue.
	out.(*net.TCPConn).SetWriteBuffer(32 << 10)
	in, err := ln.Accept()
	if err != nil {
		out.Close()
		return nil, err
	}
	defer in.Close()
	res := make(chan []byte, 1)
	go func() {
		var b bytes.Buffer
		buf := make([]byte, 5000)
		time.Sleep(20 * time.Millisecond) // let the socket fill first
		for i := 0; ; i++ {
			n, err := in.Read(buf)
			b.Write(buf[:n])
			if err != nil {
				break
			}
			if i%20 == 0 {
				time.Sleep(time.Millisecond) // let the socket fill now and then
			}
		}
		res <- b.Bytes()
	}()
	n, err := c.WriteTo(out)
	out.Close()
	got := <-res
	if err == nil && n != int64(len(got)) {
		err = fmt.Errorf("WriteTo reported %d bytes, the socket carried %d", n, len(got))
	}
	return got, err
}

// TestResetStress: streams reset by the client or by their backend at
// random points of a transfer do not disturb the streams beside them, and
// everything is released afterwards.
func TestResetStress(t *testing.T) {
	before := runtime.NumGoroutine()
	t.Run("load", func(t *testing.T) {
		e := newEnv(t, envOpts{connect: smallBufferBackend})
		echo := newBackend(t, echoHandler)
		rng := rand.New(rand.NewPCG(1, 2))
		var mu sync.Mutex
		randN := func(n int) int {
			mu.Lock()
			defer mu.Unlock()
			return rng.IntN(n)
		}
		resetter := newBackend(t, func(c *net.TCPConn) {
			limit := int64(randN(256 << 10)) // less than any stream sends
			io.CopyN(c, c, limit)            // echo some, then reset
			c.SetLinger(0)
		})
		var wg sync.WaitGroup
		for i := range 60 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				data := bytes.Repeat([]byte{byte(i)}, 256<<10+randN(1<<20))
				switch i % 3 {
				case 0: // must complete
					c := e.mustDial(echo.addr)
					defer c.Close()
					go func() {
						c.Write(data)
						c.CloseWrite()
					}()
					var got []byte
					var err error
					if i%2 == 0 {
						got, err = io.ReadAll(c)
					} else {
						got, err = viaSocket(c)
					}
					if err != nil || !bytes.Equal(got, data) {
						t.Errorf("stream %d: %d of %d bytes, %v", i, len(got), len(data), err)
					}
				case 1: // the client gives up midway
					c := e.mustDial(echo.addr)
					go c.Write(data)
					io.CopyN(io.Discard, c, int64(randN(len(data))))
					c.Close()
				case 2: // the backend resets midway
					c := e.mustDial(resetter.addr)
					defer c.Close()
					go c.Write(data)
					// Mostly an error (CONNECT_ERROR). The backend's RST
					// can also reach the server as EOF on its read side
					// once a write into the socket has consumed the
					// ECONNRESET; either way the stream ends.
					io.ReadAll(c)
				}
			}()
		}
		wg.Wait()
		deadline := time.Now().Add(5 * time.Second)
		for e.pool.Stats().Streams != 0 {
			if time.Now().After(deadline) {
				t.Fatalf("streams left open: %+v", e.pool.Stats())
			}
			time.Sleep(10 * time.Millisecond)
		}
		// The connection still works.
		c := e.mustDial(echo.addr)
		c.Write([]byte("after"))
		c.CloseWrite()
		if got, err := io.ReadAll(c); err != nil || string(got) != "after" {
			t.Fatalf("after the storm: %q, %v", got, err)
		}
		c.Close()
	})
	waitGoroutines(t, before)
}

func waitGoroutines(t *testing.T, before int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines before, %d after:\n%s", before, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestDeadlineExtends: an expired read deadline fails the read but not the
// stream; a later deadline lets it go on.
func TestDeadlineExtends(t *testing.T) {
	e := newEnv(t, envOpts{})
	be := newBackend(t, echoHandler)
	c := e.mustDial(be.addr)
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read = %v, want deadline exceeded", err)
	}
	c.SetReadDeadline(time.Time{})
	c.Write([]byte("still here"))
	c.CloseWrite()
	if got, err := io.ReadAll(c); err != nil || string(got) != "still here" {
		t.Fatalf("read %q, %v", got, err)
	}
}

// TestDialRejectsInvalidHeaders: a header that is not valid HTTP fails the
// dial locally and releases the reserved stream.
func TestDialRejectsInvalidHeaders(t *testing.T) {
	e := newEnv(t, envOpts{})
	be := newBackend(t, echoHandler)
	for _, h := range []http.Header{
		{"X-Bad": {"a\r\nb"}},
		{"Bad Name": {"x"}},
	} {
		if _, err := e.dial(context.Background(), be.addr, h); err == nil {
			t.Errorf("dial with %v succeeded", h)
		}
	}
	if n := e.connects.Load(); n != 0 {
		t.Errorf("Connect called %d times", n)
	}
	if s := e.pool.Stats(); s.Streams != 0 {
		t.Errorf("streams left reserved: %+v", s)
	}
}
