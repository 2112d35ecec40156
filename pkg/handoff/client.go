package handoff

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"time"

	"github.com/palisade-net/palisade/pkg/netns"
	"github.com/palisade-net/palisade/pkg/workload"
)

// Handler is the node proxy's side of the protocol. The client calls it from
// one goroutine, in the order the agent sent the messages, and acks each
// message with the returned error.
type Handler interface {
	// AddWorkload enrolls w, whose network namespace is netns; h owns the
	// file and must close it. It may be called again for a uid that is
	// already enrolled (snapshot replay, or an update): treat that as a
	// replacement.
	AddWorkload(ctx context.Context, w workload.Workload, netns *os.File) error
	// DeleteWorkload removes the workload with this uid. Unknown uids are not
	// an error.
	DeleteWorkload(ctx context.Context, uid string) error
	// SnapshotDone is called after a snapshot with the UIDs it contained; the
	// proxy drops every workload not in it and may then report ready.
	SnapshotDone(ctx context.Context, uids map[string]bool) error
	// Dropped reports packets the node's eBPF datapath dropped, for the
	// proxy's flow records. It must not block for long: the agent's next
	// message waits for its ack.
	Dropped(ctx context.Context, drops []Drop) error
}

// Backoff defaults for ClientOptions.
const (
	DefaultMinBackoff = 100 * time.Millisecond
	DefaultMaxBackoff = 5 * time.Second
)

// Client is the node proxy's side of the handoff protocol. The zero value is
// ready to use; set the fields before calling Run.
type Client struct {
	// Logger receives the client's logs; nil means slog.Default().
	Logger *slog.Logger
	// Name identifies this proxy in the hello message, for the agent's logs.
	// Empty means "nodeproxy pid <pid>".
	Name string
	// MinBackoff and MaxBackoff bound the delay between connection attempts
	// while the agent is absent; the delay doubles (with jitter) up to
	// MaxBackoff. Zero means DefaultMinBackoff and DefaultMaxBackoff.
	MinBackoff, MaxBackoff time.Duration

	initOnce  sync.Once
	ready     chan struct{}
	readyOnce sync.Once
}

func (c *Client) init() {
	c.initOnce.Do(func() { c.ready = make(chan struct{}) })
}

// Ready reports whether a snapshot has been fully applied (the first
// SnapshotDone returned nil).
func (c *Client) Ready() bool {
	select {
	case <-c.ReadyC():
		return true
	default:
		return false
	}
}

// ReadyC returns a channel that is closed once the first SnapshotDone has
// returned nil. It stays closed across reconnects: a reconnecting proxy keeps
// serving the workloads it has while it receives the new snapshot.
func (c *Client) ReadyC() <-chan struct{} {
	c.init()
	return c.ready
}

// Run connects to the agent's socket at path and serves h until ctx is done,
// reconnecting with capped exponential backoff whenever the agent is absent,
// restarts or the connection breaks; every new connection brings a fresh
// snapshot. It returns nil when ctx ends, and an error only for invalid
// arguments. Call Run at most once at a time per Client.
func (c *Client) Run(ctx context.Context, path string, h Handler) error {
	if path == "" || h == nil {
		return errors.New("handoff: client run: empty path or nil handler")
	}
	c.init()
	log := c.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("component", "handoff-client", "path", path)
	name := c.Name
	if name == "" {
		name = fmt.Sprintf("nodeproxy pid %d", os.Getpid())
	}
	minBackoff, maxBackoff := c.MinBackoff, c.MaxBackoff
	if minBackoff <= 0 {
		minBackoff = DefaultMinBackoff
	}
	if maxBackoff <= 0 {
		maxBackoff = DefaultMaxBackoff
	}
	maxBackoff = max(maxBackoff, minBackoff)
	backoff := minBackoff
	failures := 0
	for {
		conn, err := dial(ctx, path)
		if err == nil {
			failures = 0
			start := time.Now()
			log.Info("connected to agent")
			err = c.serve(ctx, conn, h, name, log)
			if ctx.Err() != nil {
				return nil
			}
			log.Warn("agent connection lost; reconnecting", "err", err)
			if time.Since(start) > maxBackoff {
				backoff = minBackoff
			}
		} else {
			if ctx.Err() != nil {
				return nil
			}
			failures++
			if failures == 1 {
				log.Warn("cannot reach agent; retrying", "err", err)
			} else {
				log.Debug("cannot reach agent; retrying", "err", err, "attempt", failures)
			}
		}
		// Sleep between half and all of backoff, then double it.
		d := backoff/2 + rand.N(backoff/2+1)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(d):
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

func dial(ctx context.Context, path string) (*net.UnixConn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unixpacket", path)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", path, err)
	}
	return conn.(*net.UnixConn), nil
}

