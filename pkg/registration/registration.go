// Package registration keeps the SPIRE server's registration entries in step
// with the service accounts enrolled on one node.
//
// For every enrolled (namespace, service account) pair on its node the agent
// wants one workload entry:
//
//	spiffe_id     spiffe://<trust-domain>/ns/<namespace>/sa/<serviceaccount>
//	parent_id     the node's SPIFFE ID (Config.ParentID)
//	selectors     k8s:ns:<namespace>, k8s:sa:<serviceaccount>
//	x509_svid_ttl Config.SVIDTTL in seconds (0: the server's default)
//	hint          "palisade" (Hint)
//
// The Reconciler talks to the SPIRE server's entry API (entry/v1): it lists
// the entries under the node's parent ID (filtered and paged), computes the
// difference, and applies it with BatchUpdateEntry, BatchCreateEntry and
// BatchDeleteEntry. Entries are Palisade's own when their parent ID is
// Config.ParentID and their hint is Hint; only those are ever updated or
// deleted. An entry someone else manages (spire-controller-manager, an
// operator) with the same SPIFFE ID, parent ID and selectors satisfies the
// need and is left alone; no duplicate is created next to it.
//
// Applying is idempotent: a second pass with the same desired set does
// nothing. Run debounces changes, retries failures with backoff and
// resyncs periodically, so entries deleted or changed behind its back come
// back. Nothing is removed before the first Update (an agent restarting
// does not know its pods yet), and nothing is removed on shutdown (an agent
// restart must not take identities away from running pods).
package registration

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffegrpc/grpccredentials"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	entryv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/entry/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// Hint is the marker of Palisade-managed registration entries: Palisade
// sets it as the entry's hint, and an entry is Palisade's own (and so may
// be updated or deleted by it) only when its hint is Hint and its parent ID
// is the node's ID. Do not put it on entries managed by other means.
const Hint = "palisade"

// Selector types and prefixes of the entries (those of SPIRE's k8s
// workload attestor).
const (
	SelectorType      = "k8s"
	namespacePrefix   = "ns:"
	serviceAcctPrefix = "sa:"
)

// Defaults of the Config fields left zero.
const (
	DefaultDebounce       = 500 * time.Millisecond
	DefaultResyncInterval = 30 * time.Second
	DefaultMinBackoff     = time.Second
	DefaultMaxBackoff     = 30 * time.Second
	DefaultPageSize       = 500
	DefaultBatchSize      = 50
	DefaultRequestTimeout = 15 * time.Second
)

// ServiceAccount names a Kubernetes service account, the unit of identity.
type ServiceAccount struct {
	Namespace string
	Name      string
}

// String returns "namespace/name".
func (s ServiceAccount) String() string { return s.Namespace + "/" + s.Name }

// Config configures a Reconciler.
type Config struct {
	// Client is the SPIRE server's entry API (see Dial). Required.
	Client entryv1.EntryClient
	// TrustDomain of the workload SPIFFE IDs. Required.
	TrustDomain spiffeid.TrustDomain
	// ParentID is the node's SPIFFE ID in SPIRE, the parent ID of every
	// entry; it must be a member of TrustDomain. Required.
	ParentID spiffeid.ID
	// SVIDTTL is the X.509 SVID lifetime put on the entries, whole
	// seconds; 0 leaves it to the server's default.
	SVIDTTL time.Duration
	// Logger receives a line for every batch applied and every error.
	Logger *slog.Logger

	// Debounce is how long Run waits after a change before applying it,
	// collecting further changes (DefaultDebounce when 0).
	Debounce time.Duration
	// ResyncInterval is how often Run re-applies the desired set when
	// nothing changes, repairing what others did to Palisade's entries
	// (DefaultResyncInterval when 0).
	ResyncInterval time.Duration
	// MinBackoff and MaxBackoff bound the retry delay after a failed pass;
	// it doubles with every failure (DefaultMinBackoff, DefaultMaxBackoff).
	MinBackoff, MaxBackoff time.Duration
	// PageSize is the ListEntries page size (DefaultPageSize when 0).
	PageSize int
	// BatchSize is the most entries sent in one batch call
	// (DefaultBatchSize when 0).
	BatchSize int
	// RequestTimeout bounds each API call (DefaultRequestTimeout when 0).
	RequestTimeout time.Duration
}

