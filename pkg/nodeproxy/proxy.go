// Package nodeproxy is the per-node proxy. For every enrolled pod handed to
// it by the agent it opens three listeners inside the pod's network
// namespace (15001 outbound, 15006 inbound plaintext, 15008 inbound HBONE),
// carries the pod's outbound connections to enrolled destinations in HBONE
// tunnels (pkg/hbone) with the pod's SPIFFE identity (pkg/identity), passes
// connections to non-enrolled destinations through, and terminates inbound
// tunnels towards the pod's app.
//
// Nothing leaves an enrolled pod in plaintext towards an enrolled
// destination: the app's bytes are only read after the tunnel is up, and a
// failed tunnel resets the app's connection; there is no fallback.
package nodeproxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/palisade-net/palisade/pkg/cluster"
	"github.com/palisade-net/palisade/pkg/flowlog"
	"github.com/palisade-net/palisade/pkg/hbone"
	"github.com/palisade-net/palisade/pkg/identity"
	"github.com/palisade-net/palisade/pkg/l7"
	"github.com/palisade-net/palisade/pkg/netns"
	"github.com/palisade-net/palisade/pkg/policy"
	"github.com/palisade-net/palisade/pkg/redirect"
	"github.com/palisade-net/palisade/pkg/workload"
)

// Ports inside each pod's network namespace.
const (
	OutboundPort     = 15001
	InboundPlainPort = 15006
	HBONEPort        = hbone.Port
)

// DefaultMark is set with SO_MARK on every socket the proxy creates, so the
// redirect rules never capture the proxy's own traffic.
const DefaultMark = 0x539

// Config configures a Proxy.
type Config struct {
	Node        string
	TrustDomain spiffeid.TrustDomain
	Identities  identity.Provider
	// Mark is set on every socket; default DefaultMark.
	Mark uint32
	// DialTimeout bounds tunnel and backend dials; default 5s.
	DialTimeout time.Duration
	Logger      *slog.Logger
	// Registry receives the proxy's metrics; nil creates a private one.
	Registry *prometheus.Registry
	// Records receives a flow record per connection and per L7 request;
	// nil keeps them for the admin API only (a pipeline without a file).
	Records *flowlog.Pipeline
	// DisableTelemetry turns off flow records and the per-connection and
	// per-request metrics at start (SetTelemetry switches them later), to
	// measure what they cost.
	DisableTelemetry bool
}

// Proxy is the node proxy.
type Proxy struct {
	cfg     Config
	log     *slog.Logger
	pool    *hbone.Pool
	bufs    *bufPool
	flows   *ring[Flow]
	records *flowlog.Pipeline
	metrics *metrics
	// telemetryOff stops flow records and traffic metrics.
	telemetryOff atomic.Bool
	// serverHandshake observes the HBONE servers' handshakes.
	serverHandshake func(time.Duration, error)
	registry        *prometheus.Registry

	index atomic.Pointer[workload.Index]
	// policy is the compiled policy set; live holds every connection
	// under policy so that a change can close what it withdraws.
	policy     atomic.Pointer[policy.Set]
	policyMu   sync.Mutex                   // serializes updatePolicy
	policyObjs []*unstructured.Unstructured // what policy was compiled from; policyMu
	// The FlowLog objects the selection was compiled from, whether a
	// snapshot brought them yet, and their problems; policyMu.
	flowLogObjs     []*unstructured.Unstructured
	flowLogsSeen    bool
	flowLogProblems []flowlog.Problem
	live            liveSet
	inspectors      map[l7.Protocol]l7.ServeFunc
	problems        atomic.Pointer[[]policy.Problem]
	rr              sync.Map // service key -> *atomic.Uint64

	mu       sync.Mutex
	pods     map[string]*podProxy // by UID
	draining bool

	haveCluster atomic.Bool
	// clusterReady is closed by the first UpdateCluster. Until then the
	// proxy knows neither which destinations are enrolled nor the
	// policies, so connections wait for it (and are refused after
	// DialTimeout) rather than being carried unencrypted or unjudged.
	clusterReady chan struct{}
	readyOnce    sync.Once
	haveSnapshot atomic.Bool
}

