package apps

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestHTTPHandler(t *testing.T) {
	srv := httptest.NewServer(HTTPHandler("pod-a"))
	defer srv.Close()
	get := func(method, path, body string) (*http.Response, string) {
		t.Helper()
		req, _ := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}
	resp, body := get("POST", "/x?y=1", "payload")
	if !strings.HasPrefix(body, "hostname=pod-a ip=127.0.0.1 remote=127.0.0.1:") || !strings.Contains(body, "method=POST path=/x?y=1\npayload") {
		t.Errorf("/: %q", body)
	}
	if resp.Header.Get("X-Hostname") != "pod-a" || resp.Header.Get("X-Pod-IP") != "127.0.0.1" {
		t.Errorf("headers: %v", resp.Header)
	}
	if _, body := get("POST", "/echo", "exactly this"); body != "exactly this" {
		t.Errorf("/echo: %q", body)
	}
	if _, body := get("GET", "/bytes?n=40", ""); body != string(Pattern(40)) || len(body) != 40 {
		t.Errorf("/bytes: %q", body)
	}
	if resp, _ := get("GET", "/bytes?n=-1", ""); resp.StatusCode != http.StatusBadRequest {
		t.Errorf("/bytes?n=-1: %d", resp.StatusCode)
	}
	if resp, _ := get("GET", "/status/418", ""); resp.StatusCode != 418 {
		t.Errorf("/status/418: %d", resp.StatusCode)
	}
	if _, body := get("GET", "/healthz", ""); body != "ok\n" {
		t.Errorf("/healthz: %q", body)
	}
}

func TestServeEcho(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	done := make(chan error, 1)
	go func() { done <- ServeEcho(ctx, addr, slog.New(slog.DiscardHandler)) }()
	var c net.Conn
	for i := 0; i < 100; i++ {
		if c, err = net.Dial("tcp", addr); err == nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	msg := bytes.Repeat([]byte("echo!"), 10000)
	go func() {
		_, _ = c.Write(msg)
		_ = c.(*net.TCPConn).CloseWrite()
	}()
	got, err := io.ReadAll(c)
	if err != nil || !bytes.Equal(got, msg) {
		t.Errorf("echo: %d bytes, %v", len(got), err)
	}
	c.Close()
	cancel()
	if err := <-done; err != nil {
		t.Errorf("serve: %v", err)
	}
}
