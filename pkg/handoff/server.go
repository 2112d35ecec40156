package handoff

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/palisade-net/palisade/pkg/netns"
	"github.com/palisade-net/palisade/pkg/workload"
)

// ErrNoProxy is wrapped by AddWorkload's error when no node proxy has
// confirmed the workload: none is connected, or (ErrConnLost, which also
// matches ErrNoProxy with errors.Is) the connection went away before the ack.
// The workload is recorded all the same and will be sent, with its netns, in
// the snapshot of the next proxy connection.
var ErrNoProxy = errors.New("no node proxy connected")

// ErrConnLost is wrapped by AddWorkload's error when the proxy connection the
// add was sent on went away, or stopped answering within the ack timeout
// (which closes it), before the proxy acknowledged. errors.Is(err,
// ErrNoProxy) is true for it as well: the workload stays recorded and is
// replayed to the next connection.
var ErrConnLost error = connLostError{}

type connLostError struct{}

func (connLostError) Error() string { return "node proxy connection lost before ack" }

// Is makes ErrConnLost match ErrNoProxy.
func (connLostError) Is(target error) bool { return target == ErrNoProxy }

// ErrClosed is returned by Server methods after Close.
var ErrClosed = errors.New("handoff server closed")

// RemoteError is the error a node proxy reported in its ack.
type RemoteError struct {
	// Msg is the proxy's error text.
	Msg string
}

// Error implements error.
func (e *RemoteError) Error() string { return "node proxy: " + e.Msg }

// DefaultAckTimeout is used when ServerOptions.AckTimeout is zero.
const DefaultAckTimeout = 10 * time.Second

// ServerOptions configure a Server.
type ServerOptions struct {
	// Logger receives the server's logs; nil means slog.Default().
	Logger *slog.Logger
	// AckTimeout bounds how long the server waits for a proxy to say hello
	// and to acknowledge each message. A proxy that does not answer in time
	// is disconnected (it will reconnect and get a fresh snapshot). Zero
	// means DefaultAckTimeout.
	AckTimeout time.Duration
	// WaitForSync holds back snapshots until MarkSynced is called. A proxy
	// drops every workload missing from its snapshot, so an agent that
	// restarts must not send one before it has re-discovered the pods that
	// are already enrolled; with WaitForSync it can start listening first.
	// Adds and deletes still flow to connected proxies in the meantime.
	WaitForSync bool
}

// Server is the agent's side of the handoff protocol. It owns the desired
// state (every enrolled workload and a descriptor of its netns) and keeps the
// connected node proxies in line with it. All methods are safe for concurrent
// use.
//
// A proxy drops every workload missing from the snapshot it receives on
// connecting. After an agent restart, either record the pods that are
// already enrolled before serving (AddWorkload returns an error wrapping
// ErrNoProxy while nothing is connected, and keeps the workload), or set
// ServerOptions.WaitForSync and call MarkSynced once they are recorded, so
// that no proxy sees an incomplete snapshot and running pods keep their
// listeners.
type Server struct {
	log        *slog.Logger
	ackTimeout time.Duration

	mu        sync.Mutex
	workloads map[string]*entry
	active    []*serverConn // said hello, oldest first; the last is the newest
	all       map[*serverConn]struct{}
	nextConn  uint64
	synced    bool
	closed    bool
	serving   bool
	stopServe context.CancelFunc // set by Start
	served    chan struct{}      // closed when Start's serve loop is done
	wg        sync.WaitGroup     // connection goroutines
}

type entry struct {
	w  workload.Workload
	ns *netns.Handle
}