// New creates a proxy. It serves nothing until workloads are added.
func New(cfg Config) (*Proxy, error) {
	if cfg.Mark == 0 {
		cfg.Mark = DefaultMark
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	reg := cfg.Registry
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	if r, ok := cfg.Identities.(identity.Reporter); ok {
		if err := reg.Register(newIdentityCollector(r)); err != nil {
			return nil, fmt.Errorf("node proxy: identity metrics: %w", err)
		}
	}
	if cfg.Records == nil {
		cfg.Records = flowlog.NewPipeline(flowlog.NewHub(2000, flowlog.NewMetrics(reg)), nil)
	}
	p := &Proxy{
		cfg:      cfg,
		records:  cfg.Records,
		log:      cfg.Logger,
		bufs:     newBufPool(),
		flows:    newRing[Flow](1000),
		metrics:  newMetrics(reg),
		registry: reg,
		pods:     map[string]*podProxy{},

		clusterReady: make(chan struct{}),
	}
	pool, err := hbone.NewPool(hbone.PoolConfig{
		Identities:  cfg.Identities,
		Logger:      cfg.Logger,
		OnHandshake: p.metrics.handshake("client"),
	})
	if err != nil {
		return nil, fmt.Errorf("node proxy: %w", err)
	}
	p.pool = pool
	p.telemetryOff.Store(cfg.DisableTelemetry)
	p.serverHandshake = p.metrics.handshake("server")
	p.index.Store(workload.NewIndex(nil, nil, nil))
	p.inspectors = inspectors()
	empty, _ := policy.Compile(nil)
	p.policy.Store(empty)
	return p, nil
}

// Registry returns the registry holding the proxy's metrics.
func (p *Proxy) Registry() *prometheus.Registry { return p.registry }

// UpdateCluster replaces the proxy's view of workloads, services and
// policies, and closes live connections the new policies no longer allow.
func (p *Proxy) UpdateCluster(s *cluster.Snapshot) {
	pods := make([]workload.Pod, 0, len(s.Pods))
	for _, pod := range s.Pods {
		pods = append(pods, workload.Pod{Namespace: s.Namespace(pod.Namespace), Pod: pod})
	}
	p.index.Store(workload.NewIndex(pods, s.Services, s.EndpointSlices))
	p.updatePolicy(s.Other)
	p.updateFlowLogs(s.Other)
	p.haveCluster.Store(true)
	p.readyOnce.Do(func() { close(p.clusterReady) })
}

// waitCluster waits for the first cluster view, at most DialTimeout.
func (pp *podProxy) waitCluster() bool {
	select {
	case <-pp.p.clusterReady:
		return true
	default:
	}
	t := time.NewTimer(pp.p.cfg.DialTimeout)
	defer t.Stop()
	select {
	case <-pp.p.clusterReady:
		return true
	case <-t.C:
	case <-pp.ctx.Done():
	}
	return false
}

const noClusterView = "the node proxy has no cluster view yet (destination enrollment and policy unknown)"

// Ready reports whether the proxy has a cluster view, has received the
// agent's snapshot of the node's workloads, and its identity provider can
// serve (for SPIRE: the trust bundle and the proxy's own SVID arrived).
func (p *Proxy) Ready() bool { return p.NotReady() == "" }

// NotReady says what the proxy is waiting for, or "" once it is ready.
func (p *Proxy) NotReady() string {
	switch {
	case !p.haveCluster.Load():
		return "waiting for the cluster view"
	case !p.haveSnapshot.Load():
		return "waiting for the agent's snapshot"
	}
	if r, ok := p.cfg.Identities.(identity.Readiness); ok {
		if err := r.Ready(); err != nil {
			return "waiting for identities: " + err.Error()
		}
	}
	return ""
}

// IdentityStatus reports the identity provider's SVIDs (without keys),
// bundles and connection state, when the provider can describe itself.
func (p *Proxy) IdentityStatus() *identity.Status {
	if r, ok := p.cfg.Identities.(identity.Reporter); ok {
		st := r.Status()
		return &st
	}
	return nil
}

// Flows returns the most recent connection records, oldest first.
func (p *Proxy) Flows() []Flow { return p.flows.list() }

// WorkloadInfo describes a served workload for the admin endpoint.
type WorkloadInfo struct {
	workload.Workload
	Identity   string `json:"identity"`
	NetnsInode uint64 `json:"netnsInode"`
}

// Workloads lists the workloads served.
func (p *Proxy) Workloads() []WorkloadInfo {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []WorkloadInfo
	for _, uid := range slices.Sorted(maps.Keys(p.pods)) {
		pp := p.pods[uid]
		out = append(out, WorkloadInfo{Workload: *pp.wl.Load(), Identity: pp.id.String(), NetnsInode: pp.inode})
	}
	return out
}

// AddWorkload starts serving a pod (handoff.Handler). Adding a pod that is
// already served in the same namespace only updates its facts, keeping its
// listeners and connections.
func (p *Proxy) AddWorkload(ctx context.Context, w workload.Workload, f *os.File) error {
	h, err := netns.FromFile(f)
	if err != nil {
		return fmt.Errorf("workload %s: %w", w.Key(), err)
	}
	ino, err := h.Inode()
	if err != nil {
		h.Close()
		return fmt.Errorf("workload %s: %w", w.Key(), err)
	}
	id, err := w.Identity(p.cfg.TrustDomain)
	if err != nil {
		h.Close()
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.draining {
		h.Close()
		return errors.New("node proxy is shutting down")
	}
	if cur := p.pods[w.UID]; cur != nil {
		if cur.inode == ino && cur.id == id {
			cur.wl.Store(&w)
			h.Close()
			return nil
		}
		p.log.Info("workload changed namespace or identity; restarting its listeners", "pod", w.Key())
		cur.stop()
		delete(p.pods, w.UID)
	}
	pp, err := p.startPod(w, id, h, ino)
	if err != nil {
		h.Close()
		return fmt.Errorf("workload %s: %w", w.Key(), err)
	}
	p.pods[w.UID] = pp
	p.metrics.pods.Set(float64(len(p.pods)))
	p.log.Info("serving workload", "pod", w.Key(), "identity", id.String(), "mode", w.Mode, "ips", w.IPs)
	return nil
}

// DeleteWorkload stops serving a pod and closes its connections
// (handoff.Handler).
func (p *Proxy) DeleteWorkload(ctx context.Context, uid string) error {
	p.mu.Lock()
	pp := p.pods[uid]
	delete(p.pods, uid)
	p.metrics.pods.Set(float64(len(p.pods)))
	p.mu.Unlock()
	if pp != nil {
		pp.stop()
		p.releaseIdentity(pp.id)
		p.log.Info("stopped serving workload", "pod", pp.wl.Load().Key())
	}
	return nil
}

// SnapshotDone drops every pod the agent no longer knows (handoff.Handler).
func (p *Proxy) SnapshotDone(ctx context.Context, uids map[string]bool) error {
	p.mu.Lock()
	var stale []string
	for uid := range p.pods {
		if !uids[uid] {
			stale = append(stale, uid)
		}
	}
	p.mu.Unlock()
	for _, uid := range stale {
		p.DeleteWorkload(ctx, uid)
	}
	p.haveSnapshot.Store(true)
	return nil
}

func (p *Proxy) releaseIdentity(id spiffeid.ID) {
	p.mu.Lock()
	for _, pp := range p.pods {
		if pp.id == id {
			p.mu.Unlock()
			return
		}
	}
	p.mu.Unlock()
	p.cfg.Identities.Release(id)
}

// Shutdown drains: listeners stop accepting, tunnels get GOAWAY, and
// whatever is still open at ctx's deadline is closed.
func (p *Proxy) Shutdown(ctx context.Context) error {
	p.mu.Lock()
	p.draining = true
	pods := slices.Collect(maps.Values(p.pods))
	p.mu.Unlock()
	for _, pp := range pods {
		pp.closeListeners()
	}
	var wg sync.WaitGroup
	for _, pp := range pods {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pp.drain(ctx)
		}()
	}
	wg.Wait()
	p.pool.Close()
	return ctx.Err()
}

// pick returns the next ready endpoint of a service port, round robin.
func (p *Proxy) pick(sp *workload.ServicePort) (workload.Endpoint, bool) {
	if len(sp.Endpoints) == 0 {
		return workload.Endpoint{}, false
	}
	v, _ := p.rr.LoadOrStore(sp.Key, new(atomic.Uint64))
	n := v.(*atomic.Uint64).Add(1) - 1
	return sp.Endpoints[n%uint64(len(sp.Endpoints))], true
}

// podProxy serves one pod.
type podProxy struct {
	p     *Proxy
	wl    atomic.Pointer[workload.Workload]
	id    spiffeid.ID
	ns    *netns.Handle
	inode uint64
	ctx   context.Context
	stopF context.CancelFunc

	listeners []net.Listener
	server    *hbone.Server
	conns     connSet
	wg        sync.WaitGroup
}

func (p *Proxy) startPod(w workload.Workload, id spiffeid.ID, h *netns.Handle, ino uint64) (*podProxy, error) {
	ctx, cancel := context.WithCancel(context.Background())
	pp := &podProxy{p: p, id: id, ns: h, inode: ino, ctx: ctx, stopF: cancel}
	pp.wl.Store(&w)
	opts := netns.SocketOptions{Mark: p.cfg.Mark, ReusePort: true}
	var lns [3]net.Listener
	for i, port := range []int{OutboundPort, InboundPlainPort, HBONEPort} {
		ln, err := netns.Listen(ctx, h, fmt.Sprintf("0.0.0.0:%d", port), opts)
		if err != nil {
			for _, l := range lns[:i] {
				l.Close()
			}
			cancel()
			return nil, err
		}
		lns[i] = ln
	}
	pp.listeners = lns[:]
	srv, err := hbone.NewServer(hbone.ServerConfig{
		Identity:    id,
		Identities:  p.cfg.Identities,
		TrustDomain: p.cfg.TrustDomain,
		Logger:      p.log.With("pod", w.Key(), "listener", "hbone"),
		Connect:     pp.connectInbound,
		OnHandshake: p.serverHandshake,
	})
	if err != nil {
		for _, l := range lns {
			l.Close()
		}
		cancel()
		return nil, err
	}
	pp.server = srv
	pp.serve(lns[0], pp.handleOutbound)
	pp.serve(lns[1], pp.handleInboundPlain)
	pp.wg.Add(1)
	go func() {
		defer pp.wg.Done()
		if err := pp.server.Serve(lns[2]); err != nil && !errors.Is(err, net.ErrClosed) && ctx.Err() == nil {
			p.log.Warn("hbone listener stopped", "pod", w.Key(), "error", err)
		}
	}()
	return pp, nil
}

func (pp *podProxy) workload() *workload.Workload { return pp.wl.Load() }

func (pp *podProxy) serve(ln net.Listener, handle func(net.Conn)) {
	pp.wg.Add(1)
	go func() {
		defer pp.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					continue
				}
				return
			}
			pp.wg.Add(1)
			go func() {
				defer pp.wg.Done()
				if !pp.conns.add(c) {
					reset(c)
					return
				}
				defer pp.conns.remove(c)
				handle(c)
			}()
		}
	}()
}

