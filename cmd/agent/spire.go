package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	entryv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/entry/v1"
	"google.golang.org/grpc"

	"github.com/palisade-net/palisade/pkg/registration"
	"github.com/palisade-net/palisade/pkg/workload"
)

// SPIRE entry modes (--spire-entries).
const (
	spireEntriesOff    = "off"
	spireEntriesManage = "manage"
)

// spireFlags are the agent's SPIRE registration flags as given.
type spireFlags struct {
	entries     string
	socket      string
	addr        string
	workload    string
	nodeID      string
	svidTTL     time.Duration
	trustDomain string
}

func (f *spireFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.entries, "spire-entries", spireEntriesOff,
		"SPIRE registration entries for the service accounts enrolled on this node: "+
			"manage (the agent creates, repairs and deletes its own entries, marked with hint \""+registration.Hint+"\") "+
			"or off (entries are someone else's job, e.g. spire-controller-manager)")
	fs.StringVar(&f.socket, "spire-server-socket", "",
		"the SPIRE server's local API socket (with --spire-entries manage, this or --spire-server-addr)")
	fs.StringVar(&f.addr, "spire-server-addr", "",
		"the SPIRE server's API as host:port, reached with mutual TLS and the agent's own SVID, which must be an admin entry's "+
			"(with --spire-entries manage when the server's socket is not local, e.g. an agent DaemonSet)")
	fs.StringVar(&f.workload, "spire-workload-socket", "",
		"the local SPIRE agent's Workload API socket, for the agent's own SVID (required with --spire-server-addr)")
	fs.StringVar(&f.nodeID, "spire-node-id", "",
		"this node's SPIFFE ID in SPIRE, the parent ID of its entries, e.g. spiffe://cluster.local/palisade/node/NODE (required with --spire-entries manage)")
	fs.DurationVar(&f.svidTTL, "spire-svid-ttl", 0,
		"X.509 SVID lifetime set on the entries, whole seconds (0: the SPIRE server's default)")
	fs.StringVar(&f.trustDomain, "trust-domain", "cluster.local", "SPIFFE trust domain of the workload identities")
}

// spireSettings are the validated flags; manage is false for "off".
type spireSettings struct {
	manage      bool
	socket      string
	addr        string
	workload    string
	trustDomain spiffeid.TrustDomain
	nodeID      spiffeid.ID
	svidTTL     time.Duration
}

// validate checks the flags; every error names the flag at fault.
func (f *spireFlags) validate() (spireSettings, error) {
	var s spireSettings
	td, err := spiffeid.TrustDomainFromString(f.trustDomain)
	if err != nil {
		return s, fmt.Errorf("--trust-domain %q: %w", f.trustDomain, err)
	}
	s.trustDomain = td
	switch f.entries {
	case spireEntriesOff:
		return s, nil
	case spireEntriesManage:
	default:
		return s, fmt.Errorf("--spire-entries %q: want %s or %s", f.entries, spireEntriesManage, spireEntriesOff)
	}
	s.manage = true
	switch {
	case f.socket == "" && f.addr == "":
		return s, fmt.Errorf("--spire-server-socket or --spire-server-addr is required with --spire-entries %s", spireEntriesManage)
	case f.socket != "" && f.addr != "":
		return s, fmt.Errorf("--spire-server-socket and --spire-server-addr exclude each other")
	case f.addr != "" && f.workload == "":
		return s, fmt.Errorf("--spire-workload-socket is required with --spire-server-addr (the agent's admin SVID)")
	}
	s.socket, s.addr, s.workload = f.socket, f.addr, f.workload
	if f.nodeID == "" {
		return s, fmt.Errorf("--spire-node-id is required with --spire-entries %s", spireEntriesManage)
	}
	id, err := spiffeid.FromString(f.nodeID)
	if err != nil {
		return s, fmt.Errorf("--spire-node-id %q: %w", f.nodeID, err)
	}
	if !id.MemberOf(td) {
		return s, fmt.Errorf("--spire-node-id %s is not in trust domain %s (--trust-domain)", id, td)
	}
	if id.Path() == "" {
		return s, fmt.Errorf("--spire-node-id %s: needs a path, e.g. %s/palisade/node/NODE", id, id)
	}
	s.nodeID = id
	if _, err := registration.TTLSeconds(f.svidTTL); err != nil {
		return s, fmt.Errorf("--spire-svid-ttl: %w", err)
	}
	s.svidTTL = f.svidTTL
	return s, nil
}

