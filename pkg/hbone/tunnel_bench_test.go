package hbone

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"io"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Data-path benchmarks: one stream moving bulk data and one stream doing
// small request/response round trips, each next to two baselines measured
// the same way in the same run:
//
//   - tcp: the client talks to the backend over plain loopback TCP;
//   - tls: the client talks mutual TLS 1.3 (the HBONE certificates, same
//     suite) to a relay that terminates it and copies to the backend over
//     TCP, one goroutine per direction: what a per-connection TLS proxy
//     such as an HAProxy pair does, without HTTP/2;
//   - hbone: a Pool stream to a Server in front of the backend.
//
// Besides ns/op and MB/s they report the process's CPU time and context
// switches (getrusage, all threads, so client, proxy and backend together)
// per MiB or per round trip, which move less than throughput when other
// work shares the machine:
//
//	go test -run '^$' -bench 'Tunnel' -count 5 ./pkg/hbone/

// benchBulk is what one throughput op moves.
const benchBulk = 64 << 20

// bulkHandler serves the throughput protocol: an 8-byte command, the top
// bit set for download (the backend sends n bytes), clear for upload (the
// backend reads n bytes and answers one byte).
func bulkHandler(c *net.TCPConn) {
	buf := make([]byte, 64<<10)
	var cmd [8]byte
	for {
		if _, err := io.ReadFull(c, cmd[:]); err != nil {
			return
		}
		v := binary.BigEndian.Uint64(cmd[:])
		n := int64(v &^ (1 << 63))
		if v&(1<<63) != 0 {
			for n > 0 {
				w, err := c.Write(buf[:min(int64(len(buf)), n)])
				if err != nil {
					return
				}
				n -= int64(w)
			}
			continue
		}
		if _, err := io.CopyBuffer(io.Discard, io.LimitReader(c, n), buf); err != nil {
			return
		}
		if _, err := c.Write([]byte{1}); err != nil {
			return
		}
	}
}

// tlsRelay is the "tls" baseline: a mutual-TLS terminating relay to
// backend, each accepted connection copied both ways by two goroutines.
type tlsRelay struct {
	addr   string
	client *tls.Config
}

func newTLSRelay(b *testing.B, backend string) *tlsRelay {
	b.Helper()
	e := newEnv(b, envOpts{}) // only for its certificates
	bundle, _ := e.provider.GetX509BundleForTrustDomain(testTD)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", serverTLSConfig(e.provider, serverID, testTD))
	if err != nil {
		b.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				up, err := net.Dial("tcp", backend)
				if err != nil {
					return
				}
				defer up.Close()
				done := make(chan struct{})
				go func() {
					io.Copy(up, c)
					up.(*net.TCPConn).CloseWrite()
					close(done)
				}()
				io.Copy(c, up)
				c.(*tls.Conn).CloseWrite()
				<-done
			}()
		}
	}()
	b.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	return &tlsRelay{addr: ln.Addr().String(), client: clientTLSConfig(e.svid(b, clientID), bundle, serverID)}
}

func (r *tlsRelay) dial(b *testing.B) net.Conn {
	c, err := tls.Dial("tcp", r.addr, r.client)
	if err != nil {
		b.Fatal(err)
	}
	return c
}

// usage is a getrusage snapshot.
type usage struct {
	cpu    time.Duration
	ctxsw  int64
	wallAt time.Time
}

func readUsage(b *testing.B) usage {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return usage{
		cpu:    time.Duration(ru.Utime.Nano() + ru.Stime.Nano()),
		ctxsw:  ru.Nvcsw + ru.Nivcsw,
		wallAt: time.Now(),
	}
}

// report adds CPU and context switches per unit (MiB or op).
func (u usage) report(b *testing.B, units float64, unit string) {
	end := readUsage(b)
	b.ReportMetric(float64(end.cpu-u.cpu)/float64(time.Microsecond)/units, "cpu-µs/"+unit)
	b.ReportMetric(float64(end.ctxsw-u.ctxsw)/units, "ctxsw/"+unit)
}

// benchPath is one way to reach a backend: setup prepares what the path
// needs (relay, server, pool) and returns a dialler of connections through it.
type benchPath struct {
	name  string
	setup func(b *testing.B) func() net.Conn
}

func benchPaths(backend string) []benchPath {
	return []benchPath{
		{"tcp", func(b *testing.B) func() net.Conn {
			return func() net.Conn {
				c, err := net.Dial("tcp", backend)
				if err != nil {
					b.Fatal(err)
				}
				return c
			}
		}},
		{"tls", func(b *testing.B) func() net.Conn {
			r := newTLSRelay(b, backend)
			return func() net.Conn { return r.dial(b) }
		}},
		{"hbone", func(b *testing.B) func() net.Conn {
			e := newEnv(b, envOpts{})
			return func() net.Conn { return e.mustDial(backend) }
		}},
		// Two proxy hops, as in the node proxy benchmark: the client talks
		// plain TCP to a local relay, which carries it to the backend's
		// side over TLS or HBONE.
		{"tls2", func(b *testing.B) func() net.Conn {
			r := newTLSRelay(b, backend)
			return localRelay(b, func() net.Conn { return r.dial(b) })
		}},
		{"hbone2", func(b *testing.B) func() net.Conn {
			e := newEnv(b, envOpts{})
			return localRelay(b, func() net.Conn { return e.mustDial(backend) })
		}},
		// As hbone2, with the server's backend hidden behind a wrapper
		// that is not a TryWriter: no direct delivery on the server.
		{"hbone2-wrapped", func(b *testing.B) func() net.Conn {
			e := newEnv(b, envOpts{connect: func(ctx context.Context, req *Request) (net.Conn, int, error) {
				var d net.Dialer
				c, err := d.DialContext(ctx, "tcp", req.Authority.String())
				if err != nil {
					return nil, 503, err
				}
				return opaqueConn{c}, 200, nil
			}})
			return localRelay(b, func() net.Conn { return e.mustDial(backend) })
		}},
	}
}