// NewServer returns a Server with no workloads. Call Start or ListenAndServe
// to accept proxies, and Close to stop and release the netns descriptors it
// holds.
func NewServer(opts ServerOptions) *Server {
	s := &Server{
		log:        opts.Logger,
		ackTimeout: opts.AckTimeout,
		workloads:  map[string]*entry{},
		all:        map[*serverConn]struct{}{},
		synced:     !opts.WaitForSync,
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.ackTimeout <= 0 {
		s.ackTimeout = DefaultAckTimeout
	}
	s.log = s.log.With("component", "handoff-server")
	return s
}

// Listen creates a Server with default options logging to log (nil means
// slog.Default()), listens on path and serves in the background until Close.
// See Start for the socket's handling.
func Listen(path string, log *slog.Logger) (*Server, error) {
	s := NewServer(ServerOptions{Logger: log})
	if err := s.Start(path); err != nil {
		return nil, err
	}
	return s, nil
}

// Start listens on path and serves node proxies in the background until
// Close. The socket has mode 0600; an existing socket file at path (left by
// an agent that died, or still served by one being replaced) is replaced
// atomically, any other kind of file is an error, and the parent directory
// is created (0750) if missing. On shutdown the socket file is removed only
// while it is still this server's, so an old agent stopping during an
// upgrade leaves the new agent's socket alone.
func (s *Server) Start(path string) error {
	l, err := listenSocket(path)
	if err != nil {
		return fmt.Errorf("handoff: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	s.mu.Lock()
	if s.closed || s.serving {
		s.mu.Unlock()
		cancel()
		l.Close()
		return fmt.Errorf("handoff: start on %s: server closed or already serving", path)
	}
	s.serving, s.stopServe, s.served = true, cancel, done
	s.mu.Unlock()
	go func() {
		defer close(done)
		if err := s.serve(ctx, l); err != nil {
			s.log.Error("stopped serving node proxies", "err", err)
		}
	}()
	return nil
}

// ListenAndServe listens on path (as Start does) and serves until ctx is
// done, then closes the socket and every connection and waits for their
// goroutines. The recorded workloads survive; a later ListenAndServe replays
// them. It returns nil when ctx ended it.
func (s *Server) ListenAndServe(ctx context.Context, path string) error {
	l, err := listenSocket(path)
	if err != nil {
		return fmt.Errorf("handoff: %w", err)
	}
	s.mu.Lock()
	if s.closed || s.serving {
		s.mu.Unlock()
		l.Close()
		return fmt.Errorf("handoff: serve on %s: server closed or already serving", path)
	}
	s.serving = true
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.serving = false
		s.mu.Unlock()
	}()
	return s.serve(ctx, l)
}

// serve accepts connections on l until ctx is done.
func (s *Server) serve(ctx context.Context, l *sockListener) error {
	defer l.Close()
	stop := context.AfterFunc(ctx, func() { l.UnixListener.Close() })
	defer stop()
	s.log.Info("serving node proxies", "path", l.Path())

	var err error
	for {
		c, aerr := l.AcceptUnix()
		if aerr != nil {
			if ctx.Err() != nil {
				break
			}
			if errors.Is(aerr, net.ErrClosed) {
				err = fmt.Errorf("handoff: accept on %s: %w", l.Path(), aerr)
				break
			}
			// Transient (for example EMFILE): keep serving.
			s.log.Error("accept failed", "err", aerr)
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		s.startConn(c)
	}

	s.mu.Lock()
	conns := make([]*serverConn, 0, len(s.all))
	for sc := range s.all {
		conns = append(conns, sc)
	}
	s.mu.Unlock()
	for _, sc := range conns {
		sc.close(errors.New("server stopping"), false)
	}
	s.wg.Wait()
	s.log.Info("stopped serving node proxies", "path", l.Path())
	return err
}

// MarkSynced releases the snapshots held back by ServerOptions.WaitForSync:
// every connected proxy now gets one, and later ones get theirs on hello.
// Call it once the server holds every workload that should exist. Without
// WaitForSync it does nothing.
func (s *Server) MarkSynced() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.synced {
		return
	}
	s.synced = true
	s.log.Info("state synced; sending snapshots", "workloads", len(s.workloads), "proxies", len(s.active))
	for _, sc := range s.active {
		if sc.needSnapshot {
			s.enqueueSnapshotLocked(sc)
		}
	}
}

// Close stops serving (what Start or Listen began), disconnects every proxy
// and releases every recorded netns descriptor. Methods called afterwards
// return ErrClosed. A running ListenAndServe keeps accepting until its
// context is done, but closes new connections.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	stopServe, served := s.stopServe, s.served
	s.mu.Unlock()
	if stopServe != nil {
		stopServe()
		<-served
	}
	s.mu.Lock()
	conns := make([]*serverConn, 0, len(s.all))
	for sc := range s.all {
		conns = append(conns, sc)
	}
	entries := s.workloads
	s.workloads = map[string]*entry{}
	s.mu.Unlock()
	for _, sc := range conns {
		sc.close(ErrClosed, false)
	}
	var errs []error
	for _, e := range entries {
		if err := e.ns.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close netns of %s: %w", e.w.Key(), err))
		}
	}
	return errors.Join(errs...)
}