func (pp *podProxy) closeListeners() {
	for _, ln := range pp.listeners {
		ln.Close()
	}
}

// drain waits for connections to finish until ctx ends, then closes them.
func (pp *podProxy) drain(ctx context.Context) {
	done := make(chan struct{})
	go func() {
		pp.server.Shutdown(ctx)
		pp.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		pp.conns.closeAll()
		pp.stopF()
		<-done
	}
	pp.ns.Close()
}

// stop closes everything of the pod at once.
func (pp *podProxy) stop() {
	pp.closeListeners()
	pp.stopF()
	pp.conns.closeAll()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	pp.server.Shutdown(ctx)
	cancel()
	pp.wg.Wait()
	pp.ns.Close()
}

func (pp *podProxy) dialer() *netns.Dialer {
	return &netns.Dialer{Netns: pp.ns, Options: netns.SocketOptions{Mark: pp.p.cfg.Mark}}
}

// handleOutbound serves a connection the pod's app opened: resolve the
// destination, then tunnel or pass through.
func (pp *podProxy) handleOutbound(c net.Conn) {
	p := pp.p
	src := pp.workload()
	f := Flow{Start: time.Now(), Direction: dirOutbound, Pod: src.Key(), Source: c.RemoteAddr().String(), SrcIdentity: pp.id.String()}
	f.src = side(src, f.Source, f.SrcIdentity)
	orig, err := redirect.OriginalDst(c.(*net.TCPConn))
	if err != nil {
		pp.refuse(c, &f, "no-original-destination", fmt.Sprintf("reading the original destination: %v", err))
		return
	}
	f.Destination = orig.String()
	f.dst.Address = f.Destination
	if !pp.waitCluster() {
		pp.refuse(c, &f, "no-cluster-view", noClusterView)
		return
	}
	ix := p.index.Load()
	target := orig
	dst := ix.Workload(orig.Addr())
	if sp := ix.Service(orig); sp != nil {
		f.Service = sp.Namespace + "/" + sp.Name
		ep, ok := p.pick(sp)
		if !ok {
			pp.refuse(c, &f, "no-endpoints", fmt.Sprintf("service %s has no ready endpoints", f.Service))
			return
		}
		target, dst = ep.Addr, ep.Workload
		f.Destination = target.String()
	}
	f.dst = side(dst, f.Destination, "")
	if isOwnPort(target.Port()) && slices.Contains(src.IPs, target.Addr()) {
		pp.refuse(c, &f, "loop", "connection to the proxy's own port")
		return
	}
	a := pp.authorizeEgress(src, remoteIP(c), dst, target)
	if !pp.admit(c, &f, a) {
		return
	}
	ctx, cancel := context.WithTimeout(pp.ctx, p.cfg.DialTimeout)
	var up net.Conn
	if dst != nil && dst.Enrolled {
		dstID, idErr := dst.Identity(p.cfg.TrustDomain)
		if idErr != nil {
			cancel()
			pp.refuse(c, &f, "bad-identity", idErr.Error())
			return
		}
		f.Transport, f.DstIdentity = "hbone", dstID.String()
		f.dst.Identity = f.DstIdentity
		key := hbone.Key{
			Src:     pp.id,
			Dst:     dstID,
			DstAddr: netip.AddrPortFrom(target.Addr(), HBONEPort),
			SrcIP:   remoteIP(c),
		}
		hdr := http.Header{"Forwarded": {fmt.Sprintf("for=%q", c.RemoteAddr().String())}}
		d := pp.dialer()
		up, err = p.pool.Dial(ctx, key, target.String(), hdr, func(ctx context.Context) (net.Conn, error) {
			return d.DialContext(ctx, "tcp", key.DstAddr.String())
		})
		if err == nil {
			f.PeerIdentity = dstID.String() // the pool verified the server's SAN equals dstID
		}
	} else {
		f.Transport = "plaintext"
		up, err = pp.dialer().DialContext(ctx, "tcp", target.String())
	}
	cancel()
	if err != nil {
		reason := "dial-failed"
		if _, ok := errors.AsType[*identity.NoSVIDError](err); ok {
			reason = "no-identity"
		} else if se, ok := errors.AsType[*hbone.StatusError](err); ok && se.Code == http.StatusUnauthorized {
			// The destination's proxy refused the tunnel: its ingress
			// policy denied the connection.
			reason = "denied-by-destination"
		}
		pp.refuse(c, &f, reason, err.Error())
		return
	}
	pp.relay(c, up, &f, a)
}