// opaqueConn hides the concrete type of a connection.
type opaqueConn struct{ net.Conn }

func (c opaqueConn) CloseWrite() error { return c.Conn.(*net.TCPConn).CloseWrite() }

// localRelay listens on loopback and relays every accepted connection to
// one opened with dialUp, copying as the node proxy does (pipe.go): a
// 32 KiB buffer towards the tunnel, WriteTo (io.Copy) back.
func localRelay(b *testing.B, dialUp func() net.Conn) func() net.Conn {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up := dialUp()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				defer up.Close()
				done := make(chan struct{})
				go func() {
					buf := make([]byte, 32<<10)
					io.CopyBuffer(struct{ io.Writer }{up}, struct{ io.Reader }{c}, buf)
					up.(interface{ CloseWrite() error }).CloseWrite()
					close(done)
				}()
				io.Copy(c, up)
				c.(*net.TCPConn).CloseWrite()
				<-done
			}()
		}
	}()
	b.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	return func() net.Conn {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		return c
	}
}

// BenchmarkTunnelThroughput moves 64 MiB per op through one established
// stream, upload (client → backend) and download.
func BenchmarkTunnelThroughput(b *testing.B) {
	be := newBackend(b, bulkHandler)
	for _, dir := range []string{"upload", "download"} {
		for _, p := range benchPaths(be.addr) {
			b.Run(dir+"/"+p.name, func(b *testing.B) {
				c := p.setup(b)()
				defer c.Close()
				buf := make([]byte, 32<<10)
				var cmd [8]byte
				op := func() {
					if dir == "upload" {
						binary.BigEndian.PutUint64(cmd[:], benchBulk)
						if _, err := c.Write(cmd[:]); err != nil {
							b.Fatal(err)
						}
						for n := benchBulk; n > 0; n -= len(buf) {
							if _, err := c.Write(buf); err != nil {
								b.Fatal(err)
							}
						}
						if _, err := io.ReadFull(c, cmd[:1]); err != nil {
							b.Fatal(err)
						}
						return
					}
					binary.BigEndian.PutUint64(cmd[:], benchBulk|1<<63)
					if _, err := c.Write(cmd[:]); err != nil {
						b.Fatal(err)
					}
					if _, err := io.CopyBuffer(io.Discard, io.LimitReader(c, benchBulk), buf); err != nil {
						b.Fatal(err)
					}
				}
				op() // warm up windows and TLS record sizing
				b.SetBytes(benchBulk)
				b.ReportAllocs()
				u := readUsage(b)
				b.ResetTimer()
				for b.Loop() {
					op()
				}
				b.StopTimer()
				u.report(b, float64(b.N)*benchBulk/(1<<20), "MiB")
			})
		}
	}
}

// BenchmarkTunnelRoundTrip sends 1 KiB and reads the 1 KiB echo per op over
// one established stream.
func BenchmarkTunnelRoundTrip(b *testing.B) {
	be := newBackend(b, echoHandler)
	for _, p := range benchPaths(be.addr) {
		b.Run(p.name, func(b *testing.B) {
			c := p.setup(b)()
			defer c.Close()
			msg := make([]byte, 1<<10)
			got := make([]byte, 1<<10)
			op := func() {
				if _, err := c.Write(msg); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(c, got); err != nil {
					b.Fatal(err)
				}
			}
			op()
			b.ReportAllocs()
			u := readUsage(b)
			b.ResetTimer()
			for b.Loop() {
				op()
			}
			b.StopTimer()
			u.report(b, float64(b.N), "op")
		})
	}
}

// BenchmarkTunnelRoundTripParallel runs the round trip on 8 streams at
// once, as the latency benchmark's 8 connections do; they share one HBONE
// connection.
func BenchmarkTunnelRoundTripParallel(b *testing.B) {
	be := newBackend(b, echoHandler)
	for _, p := range benchPaths(be.addr) {
		b.Run(p.name, func(b *testing.B) {
			const conns = 8
			dial := p.setup(b)
			cs := make([]net.Conn, conns)
			for i := range cs {
				cs[i] = dial()
			}
			b.ReportAllocs()
			u := readUsage(b)
			b.ResetTimer()
			var wg sync.WaitGroup
			per := max(b.N/conns, 1)
			for _, c := range cs {
				wg.Add(1)
				go func() {
					defer wg.Done()
					msg := make([]byte, 1<<10)
					got := make([]byte, 1<<10)
					for range per {
						if _, err := c.Write(msg); err != nil {
							b.Error(err)
							return
						}
						if _, err := io.ReadFull(c, got); err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			b.StopTimer()
			u.report(b, float64(per*conns), "op")
			for _, c := range cs {
				c.Close()
			}
		})
	}
}
