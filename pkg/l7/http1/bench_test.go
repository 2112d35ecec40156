package http1

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

// benchProxy runs serve for each connection to a loopback listener.
func benchProxy(b *testing.B, serve l7.ServeFunc, backendAddr string) string {
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
			be, err := net.Dial("tcp", backendAddr)
			if err != nil {
				c.Close()
				continue
			}
			go func() { _ = serve(context.Background(), c, be, s) }()
		}
	}()
	return ln.Addr().String()
}

func benchHTTP1(b *testing.B, serve l7.ServeFunc) {
	body := make([]byte, 1024)
	backend := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write(body)
	})}
	bl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go func() { _ = backend.Serve(bl) }()
	b.Cleanup(func() { backend.Close() })
	addr := benchProxy(b, serve, bl.Addr().String())
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
	b.Cleanup(client.CloseIdleConnections)
	url := fmt.Sprintf("http://%s/api/items?id=42", addr)
	get := func() {
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
	get()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		get()
	}
}

// BenchmarkHTTP1Inspect is one keep-alive GET (1 KiB response) through the
// HTTP/1.1 inspector, client and server included.
func BenchmarkHTTP1Inspect(b *testing.B) { benchHTTP1(b, Serve) }

// BenchmarkHTTP1Raw is the same through a plain byte relay.
func BenchmarkHTTP1Raw(b *testing.B) { benchHTTP1(b, rawRelay) }