// AddWorkload records w and its netns and sends them to the newest connected
// proxy, waiting for its ack. The server keeps its own duplicate of netns; the
// caller keeps ownership of the file it passed. Adding a uid again replaces
// the earlier record.
//
// It returns nil once the proxy acknowledged; a *RemoteError when the proxy
// reported a failure; an error wrapping ErrNoProxy or ErrConnLost when no
// proxy has confirmed the workload yet (it stays recorded and is replayed to
// the next connection); or ctx's error if ctx ends first (the add still
// proceeds).
func (s *Server) AddWorkload(ctx context.Context, w workload.Workload, netnsFile *os.File) error {
	if w.UID == "" {
		return fmt.Errorf("handoff: add %s: workload has no uid", w.Key())
	}
	if netnsFile == nil {
		return fmt.Errorf("handoff: add %s: no netns file", w.Key())
	}
	w = cloneWorkload(w)
	if err := checkAddSize(&w); err != nil {
		return fmt.Errorf("handoff: add %s: %w", w.Key(), err)
	}
	dup, err := dupFile(netnsFile)
	if err != nil {
		return fmt.Errorf("handoff: add %s: %w", w.Key(), err)
	}
	h, err := netns.FromFile(dup) // closes dup on error
	if err != nil {
		return fmt.Errorf("handoff: add %s: %w", w.Key(), err)
	}

	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		h.Close()
		return fmt.Errorf("handoff: add %s: %w", w.Key(), ErrClosed)
	}
	if old := s.workloads[w.UID]; old != nil {
		old.ns.Close() // queued sends hold their own duplicates
	}
	e := &entry{w: w, ns: h}
	s.workloads[w.UID] = e
	sc := s.newestLocked()
	if sc == nil {
		s.mu.Unlock()
		s.log.Info("workload recorded, no proxy connected", "pod", w.Key(), "uid", w.UID)
		return fmt.Errorf("handoff: add %s: %w", w.Key(), ErrNoProxy)
	}
	o, err := addOp(e)
	if err != nil {
		s.mu.Unlock()
		return fmt.Errorf("handoff: add %s: %w", w.Key(), err)
	}
	o.result = make(chan error, 1)
	sc.enqueue(o)
	for _, other := range s.active {
		if other != sc {
			other.stale = true
		}
	}
	s.mu.Unlock()

	select {
	case err := <-o.result:
		if err != nil {
			return fmt.Errorf("handoff: add %s (uid %s) on proxy connection %d: %w", w.Key(), w.UID, sc.id, err)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("handoff: add %s: waiting for ack: %w", w.Key(), context.Cause(ctx))
	}
}

