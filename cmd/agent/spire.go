package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	entryv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/entry/v1"

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
		"the SPIRE server's local API socket (required with --spire-entries manage)")
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
	if f.socket == "" {
		return s, fmt.Errorf("--spire-server-socket is required with --spire-entries %s", spireEntriesManage)
	}
	s.socket = f.socket
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
	conn, err := registration.Dial(s.socket)
	if err != nil {
		return nil, nil, fmt.Errorf("--spire-server-socket: %w", err)
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
		"spire_server_socket", s.socket, "parent_id", s.nodeID.String(), "trust_domain", s.trustDomain.String(),
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
