package hbone

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// takerBackend is a backend that takes the stream (StreamTaker): take runs
// with the stream and the far end of the backend's pipe.
type takerBackend struct {
	net.Conn
	take func(s *Stream)
}

func (b *takerBackend) TakeStream(s *Stream) { b.take(s) }

// takerEnv starts a server whose backends take their streams with take;
// the returned channel receives, once per stream, what a read on the far
// end of the backend pipe returned after the server was done with it.
func takerEnv(t *testing.T, take func(s *Stream)) (*env, chan error) {
	t.Helper()
	backendClosed := make(chan error, 1)
	e := newEnv(t, envOpts{connect: func(context.Context, *Request) (net.Conn, int, error) {
		near, far := net.Pipe()
		go func() {
			_, err := far.Read(make([]byte, 1))
			backendClosed <- err
		}()
		return &takerBackend{Conn: near, take: take}, http.StatusOK, nil
	}})
	return e, backendClosed
}

// await returns the next value from ch, failing the test after 10 s.
func await[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
		var zero T
		return zero
	}
}

// TestStreamTaker checks the server stream a StreamTaker gets: what the
// client sends is read in order (more than the flow-control windows, so
// the taker's reads must return credit), what the taker writes reaches the
// client, each side's end of stream reaches the other, and the backend is
// closed once TakeStream returns.
func TestStreamTaker(t *testing.T) {
	payload := randomBytes(t, 3<<20)
	type got struct {
		n   int
		err error
	}
	taken := make(chan got, 1)
	e, backendClosed := takerEnv(t, func(s *Stream) {
		if s.LocalAddr() == nil || s.RemoteAddr() == nil {
			t.Error("stream without addresses")
		}
		// Echo in upper case until the client's END_STREAM, then answer.
		buf := make([]byte, 7000)
		var all []byte
		for {
			n, err := s.Read(buf)
			all = append(all, buf[:n]...)
			if err == io.EOF {
				break
			}
			if err != nil {
				taken <- got{err: err}
				return
			}
		}
		if _, err := s.Write(bytes.ToUpper(all)); err != nil {
			taken <- got{err: err}
			return
		}
		if err := s.CloseWrite(); err != nil {
			taken <- got{err: err}
			return
		}
		if _, err := s.Write([]byte("x")); err == nil {
			t.Error("write after CloseWrite succeeded")
		}
		taken <- got{n: len(all)}
	})
	c := e.mustDial("127.0.0.1:9")
	defer c.Close()
	go func() {
		c.Write(payload)
		c.CloseWrite()
	}()
	reply, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("client read: %v", err)
	}
	r := await(t, taken, "the taker")
	if r.err != nil || r.n != len(payload) {
		t.Fatalf("taker read %d bytes, %v; want %d", r.n, r.err, len(payload))
	}
	if !bytes.Equal(reply, bytes.ToUpper(payload)) {
		t.Fatalf("client got %d bytes, not the %d upper-cased ones sent", len(reply), len(payload))
	}
	if err := await(t, backendClosed, "the backend to close"); err == nil {
		t.Error("backend still open after TakeStream returned")
	}
}