// DeleteWorkload forgets uid and tells every connected proxy (old and new
// alike) to drop it, waiting for all of their acks. The delete is sent even
// for a uid the server does not know, since a proxy may have it from before
// an agent restart. With no proxy connected it only updates the state. Proxy
// connections that go away before acking are ignored (their next snapshot
// will not contain uid); errors reported by proxies are joined.
func (s *Server) DeleteWorkload(ctx context.Context, uid string) error {
	if uid == "" {
		return errors.New("handoff: delete: empty uid")
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return fmt.Errorf("handoff: delete %s: %w", uid, ErrClosed)
	}
	if e := s.workloads[uid]; e != nil {
		delete(s.workloads, uid)
		e.ns.Close()
	}
	type sent struct {
		sc *serverConn
		o  *op
	}
	var ops []sent
	for _, sc := range s.active {
		o := &op{msg: message{Version: ProtocolVersion, Type: typeDel, UID: uid}, desc: "del " + uid, result: make(chan error, 1)}
		sc.enqueue(o)
		ops = append(ops, sent{sc, o})
	}
	s.mu.Unlock()

	var errs []error
	for _, x := range ops {
		select {
		case err := <-x.o.result:
			if err != nil && !errors.Is(err, ErrConnLost) {
				errs = append(errs, fmt.Errorf("proxy connection %d: %w", x.sc.id, err))
			}
		case <-ctx.Done():
			return fmt.Errorf("handoff: delete %s: waiting for acks: %w", uid, context.Cause(ctx))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("handoff: delete %s: %w", uid, err)
	}
	return nil
}

// Workloads returns the recorded workloads, sorted by uid.
func (s *Server) Workloads() []workload.Workload {
	s.mu.Lock()
	out := make([]workload.Workload, 0, len(s.workloads))
	for _, e := range s.workloads {
		out = append(out, cloneWorkload(e.w))
	}
	s.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].UID < out[j].UID })
	return out
}

// Proxies returns how many node proxies are connected and past hello.
func (s *Server) Proxies() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.active)
}

func (s *Server) newestLocked() *serverConn {
	if len(s.active) == 0 {
		return nil
	}
	return s.active[len(s.active)-1]
}

// addOp builds an add for e carrying a fresh duplicate of its netns.
func addOp(e *entry) (*op, error) {
	f, err := dupFile(e.ns.File())
	if err != nil {
		return nil, err
	}
	w := e.w
	return &op{
		msg:  message{Version: ProtocolVersion, Type: typeAdd, Workload: &w},
		file: f,
		desc: "add " + e.w.Key() + " (" + e.w.UID + ")",
	}, nil
}

// enqueueSnapshotLocked queues an add for every workload, then
// snapshot_sent, on sc. It fails the connection if a descriptor cannot be
// duplicated, since a snapshot with holes would make the proxy drop pods.
func (s *Server) enqueueSnapshotLocked(sc *serverConn) {
	sc.stale = false
	sc.needSnapshot = false
	uids := make([]string, 0, len(s.workloads))
	for uid := range s.workloads {
		uids = append(uids, uid)
	}
	sort.Strings(uids)
	ops := make([]*op, 0, len(uids)+1)
	for _, uid := range uids {
		o, err := addOp(s.workloads[uid])
		if err != nil {
			for _, o := range ops {
				o.finish(err)
			}
			go sc.close(fmt.Errorf("snapshot: %w", err), true)
			return
		}
		ops = append(ops, o)
	}
	ops = append(ops, &op{msg: message{Version: ProtocolVersion, Type: typeSnapshotSent}, desc: "snapshot_sent"})
	sc.log.Info("sending snapshot", "workloads", len(uids))
	for _, o := range ops {
		sc.enqueue(o)
	}
}

// startConn registers a new connection and starts its goroutines.
func (s *Server) startConn(c *net.UnixConn) {
	s.mu.Lock()
	s.nextConn++
	sc := &serverConn{
		s:    s,
		id:   s.nextConn,
		c:    c,
		acks: make(chan *message, 1),
		wake: make(chan struct{}, 1),
		done: make(chan struct{}),
	}
	sc.log = s.log.With("conn", sc.id, "peer_pid", peerPID(c))
	if s.closed {
		s.mu.Unlock()
		c.Close()
		return
	}
	s.all[sc] = struct{}{}
	s.wg.Add(2)
	s.mu.Unlock()
	sc.log.Info("node proxy connected")
	go sc.readLoop()
	go sc.writeLoop()
}

// activate makes sc the newest connection and queues its snapshot.
func (s *Server) activate(sc *serverConn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.all[sc]; !ok {
		return // already closed
	}
	s.active = append(s.active, sc)
	if !s.synced {
		sc.needSnapshot = true
		sc.log.Info("holding snapshot until the agent's state is synced")
		return
	}
	s.enqueueSnapshotLocked(sc)
}

