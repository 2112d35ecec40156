// Package ebpf connects the agent to the kernel datapath (pkg/datapath). A
// Manager loads the programs with their maps, programs and links pinned on
// bpffs, attaches them to the host side of every enrolled pod's veth (found
// from the pod's namespace by the veth pair's IFLA_LINK), keeps the
// endpoint map in step with every enrolled pod of the cluster, and turns
// what the programs count and report into Prometheus metrics, log lines and
// the records served at /debug/drops. It implements agent.Datapath.
//
// # Endpoint indexes
//
// Every enrolled pod of the cluster gets an index, the key of its counters
// and the pod named in drop events. Indexes are never reused while the
// agent runs (a departed pod's counters are deleted with its index). The
// endpoint map is pinned, so a restarted agent finds each pod's index again
// from its addresses, and the counters the programs kept while it was down
// stay attributed to the same pods.
package ebpf

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"

	cebpf "github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"

	"github.com/palisade-net/palisade/pkg/datapath"
	"github.com/palisade-net/palisade/pkg/netns"
	"github.com/palisade-net/palisade/pkg/workload"
)

// DefaultPinDir is where the agent pins the datapath by default: a
// directory of the host's bpffs.
const DefaultPinDir = "/sys/fs/bpf/palisade"

// DefaultDropRecords is how many drops /debug/drops keeps by default.
const DefaultDropRecords = 1000

// Options configure a Manager.
type Options struct {
	// Node is this node's name: counters are labelled with the pods of
	// this node only.
	Node string
	// PinDir is a directory on a bpffs mount (created there if missing).
	// The Manager does not mount bpffs: a mount of its own would vanish
	// with the agent's mount namespace, and the pins with it.
	PinDir string
	// Config fixes the programs' constants; the zero value means
	// datapath.DefaultConfig().
	Config datapath.Config
	// AttachMode is how the programs are attached (default: TCX when the
	// kernel has it, tc otherwise).
	AttachMode datapath.AttachMode
	// RequireVeth makes Attach fail for a pod without a veth into this
	// node (a CNI whose pod interfaces are not veth pairs, such as ipvlan);
	// by default such a pod is left unguarded, with a warning.
	RequireVeth bool
	// DropRecords is how many drops Drops keeps (default
	// DefaultDropRecords).
	DropRecords int
	// Drops, when set, gets every drop event for the node proxy's flow
	// records, from a bounded queue (see
	// palisade_ebpf_drop_events_forwarded_total).
	Drops  DropReporter
	Logger *slog.Logger
}

// Manager drives the kernel datapath for the agent. Its methods are safe
// for concurrent use.
type Manager struct {
	dp     *datapath.Datapath
	events *datapath.EventReader
	opts   Options
	log    *slog.Logger

	// firstSync is closed by the first SetEndpoints: Run reads no event
	// before, so that those kept in the ring while the agent was down are
	// reported with their pods' names.
	firstSync chan struct{}
	closed    chan struct{}
	closeOnce sync.Once

	mu sync.Mutex
	// synced is set once the endpoint map has been read back (the first
	// SetEndpoints after a start).
	synced bool
	// written is the endpoint map as the kernel holds it.
	written map[netip.Addr]datapath.Endpoint
	// pods are the enrolled pods by id (UID, else namespace/name), and
	// byIndex the same by endpoint index.
	pods    map[string]*endpoint
	byIndex map[uint32]*endpoint
	next    uint32
	// ifnames are the host-side veths Attach used, by ifindex, for the
	// drop records.
	ifnames map[uint32]string
	// unguarded are the pods Attach found no veth for (warned once).
	unguarded map[string]bool

	drops *dropLog
	// fwd sends drops to Options.Drops; nil without.
	fwd *forwarder
}

// endpoint is an enrolled pod as the Manager knows it.
type endpoint struct {
	// key is namespace/name; local is set for pods of this node.
	key   string
	local bool
	index uint32
}

