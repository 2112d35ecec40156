package l7

import (
	"net/http"
	"testing"
)

func TestHTTPRequestGRPC(t *testing.T) {
	tests := []struct {
		name             string
		method, path     string
		contentType      string
		service, method2 string
		ok               bool
	}{
		{"plain grpc", "POST", "/pkg.Svc/Call", "application/grpc", "pkg.Svc", "Call", true},
		{"grpc+proto", "POST", "/pkg.Svc/Call", "application/grpc+proto", "pkg.Svc", "Call", true},
		{"grpc params", "POST", "/Svc/Call", "application/grpc;charset=utf-8", "Svc", "Call", true},
		{"not post", "GET", "/pkg.Svc/Call", "application/grpc", "", "", false},
		{"not grpc content type", "POST", "/pkg.Svc/Call", "application/json", "", "", false},
		{"grpc-web is not grpc", "POST", "/pkg.Svc/Call", "application/grpc-web", "", "", false},
		{"no method", "POST", "/pkg.Svc/", "application/grpc", "", "", false},
		{"extra segment", "POST", "/pkg.Svc/Call/x", "application/grpc", "", "", false},
		{"query", "POST", "/pkg.Svc/Call?x=1", "application/grpc", "", "", false},
		{"relative", "POST", "pkg.Svc/Call", "application/grpc", "", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &HTTPRequest{Method: tt.method, Path: tt.path, Header: http.Header{"Content-Type": {tt.contentType}}}
			s, m, ok := r.GRPC()
			if s != tt.service || m != tt.method2 || ok != tt.ok {
				t.Fatalf("GRPC() = %q, %q, %v; want %q, %q, %v", s, m, ok, tt.service, tt.method2, tt.ok)
			}
		})
	}
}