// TestStreamTakerEnds covers how a taken stream ends: the taker's Close
// while the client still sends, its Reset, a Close during a blocked Write,
// and the client's reset.
func TestStreamTakerEnds(t *testing.T) {
	t.Run("close while the client sends", func(t *testing.T) {
		// A server that answered in full and closes: the client reads the
		// whole answer and its end of stream, and its writes then fail
		// (RST_STREAM NO_ERROR after END_STREAM).
		e, backendClosed := takerEnv(t, func(s *Stream) {
			buf := make([]byte, 5)
			io.ReadFull(s, buf)
			s.Write([]byte("bye " + string(buf)))
			s.Close()
			if _, err := s.Read(buf); !errors.Is(err, net.ErrClosed) {
				t.Errorf("read after Close: %v", err)
			}
			if _, err := s.Write(buf); !errors.Is(err, net.ErrClosed) {
				t.Errorf("write after Close: %v", err)
			}
		})
		c := e.mustDial("127.0.0.1:9")
		defer c.Close()
		c.Write([]byte("hello and more to come"))
		reply, err := io.ReadAll(c)
		if err != nil || string(reply) != "bye hello" {
			t.Fatalf("client read %q, %v", reply, err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			_, err := c.Write([]byte("more"))
			var re *StreamResetError
			if errors.As(err, &re) && re.Code == http2.ErrCodeNo {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("client writes after the taker's Close: last error %v, want a NO_ERROR reset", err)
			}
			time.Sleep(10 * time.Millisecond)
		}
		await(t, backendClosed, "the backend to close")
	})

	t.Run("reset", func(t *testing.T) {
		e, _ := takerEnv(t, func(s *Stream) {
			io.ReadFull(s, make([]byte, 2))
			s.Reset("revoked")
			if _, err := s.Write([]byte("late")); err == nil {
				t.Error("write after Reset succeeded")
			}
		})
		c := e.mustDial("127.0.0.1:9")
		defer c.Close()
		c.Write([]byte("hi"))
		_, err := io.ReadAll(c)
		var re *StreamResetError
		if !errors.As(err, &re) || re.Code != http2.ErrCodeConnect {
			t.Fatalf("client read after Reset: %v, want a CONNECT_ERROR reset", err)
		}
		e.logs.waitFor(t, "revoked")
	})

	t.Run("close during a blocked write", func(t *testing.T) {
		// The client never reads: the taker's write waits for flow
		// control until another goroutine closes the stream.
		writeErr := make(chan error, 1)
		closed := make(chan struct{})
		e, _ := takerEnv(t, func(s *Stream) {
			defer close(closed)
			go func() {
				_, err := s.Write(make([]byte, 8<<20))
				writeErr <- err
			}()
			time.Sleep(200 * time.Millisecond) // let the write block
			s.Close()
			if err := await(t, writeErr, "the blocked write"); err == nil {
				t.Error("write of more than the window returned no error after Close")
			}
		})
		c := e.mustDial("127.0.0.1:9")
		defer c.Close()
		await(t, closed, "the taker's Close")
		deadline := time.Now().Add(10 * time.Second)
		for {
			// The reset arrives after the window's worth of bytes.
			_, err := c.Read(make([]byte, 64<<10))
			var re *StreamResetError
			if errors.As(err, &re) && re.Code == http2.ErrCodeCancel {
				break
			}
			if err != nil || time.Now().After(deadline) {
				t.Fatalf("client read: %v, want a CANCEL reset", err)
			}
		}
	})

	t.Run("client reset", func(t *testing.T) {
		readErr := make(chan error, 1)
		e, backendClosed := takerEnv(t, func(s *Stream) {
			_, err := io.ReadAll(s)
			readErr <- err
		})
		c := e.mustDial("127.0.0.1:9")
		c.Write([]byte("partial"))
		time.Sleep(50 * time.Millisecond)
		c.Close() // RST_STREAM CANCEL
		if err := await(t, readErr, "the taker's read"); err == nil {
			t.Error("taker read ended without error after the client's reset")
		}
		await(t, backendClosed, "the backend to close")
	})

	t.Run("unread bytes return to the connection window", func(t *testing.T) {
		// Streams that end with bytes their taker never read must give
		// them back to the connection's window (16 MiB), or the streams
		// after them stall: 6 × 3 MiB left unread would exceed it.
		clientDone, stop := make(chan struct{}), make(chan struct{})
		e, _ := takerEnv(t, func(s *Stream) {
			io.ReadFull(s, make([]byte, 1))
			select {
			case <-clientDone:
			case <-stop:
				return
			}
			time.Sleep(100 * time.Millisecond) // let the client's END_STREAM arrive
			s.CloseWrite()
		})
		t.Cleanup(func() { close(stop) }) // before the server's cleanup waits for the taker
		streams := make(chan int, 8)
		go func() {
			defer close(streams)
			for i := range 7 {
				c := e.mustDial("127.0.0.1:9")
				if _, err := c.Write(make([]byte, 3<<20)); err != nil {
					return
				}
				c.CloseWrite()
				clientDone <- struct{}{}
				io.ReadAll(c)
				c.Close()
				streams <- i
			}
		}()
		done := 0
		for {
			select {
			case _, ok := <-streams:
				if !ok {
					if done != 7 {
						t.Fatalf("%d of 7 streams done", done)
					}
					return
				}
				done++
			case <-time.After(30 * time.Second):
				t.Fatalf("stream %d stalled: the connection window was not returned", done)
			}
		}
	})

	t.Run("deadlines", func(t *testing.T) {
		done := make(chan []error, 1)
		e, _ := takerEnv(t, func(s *Stream) {
			done <- []error{s.SetDeadline(time.Now()), s.SetReadDeadline(time.Now()), s.SetWriteDeadline(time.Now())}
		})
		c := e.mustDial("127.0.0.1:9")
		defer c.Close()
		for i, err := range await(t, done, "the taker") {
			if !errors.Is(err, errors.ErrUnsupported) {
				t.Errorf("deadline setter %d: %v, want ErrUnsupported", i, err)
			}
		}
	})
}
