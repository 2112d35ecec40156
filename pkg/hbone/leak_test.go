package hbone

import (
	"io"
	"runtime"
	"testing"
	"time"
)

// TestNoGoroutineLeaks runs a mixed workload, closes everything and checks
// that the goroutines of connections and streams are gone.
func TestNoGoroutineLeaks(t *testing.T) {
	before := runtime.NumGoroutine()
	t.Run("workload", func(t *testing.T) {
		e := newEnv(t, envOpts{})
		be := newBackend(t, echoHandler)
		for i := range 20 {
			c := e.mustDial(be.addr)
			c.Write([]byte("x"))
			switch i % 3 {
			case 0: // graceful
				c.CloseWrite()
				io.ReadAll(c)
			case 1: // abrupt
			case 2: // open at shutdown
				defer c.Close()
				continue
			}
			c.Close()
		}
		e.dial(t.Context(), "not-an-address", nil) // refused: 400
	})
	deadline := time.Now().Add(5 * time.Second)
	for {
		n := runtime.NumGoroutine()
		if n <= before {
			return
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines before, %d after:\n%s", before, n, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(20 * time.Millisecond)
	}
}
