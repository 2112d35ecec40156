package identity

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	delegatedv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/agent/delegatedidentity/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// Re-subscription back-off after a broken stream to the SPIRE agent. The
// agent is local, so the cap is short: a restarted agent is picked up within
// seconds.
const (
	minResubscribeBackoff = 200 * time.Millisecond
	maxResubscribeBackoff = 5 * time.Second
	// stableStream is how long a stream must have lived for the back-off to
	// start again from the minimum.
	stableStream = 30 * time.Second
)

// SPIREConfig configures a SPIREProvider.
type SPIREConfig struct {
	// AdminSocket is the SPIRE agent's admin socket (Delegated Identity
	// API). The agent must list the node proxy's own SPIFFE ID in
	// authorized_delegates.
	AdminSocket string
	// WorkloadSocket is the SPIRE agent's Workload API socket, from which
	// the node proxy fetches its own SVID. Empty skips it.
	WorkloadSocket string
	// TrustDomain is the local trust domain: workload identities must be
	// spiffe://<TrustDomain>/ns/<namespace>/sa/<serviceaccount>.
	TrustDomain spiffeid.TrustDomain
	// Logger receives rotation, expiry, bundle and connection events; nil
	// discards them.
	Logger *slog.Logger
}

// SPIREProvider is a Provider backed by a SPIRE agent on the same node.
//
// For each identity in use it holds one subscription on the agent's
// Delegated Identity API with the selectors k8s:ns:<ns> and k8s:sa:<sa>,
// started by the first SVID call and ended by Release. SVIDs pushed by the
// agent (first issue and every rotation) replace the current one at once, so
// the next handshake uses them while established tunnels carry on. A second
// subscription follows the trust bundles, federated ones included.
//
// When the agent goes away (restart, crash) or its server is unreachable,
// the last SVIDs and bundles keep serving until they expire, and the
// subscriptions are re-established with back-off. An identity that SPIRE has
// no registration entry for gets a NoSVIDError naming it and its selectors;
// once the entry appears the agent pushes the SVID and waiting or later calls
// succeed without restarts.
type SPIREProvider struct {
	cfg    SPIREConfig
	log    *slog.Logger
	conn   *grpc.ClientConn
	client delegatedv1.DelegatedIdentityClient
	now    func() time.Time

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu          sync.Mutex
	closed      bool
	subs        map[spiffeid.ID]*subscription
	bundles     map[spiffeid.TrustDomain]*x509bundle.Bundle
	bundleMeta  map[spiffeid.TrustDomain]*bundleMeta
	bundleUp    bool  // the bundle stream is established
	bundleErr   error // last bundle stream problem
	self        *x509svid.SVID
	selfUpdates uint64
	selfErr     error
}

type bundleMeta struct {
	updates uint64
	at      time.Time
}

type subscription struct {
	id        spiffeid.ID
	selectors []*types.Selector
	ctx       context.Context
	cancel    context.CancelFunc

	// Guarded by SPIREProvider.mu.
	svid    *x509svid.SVID
	updates uint64
	reason  string // why there is no SVID, or the last stream problem
	expiry  *time.Timer
	changed chan struct{} // closed and replaced on every change
}

var (
	_ Provider  = (*SPIREProvider)(nil)
	_ Reporter  = (*SPIREProvider)(nil)
	_ Readiness = (*SPIREProvider)(nil)
)

// NoSVIDError says why no SVID is available for an identity.
type NoSVIDError struct {
	ID     spiffeid.ID
	Reason string
}

func (e *NoSVIDError) Error() string {
	return fmt.Sprintf("identity: no SVID for %s: %s", e.ID, e.Reason)
}