func isOwnPort(port uint16) bool {
	return port == OutboundPort || port == InboundPlainPort
}

// connectInbound is the HBONE server's callback for an authenticated
// CONNECT: check the authority, authorize, and dial the app.
func (pp *podProxy) connectInbound(ctx context.Context, req *hbone.Request) (net.Conn, int, error) {
	p := pp.p
	w := pp.workload()
	f := Flow{Start: time.Now(), Direction: dirInboundHBONE, Pod: w.Key(), Source: forwardedFor(req.Forwarded), Destination: req.Authority.String(),
		SrcIdentity: req.Peer.String(), PeerIdentity: req.Peer.String(), DstIdentity: pp.id.String(), Transport: "hbone"}
	f.src = flowlog.Endpoint{Address: f.Source, Identity: f.SrcIdentity}
	f.dst = side(w, f.Destination, f.DstIdentity)
	if !slices.Contains(w.IPs, req.Authority.Addr().Unmap()) {
		f.Verdict, f.Reason = "denied", fmt.Sprintf("authority %s is not this workload", req.Authority)
		pp.record(&f, "bad-authority")
		return nil, http.StatusBadRequest, errors.New(f.Reason)
	}
	if !pp.waitCluster() {
		f.Verdict, f.Reason = "failed", noClusterView
		pp.record(&f, "no-cluster-view")
		return nil, http.StatusServiceUnavailable, errors.New(f.Reason)
	}
	a := &authorized{p: p, direction: ingress, port: req.Authority.Port(),
		src: p.peerEndpoint(req.Peer, req.Forwarded, req.RemoteAddr),
		dst: p.localEndpoint(w, pp.id, req.Authority.Addr().Unmap())}
	f.src = p.peerSide(a.src, f.Source)
	if d := pp.admission(a, &f); !d.Allow {
		f.Verdict, f.Reason = "denied", d.Reason
		pp.record(&f, "policy-denied")
		return nil, http.StatusUnauthorized, fmt.Errorf("authorization denied: %s", d.Reason)
	}
	dctx, cancel := context.WithTimeout(ctx, p.cfg.DialTimeout)
	defer cancel()
	up, err := pp.dialer().DialContext(dctx, "tcp", req.Authority.String())
	if err != nil {
		f.Verdict, f.Reason = "failed", "backend unreachable: "+err.Error()
		pp.record(&f, "backend-unreachable")
		return nil, http.StatusServiceUnavailable, errors.New(f.Reason)
	}
	if a.proto == l7.None {
		// Writes to the backend carry what the peer sent towards it.
		backend := &countedConn{Conn: up, tw: hbone.NewTryWriter(up), done: func(toBackend, fromBackend int64) {
			p.live.remove(a)
			p.finish(&f, toBackend, fromBackend, a)
		}}
		a.end = func(reason string) {
			a.revoke(reason)
			backend.Close()
		}
		// Counted open before register: a refusal there closes backend,
		// whose done records the end.
		p.opened(&f)
		if !pp.register(a) {
			backend.Close()
			return nil, http.StatusUnauthorized, fmt.Errorf("authorization denied: %s", *a.revoked.Load())
		}
		return backend, http.StatusOK, nil
	}
	// The HBONE server hands the tunnel stream itself to the backend
	// (hbone.StreamTaker), which runs the inspector between the stream and
	// the app. Revocation resets the tunnel stream, so the client sees its
	// connection reset rather than ended.
	backend := &inspectedBackend{countedConn: &countedConn{Conn: up}}
	backend.take = func(s *hbone.Stream) {
		backend.stream.Store(s)
		if a.revoked.Load() != nil {
			s.Reset("connection revoked")
		}
		sent, recv := pp.inspectAndClose(s, backend.countedConn, a, &f)
		p.live.remove(a)
		p.finish(&f, sent, recv, a)
	}
	backend.untaken = func() {
		// Closed before the HBONE server handed over the stream (the
		// client reset it first, or the policy changed): no inspector
		// ran to finish the flow.
		p.live.remove(a)
		p.finish(&f, 0, 0, a)
	}
	a.end = func(reason string) {
		a.revoke(reason)
		if s := backend.stream.Load(); s != nil {
			s.Reset(reason)
		}
		backend.Close()
	}
	p.opened(&f)
	if !pp.register(a) {
		backend.Close()
		return nil, http.StatusUnauthorized, fmt.Errorf("authorization denied: %s", *a.revoked.Load())
	}
	return backend, http.StatusOK, nil
}