// removeLocked forgets sc. When sc was the newest and promote is set, the next
// newest connection gets a fresh snapshot if adds went elsewhere since its
// last one.
func (s *Server) removeLocked(sc *serverConn, promote bool) {
	delete(s.all, sc)
	i := slices.Index(s.active, sc)
	if i < 0 {
		return
	}
	wasNewest := i == len(s.active)-1
	s.active = slices.Delete(s.active, i, i+1)
	if wasNewest && promote && !s.closed {
		if next := s.newestLocked(); next != nil && next.stale && !next.needSnapshot {
			next.log.Info("now the newest proxy connection; resending snapshot")
			s.enqueueSnapshotLocked(next)
		}
	}
}

// op is one message to send on a connection and wait an ack for.
type op struct {
	msg    message
	file   *os.File   // attached descriptor (owned; closed once sent or failed)
	desc   string     // for logs
	result chan error // receives the outcome; nil if nobody waits
	// abandoned is set when nobody waits any more for an op that may be
	// skipped (drop reports): the writer drops it unsent.
	abandoned atomic.Bool
}

// finish releases the op's file and reports err.
func (o *op) finish(err error) {
	if o.file != nil {
		o.file.Close()
		o.file = nil
	}
	if o.result != nil {
		o.result <- err
	}
}

// serverConn is one node proxy connection. A reader goroutine reads hello and
// acks; a writer goroutine sends queued ops one at a time, each waiting for
// its ack.
type serverConn struct {
	s   *Server
	id  uint64
	c   *net.UnixConn
	log *slog.Logger

	// stale is set when an add went to a newer connection since this one's
	// last snapshot; needSnapshot while its first snapshot is held back by
	// WaitForSync (both guarded by Server.mu).
	stale        bool
	needSnapshot bool
	// takesDrops is set when the proxy's hello listed the drops feature
	// (set before the connection becomes active, read under Server.mu).
	takesDrops bool

	acks        chan *message // reader → writer
	outstanding atomic.Uint64 // id of the unacked message, 0 if none

	qmu    sync.Mutex
	queue  []*op
	closed bool
	wake   chan struct{} // signalled when queue grows
	done   chan struct{} // closed by close

	closeOnce sync.Once
}

// enqueue adds o to the send queue, or fails it if the connection is closed.
func (sc *serverConn) enqueue(o *op) {
	sc.qmu.Lock()
	if sc.closed {
		sc.qmu.Unlock()
		o.finish(fmt.Errorf("%w: connection %d already closed", ErrConnLost, sc.id))
		return
	}
	sc.queue = append(sc.queue, o)
	sc.qmu.Unlock()
	select {
	case sc.wake <- struct{}{}:
	default:
	}
}

// next waits for the next op; nil once the connection is closed.
func (sc *serverConn) next() *op {
	for {
		sc.qmu.Lock()
		if sc.closed {
			sc.qmu.Unlock()
			return nil
		}
		if len(sc.queue) > 0 {
			o := sc.queue[0]
			sc.queue[0] = nil
			sc.queue = sc.queue[1:]
			sc.qmu.Unlock()
			return o
		}
		sc.qmu.Unlock()
		select {
		case <-sc.wake:
		case <-sc.done:
		}
	}
}

// close shuts the connection down once: queued ops fail with ErrConnLost and
// the server forgets the connection (promoting the next newest one if
// promote is set).
func (sc *serverConn) close(reason error, promote bool) {
	sc.closeOnce.Do(func() {
		// Leave the server's lists before the peer can notice the close, and
		// atomically with marking the queue closed, so that no caller picks a
		// connection that is going away.
		sc.s.mu.Lock()
		sc.qmu.Lock()
		sc.closed = true
		queued := sc.queue
		sc.queue = nil
		sc.qmu.Unlock()
		sc.s.removeLocked(sc, promote)
		sc.s.mu.Unlock()
		sc.c.Close()
		close(sc.done)
		for _, o := range queued {
			o.finish(fmt.Errorf("%w: %v", ErrConnLost, reason))
		}
		if errors.Is(reason, errProtocol) {
			sc.log.Warn("closed node proxy connection", "reason", reason)
		} else {
			sc.log.Info("node proxy connection closed", "reason", reason)
		}
	})
}