// NewSPIREProvider connects to the SPIRE agent's admin socket (lazily: a
// missing agent is retried in the background) and starts following the trust
// bundles and, when configured, the node proxy's own SVID. Call Close to stop.
func NewSPIREProvider(cfg SPIREConfig) (*SPIREProvider, error) {
	if cfg.AdminSocket == "" {
		return nil, errors.New("spire provider: no admin socket configured")
	}
	if cfg.TrustDomain.IsZero() {
		return nil, errors.New("spire provider: no trust domain configured")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("provider", ModeSPIRE)
	// The admin API is a local unix socket; the agent authenticates us by
	// our process (workload attestation of the peer), not by TLS.
	conn, err := grpc.NewClient("unix://"+cfg.AdminSocket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("spire provider: admin socket %s: %w", cfg.AdminSocket, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &SPIREProvider{
		cfg:        cfg,
		log:        log,
		conn:       conn,
		client:     delegatedv1.NewDelegatedIdentityClient(conn),
		now:        time.Now,
		ctx:        ctx,
		cancel:     cancel,
		subs:       map[spiffeid.ID]*subscription{},
		bundles:    map[spiffeid.TrustDomain]*x509bundle.Bundle{},
		bundleMeta: map[spiffeid.TrustDomain]*bundleMeta{},
		bundleErr:  errors.New("waiting for the first trust bundle from the SPIRE agent"),
	}
	p.wg.Add(1)
	go p.followBundles()
	if cfg.WorkloadSocket != "" {
		p.selfErr = errors.New("waiting for the node proxy's own SVID from the Workload API")
		p.wg.Add(1)
		go p.followSelf()
	}
	return p, nil
}

// WorkloadSelectors returns the SPIRE selectors that identify the workload
// spiffe://<td>/ns/<ns>/sa/<sa>: k8s:ns:<ns> and k8s:sa:<sa>.
func WorkloadSelectors(id spiffeid.ID) ([]*types.Selector, error) {
	parts := strings.Split(strings.TrimPrefix(id.Path(), "/"), "/")
	if len(parts) != 4 || parts[0] != "ns" || parts[2] != "sa" || parts[1] == "" || parts[3] == "" {
		return nil, fmt.Errorf("identity: %s is not of the form spiffe://<td>/ns/<namespace>/sa/<serviceaccount>", id)
	}
	return []*types.Selector{
		{Type: "k8s", Value: "ns:" + parts[1]},
		{Type: "k8s", Value: "sa:" + parts[3]},
	}, nil
}

func selectorString(sel []*types.Selector) string {
	s := make([]string, len(sel))
	for i, x := range sel {
		s[i] = x.Type + ":" + x.Value
	}
	return strings.Join(s, ", ")
}

// SVID returns the current SVID of id, subscribing on first use and waiting
// for the SPIRE agent to deliver it until ctx ends.
func (p *SPIREProvider) SVID(ctx context.Context, id spiffeid.ID) (*x509svid.SVID, error) {
	if !id.MemberOf(p.cfg.TrustDomain) {
		return nil, fmt.Errorf("spire provider: %s is not in trust domain %s", id, p.cfg.TrustDomain)
	}
	sel, err := WorkloadSelectors(id)
	if err != nil {
		return nil, err
	}
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return nil, ErrClosed
		}
		s := p.subs[id]
		if s == nil {
			s = p.subscribeLocked(id, sel)
		}
		if s.svid != nil && p.now().Before(s.svid.Certificates[0].NotAfter) {
			svid := s.svid
			p.mu.Unlock()
			return svid, nil
		}
		changed := s.changed
		p.mu.Unlock()

		select {
		case <-changed:
		case <-ctx.Done():
			p.mu.Lock()
			reason := s.reason
			if s.svid != nil {
				expired := "the cached SVID expired at " + s.svid.Certificates[0].NotAfter.UTC().Format(time.RFC3339) +
					" and SPIRE has not delivered a new one"
				if reason != "" {
					expired += "; " + reason
				}
				reason = expired
			}
			p.mu.Unlock()
			if reason == "" {
				reason = "waiting for the SPIRE agent"
			}
			return nil, &NoSVIDError{ID: id, Reason: fmt.Sprintf("%s (gave up: %v)", reason, ctx.Err())}
		}
	}
}

func (p *SPIREProvider) subscribeLocked(id spiffeid.ID, sel []*types.Selector) *subscription {
	ctx, cancel := context.WithCancel(p.ctx)
	s := &subscription{
		id: id, selectors: sel, ctx: ctx, cancel: cancel,
		reason:  "waiting for the SPIRE agent's first update (selectors " + selectorString(sel) + ")",
		changed: make(chan struct{}),
	}
	p.subs[id] = s
	p.log.Info("subscribing to SVIDs", "id", id.String(), "selectors", selectorString(sel))
	p.wg.Add(1)
	go p.follow(s)
	return s
}

// follow keeps one identity's subscription up until it is released.
func (p *SPIREProvider) follow(s *subscription) {
	defer p.wg.Done()
	p.keepStreaming(s.ctx, func() error { return p.streamSVIDs(s) }, func(err error, retryIn time.Duration) {
		p.mu.Lock()
		attrs := []any{"id", s.id.String(), "error", err, "retry_in", retryIn}
		if s.svid != nil {
			attrs = append(attrs, "keeping_until", s.svid.Certificates[0].NotAfter)
			s.reason = "SPIRE agent unreachable: " + err.Error()
		} else if !strings.HasPrefix(s.reason, "no SPIRE registration entry") {
			s.reason = "SPIRE agent unreachable: " + err.Error()
		}
		s.notifyLocked()
		p.mu.Unlock()
		p.log.Warn("SVID subscription broken; resubscribing", attrs...)
	})
}

// keepStreaming runs stream again and again until ctx ends: after each
// break, broken is told the error and the delay, which doubles from
// minResubscribeBackoff to maxResubscribeBackoff and starts again after a
// stream that lived longer than stableStream.
func (p *SPIREProvider) keepStreaming(ctx context.Context, stream func() error, broken func(err error, retryIn time.Duration)) {
	backoff := minResubscribeBackoff
	for {
		started := p.now()
		err := stream()
		if ctx.Err() != nil {
			return
		}
		if p.now().Sub(started) > stableStream {
			backoff = minResubscribeBackoff
		}
		broken(err, backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, maxResubscribeBackoff)
	}
}

// streamSVIDs runs one subscription stream until it breaks.
func (p *SPIREProvider) streamSVIDs(s *subscription) error {
	stream, err := p.client.SubscribeToX509SVIDs(s.ctx, &delegatedv1.SubscribeToX509SVIDsRequest{Selectors: s.selectors})
	if err != nil {
		return describeRPC(err)
	}
	first := true
	for {
		resp, err := stream.Recv()
		if err != nil {
			return describeRPC(err)
		}
		p.applySVIDs(s, resp, first)
		first = false
	}
}

// applySVIDs takes one update of a subscription. first says it is the first
// update of a new stream.
func (p *SPIREProvider) applySVIDs(s *subscription, resp *delegatedv1.SubscribeToX509SVIDsResponse, first bool) {
	var (
		found  *x509svid.SVID
		others []string
		bad    error
	)
	for _, w := range resp.GetX509Svids() {
		xs := w.GetX509Svid()
		id, err := spiffeid.FromString("spiffe://" + xs.GetId().GetTrustDomain() + xs.GetId().GetPath())
		if err != nil {
			bad = fmt.Errorf("SPIRE sent an unparsable SPIFFE ID %v: %w", xs.GetId(), err)
			continue
		}
		if id != s.id {
			others = append(others, id.String())
			continue
		}
		svid, err := x509svid.ParseRaw(bytes.Join(xs.GetCertChain(), nil), w.GetX509SvidKey())
		if err == nil {
			err = checkSVID(svid, s.id)
		}
		if err != nil {
			bad = fmt.Errorf("SPIRE sent an unusable SVID for %s: %w", s.id, err)
			continue
		}
		found = svid
	}

	p.mu.Lock()
	defer p.mu.Unlock()
	if s.ctx.Err() != nil {
		return
	}
	defer s.notifyLocked()
	if found == nil {
		reason := "no SPIRE registration entry for " + s.id.String() + " matches selectors " + selectorString(s.selectors) + " on this node"
		if len(others) > 0 {
			reason += " (entries for those selectors name " + strings.Join(others, ", ") + ")"
		}
		if bad != nil {
			reason = bad.Error()
		}
		switch {
		case s.svid == nil:
			if s.reason != reason {
				p.log.Warn("no SVID available", "id", s.id.String(), "reason", reason)
			}
			s.reason = reason
		case first:
			// A new stream's first update may precede the agent's resync
			// after a restart: keep the cached SVID until it expires.
			p.log.Warn("SPIRE's first update after resubscribing has no SVID; keeping the cached one",
				"id", s.id.String(), "reason", reason, "keeping_until", s.svid.Certificates[0].NotAfter)
			s.reason = reason
		default:
			p.log.Warn("SVID withdrawn by SPIRE", "id", s.id.String(), "reason", reason)
			s.setLocked(nil)
			s.reason = reason
		}
		return
	}
	if s.svid != nil && s.svid.Certificates[0].Equal(found.Certificates[0]) {
		s.reason = ""
		return // the same SVID again (for example after resubscribing)
	}
	prev := s.svid
	s.setLocked(found)
	s.updates++
	s.reason = ""
	leaf := found.Certificates[0]
	attrs := []any{"id", s.id.String(), "serial", fmt.Sprintf("%x", leaf.SerialNumber), "not_after", leaf.NotAfter}
	if prev == nil {
		p.log.Info("SVID received", attrs...)
	} else {
		p.log.Info("SVID rotated", append(attrs, "previous_not_after", prev.Certificates[0].NotAfter)...)
	}
	p.armExpiryLocked(s)
}

// armExpiryLocked logs (and wakes waiters) when the current SVID expires
// without a replacement.
func (p *SPIREProvider) armExpiryLocked(s *subscription) {
	if s.expiry != nil {
		s.expiry.Stop()
	}
	svid := s.svid
	s.expiry = time.AfterFunc(svid.Certificates[0].NotAfter.Sub(p.now()), func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		if s.svid != svid || s.ctx.Err() != nil {
			return
		}
		p.log.Error("SVID expired and SPIRE has not delivered a new one; new connections of this identity are refused",
			"id", s.id.String(), "not_after", svid.Certificates[0].NotAfter, "last_problem", s.reason)
		s.notifyLocked()
	})
}

