// Package httpl7 is the inspector the node proxy runs on ports whose rules
// are HTTP: it sniffs the client's first bytes and hands the connection to
// the HTTP/2 inspector (h2c with prior knowledge), refuses TLS (which it
// cannot inspect) and gives everything else to the HTTP/1.1 inspector.
package httpl7

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"

	"github.com/palisade-net/palisade/pkg/l7"
	"github.com/palisade-net/palisade/pkg/l7/h2"
	"github.com/palisade-net/palisade/pkg/l7/http1"
)

// ErrTLS is returned for a connection that starts a TLS handshake: the
// rules cannot be checked on encrypted requests, and a port with L7 rules
// fails closed (DESIGN.md).
var ErrTLS = errors.New("TLS inside the tunnel cannot be inspected; the port has L7 rules")

// Serve sniffs the protocol of one connection and inspects it; it is an
// l7.ServeFunc. No sniffed byte is lost: the inspector reads them again.
func Serve(ctx context.Context, client, backend net.Conn, s *l7.Session) error {
	var aborted atomic.Bool
	stop := context.AfterFunc(ctx, func() {
		aborted.Store(true)
		client.Close()
		backend.Close()
	})
	w := watchBackend(backend, client)
	kind, head, err := sniff(client)
	backendHead, backendClosed := w.stop()
	if !stop() || aborted.Load() {
		client.Close()
		backend.Close()
		return fmt.Errorf("httpl7: %w", context.Cause(ctx))
	}
	switch {
	case backendClosed && len(head) == 0:
		// The backend closed an idle connection first: so does the client.
		client.Close()
		backend.Close()
		return nil
	case err != nil && len(head) == 0:
		client.Close()
		backend.Close()
		if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
			return nil
		}
		return fmt.Errorf("httpl7: reading the client: %w", err)
	}
	client = withPrefix(client, head)
	backend = withPrefix(backend, backendHead)
	switch kind {
	case kindTLS:
		s.Logger().Warn("httpl7: connection refused", "reason", ErrTLS.Error())
		client.Close()
		backend.Close()
		return fmt.Errorf("httpl7: %w", ErrTLS)
	case kindH2:
		return h2.Serve(ctx, client, backend, s)
	}
	return http1.Serve(ctx, client, backend, s)
}

// kind is what the first bytes of a connection say it carries.
type kind int

const (
	kindHTTP1 kind = iota
	kindH2
	kindTLS
)

// sniff reads until the first bytes decide the protocol: the HTTP/2
// client preface, a TLS handshake record (0x16 0x03), or anything else.
// It returns the bytes read; a read error ends sniffing with what there
// is (the inspector then reports it).
func sniff(r io.Reader) (kind, []byte, error) {
	preface := []byte(http2.ClientPreface)
	buf := make([]byte, 0, len(preface))
	for {
		switch {
		case len(buf) >= 2 && buf[0] == 0x16 && buf[1] == 0x03:
			return kindTLS, buf, nil
		case len(buf) == len(preface) && bytes.Equal(buf, preface):
			return kindH2, buf, nil
		case len(buf) > 0 && !bytes.HasPrefix(preface, buf) && !(len(buf) == 1 && buf[0] == 0x16):
			return kindHTTP1, buf, nil
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err != nil {
			return kindHTTP1, buf, err
		}
	}
}

// backendWatch notices a backend that closes (or speaks) before the client
// sent anything, as a plain relay would.
type backendWatch struct {
	backend net.Conn
	result  chan watchResult
	mu      sync.Mutex
	stopped bool
}

type watchResult struct {
	b      []byte
	closed bool
}

// watchBackend reads one byte from backend until stopped; when the
// backend closes meanwhile, client is closed to end the sniffing. It does
// nothing for a backend without read deadlines (which stop the read).
func watchBackend(backend, client net.Conn) *backendWatch {
	w := &backendWatch{backend: backend}
	if backend.SetReadDeadline(time.Time{}) != nil {
		return w
	}
	w.result = make(chan watchResult, 1)
	go func() {
		var b [1]byte
		n, err := backend.Read(b[:])
		r := watchResult{b: append([]byte(nil), b[:n]...)}
		if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			r.closed = true
			w.mu.Lock()
			if !w.stopped {
				client.Close()
			}
			w.mu.Unlock()
		}
		w.result <- r
	}()
	return w
}

// stop ends the watch and returns what the backend sent and whether it
// closed.
func (w *backendWatch) stop() ([]byte, bool) {
	if w.result == nil {
		return nil, false
	}
	w.mu.Lock()
	w.stopped = true
	w.mu.Unlock()
	_ = w.backend.SetReadDeadline(time.Unix(1, 0))
	r := <-w.result
	_ = w.backend.SetReadDeadline(time.Time{})
	return r.b, r.closed
}