// Result counts what one pass did.
type Result struct {
	// Created, Updated and Deleted count Palisade's own entries changed.
	Created, Updated, Deleted int
	// Unchanged counts desired entries already present as Palisade's own.
	Unchanged int
	// Foreign counts desired entries satisfied by an entry Palisade does
	// not manage (same SPIFFE ID, parent ID and selectors).
	Foreign int
}

// Changed reports whether the pass changed anything on the server.
func (r Result) Changed() bool { return r.Created+r.Updated+r.Deleted > 0 }

// Reconciler keeps the registration entries of one node in step with the
// service accounts enrolled there. Create it with New, feed it with Update
// and run it with Run.
type Reconciler struct {
	cfg Config
	log *slog.Logger

	mu      sync.Mutex
	desired map[ServiceAccount]bool // nil until the first Update
	changed chan struct{}

	syncMu sync.Mutex // one pass at a time

	// onPass, when set (tests), is called by Run after every pass.
	onPass func(Result, error)
}

// New validates cfg and returns a Reconciler.
func New(cfg Config) (*Reconciler, error) {
	if cfg.Client == nil {
		return nil, errors.New("registration: no entry API client")
	}
	if cfg.TrustDomain.IsZero() {
		return nil, errors.New("registration: no trust domain")
	}
	if cfg.ParentID.IsZero() {
		return nil, errors.New("registration: no parent ID")
	}
	if !cfg.ParentID.MemberOf(cfg.TrustDomain) {
		return nil, fmt.Errorf("registration: parent ID %s is not in trust domain %s", cfg.ParentID, cfg.TrustDomain)
	}
	if cfg.ParentID.Path() == "" {
		return nil, fmt.Errorf("registration: parent ID %s has no path", cfg.ParentID)
	}
	if _, err := TTLSeconds(cfg.SVIDTTL); err != nil {
		return nil, fmt.Errorf("registration: %w", err)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	setDefault(&cfg.Debounce, DefaultDebounce)
	setDefault(&cfg.ResyncInterval, DefaultResyncInterval)
	setDefault(&cfg.MinBackoff, DefaultMinBackoff)
	setDefault(&cfg.MaxBackoff, DefaultMaxBackoff)
	setDefault(&cfg.PageSize, DefaultPageSize)
	setDefault(&cfg.BatchSize, DefaultBatchSize)
	setDefault(&cfg.RequestTimeout, DefaultRequestTimeout)
	cfg.MaxBackoff = max(cfg.MaxBackoff, cfg.MinBackoff)
	return &Reconciler{
		cfg:     cfg,
		log:     cfg.Logger.With("parent_id", cfg.ParentID.String()),
		changed: make(chan struct{}, 1),
	}, nil
}

func setDefault[T comparable](v *T, def T) {
	var zero T
	if *v == zero {
		*v = def
	}
}

// TTLSeconds converts an SVID lifetime to the entry's x509_svid_ttl: whole
// seconds that fit the field, 0 meaning the server's default.
func TTLSeconds(d time.Duration) (int32, error) {
	switch {
	case d < 0:
		return 0, fmt.Errorf("SVID TTL %s is negative", d)
	case d%time.Second != 0:
		return 0, fmt.Errorf("SVID TTL %s is not a whole number of seconds", d)
	case d/time.Second > math.MaxInt32:
		return 0, fmt.Errorf("SVID TTL %s is too long", d)
	}
	return int32(d / time.Second), nil
}

// Update sets the service accounts enrolled on this node (the whole set,
// duplicates allowed). It never blocks; Run applies the change. Until the
// first Update, Run does nothing at all.
func (r *Reconciler) Update(sas []ServiceAccount) {
	set := make(map[ServiceAccount]bool, len(sas))
	for _, sa := range sas {
		set[sa] = true
	}
	r.mu.Lock()
	same := r.desired != nil && maps.Equal(r.desired, set)
	if !same {
		r.desired = set
	}
	r.mu.Unlock()
	if same {
		return
	}
	select {
	case r.changed <- struct{}{}:
	default:
	}
}

// wanted returns the desired set, sorted, and whether Update was called.
func (r *Reconciler) wanted() ([]ServiceAccount, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.desired == nil {
		return nil, false
	}
	out := slices.Collect(maps.Keys(r.desired))
	slices.SortFunc(out, compareSA)
	return out, true
}

func compareSA(a, b ServiceAccount) int {
	if a.Namespace != b.Namespace {
		if a.Namespace < b.Namespace {
			return -1
		}
		return 1
	}
	switch {
	case a.Name < b.Name:
		return -1
	case a.Name > b.Name:
		return 1
	}
	return 0
}

// Run applies the desired set until ctx ends: after each Update (debounced),
// every ResyncInterval, and after a failure with exponential backoff. It
// returns nil when ctx ends. Entries are left in place on return.
func (r *Reconciler) Run(ctx context.Context) error {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	var (
		due       time.Time // when the next pass runs; zero: none planned
		notBefore time.Time // end of the current backoff
		backoff   time.Duration
	)
	schedule := func(at time.Time) {
		if !due.IsZero() && !at.Before(due) {
			return
		}
		due = at
		timer.Reset(time.Until(at))
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-r.changed:
			schedule(later(time.Now().Add(r.cfg.Debounce), notBefore))
			continue
		case <-timer.C:
		}
		due = time.Time{}
		if _, ok := r.wanted(); !ok {
			continue
		}
		res, err := r.Sync(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if r.onPass != nil {
			r.onPass(res, err)
		}
		if err != nil {
			backoff = min(max(2*backoff, r.cfg.MinBackoff), r.cfg.MaxBackoff)
			notBefore = time.Now().Add(backoff)
			r.log.Warn("SPIRE registration entries not in step; retrying", "retry_in", backoff.String(), "error", err)
			schedule(notBefore)
			continue
		}
		backoff, notBefore = 0, time.Time{}
		schedule(time.Now().Add(r.cfg.ResyncInterval))
	}
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// Sync makes one pass: it lists the entries under the parent ID, and
// creates, updates and deletes Palisade's own entries until they match the
// desired set. Before the first Update it does nothing. The error joins
// every failure; what succeeded stays done.
func (r *Reconciler) Sync(ctx context.Context) (Result, error) {
	r.syncMu.Lock()
	defer r.syncMu.Unlock()
	want, ok := r.wanted()
	if !ok {
		return Result{}, nil
	}
	existing, err := r.list(ctx)
	if err != nil {
		return Result{}, err
	}
	p, perrs := r.spec().diff(want, existing)
	for _, err := range perrs {
		// Retrying cannot fix a name that makes no SPIFFE ID.
		r.log.Error("service account skipped", "error", err)
	}
	res, err := r.apply(ctx, p)
	if err == nil && res.Changed() {
		r.log.Info("SPIRE registration entries in step", "created", res.Created, "updated", res.Updated, "deleted", res.Deleted, "unchanged", res.Unchanged, "foreign", res.Foreign)
	}
	return res, err
}

// DialTCP connects to the SPIRE server API over TCP (its bind address, as
// agents on other hosts reach it) with mutual TLS: the caller presents the
// X509-SVID of source, which must belong to a registration entry marked
// admin, and requires the server to present spiffe://<td>/spire/server.
// This is how an agent DaemonSet reaches a SPIRE server in another pod.
func DialTCP(addr string, source interface {
	x509svid.Source
	x509bundle.Source
}, td spiffeid.TrustDomain) (*grpc.ClientConn, error) {
	if addr == "" {
		return nil, errors.New("no SPIRE server address")
	}
	serverID, err := spiffeid.FromSegments(td, "spire", "server")
	if err != nil {
		return nil, fmt.Errorf("SPIRE server ID: %w", err)
	}
	creds := grpccredentials.MTLSClientCredentials(source, source, tlsconfig.AuthorizeID(serverID))
	conn, err := grpc.NewClient("dns:///"+addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return nil, fmt.Errorf("SPIRE server API at %s: %w", addr, err)
	}
	return conn, nil
}

// Dial connects to the SPIRE server API on a unix socket (local callers
// are admins there) and returns the connection; close it when done. The
// connection is made lazily: a server not up yet shows as errors of the
// first calls, which Run retries.
func Dial(socketPath string) (*grpc.ClientConn, error) {
	if socketPath == "" {
		return nil, errors.New("no SPIRE server socket path")
	}
	conn, err := grpc.NewClient("unix:"+socketPath, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("SPIRE server API at %s: %w", socketPath, err)
	}
	return conn, nil
}