func (s *subscription) setLocked(svid *x509svid.SVID) {
	s.svid = svid
	if svid == nil && s.expiry != nil {
		s.expiry.Stop()
		s.expiry = nil
	}
}

func (s *subscription) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// describeRPC turns gRPC errors of the agent into sentences operators can
// act on.
func describeRPC(err error) error {
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	switch st.Code() {
	case codes.PermissionDenied:
		return fmt.Errorf("the SPIRE agent refused the node proxy (is its SPIFFE ID registered and listed in authorized_delegates?): %s", st.Message())
	case codes.Unavailable:
		return fmt.Errorf("SPIRE agent unavailable: %s", st.Message())
	}
	return fmt.Errorf("SPIRE agent: %s: %s", st.Code(), st.Message())
}

// followBundles keeps the bundle subscription up until Close.
func (p *SPIREProvider) followBundles() {
	defer p.wg.Done()
	p.keepStreaming(p.ctx, p.streamBundles, func(err error, retryIn time.Duration) {
		p.mu.Lock()
		p.bundleUp, p.bundleErr = false, err
		n := len(p.bundles)
		p.mu.Unlock()
		p.log.Warn("trust bundle subscription broken; resubscribing", "error", err, "retry_in", retryIn, "cached_bundles", n)
	})
}