// inspectedBackend is the app connection of an inbound tunnel whose port
// has L7 rules. The HBONE server hands it the tunnel stream
// (hbone.StreamTaker) and it runs the connection's inspector between the
// stream and the app, in the stream's goroutine, which the HBONE server
// waits for when it shuts down.
// Exactly one of take and untaken runs: take when the stream is handed
// over, untaken when the backend is closed before that.
type inspectedBackend struct {
	*countedConn
	take    func(s *hbone.Stream)
	untaken func()
	state   atomic.Int32                 // backendNew, backendTaken or backendClosedUntaken
	stream  atomic.Pointer[hbone.Stream] // once taken
}

// inspectedBackend states.
const (
	backendNew int32 = iota
	backendTaken
	backendClosedUntaken
)

// TakeStream implements hbone.StreamTaker. A backend already closed (by
// a revocation, say) does not take the stream but resets it: the client
// must not read a clean end of a connection that never reached the app.
func (b *inspectedBackend) TakeStream(s *hbone.Stream) {
	if b.state.CompareAndSwap(backendNew, backendTaken) {
		b.take(s)
		return
	}
	s.Reset("backend closed before the stream was taken")
}

// Close closes the app connection; before the stream was taken it also
// finishes the flow (untaken).
func (b *inspectedBackend) Close() error {
	err := b.countedConn.Close()
	if b.state.CompareAndSwap(backendNew, backendClosedUntaken) {
		b.untaken()
	}
	return err
}