// Open loads the datapath, reusing what an earlier agent pinned under
// opts.PinDir, and starts nothing yet: Run reads the drop events. An error
// wrapping datapath.ErrUnavailable means this host cannot run it (no
// CAP_BPF, no bpffs, an old kernel).
func Open(opts Options) (*Manager, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Config == (datapath.Config{}) {
		opts.Config = datapath.DefaultConfig()
	}
	if opts.DropRecords <= 0 {
		opts.DropRecords = DefaultDropRecords
	}
	if opts.PinDir == "" {
		return nil, errors.New("ebpf: no pin directory")
	}
	dp, err := datapath.Load(opts.Config, datapath.Options{PinDir: opts.PinDir})
	if errors.Is(err, cebpf.ErrMapIncompatible) {
		// Pinned by a version with another map layout (an upgrade): its
		// programs would go on guarding with maps nobody updates. They go,
		// and the first reconcile attaches the new ones.
		opts.Logger.Warn("the pinned eBPF datapath is of an incompatible version: replacing it (its counters restart)", "bpffs", opts.PinDir, "reason", err)
		if rerr := removePins(opts.PinDir); rerr != nil {
			return nil, fmt.Errorf("ebpf: %w (removing the old pins: %w)", err, rerr)
		}
		dp, err = datapath.Load(opts.Config, datapath.Options{PinDir: opts.PinDir})
	}
	if err != nil {
		return nil, fmt.Errorf("ebpf: %w", err)
	}
	events, err := dp.Events()
	if err != nil {
		dp.Close()
		return nil, fmt.Errorf("ebpf: %w", err)
	}
	var fwd *forwarder
	if opts.Drops != nil {
		fwd = newForwarder(opts.Drops, opts.Logger)
	}
	return &Manager{
		fwd:       fwd,
		dp:        dp,
		events:    events,
		opts:      opts,
		log:       opts.Logger,
		written:   map[netip.Addr]datapath.Endpoint{},
		pods:      map[string]*endpoint{},
		byIndex:   map[uint32]*endpoint{},
		next:      1,
		ifnames:   map[uint32]string{},
		unguarded: map[string]bool{},
		drops:     newDropLog(opts.DropRecords, opts.Logger),

		firstSync: make(chan struct{}),
		closed:    make(chan struct{}),
	}, nil
}

// Close stops Run and releases the Manager's file descriptors. What is
// pinned stays in the kernel: the programs keep guarding and counting
// without the agent.
func (m *Manager) Close() error {
	var err error
	m.closeOnce.Do(func() {
		close(m.closed)
		err = errors.Join(m.events.Close(), m.dp.Close())
	})
	return err
}

// Run turns drop events into log lines and records, and hands them to
// Options.Drops, until ctx ends or the Manager is closed. It starts reading
// after the first SetEndpoints.
func (m *Manager) Run(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { m.events.Close() })
	defer stop()
	if m.fwd != nil {
		fctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() {
			defer close(done)
			m.fwd.run(fctx)
		}()
		defer func() {
			cancel()
			<-done
		}()
	}
	select {
	case <-m.firstSync:
	case <-ctx.Done():
		return nil
	case <-m.closed:
		return nil
	}
	for {
		ev, err := m.events.Read()
		if errors.Is(err, datapath.ErrClosed) {
			return nil
		}
		if err != nil {
			// A malformed record: the next ones are still readable.
			m.log.Warn("drop event unreadable", "error", err)
			continue
		}
		d := m.dropOf(ev)
		m.drops.add(d)
		if m.fwd != nil {
			m.fwd.offer(d)
		}
	}
}

func podID(w workload.Workload) string {
	if w.UID != "" {
		return w.UID
	}
	return w.Key()
}

func modeOf(w workload.Workload) datapath.Mode {
	if w.Mode == workload.Strict {
		return datapath.ModeStrict
	}
	return datapath.ModePermissive
}