func (p *SPIREProvider) streamBundles() error {
	stream, err := p.client.SubscribeToX509Bundles(p.ctx, &delegatedv1.SubscribeToX509BundlesRequest{})
	if err != nil {
		return describeRPC(err)
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			return describeRPC(err)
		}
		p.applyBundles(resp.GetCaCertificates())
	}
}

// applyBundles replaces the bundle set with the agent's current one.
func (p *SPIREProvider) applyBundles(raw map[string][]byte) {
	next := make(map[spiffeid.TrustDomain]*x509bundle.Bundle, len(raw))
	for name, der := range raw {
		td, err := spiffeid.TrustDomainFromString(name)
		if err != nil {
			p.log.Warn("ignoring trust bundle with a bad trust domain", "trust_domain", name, "error", err)
			continue
		}
		certs, err := x509.ParseCertificates(der)
		if err != nil || len(certs) == 0 {
			p.log.Warn("ignoring unparsable trust bundle", "trust_domain", td.Name(), "error", err)
			continue
		}
		next[td] = x509bundle.FromX509Authorities(td, certs)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	for td, b := range next {
		old := p.bundles[td]
		if old != nil && old.Equal(b) {
			continue
		}
		m := p.bundleMeta[td]
		if m == nil {
			m = &bundleMeta{}
			p.bundleMeta[td] = m
		}
		m.updates++
		m.at = now
		attrs := []any{"trust_domain", td.Name(), "authorities", len(b.X509Authorities())}
		if old == nil {
			p.log.Info("trust bundle received", attrs...)
		} else {
			p.log.Info("trust bundle changed", append(attrs, "previous_authorities", len(old.X509Authorities()))...)
		}
	}
	for td := range p.bundles {
		if next[td] == nil {
			p.log.Warn("trust bundle removed (federation ended?)", "trust_domain", td.Name())
			delete(p.bundleMeta, td)
		}
	}
	p.bundles = next
	p.bundleUp, p.bundleErr = true, nil
	if next[p.cfg.TrustDomain] == nil {
		p.bundleErr = fmt.Errorf("the SPIRE agent sent no bundle for the local trust domain %s", p.cfg.TrustDomain)
	}
}

// followSelf fetches and follows the node proxy's own SVID through the
// Workload API (go-spiffe's client reconnects by itself).
func (p *SPIREProvider) followSelf() {
	defer p.wg.Done()
	client, err := workloadapi.New(p.ctx, workloadapi.WithAddr("unix://"+p.cfg.WorkloadSocket))
	if err != nil {
		p.mu.Lock()
		p.selfErr = fmt.Errorf("workload API %s: %w", p.cfg.WorkloadSocket, err)
		p.mu.Unlock()
		p.log.Error("cannot use the Workload API", "error", err)
		return
	}
	defer client.Close()
	err = client.WatchX509Context(p.ctx, selfWatcher{p})
	if err != nil && p.ctx.Err() == nil {
		p.log.Error("workload API watch ended", "error", err)
	}
}

type selfWatcher struct{ p *SPIREProvider }

func (w selfWatcher) OnX509ContextUpdate(c *workloadapi.X509Context) {
	p := w.p
	svid := c.DefaultSVID()
	if svid == nil {
		return
	}
	p.mu.Lock()
	prev := p.self
	p.self, p.selfErr = svid, nil
	p.selfUpdates++
	p.mu.Unlock()
	if prev == nil || !prev.Certificates[0].Equal(svid.Certificates[0]) {
		p.log.Info("own SVID", "id", svid.ID.String(), "not_after", svid.Certificates[0].NotAfter)
	}
}

func (w selfWatcher) OnX509ContextWatchError(err error) {
	p := w.p
	if p.ctx.Err() != nil {
		return
	}
	p.mu.Lock()
	if p.self == nil {
		p.selfErr = fmt.Errorf("workload API: %w", err)
	}
	p.mu.Unlock()
	p.log.Warn("workload API watch error (retrying)", "error", err)
}

// GetX509BundleForTrustDomain returns the latest bundle the agent delivered
// for td (the local or a federated trust domain).
func (p *SPIREProvider) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	b := p.bundles[td]
	if b == nil {
		return nil, fmt.Errorf("spire provider: no trust bundle for trust domain %q", td.Name())
	}
	return b, nil
}