// register adds a to the live connections and re-checks it against the
// policy now current: a policy that arrived between the decision and the
// registration has not seen the connection, so the check here closes the
// gap (updatePolicy stores the set before it lists the live connections).
// It reports false, with a revoked, when the connection must not proceed.
func (pp *podProxy) register(a *authorized) bool {
	pp.p.live.add(a)
	if ok, reason := a.stillAllowed(pp.p.policy.Load()); !ok {
		pp.p.live.remove(a)
		a.revoke(reason)
		return false
	}
	return true
}

// handleInboundPlain serves plaintext arriving at the pod: allowed in
// permissive mode from non-enrolled sources, refused otherwise.
func (pp *podProxy) handleInboundPlain(c net.Conn) {
	p := pp.p
	w := pp.workload()
	f := Flow{Start: time.Now(), Direction: dirInboundPlain, Pod: w.Key(), Source: c.RemoteAddr().String(), Transport: "plaintext"}
	f.src.Address = f.Source
	orig, err := redirect.OriginalDst(c.(*net.TCPConn))
	if err != nil {
		pp.refuse(c, &f, "no-original-destination", fmt.Sprintf("reading the original destination: %v", err))
		return
	}
	f.Destination = orig.String()
	f.dst = side(w, f.Destination, pp.id.String())
	if !pp.waitCluster() {
		pp.refuse(c, &f, "no-cluster-view", noClusterView)
		return
	}
	srcIP := remoteIP(c)
	src := p.index.Load().Workload(srcIP)
	f.src = side(src, f.Source, "")
	if w.Mode == workload.Strict {
		pp.refuse(c, &f, "strict-mode", "plaintext refused: workload is in strict mode")
		return
	}
	if src != nil && src.Enrolled {
		pp.refuse(c, &f, "plaintext-from-enrolled", fmt.Sprintf("plaintext from enrolled workload %s refused (it should arrive over HBONE)", src.Key()))
		return
	}
	a := &authorized{p: p, direction: ingress, port: orig.Port(),
		src: p.addrEndpoint(srcIP),
		dst: p.localEndpoint(w, pp.id, orig.Addr().Unmap())}
	if !pp.admit(c, &f, a) {
		return
	}
	ctx, cancel := context.WithTimeout(pp.ctx, p.cfg.DialTimeout)
	up, err := pp.dialer().DialContext(ctx, "tcp", orig.String())
	cancel()
	if err != nil {
		reason := "dial-failed"
		if _, ok := errors.AsType[*identity.NoSVIDError](err); ok {
			reason = "no-identity"
		}
		pp.refuse(c, &f, reason, err.Error())
		return
	}
	pp.relay(c, up, &f, a)
}

