// Package apps holds the tiny workloads the lab runs inside pods: an HTTP
// server (HTTP/1.1 and h2c), a raw TCP echo server, a gRPC server and a
// one-broker Kafka cluster. They exist so that demos and end-to-end
// tests need nothing but the lab binary itself (no python, no netcat).
//
// The lab binary exposes them as the hidden subcommands "serve-http",
// "serve-echo", "serve-grpc" and "serve-kafka"; manifests refer to the
// binary as "$(LAB_BIN)".
package apps

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"
)

// MaxBytes caps /bytes?n=N so that a typo cannot make a pod stream forever.
const MaxBytes = 1 << 30

// Hostname returns the pod's name as the lab exposes it: $HOSTNAME (set by the
// lab to the pod name), else the kernel's hostname.
func Hostname() string {
	if h := os.Getenv("HOSTNAME"); h != "" {
		return h
	}
	h, _ := os.Hostname()
	return h
}

// HTTPHandler answers every request with the pod's hostname and IP.
//
//   - "/echo": the response body is the request body, byte for byte.
//   - "/bytes?n=N": N bytes of a repeating pattern (0123456789abcdef...).
//   - "/status/CODE": an empty response with that status code.
//   - "/healthz": "ok".
//   - anything else: one line "hostname=H ip=IP remote=ADDR method=M path=P"
//     followed by the request body.
//
// Every response carries the headers X-Hostname and X-Pod-IP.
func HTTPHandler(hostname string) http.Handler {
	mux := http.NewServeMux()
	local := func(r *http.Request) string {
		if a, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
			if host, _, err := net.SplitHostPort(a.String()); err == nil {
				return host
			}
		}
		return ""
	}
	header := func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Hostname", hostname)
		w.Header().Set("X-Pod-IP", local(r))
	}
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		header(w, r)
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("/echo", func(w http.ResponseWriter, r *http.Request) {
		header(w, r)
		if r.ContentLength >= 0 {
			w.Header().Set("Content-Length", strconv.FormatInt(r.ContentLength, 10))
		}
		_, _ = io.Copy(w, r.Body)
	})
	mux.HandleFunc("/bytes", func(w http.ResponseWriter, r *http.Request) {
		header(w, r)
		n, err := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		if err != nil || n < 0 || n > MaxBytes {
			http.Error(w, fmt.Sprintf("n must be an integer in [0, %d]", MaxBytes), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		_, _ = io.CopyN(w, patternReader{}, n)
	})
	mux.HandleFunc("/status/{code}", func(w http.ResponseWriter, r *http.Request) {
		header(w, r)
		code, err := strconv.Atoi(r.PathValue("code"))
		if err != nil || code < 100 || code > 999 {
			http.Error(w, "bad status code", http.StatusBadRequest)
			return
		}
		w.WriteHeader(code)
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		header(w, r)
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintf(w, "hostname=%s ip=%s remote=%s method=%s path=%s\n",
			hostname, local(r), r.RemoteAddr, r.Method, r.URL.RequestURI())
		_, _ = io.Copy(w, r.Body)
	})
	return mux
}

// Pattern returns the first n bytes that /bytes?n=N serves, for comparing.
func Pattern(n int) []byte {
	b := make([]byte, n)
	_, _ = io.ReadFull(patternReader{}, b)
	return b
}

type patternReader struct{}

const pattern = "0123456789abcdef"

func (patternReader) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = pattern[i%len(pattern)]
	}
	return len(p), nil
}

// ServeHTTP runs the HTTP server on addr until ctx ends.
func ServeHTTP(ctx context.Context, addr string, log *slog.Logger) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("serve-http: %w", err)
	}
	// HTTP/1.1 and prior-knowledge HTTP/2 (h2c) on the same port, as
	// many in-cluster services serve them.
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	srv := &http.Server{
		Handler:           HTTPHandler(Hostname()),
		ReadHeaderTimeout: 10 * time.Second,
		Protocols:         &protocols,
	}
	log.Info("serving HTTP", "addr", ln.Addr().String(), "hostname", Hostname())
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve-http: %w", err)
	}
	return nil
}

// ServeEcho runs a raw TCP echo server on addr until ctx ends: every byte a
// client sends comes back; a half-close by the client is passed on.
func ServeEcho(ctx context.Context, addr string, log *slog.Logger) error {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("serve-echo: %w", err)
	}
	log.Info("serving TCP echo", "addr", ln.Addr().String())
	go func() {
		<-ctx.Done()
		ln.Close()
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("serve-echo: %w", err)
		}
		go func() {
			defer c.Close()
			_, _ = io.Copy(c, c)
			if tc, ok := c.(*net.TCPConn); ok {
				_ = tc.CloseWrite()
			}
		}()
	}
}
