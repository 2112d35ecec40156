package h2

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/palisade-net/palisade/pkg/l7"
	"github.com/palisade-net/palisade/pkg/l7/internal/l7test"
)

// testService implements the parts of grpc.testing.TestService the tests
// call.
type testService struct {
	testpb.UnimplementedTestServiceServer
}

func (testService) UnaryCall(_ context.Context, r *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	return &testpb.SimpleResponse{Payload: &testpb.Payload{Body: make([]byte, r.GetResponseSize())}}, nil
}

func (testService) StreamingOutputCall(r *testpb.StreamingOutputCallRequest, s grpc.ServerStreamingServer[testpb.StreamingOutputCallResponse]) error {
	for _, p := range r.GetResponseParameters() {
		if err := s.Send(&testpb.StreamingOutputCallResponse{Payload: &testpb.Payload{Body: make([]byte, p.GetSize())}}); err != nil {
			return err
		}
	}
	return nil
}

func (testService) StreamingInputCall(s grpc.ClientStreamingServer[testpb.StreamingInputCallRequest, testpb.StreamingInputCallResponse]) error {
	total := 0
	for {
		r, err := s.Recv()
		if err == io.EOF {
			return s.SendAndClose(&testpb.StreamingInputCallResponse{AggregatedPayloadSize: int32(total)})
		}
		if err != nil {
			return err
		}
		total += len(r.GetPayload().GetBody())
	}
}

func (testService) FullDuplexCall(s grpc.BidiStreamingServer[testpb.StreamingOutputCallRequest, testpb.StreamingOutputCallResponse]) error {
	for {
		r, err := s.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if err := s.Send(&testpb.StreamingOutputCallResponse{Payload: r.GetPayload()}); err != nil {
			return err
		}
	}
}

// grpcSetup starts a gRPC server (TestService and health) behind the
// proxy and returns a client connection through it.
func grpcSetup(t *testing.T, judge l7.Judge) (*l7test.Proxy, *grpc.ClientConn) {
	t.Helper()
	ln := l7test.Listen(t)
	srv := grpc.NewServer()
	testpb.RegisterTestServiceServer(srv, testService{})
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)
	p := startProxy(t, judge, ln.Addr().String())
	cc, err := grpc.NewClient("passthrough:///"+p.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return p, cc
}

// checkPermissionDenied asserts err is the proxy's PERMISSION_DENIED
// naming the rule.
func checkPermissionDenied(t *testing.T, err error) {
	t.Helper()
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.PermissionDenied {
		t.Fatalf("got %v, want PermissionDenied", err)
	}
	if !strings.Contains(st.Message(), "spec.ingress[0].toPorts[0].rules.http[0]") || !strings.Contains(st.Message(), "L7Policy test/api") {
		t.Fatalf("message %q does not name the policy and rule", st.Message())
	}
}

// TestGRPC runs allowed and denied unary and streaming calls of a
// grpc-go client against a grpc-go server through the proxy.
func TestGRPC(t *testing.T) {
	judge := newJudge("/grpc.testing.TestService/EmptyCall", "/grpc.testing.TestService/FullDuplexCall")
	p, cc := grpcSetup(t, judge)
	client := testpb.NewTestServiceClient(cc)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	t.Run("unary allowed", func(t *testing.T) {
		resp, err := client.UnaryCall(ctx, &testpb.SimpleRequest{ResponseSize: 100000, Payload: &testpb.Payload{Body: make([]byte, 300000)}})
		if err != nil || len(resp.GetPayload().GetBody()) != 100000 {
			t.Fatalf("UnaryCall: %v", err)
		}
	})
	t.Run("unary denied", func(t *testing.T) {
		_, err := client.EmptyCall(ctx, &testpb.Empty{})
		checkPermissionDenied(t, err)
	})
	t.Run("health allowed", func(t *testing.T) {
		resp, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
		if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("Check: %v %v", resp, err)
		}
	})
	t.Run("server streaming allowed", func(t *testing.T) {
		req := &testpb.StreamingOutputCallRequest{}
		for range 20 {
			req.ResponseParameters = append(req.ResponseParameters, &testpb.ResponseParameters{Size: 50000})
		}
		s, err := client.StreamingOutputCall(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for {
			_, err := s.Recv()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("Recv: %v", err)
			}
			n++
		}
		if n != 20 {
			t.Fatalf("%d messages", n)
		}
	})
	t.Run("client streaming allowed", func(t *testing.T) {
		s, err := client.StreamingInputCall(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for range 50 {
			if err := s.Send(&testpb.StreamingInputCallRequest{Payload: &testpb.Payload{Body: make([]byte, 40000)}}); err != nil {
				t.Fatal(err)
			}
		}
		resp, err := s.CloseAndRecv()
		if err != nil || resp.GetAggregatedPayloadSize() != 50*40000 {
			t.Fatalf("CloseAndRecv: %v %v", resp, err)
		}
	})
	t.Run("bidi streaming denied", func(t *testing.T) {
		s, err := client.FullDuplexCall(ctx)
		if err != nil {
			t.Fatal(err)
		}
		// Sends may succeed or see the end of the stream; Recv tells.
		for range 10 {
			if err := s.Send(&testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: make([]byte, 30000)}}); err != nil {
				break
			}
		}
		_, err = s.Recv()
		checkPermissionDenied(t, err)
	})
	t.Run("unary allowed after denials", func(t *testing.T) {
		for range 50 {
			if _, err := client.EmptyCall(ctx, &testpb.Empty{}); status.Code(err) != codes.PermissionDenied {
				t.Fatalf("EmptyCall: %v", err)
			}
			if _, err := client.UnaryCall(ctx, &testpb.SimpleRequest{ResponseSize: 10}); err != nil {
				t.Fatalf("UnaryCall: %v", err)
			}
		}
	})

	var allowedOK, denied int
	for _, r := range p.Recorded() {
		if r.Protocol != "grpc" || r.GRPC == nil {
			t.Fatalf("record %+v", r)
		}
		switch {
		case r.Verdict.Allow && r.GRPC.Status == 0:
			allowedOK++
		case !r.Verdict.Allow && r.GRPC.Status == l7.GRPCPermissionDenied && r.GRPC.Service == "grpc.testing.TestService":
			denied++
		default:
			t.Fatalf("record %+v %+v", r, r.GRPC)
		}
	}
	if allowedOK != 54 || denied != 52 {
		t.Fatalf("records: %d allowed, %d denied", allowedOK, denied)
	}
}

// TestGRPCBidiAllowed runs a bidirectional stream through the proxy.
func TestGRPCBidiAllowed(t *testing.T) {
	_, cc := grpcSetup(t, newJudge())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := testpb.NewTestServiceClient(cc).FullDuplexCall(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 100 {
		if err := s.Send(&testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: make([]byte, 1000*i)}}); err != nil {
			t.Fatal(err)
		}
		r, err := s.Recv()
		if err != nil || len(r.GetPayload().GetBody()) != 1000*i {
			t.Fatalf("round %d: %v", i, err)
		}
	}
	if err := s.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("end: %v", err)
	}
}
