package hbone

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"testing"
)

// Benchmarks compare HBONE with plain TCP over loopback, measured the same
// way, so the numbers show the tunnel's overhead:
//
//	go test -run '^$' -bench . -benchmem ./pkg/hbone/

// BenchmarkStreamSetup measures opening a connection, one 1-byte round trip
// and closing it: for HBONE a CONNECT stream on a warm pool (the TLS and
// HTTP/2 connection exist), for the baseline a new loopback TCP connection.
func BenchmarkStreamSetup(b *testing.B) {
	be := newBackend(b, echoHandler)
	roundTrip := func(b *testing.B, c net.Conn) {
		var buf [1]byte
		if _, err := c.Write([]byte{'x'}); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf[:]); err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
	b.Run("tcp-baseline", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			c, err := net.Dial("tcp", be.addr)
			if err != nil {
				b.Fatal(err)
			}
			roundTrip(b, c)
		}
	})
	b.Run("hbone-warm-pool", func(b *testing.B) {
		e := newEnv(b, envOpts{})
		e.mustDial(be.addr).Close() // warm the pool
		ctx := context.Background()
		key := e.key()
		b.ReportAllocs()
		for b.Loop() {
			c, err := e.pool.Dial(ctx, key, be.addr, nil, e.dialTCP)
			if err != nil {
				b.Fatal(err)
			}
			roundTrip(b, c)
		}
	})
}

// BenchmarkThroughput moves bulk data through one connection in each
// direction; MB/s is the payload rate. Upload ends when the backend has
// read every byte, download when the client has.
func BenchmarkThroughput(b *testing.B) {
	const chunk = 32 << 10
	// The backend reads an 8-byte command: 0 = upload (count what arrives
	// until EOF and report the count), n > 0 = download n bytes.
	be := newBackend(b, func(c *net.TCPConn) {
		var cmd [8]byte
		if _, err := io.ReadFull(c, cmd[:]); err != nil {
			return
		}
		n := binary.BigEndian.Uint64(cmd[:])
		if n == 0 {
			got, _ := io.Copy(io.Discard, c)
			binary.BigEndian.PutUint64(cmd[:], uint64(got))
			c.Write(cmd[:])
			return
		}
		buf := make([]byte, chunk)
		for n > 0 {
			w, err := c.Write(buf[:min(uint64(len(buf)), n)])
			if err != nil {
				return
			}
			n -= uint64(w)
		}
		c.CloseWrite()
		io.Copy(io.Discard, c)
	})

	upload := func(b *testing.B, c net.Conn) {
		buf := make([]byte, chunk)
		var cmd [8]byte
		c.Write(cmd[:])
		b.SetBytes(chunk)
		b.ResetTimer()
		for range b.N {
			if _, err := c.Write(buf); err != nil {
				b.Fatal(err)
			}
		}
		c.(interface{ CloseWrite() error }).CloseWrite()
		if _, err := io.ReadFull(c, cmd[:]); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if got := binary.BigEndian.Uint64(cmd[:]); got != uint64(b.N)*chunk {
			b.Fatalf("backend got %d bytes, sent %d", got, b.N*chunk)
		}
		c.Close()
	}
	download := func(b *testing.B, c net.Conn) {
		var cmd [8]byte
		binary.BigEndian.PutUint64(cmd[:], uint64(b.N)*chunk)
		b.SetBytes(chunk)
		b.ResetTimer()
		c.Write(cmd[:])
		buf := make([]byte, chunk)
		var got int64
		for {
			n, err := c.Read(buf)
			got += int64(n)
			if err == io.EOF {
				break
			}
			if err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		if got != int64(b.N)*chunk {
			b.Fatalf("got %d bytes, want %d", got, b.N*chunk)
		}
		c.Close()
	}

	tcp := func(b *testing.B) net.Conn {
		c, err := net.Dial("tcp", be.addr)
		if err != nil {
			b.Fatal(err)
		}
		return c
	}
	hbone := func(b *testing.B) net.Conn {
		e := newEnv(b, envOpts{})
		return e.mustDial(be.addr)
	}
	for _, dir := range []struct {
		name string
		run  func(*testing.B, net.Conn)
	}{{"upload", upload}, {"download", download}} {
		b.Run(dir.name+"/tcp-baseline", func(b *testing.B) { dir.run(b, tcp(b)) })
		b.Run(dir.name+"/hbone", func(b *testing.B) { dir.run(b, hbone(b)) })
	}
}