func (sc *serverConn) readLoop() {
	defer sc.s.wg.Done()
	r := newPacketReader(sc.c)

	_ = sc.c.SetReadDeadline(time.Now().Add(sc.s.ackTimeout))
	m, files, err := r.read()
	if err != nil {
		sc.close(fmt.Errorf("waiting for hello: %w", err), true)
		return
	}
	if len(files) > 0 || m.Type != typeHello {
		closeFiles(files)
		sc.close(protocolErrorf("expected hello without descriptors, got %q with %d", m.Type, len(files)), true)
		return
	}
	_ = sc.c.SetReadDeadline(time.Time{})
	sc.takesDrops = slices.Contains(m.Features, featureDrops)
	sc.log.Info("node proxy said hello", "proxy", m.Proxy, "features", m.Features)
	sc.s.activate(sc)

	for {
		m, files, err := r.read()
		if err != nil {
			sc.close(err, true)
			return
		}
		if len(files) > 0 || m.Type != typeAck {
			closeFiles(files)
			sc.close(protocolErrorf("expected ack without descriptors, got %q with %d", m.Type, len(files)), true)
			return
		}
		if want := sc.outstanding.Swap(0); want == 0 || want != m.ID {
			sc.close(protocolErrorf("ack for id %d, expected %d", m.ID, want), true)
			return
		}
		select {
		case sc.acks <- m: // one outstanding message, buffer of one
		case <-sc.done:
			return
		}
	}
}

func (sc *serverConn) writeLoop() {
	defer sc.s.wg.Done()
	var seq uint64
	for {
		o := sc.next()
		if o == nil {
			return
		}
		if o.abandoned.Load() {
			o.finish(errAbandoned)
			continue
		}
		seq++
		err := sc.send(o, seq)
		if err != nil {
			var re *RemoteError
			if errors.As(err, &re) {
				if o.result == nil {
					sc.log.Warn("node proxy refused message", "msg", o.desc, "err", re.Msg)
				}
			} else {
				sc.close(err, true)
			}
		}
		o.finish(err)
	}
}

// send writes o and waits for its ack.
func (sc *serverConn) send(o *op, id uint64) error {
	o.msg.ID = id
	sc.outstanding.Store(id)
	deadline := time.Now().Add(sc.s.ackTimeout)
	_ = sc.c.SetWriteDeadline(deadline)
	err := writePacket(sc.c, &o.msg, o.file)
	if o.file != nil {
		o.file.Close()
		o.file = nil
	}
	if err != nil {
		return fmt.Errorf("%w: %v", ErrConnLost, err)
	}
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case ack := <-sc.acks:
		if ack.Error != "" {
			return &RemoteError{Msg: ack.Error}
		}
		sc.log.Debug("acked", "msg", o.desc)
		return nil
	case <-t.C:
		return fmt.Errorf("%w: no ack for %s within %s", ErrConnLost, o.desc, sc.s.ackTimeout)
	case <-sc.done:
		return fmt.Errorf("%w: connection %d closed while waiting for ack of %s", ErrConnLost, sc.id, o.desc)
	}
}

// peerPID returns the connecting process's pid, for logs; 0 if unknown.
func peerPID(c *net.UnixConn) int32 {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0
	}
	var pid int32
	_ = rc.Control(func(fd uintptr) {
		if cred, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED); err == nil {
			pid = cred.Pid
		}
	})
	return pid
}

// cloneWorkload copies w's maps and slices so callers cannot alias the
// server's state.
func cloneWorkload(w workload.Workload) workload.Workload {
	if w.IPs != nil {
		w.IPs = append([]netip.Addr(nil), w.IPs...)
	}
	if w.Labels != nil {
		l := make(map[string]string, len(w.Labels))
		for k, v := range w.Labels {
			l[k] = v
		}
		w.Labels = l
	}
	return w
}