// authorizeEgress prepares the egress check of an outbound connection from
// src (at srcIP) to target (dst is the destination's workload, nil when
// unknown).
func (pp *podProxy) authorizeEgress(src *workload.Workload, srcIP netip.Addr, dst *workload.Workload, target netip.AddrPort) *authorized {
	p := pp.p
	a := &authorized{p: p, direction: egress, port: target.Port(), src: p.localEndpoint(src, pp.id, srcIP)}
	if dst != nil && dst.Enrolled {
		id, _ := dst.Identity(p.cfg.TrustDomain)
		a.dst = p.localEndpoint(dst, id, target.Addr().Unmap())
	} else {
		a.dst = p.addrEndpoint(target.Addr())
	}
	return a
}

// admit decides a connection's L4 allowance; a refusal resets c and is
// recorded. On success the connection's protocol is fixed.
func (pp *podProxy) admit(c net.Conn, f *Flow, a *authorized) bool {
	if d := pp.admission(a, f); !d.Allow {
		pp.refuse(c, f, "policy-denied", d.Reason)
		return false
	}
	return true
}

// admission decides a new connection under the current policy: a port
// whose rules need a parser this proxy lacks is refused (fail closed). f
// records the deciding policy; an allowed connection's protocol is fixed.
func (pp *podProxy) admission(a *authorized, f *Flow) policy.Decision {
	d := a.current()
	if d.Allow && d.Protocol != l7.None && pp.p.inspectors[d.Protocol] == nil {
		d.Allow, d.Reason = false, fmt.Sprintf("port %d needs a %s parser this proxy does not have", a.port, d.Protocol)
	}
	f.Policy, f.Rule = d.Policy, d.Rule
	if d.Allow {
		a.proto, f.Protocol = d.Protocol, string(d.Protocol)
	}
	return d
}

// relay pipes an accepted connection and its upstream, through the
// inspector when the connection's port has L7 rules, and records the flow.
func (pp *podProxy) relay(c, up net.Conn, f *Flow, a *authorized) {
	p := pp.p
	if !pp.conns.add(up) {
		up.Close()
		reset(c)
		return
	}
	defer pp.conns.remove(up)
	a.end = func(reason string) {
		a.revoke(reason)
		reset(c)
		up.Close()
	}
	p.opened(f)
	if !pp.register(a) {
		reset(c)
		up.Close()
		p.finish(f, 0, 0, a)
		return
	}
	defer p.live.remove(a)
	p.log.Debug("connection", "direction", f.Direction, "pod", f.Pod, "src", f.Source, "dst", f.Destination,
		"transport", f.Transport, "peer_identity", f.PeerIdentity, "protocol", f.Protocol)
	if a.proto == l7.None {
		sent, recv, _ := p.bufs.pipe(c, up)
		p.finish(f, sent, recv, a)
		return
	}
	sent, recv := pp.inspectAndClose(c, &countedConn{Conn: up}, a, f)
	p.finish(f, sent, recv, a)
}

