package hbone

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// settingsOf reads the SETTINGS frame and connection WINDOW_UPDATE that
// start an HTTP/2 connection.
func settingsOf(t *testing.T, fr *http2.Framer) (map[http2.SettingID]uint32, uint32) {
	t.Helper()
	settings := map[http2.SettingID]uint32{}
	var connWindow uint32
	for connWindow == 0 {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("reading settings: %v", err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				f.ForeachSetting(func(s http2.Setting) error { settings[s.ID] = s.Val; return nil })
			}
		case *http2.WindowUpdateFrame:
			if f.StreamID == 0 {
				connWindow = f.Increment
			}
		}
	}
	return settings, connWindow
}

func TestAdvertisedSettings(t *testing.T) {
	wantCommon := map[http2.SettingID]uint32{
		http2.SettingInitialWindowSize: DefaultStreamWindow,
		http2.SettingMaxFrameSize:      DefaultMaxFrameSize,
	}
	t.Run("server", func(t *testing.T) {
		e := newEnv(t, envOpts{})
		r := e.raw(t, true)
		got, win := settingsOf(t, r.fr)
		want := map[http2.SettingID]uint32{
			http2.SettingMaxConcurrentStreams: DefaultMaxConcurrentStreams,
			http2.SettingMaxHeaderListSize:    DefaultMaxHeaderBytes,
		}
		for k, v := range wantCommon {
			want[k] = v
		}
		for id, v := range want {
			if got[id] != v {
				t.Errorf("%v = %d, want %d", id, got[id], v)
			}
		}
		if win != DefaultConnWindow-65535 {
			t.Errorf("connection WINDOW_UPDATE = %d, want %d", win, DefaultConnWindow-65535)
		}
	})
	t.Run("client", func(t *testing.T) {
		p := newProvider(t, testTD)
		ln, err := tls.Listen("tcp", "127.0.0.1:0", serverTLSConfig(p, serverID, testTD))
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		type result struct {
			settings map[http2.SettingID]uint32
			win      uint32
		}
		results := make(chan result, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			preface := make([]byte, len(http2.ClientPreface))
			if _, err := io.ReadFull(c, preface); err != nil {
				t.Error(err)
				return
			}
			s, w := settingsOf(t, http2.NewFramer(c, c))
			results <- result{s, w}
		}()
		pool, err := NewPool(PoolConfig{Identities: p})
		if err != nil {
			t.Fatal(err)
		}
		defer pool.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		go pool.Dial(ctx, Key{Src: clientID, Dst: serverID}, "127.0.0.1:80", nil, func(ctx context.Context) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", ln.Addr().String())
		})
		r := <-results
		for id, v := range wantCommon {
			if r.settings[id] != v {
				t.Errorf("%v = %d, want %d", id, r.settings[id], v)
			}
		}
		// Like the server: 65,535 initial + the update = ConnWindow.
		if r.win != DefaultConnWindow-65535 {
			t.Errorf("connection WINDOW_UPDATE = %d, want %d", r.win, DefaultConnWindow-65535)
		}
		if r.settings[http2.SettingEnablePush] != 0 {
			t.Error("client enables push")
		}
	})
}
