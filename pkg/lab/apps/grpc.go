package apps

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/reflection"
)

// testService implements grpc.testing.TestService, the service grpc-go's
// interop tests use, so that grpcurl and grpc-go clients have well-known
// unary and streaming methods to call. Responses carry the pod's hostname in
// the "x-hostname" header.
type testService struct {
	testpb.UnimplementedTestServiceServer
	hostname string
}

func (s *testService) header(ctx context.Context) {
	_ = grpc.SetHeader(ctx, metadata.Pairs("x-hostname", s.hostname))
}

// EmptyCall answers with an empty message.
func (s *testService) EmptyCall(ctx context.Context, _ *testpb.Empty) (*testpb.Empty, error) {
	s.header(ctx)
	return &testpb.Empty{}, nil
}

// UnaryCall answers with a payload of the requested size.
func (s *testService) UnaryCall(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	s.header(ctx)
	n := req.GetResponseSize()
	if n < 0 || n > MaxBytes {
		return nil, fmt.Errorf("response size %d out of range", n)
	}
	return &testpb.SimpleResponse{
		Payload:  &testpb.Payload{Body: Pattern(int(n))},
		Hostname: s.hostname,
	}, nil
}

// StreamingOutputCall sends one response per requested parameter.
func (s *testService) StreamingOutputCall(req *testpb.StreamingOutputCallRequest, stream testpb.TestService_StreamingOutputCallServer) error {
	s.header(stream.Context())
	for _, p := range req.GetResponseParameters() {
		if p.GetSize() < 0 || p.GetSize() > MaxBytes {
			return fmt.Errorf("response size %d out of range", p.GetSize())
		}
		if err := stream.Send(&testpb.StreamingOutputCallResponse{Payload: &testpb.Payload{Body: Pattern(int(p.GetSize()))}}); err != nil {
			return err
		}
	}
	return nil
}

// FullDuplexCall echoes each request's payload back as it arrives.
func (s *testService) FullDuplexCall(stream testpb.TestService_FullDuplexCallServer) error {
	s.header(stream.Context())
	for {
		req, err := stream.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if err := stream.Send(&testpb.StreamingOutputCallResponse{Payload: req.GetPayload()}); err != nil {
			return err
		}
	}
}

// ServeGRPC runs a gRPC server (plaintext, HTTP/2 prior knowledge) on addr
// until ctx ends, with grpc.testing.TestService, the standard health service
// and server reflection (so grpcurl needs no proto files).
func ServeGRPC(ctx context.Context, addr string, log *slog.Logger) error {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("serve-grpc: %w", err)
	}
	srv := grpc.NewServer()
	testpb.RegisterTestServiceServer(srv, &testService{hostname: Hostname()})
	hs := health.NewServer()
	healthpb.RegisterHealthServer(srv, hs)
	reflection.Register(srv)
	log.Info("serving gRPC", "addr", ln.Addr().String(), "hostname", Hostname())
	go func() {
		<-ctx.Done()
		hs.Shutdown()
		srv.GracefulStop()
	}()
	if err := srv.Serve(ln); err != nil {
		return fmt.Errorf("serve-grpc: %w", err)
	}
	return nil
}