// SetEndpoints implements agent.Datapath: the endpoint map ends up holding
// exactly the addresses of eps, each with its pod's index and mode. Pods
// that left lose their counters; pins of deleted interfaces are removed.
func (m *Manager) SetEndpoints(_ context.Context, eps []workload.Workload) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	recovering := !m.synced
	if recovering {
		cur, err := m.dp.Endpoints()
		if err != nil {
			return fmt.Errorf("ebpf: %w", err)
		}
		m.written = cur
		for _, ep := range cur {
			m.next = max(m.next, ep.Index+1)
		}
	}
	pods := make(map[string]*endpoint, len(eps))
	byIndex := make(map[uint32]*endpoint, len(eps))
	// Pods known to this process keep their index.
	for _, w := range eps {
		id := podID(w)
		if old := m.pods[id]; old != nil && pods[id] == nil {
			e := &endpoint{key: w.Key(), local: w.Node == m.opts.Node, index: old.index}
			pods[id], byIndex[e.index] = e, e
		}
	}
	// New ones take the index the kernel holds for one of their addresses
	// when no pod known to this process had it (a restart), else a fresh
	// one.
	for _, w := range eps {
		id := podID(w)
		if pods[id] != nil {
			continue
		}
		e := &endpoint{key: w.Key(), local: w.Node == m.opts.Node}
		for _, ip := range w.IPs {
			k, ok := m.written[ip.Unmap()]
			if ok && byIndex[k.Index] == nil && m.byIndex[k.Index] == nil {
				e.index = k.Index
				break
			}
		}
		if e.index == 0 {
			e.index = m.allocate(byIndex)
		}
		pods[id], byIndex[e.index] = e, e
	}
	var errs []error
	// Additions and changes first (in the order of eps: a later pod
	// claiming the same address wins), then removals.
	want := make(map[netip.Addr]datapath.Endpoint, len(m.written))
	for _, w := range eps {
		for _, ip := range w.IPs {
			want[ip.Unmap()] = datapath.Endpoint{Index: pods[podID(w)].index, Mode: modeOf(w)}
		}
	}
	for _, w := range eps {
		for _, ip := range w.IPs {
			ip = ip.Unmap()
			ep := want[ip]
			if cur, ok := m.written[ip]; ok && cur == ep {
				continue
			}
			if err := m.dp.SetEndpoint(ip, ep); err != nil {
				errs = append(errs, err)
				continue
			}
			m.written[ip] = ep
		}
	}
	for ip := range m.written {
		if _, ok := want[ip]; ok {
			continue
		}
		if err := m.dp.DeleteEndpoint(ip); err != nil {
			errs = append(errs, err)
			continue
		}
		delete(m.written, ip)
	}
	// Counters of indexes no pod holds any more: those of pods that left
	// (and, after a restart, while the agent was down).
	gone := map[uint32]bool{}
	for idx := range m.byIndex {
		if byIndex[idx] == nil {
			gone[idx] = true
		}
	}
	if recovering {
		cs, err := m.dp.Counters()
		if err != nil {
			errs = append(errs, err)
		}
		for k := range cs {
			if k.Index != 0 && byIndex[k.Index] == nil {
				gone[k.Index] = true
			}
		}
	}
	for _, idx := range slices.Sorted(maps.Keys(gone)) {
		if err := m.dp.DeleteCounters(idx); err != nil {
			errs = append(errs, err)
		}
	}
	m.pods, m.byIndex = pods, byIndex
	for id := range m.unguarded {
		if pods[id] == nil {
			delete(m.unguarded, id)
		}
	}
	if !m.synced {
		m.synced = true
		close(m.firstSync)
	}
	if n, err := m.dp.Prune(); err != nil {
		errs = append(errs, err)
	} else if n > 0 {
		m.log.Info("removed the pins of deleted interfaces", "links", n)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("ebpf: endpoints: %w", err)
	}
	return nil
}

// allocate returns the next index no pod holds (never 0). m.mu is held.
func (m *Manager) allocate(taken map[uint32]*endpoint) uint32 {
	for {
		idx := m.next
		m.next++
		if m.next == 0 {
			m.next = 1
		}
		if idx != 0 && taken[idx] == nil && m.byIndex[idx] == nil {
			return idx
		}
	}
}

