package l7test

import (
	"context"
	"io"
	"net"
	"net/http"
	"testing"

	"github.com/palisade-net/palisade/pkg/l7"
)

// RawRelay copies bytes both ways, as the proxy does on ports without L7
// rules: the baseline the inspection is compared with. It is an
// l7.ServeFunc.
func RawRelay(_ context.Context, client, backend net.Conn, _ *l7.Session) error {
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

// BenchGET measures one GET with a 1 KiB response through serve, client
// and server included: a net/http server speaking protocols (nil: its
// defaults) answers behind ServeLoopback running serve with judge, and
// client sends the requests (on the connections it keeps). One request
// runs before the timer starts. With parallel, requests run concurrently
// (8 goroutines a CPU) on the one client.
func BenchGET(b *testing.B, serve l7.ServeFunc, judge l7.Judge, protocols *http.Protocols, client *http.Client, parallel bool) {
	body := make([]byte, 1024)
	backend := StartServer(b, &http.Server{Protocols: protocols, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write(body)
	})})
	addr := ServeLoopback(b, serve, &l7.Session{Judge: judge}, backend)
	b.Cleanup(client.CloseIdleConnections)
	url := "http://" + addr + "/api/items?id=42"
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
	if parallel {
		b.SetParallelism(8)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				get()
			}
		})
		return
	}
	for b.Loop() {
		get()
	}
}