// Release ends the subscription of id; a later SVID call subscribes again.
func (p *SPIREProvider) Release(id spiffeid.ID) {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.subs[id]
	if s == nil {
		return
	}
	delete(p.subs, id)
	p.dropLocked(s)
	p.log.Info("SVID subscription released", "id", id.String())
}

func (p *SPIREProvider) dropLocked(s *subscription) {
	s.cancel()
	s.setLocked(nil)
	s.notifyLocked()
}

// Ready returns nil once the local trust bundle (and, when configured, the
// node proxy's own SVID) has been received at least once.
func (p *SPIREProvider) Ready() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.bundles[p.cfg.TrustDomain] == nil {
		if p.bundleErr != nil {
			return p.bundleErr
		}
		return errors.New("no trust bundle for the local trust domain yet")
	}
	if p.cfg.WorkloadSocket != "" && p.self == nil {
		return p.selfErr
	}
	return nil
}

// Status reports the subscriptions, SVIDs and bundles.
func (p *SPIREProvider) Status() Status {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	st := Status{
		Mode:      ModeSPIRE,
		Source:    "SPIRE agent " + p.cfg.AdminSocket,
		Connected: p.bundleUp,
		SVIDs:     make([]SVIDStatus, 0, len(p.subs)),
	}
	if p.bundleErr != nil {
		st.LastError = p.bundleErr.Error()
	}
	if p.cfg.WorkloadSocket != "" {
		self := SVIDStatus{ID: "(own SVID)"}
		if p.self != nil {
			self = svidStatus(p.self.ID.String(), p.self, now)
		}
		self.Updates = p.selfUpdates
		if p.selfErr != nil {
			self.Reason = p.selfErr.Error()
		}
		st.Self = &self
	}
	for id, s := range p.subs {
		x := svidStatus(id.String(), s.svid, now)
		x.Updates = s.updates
		x.Reason = s.reason
		st.SVIDs = append(st.SVIDs, x)
	}
	sortSVIDs(st.SVIDs)
	for _, td := range slices.SortedFunc(maps.Keys(p.bundles), func(a, b spiffeid.TrustDomain) int { return strings.Compare(a.Name(), b.Name()) }) {
		m := p.bundleMeta[td]
		st.Bundles = append(st.Bundles, bundleStatus(p.bundles[td], m.updates, m.at))
	}
	return st
}

// Close ends every subscription and the connection to the agent.
func (p *SPIREProvider) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	for id, s := range p.subs {
		delete(p.subs, id)
		p.dropLocked(s)
	}
	p.mu.Unlock()
	p.cancel()
	p.wg.Wait()
	return p.conn.Close()
}