// serve runs one connection until it breaks or ctx ends.
func (c *Client) serve(ctx context.Context, conn *net.UnixConn, h Handler, name string, log *slog.Logger) error {
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()

	if err := writePacket(conn, &message{Version: ProtocolVersion, Type: typeHello, Proxy: name, Features: []string{featureDrops}}, nil); err != nil {
		return fmt.Errorf("hello: %w", err)
	}
	r := newPacketReader(conn)
	// Adds received on this connection minus dels: after snapshot_sent this
	// is exactly the agent's state, since the agent deletes from every
	// connection.
	uids := map[string]bool{}
	for {
		m, files, err := r.read()
		if err != nil {
			return fmt.Errorf("read: %w", err)
		}
		herr, perr := c.dispatch(ctx, m, files, uids, h, log)
		if perr != nil {
			return perr
		}
		ack := &message{Version: ProtocolVersion, Type: typeAck, ID: m.ID}
		if herr != nil {
			ack.Error = herr.Error()
		}
		_ = conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
		if err := writePacket(conn, ack, nil); err != nil {
			return fmt.Errorf("ack %d: %w", m.ID, err)
		}
	}
}

// dispatch hands one message to h. It returns the handler's error (sent in
// the ack) and a protocol error (which ends the connection). It owns files.
func (c *Client) dispatch(ctx context.Context, m *message, files []*os.File, uids map[string]bool, h Handler, log *slog.Logger) (handlerErr, protoErr error) {
	if m.Type != typeAdd && len(files) > 0 {
		closeFiles(files)
		return nil, protocolErrorf("%s message carries %d file descriptors", m.Type, len(files))
	}
	switch m.Type {
	case typeAdd:
		w := *m.Workload
		if len(files) != 1 {
			closeFiles(files)
			return fmt.Errorf("add %s: expected 1 netns descriptor, got %d", w.Key(), len(files)), nil
		}
		nh, err := netns.FromFile(files[0]) // closes the file on error
		if err != nil {
			return fmt.Errorf("add %s: received descriptor: %w", w.Key(), err), nil
		}
		uids[w.UID] = true
		if err := h.AddWorkload(ctx, w, nh.File()); err != nil {
			log.Warn("add workload failed", "pod", w.Key(), "uid", w.UID, "err", err)
			return err, nil
		}
		log.Debug("added workload", "pod", w.Key(), "uid", w.UID)
		return nil, nil
	case typeDel:
		delete(uids, m.UID)
		if err := h.DeleteWorkload(ctx, m.UID); err != nil {
			log.Warn("delete workload failed", "uid", m.UID, "err", err)
			return err, nil
		}
		log.Debug("deleted workload", "uid", m.UID)
		return nil, nil
	case typeSnapshotSent:
		if err := h.SnapshotDone(ctx, maps.Clone(uids)); err != nil {
			log.Warn("applying snapshot failed", "workloads", len(uids), "err", err)
			return err, nil
		}
		log.Info("snapshot applied", "workloads", len(uids))
		c.readyOnce.Do(func() { close(c.ready) })
		return nil, nil
	case typeDrops:
		return h.Dropped(ctx, m.Drops), nil
	default:
		return nil, protocolErrorf("unexpected %q from agent", m.Type)
	}
}
