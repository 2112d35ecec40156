package kafka

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/palisade-net/palisade/pkg/l7"
)

// queueDepth bounds the requests in flight on one connection (forwarded
// and awaiting their response, or denied and awaiting their turn), twice:
// in the channel and in the writer's list. When both are full the
// inspector stops reading the client until the broker catches up.
const queueDepth = 256

// Serve relays one Kafka connection between client (the decrypted
// stream of the Kafka client) and backend (the broker), judging every
// request with s.Judge. It implements l7.ServeFunc: it returns when the
// connection is over, having closed both sides, with nil after a clean
// end from either side and otherwise an error that says why (wrapping
// ErrMalformed, ErrUnsupported, ErrBackend or the context's error).
func Serve(ctx context.Context, client, backend net.Conn, s *l7.Session) error {
	c := newConn(client, backend, s)
	return c.run(ctx)
}

var _ l7.ServeFunc = Serve

// conn is the state of one inspected connection.
type conn struct {
	client, backend net.Conn
	sess            *l7.Session
	log             *slog.Logger
	state           *connState

	fromClient  *bufio.Reader
	fromBackend *bufio.Reader
	// toBackend (request reader only) and toClient (response writer only)
	// batch frames; each side flushes before it could block waiting for
	// the other.
	toBackend *bufio.Writer
	toClient  *bufio.Writer
	// respBuf is reused for small responses the writer relays as they are.
	respBuf []byte

	// queue carries every request that expects an answer, in request
	// order, from the request reader to the response writer. The reader
	// closes it when the client's stream ends.
	queue chan *pending
	// headers carries each response header the backend reader reads to
	// the response writer, which hands the backend back on bodyDone.
	headers  chan responseHeader
	bodyDone chan struct{}
	// writerDone is closed when the response writer returns.
	writerDone chan struct{}

	closeOnce sync.Once
}

func newConn(client, backend net.Conn, s *l7.Session) *conn {
	return &conn{
		client:      client,
		backend:     backend,
		sess:        s,
		log:         s.Logger(),
		state:       newConnState(),
		fromClient:  bufio.NewReaderSize(client, 32<<10),
		fromBackend: bufio.NewReaderSize(backend, 32<<10),
		toBackend:   bufio.NewWriterSize(backend, 32<<10),
		toClient:    bufio.NewWriterSize(client, 32<<10),
		queue:       make(chan *pending, queueDepth),
		headers:     make(chan responseHeader),
		bodyDone:    make(chan struct{}),
		writerDone:  make(chan struct{}),
	}
}

// closeBoth closes both sides once, unblocking every goroutine.
func (c *conn) closeBoth() {
	c.closeOnce.Do(func() {
		c.client.Close()
		c.backend.Close()
	})
}

// run serves the connection with three goroutines: the request reader
// (client → judge → backend or queue), the backend reader (response
// headers) and the response writer (queue order → client).
func (c *conn) run(ctx context.Context) error {
	stop := context.AfterFunc(ctx, c.closeBoth)
	defer stop()

	readErr := make(chan error, 1)
	writeErr := make(chan error, 1)
	var backendReader sync.WaitGroup
	backendReader.Go(c.readResponseHeaders)
	go func() { readErr <- c.readRequests() }()
	go func() {
		defer close(c.writerDone)
		writeErr <- c.writeResponses()
	}()

	// The first goroutine to end decides. After it, the connection is
	// closed under the other one, whose error then only counts when it
	// is a protocol error of its own.
	var err error
	select {
	case err = <-readErr:
		if err == nil {
			// The client is done sending; deliver what it still awaits.
			err = <-writeErr
			c.closeBoth()
		} else {
			c.closeBoth()
			<-writeErr
		}
	case err = <-writeErr:
		c.closeBoth()
		if readerErr := <-readErr; err == nil && isProtocolError(readerErr) {
			err = readerErr
		}
	}
	backendReader.Wait()

	if ctxErr := ctx.Err(); ctxErr != nil && err != nil {
		return fmt.Errorf("kafka: connection ended with its context: %w", ctxErr)
	}
	if isProtocolError(err) {
		c.log.Warn("kafka: connection closed", "reason", err.Error(),
			"client", addr(c.client.RemoteAddr()), "backend", addr(c.backend.RemoteAddr()))
	}
	return err
}

func addr(a net.Addr) string {
	if a == nil {
		return ""
	}
	return a.String()
}

// record reports one request.
func (c *conn) record(p *pending, now time.Time) {
	rec := p.rec
	c.sess.Record(l7.Record{
		Protocol: "kafka",
		Time:     p.start,
		Duration: now.Sub(p.start),
		Kafka:    &rec,
		Verdict:  p.verdict,
	})
}

// isProtocolError reports the errors that say a peer broke the protocol.
func isProtocolError(err error) bool {
	return errors.Is(err, ErrMalformed) || errors.Is(err, ErrUnsupported) || errors.Is(err, ErrBackend)
}
