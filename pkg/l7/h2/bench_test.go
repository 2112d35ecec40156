package h2

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"

	"github.com/palisade-net/palisade/pkg/l7"
)

// rawRelay copies bytes both ways, as the proxy does on ports without L7
// rules: the baseline the inspection is compared with.
func rawRelay(_ context.Context, client, backend net.Conn, _ *l7.Session) error {
	done := make(chan struct{})
	go func() {
		_, _ = io.Copy(backend, client)
		backend.Close()
		close(done)
	}()
	_, _ = io.Copy(client, backend)
	client.Close()
	<-done
	return nil
}

func benchH2(b *testing.B, serve l7.ServeFunc, parallel bool) {
	body := make([]byte, 1024)
	bl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	backend := &http.Server{Protocols: h2cProtocols(), Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write(body)
	})}
	go func() { _ = backend.Serve(bl) }()
	b.Cleanup(func() { backend.Close() })

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	s := &l7.Session{Judge: &stubJudge{deny: []string{"/deny"}}}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			be, err := net.Dial("tcp", bl.Addr().String())
			if err != nil {
				c.Close()
				continue
			}
			go func() { _ = serve(context.Background(), c, be, s) }()
		}
	}()
	client := h2cClient(nil)
	b.Cleanup(client.CloseIdleConnections)
	url := fmt.Sprintf("http://%s/api/items?id=42", ln.Addr())
	get := func(b *testing.B) {
		resp, err := client.Get(url)
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			b.Fatalf("status %d", resp.StatusCode)
		}
	}
	get(b)
	b.ReportAllocs()
	b.ResetTimer()
	if parallel {
		b.SetParallelism(8)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				get(b)
			}
		})
		return
	}
	for b.Loop() {
		get(b)
	}
}

// BenchmarkH2Inspect is one GET (1 KiB response) on a kept h2c connection
// through the HTTP/2 inspector, client and server included.
func BenchmarkH2Inspect(b *testing.B) { benchH2(b, Serve, false) }

// BenchmarkH2Raw is the same through a plain byte relay.
func BenchmarkH2Raw(b *testing.B) { benchH2(b, rawRelay, false) }

// BenchmarkH2InspectParallel multiplexes concurrent requests on the
// connection.
func BenchmarkH2InspectParallel(b *testing.B) { benchH2(b, Serve, true) }

// BenchmarkH2RawParallel is the same through a plain byte relay.
func BenchmarkH2RawParallel(b *testing.B) { benchH2(b, rawRelay, true) }