// Attach implements agent.Datapath: both programs go on every host-side
// veth whose pod-side end is in h and carries one of the pod's addresses.
func (m *Manager) Attach(_ context.Context, w workload.Workload, h *netns.Handle) error {
	links, err := hostVeths(h, w.IPs)
	if err != nil {
		return fmt.Errorf("ebpf: attach %s: %w", w.Key(), err)
	}
	if len(links) == 0 {
		err := fmt.Errorf("ebpf: attach %s: no veth in the pod's namespace with one of %v has its peer in this node's namespace", w.Key(), w.IPs)
		if m.opts.RequireVeth {
			return err
		}
		m.mu.Lock()
		warned := m.unguarded[podID(w)]
		m.unguarded[podID(w)] = true
		m.mu.Unlock()
		if !warned {
			m.log.Warn("pod not guarded by the eBPF datapath (its redirect rules still apply)", "pod", w.Key(), "reason", err)
		}
		return nil
	}
	var errs []error
	for _, l := range links {
		mode, err := m.dp.Attach(nil, l.name, m.opts.AttachMode)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		m.mu.Lock()
		_, had := m.ifnames[uint32(l.index)]
		m.ifnames[uint32(l.index)] = l.name
		m.mu.Unlock()
		if !had {
			m.log.Info("datapath attached", "pod", w.Key(), "interface", l.name, "pod_interface", l.peer, "mode", mode.String())
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("ebpf: attach %s: %w", w.Key(), err)
	}
	return nil
}

// Detach implements agent.Datapath.
func (m *Manager) Detach(_ context.Context, w workload.Workload, h *netns.Handle) error {
	links, err := hostVeths(h, nil)
	if err != nil {
		return fmt.Errorf("ebpf: detach %s: %w", w.Key(), err)
	}
	var errs []error
	for _, l := range links {
		if err := m.dp.Detach(nil, l.name); err != nil {
			errs = append(errs, err)
			continue
		}
		m.mu.Lock()
		_, had := m.ifnames[uint32(l.index)]
		delete(m.ifnames, uint32(l.index))
		m.mu.Unlock()
		if had {
			m.log.Info("datapath detached", "pod", w.Key(), "interface", l.name)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("ebpf: detach %s: %w", w.Key(), err)
	}
	return nil
}

// Pod label values of counters that belong to no pod of this node.
const (
	// PodUnenrolled: the pod-side address of the packet is not enrolled.
	PodUnenrolled = "unenrolled"
	// PodOther: the index is that of a pod of another node (an address
	// this node's pod does not own) or of none the agent knows.
	PodOther = "other"
)

// podLabel names the pod of an index for metrics. m.mu is held.
func (m *Manager) podLabel(idx uint32) string {
	if idx == 0 {
		return PodUnenrolled
	}
	if e := m.byIndex[idx]; e != nil && e.local {
		return e.key
	}
	return PodOther
}

// podName names the pod of an index in drop records ("" for none). m.mu
// is held.
func (m *Manager) podName(idx uint32) string {
	if e := m.byIndex[idx]; e != nil {
		return e.key
	}
	return ""
}

// Remove takes down a datapath pinned under pinDir by an earlier agent
// (one started with the eBPF datapath, before --ebpf off): it detaches the
// programs from every veth of the caller's network namespace, TCX links and
// cls_bpf filters alike, and deletes the pins. Without them the programs
// would keep guarding with an endpoint map nobody updates. It reports
// whether there was anything to remove.
func Remove(pinDir string, log *slog.Logger) (bool, error) {
	found, err := hasPins(pinDir)
	if err != nil || !found {
		return found, err
	}
	var errs []error
	veths := 0
	if dp, err := datapath.Load(datapath.DefaultConfig(), datapath.Options{PinDir: pinDir}); err != nil {
		// Pins of an incompatible version: the TCX links still go below,
		// cls_bpf filters stay until their interfaces do.
		errs = append(errs, err)
	} else {
		links, err := netlink.LinkList()
		if err != nil {
			errs = append(errs, err)
		}
		for _, l := range links {
			if l.Type() != "veth" {
				continue
			}
			veths++
			if err := dp.Detach(nil, l.Attrs().Name); err != nil {
				errs = append(errs, err)
			}
		}
		dp.Close()
	}
	if err := removePins(pinDir); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return true, fmt.Errorf("ebpf: remove %s: %w", pinDir, err)
	}
	log.Info("removed the eBPF datapath an earlier agent left", "bpffs", pinDir, "veths", veths)
	return true, nil
}

// removePins detaches the TCX links pinned under pinDir and deletes its
// pins (datapath.Remove). pinDir may be the root of a bpffs mount (the
// lab's), which cannot be removed and holds the kernel's own entries
// (maps.debug, progs.debug): once the datapath's subdirectories are gone
// it is left as it is.
func removePins(pinDir string) error {
	err := datapath.Remove(pinDir)
	if err == nil {
		return nil
	}
	if found, _ := hasPins(pinDir); found {
		return err
	}
	return nil
}

// hasPins reports whether pinDir holds any of the subdirectories a
// datapath pins into (maps, progs, links: see datapath.Options).
func hasPins(pinDir string) (bool, error) {
	for _, sub := range []string{"maps", "progs", "links"} {
		_, err := os.Stat(filepath.Join(pinDir, sub))
		if err == nil {
			return true, nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return false, fmt.Errorf("ebpf: %w", err)
		}
	}
	return false, nil
}