// finish records an allowed connection that has ended: sent bytes went
// towards the destination, recv came back from it. A connection closed by
// a policy change or ended by its inspector carries that reason.
func (p *Proxy) finish(f *Flow, sent, recv int64, a *authorized) {
	f.Verdict, f.BytesSent, f.BytesRecv = "allowed", sent, recv
	if a != nil {
		if r := a.revoked.Load(); r != nil {
			f.Verdict, f.Reason = "revoked", *r
		} else if r := a.failed.Load(); r != nil {
			f.Verdict, f.Reason = "failed", *r
		}
	}
	f.elapsed = time.Since(f.Start)
	f.Duration = f.elapsed.String()
	p.emitConn(f, "")
}

// refuse resets c and records why.
func (pp *podProxy) refuse(c net.Conn, f *Flow, reason, detail string) {
	reset(c)
	f.Verdict, f.Reason = "denied", detail
	if reason == "dial-failed" || reason == "no-endpoints" || reason == "no-identity" {
		f.Verdict = "failed"
	}
	pp.record(f, reason)
}

func (pp *podProxy) record(f *Flow, reason string) {
	p := pp.p
	f.elapsed = time.Since(f.Start)
	f.Duration = f.elapsed.String()
	p.emitConn(f, reason)
	p.log.Warn("connection refused", "direction", f.Direction, "pod", f.Pod, "src", f.Source, "dst", f.Destination,
		"source_identity", f.SrcIdentity, "reason", f.Reason)
}

// reset closes c with an RST, so the app sees a refusal rather than a clean
// end of stream.
func reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close()
}

func remoteIP(c net.Conn) netip.Addr {
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		ip, _ := netip.AddrFromSlice(a.IP)
		return ip.Unmap()
	}
	return netip.Addr{}
}

// connSet tracks open connections so that they can be closed on removal.
type connSet struct {
	mu     sync.Mutex
	m      map[net.Conn]struct{}
	closed bool
}

func (s *connSet) add(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	if s.m == nil {
		s.m = map[net.Conn]struct{}{}
	}
	s.m[c] = struct{}{}
	return true
}

func (s *connSet) remove(c net.Conn) {
	s.mu.Lock()
	delete(s.m, c)
	s.mu.Unlock()
}

func (s *connSet) closeAll() {
	s.mu.Lock()
	s.closed = true
	conns := slices.Collect(maps.Keys(s.m))
	s.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
}

// countedConn counts bytes through a backend connection and reports them
// when closed.
type countedConn struct {
	net.Conn
	sent, recv atomic.Int64
	once       sync.Once
	done       func(sent, recv int64)
	// tw, when set, lets the HBONE server's read loop write into the
	// backend socket directly instead of handing each frame to the
	// stream's goroutine (hbone.TryWriter).
	tw hbone.TryWriter
}

// TryWrite writes what the backend takes without blocking (hbone.TryWriter).
func (c *countedConn) TryWrite(p []byte) (int, error) {
	if c.tw == nil {
		return 0, nil
	}
	n, err := c.tw.TryWrite(p)
	c.sent.Add(int64(n))
	return n, err
}

func (c *countedConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.recv.Add(int64(n))
	return n, err
}

func (c *countedConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.sent.Add(int64(n))
	return n, err
}

// CloseWrite half-closes the backend connection.
func (c *countedConn) CloseWrite() error {
	if cw, ok := c.Conn.(closeWriter); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}

func (c *countedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		if c.done != nil {
			c.done(c.sent.Load(), c.recv.Load())
		}
	})
	return err
}

// forwardedFor extracts the client address from a `forwarded: for="ip:port"`
// header value; anything else is returned as is.
func forwardedFor(v string) string {
	for _, part := range strings.Split(v, ";") {
		part = strings.TrimSpace(part)
		if len(part) > 4 && strings.EqualFold(part[:4], "for=") {
			return strings.Trim(part[4:], `"`)
		}
	}
	return v
}
