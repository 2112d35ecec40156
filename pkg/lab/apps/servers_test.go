package apps

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
)

// freeAddr returns a loopback address that was free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// serve runs fn in the background until the test ends and waits for addr to accept.
func serve(t *testing.T, addr string, fn func(ctx context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- fn(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("server: %v", err)
		}
	})
	for i := 0; ; i++ {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			return
		}
		select {
		case err := <-done:
			t.Fatalf("server ended early: %v", err)
		case <-time.After(20 * time.Millisecond):
		}
		if i > 500 {
			t.Fatalf("server on %s never accepted: %v", addr, err)
		}
	}
}

func TestServeHTTPSpeaksH2C(t *testing.T) {
	addr := freeAddr(t)
	serve(t, addr, func(ctx context.Context) error { return ServeHTTP(ctx, addr, slog.New(slog.DiscardHandler)) })
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	client := &http.Client{Transport: &http.Transport{Protocols: &protos}}
	resp, err := client.Get("http://" + addr + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.ProtoMajor != 2 || resp.StatusCode != 200 {
		t.Fatalf("got %s %d, want HTTP/2 200", resp.Proto, resp.StatusCode)
	}
}

func TestServeGRPC(t *testing.T) {
	addr := freeAddr(t)
	serve(t, addr, func(ctx context.Context) error { return ServeGRPC(ctx, addr, slog.New(slog.DiscardHandler)) })
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := testpb.NewTestServiceClient(cc)
	var hdr metadata.MD
	resp, err := c.UnaryCall(ctx, &testpb.SimpleRequest{ResponseSize: 100}, grpc.Header(&hdr))
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetPayload().GetBody()) != 100 || string(resp.GetPayload().GetBody()) != string(Pattern(100)) {
		t.Errorf("payload %q", resp.GetPayload().GetBody())
	}
	if got := hdr.Get("x-hostname"); len(got) != 1 || got[0] != Hostname() {
		t.Errorf("x-hostname %v, want %q", got, Hostname())
	}
	stream, err := c.FullDuplexCall(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, msg := range []string{"one", "two"} {
		if err := stream.Send(&testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: []byte(msg)}}); err != nil {
			t.Fatal(err)
		}
		r, err := stream.Recv()
		if err != nil || string(r.GetPayload().GetBody()) != msg {
			t.Fatalf("echo %q: %v %v", msg, r, err)
		}
	}
	_ = stream.CloseSend()
}

func TestServeKafka(t *testing.T) {
	addr := freeAddr(t)
	serve(t, addr, func(ctx context.Context) error {
		return ServeKafka(ctx, KafkaOptions{Addr: addr, Advertise: addr, Topics: []string{"orders"}}, slog.New(slog.DiscardHandler))
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cl, err := kgo.NewClient(kgo.SeedBrokers(addr), kgo.ConsumeTopics("orders"))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if err := cl.ProduceSync(ctx, &kgo.Record{Topic: "orders", Value: []byte("v1")}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	fs := cl.PollFetches(ctx)
	if err := fs.Err(); err != nil && !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
	recs := fs.Records()
	if len(recs) != 1 || string(recs[0].Value) != "v1" {
		t.Fatalf("consumed %v", recs)
	}
}