// startSPIRE starts the registration reconciler when entries are managed and
// returns the agent's OnEnrolled hook (nil when off) and a function that
// stops the reconciler and closes its connection (entries stay in place).
func startSPIRE(ctx context.Context, s spireSettings, log *slog.Logger) (func([]workload.Workload), func(), error) {
	if !s.manage {
		log.Info("SPIRE registration entries not managed by the agent", "spire_entries", spireEntriesOff)
		return nil, func() {}, nil
	}
	var (
		conn    *grpc.ClientConn
		err     error
		src     *lazySource
		where   = "spire_server_socket"
		address = s.socket
	)
	if s.addr != "" {
		src = newLazySource(ctx, s.workload, log)
		conn, err = registration.DialTCP(s.addr, src, s.trustDomain)
		where, address = "spire_server_addr", s.addr
	} else {
		conn, err = registration.Dial(s.socket)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("--%s: %w", strings.ReplaceAll(where, "_", "-"), err)
	}
	rlog := log.With("subsystem", "spire-entries")
	rec, err := registration.New(registration.Config{
		Client:      entryv1.NewEntryClient(conn),
		TrustDomain: s.trustDomain,
		ParentID:    s.nodeID,
		SVIDTTL:     s.svidTTL,
		Logger:      rlog,
	})
	if err != nil {
		conn.Close()
		return nil, nil, err
	}
	ttl := "server default"
	if s.svidTTL > 0 {
		ttl = s.svidTTL.String()
	}
	log.Info("SPIRE registration entries managed by the agent", "spire_entries", spireEntriesManage,
		where, address, "parent_id", s.nodeID.String(), "trust_domain", s.trustDomain.String(),
		"svid_ttl", ttl, "hint", registration.Hint)
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		rec.Run(ctx)
	}()
	hook := func(ws []workload.Workload) { rec.Update(serviceAccounts(ws)) }
	stop := func() {
		cancel()
		<-done
		conn.Close()
		if src != nil {
			src.close()
		}
	}
	return hook, stop, nil
}

// serviceAccounts returns the service accounts of ws.
func serviceAccounts(ws []workload.Workload) []registration.ServiceAccount {
	out := make([]registration.ServiceAccount, 0, len(ws))
	for _, w := range ws {
		out = append(out, registration.ServiceAccount{Namespace: w.Namespace, Name: w.ServiceAccountOrDefault()})
	}
	return out
}

// lazySource is the agent's own X509-SVID and bundle from the local SPIRE
// agent's Workload API. It is created in the background so that the agent
// starts without waiting for SPIRE; until the first SVID arrives, TLS
// handshakes fail and the reconciler retries.
type lazySource struct {
	cancel context.CancelFunc
	src    atomic.Pointer[workloadapi.X509Source]
}

func newLazySource(ctx context.Context, socket string, log *slog.Logger) *lazySource {
	ctx, cancel := context.WithCancel(ctx)
	l := &lazySource{cancel: cancel}
	go func() {
		src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr("unix://"+socket)))
		if err != nil {
			if ctx.Err() == nil {
				log.Error("no SVID for the agent from the Workload API; SPIRE entries cannot be managed", "socket", socket, "error", err)
			}
			return
		}
		if svid, err := src.GetX509SVID(); err == nil {
			log.Info("agent SVID for the SPIRE server API", "id", svid.ID.String())
		}
		l.src.Store(src)
	}()
	return l
}

var errNoSVIDYet = errors.New("no SVID from the Workload API yet")

func (l *lazySource) GetX509SVID() (*x509svid.SVID, error) {
	if s := l.src.Load(); s != nil {
		return s.GetX509SVID()
	}
	return nil, errNoSVIDYet
}

func (l *lazySource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	if s := l.src.Load(); s != nil {
		return s.GetX509BundleForTrustDomain(td)
	}
	return nil, errNoSVIDYet
}

func (l *lazySource) close() {
	l.cancel()
	if s := l.src.Load(); s != nil {
		s.Close()
	}
}
