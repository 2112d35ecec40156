package datapath

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// Datapath is the loaded programs and their maps. Close releases this
// process's references; pinned objects and attachments stay in the kernel.
type Datapath struct {
	objs   datapathObjects
	pinDir string

	mu sync.Mutex
	// links holds the TCX links of a Datapath without PinDir, which
	// live as long as it does.
	links map[string]link.Link
}

// ErrUnavailable is wrapped by the errors of Load that mean this process or
// kernel cannot run the datapath at all (no CAP_BPF or CAP_NET_ADMIN, no
// bpffs, a kernel without the needed BPF features), as opposed to a broken
// installation. Callers go on without it (iptables-only enforcement).
var ErrUnavailable = errors.New("BPF datapath unavailable")

// Options control loading.
type Options struct {
	// PinDir is a directory on a bpffs mount. When set, the maps are pinned
	// under PinDir/maps, and maps already pinned there by an earlier load
	// (an agent before its restart) are reused with their contents, so
	// endpoints and counters survive; the programs are pinned under
	// PinDir/progs and attachments under PinDir/links. When empty nothing
	// is pinned and everything goes when the Datapath is closed (tests).
	PinDir string
}

// Subdirectories of Options.PinDir.
const (
	pinMaps  = "maps"
	pinProgs = "progs"
	pinLinks = "links"
)

// Load loads the programs with cfg's constants and creates (or, with
// opts.PinDir, reuses) their maps. A pinned map whose layout no longer
// matches (a changed datapath.h) makes Load fail with an error wrapping
// ebpf.ErrMapIncompatible; Unpin removes the old objects.
func Load(cfg Config, opts Options) (*Datapath, error) {
	s, err := spec(cfg)
	if err != nil {
		return nil, err
	}
	var copts ebpf.CollectionOptions
	if opts.PinDir != "" {
		if err := preparePinDir(opts.PinDir); err != nil {
			return nil, fmt.Errorf("datapath: %w: %w", ErrUnavailable, err)
		}
		copts.Maps.PinPath = filepath.Join(opts.PinDir, pinMaps)
	} else {
		for _, m := range s.Maps {
			m.Pinning = ebpf.PinNone
		}
	}
	d := &Datapath{pinDir: opts.PinDir, links: map[string]link.Link{}}
	if err := s.LoadAndAssign(&d.objs, &copts); err != nil {
		var verr *ebpf.VerifierError
		switch {
		case errors.Is(err, unix.EPERM) || errors.Is(err, ebpf.ErrNotSupported):
			return nil, fmt.Errorf("datapath: load: %w: %w", ErrUnavailable, err)
		case errors.As(err, &verr):
			return nil, fmt.Errorf("datapath: load programs: %w (verifier log: %+v)", err, verr)
		}
		return nil, fmt.Errorf("datapath: load: %w", err)
	}
	if opts.PinDir != "" {
		for name, p := range d.programs() {
			// An earlier load's pin: the kernel refuses to pin over it.
			path := filepath.Join(opts.PinDir, pinProgs, name)
			if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
				d.Close()
				return nil, fmt.Errorf("datapath: replace pinned program %s: %w", name, err)
			}
			if err := p.Pin(path); err != nil {
				d.Close()
				return nil, fmt.Errorf("datapath: pin program %s: %w", name, err)
			}
		}
	}
	return d, nil
}

func (d *Datapath) programs() map[string]*ebpf.Program {
	return map[string]*ebpf.Program{
		datapathProgPalFromPod: d.objs.PalFromPod,
		datapathProgPalToPod:   d.objs.PalToPod,
	}
}

// FromPod is the program for packets the pod sends.
func (d *Datapath) FromPod() *ebpf.Program { return d.objs.PalFromPod }

// ToPod is the program for packets delivered to the pod.
func (d *Datapath) ToPod() *ebpf.Program { return d.objs.PalToPod }

// Close releases the file descriptors of this process. Pinned maps,
// programs and TCX links, and cls_bpf filters, stay: enforcement goes on
// without the agent. Without Options.PinDir, TCX attachments end here.
func (d *Datapath) Close() error {
	var errs []error
	d.mu.Lock()
	for k, l := range d.links {
		if err := l.Close(); err != nil {
			errs = append(errs, err)
		}
		delete(d.links, k)
	}
	d.mu.Unlock()
	if err := d.objs.Close(); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("datapath: close: %w", err)
	}
	return nil
}

// SetEndpoint adds or replaces the enrolled address a.
func (d *Datapath) SetEndpoint(a netip.Addr, ep Endpoint) error {
	k, err := addrKey(a)
	if err != nil {
		return fmt.Errorf("datapath: set endpoint: %w", err)
	}
	if ep.Index == 0 {
		return fmt.Errorf("datapath: set endpoint %s: index 0 is reserved", a)
	}
	if ep.Mode != ModePermissive && ep.Mode != ModeStrict {
		return fmt.Errorf("datapath: set endpoint %s: unknown mode %d", a, ep.Mode)
	}
	v := datapathPalEndpoint{Index: ep.Index, Mode: uint8(ep.Mode)}
	if err := d.objs.PalEndpoints.Put(k, v); err != nil {
		return fmt.Errorf("datapath: set endpoint %s: %w", a, err)
	}
	return nil
}

// DeleteEndpoint removes the address a; removing an absent one is not an
// error.
func (d *Datapath) DeleteEndpoint(a netip.Addr) error {
	k, err := addrKey(a)
	if err != nil {
		return fmt.Errorf("datapath: delete endpoint: %w", err)
	}
	if err := d.objs.PalEndpoints.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("datapath: delete endpoint %s: %w", a, err)
	}
	return nil
}

// Endpoints returns the enrolled addresses the programs see.
func (d *Datapath) Endpoints() (map[netip.Addr]Endpoint, error) {
	out := map[netip.Addr]Endpoint{}
	var (
		k [16]byte
		v datapathPalEndpoint
	)
	it := d.objs.PalEndpoints.Iterate()
	for it.Next(&k, &v) {
		out[keyAddr(k)] = Endpoint{Index: v.Index, Mode: Mode(v.Mode)}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("datapath: list endpoints: %w", err)
	}
	return out, nil
}

// CounterKey identifies one counter.
type CounterKey struct {
	// Index is the pod's endpoint index, 0 for packets whose pod-side
	// address is not enrolled.
	Index     uint32
	Direction Direction
	Verdict   Verdict
	// Reason is set for VerdictDrop.
	Reason Reason
}

// Counter is the sum over all CPUs of one counter.
type Counter struct {
	Packets uint64
	Bytes   uint64
}

// Counters returns every counter, summed over the CPUs.
func (d *Datapath) Counters() (map[CounterKey]Counter, error) {
	out := map[CounterKey]Counter{}
	var (
		k  datapathPalCounterKey
		vs []datapathPalCounter
	)
	it := d.objs.PalCounters.Iterate()
	for it.Next(&k, &vs) {
		var c Counter
		for _, v := range vs {
			c.Packets += v.Packets
			c.Bytes += v.Bytes
		}
		out[CounterKey{Index: k.Index, Direction: Direction(k.Direction), Verdict: Verdict(k.Verdict), Reason: Reason(k.Reason)}] = c
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("datapath: read counters: %w", err)
	}
	return out, nil
}

// DeleteCounters removes the counters of endpoint index (for example before
// the index is given to another pod).
func (d *Datapath) DeleteCounters(index uint32) error {
	var (
		k    datapathPalCounterKey
		vs   []datapathPalCounter
		mine []datapathPalCounterKey
	)
	it := d.objs.PalCounters.Iterate()
	for it.Next(&k, &vs) {
		if k.Index == index {
			mine = append(mine, k)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("datapath: delete counters of %d: %w", index, err)
	}
	for _, k := range mine {
		if err := d.objs.PalCounters.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("datapath: delete counters of %d: %w", index, err)
		}
	}
	return nil
}

// Stats are the programs' own troubles, summed over the CPUs.
type Stats struct {
	// EventsLost counts drop events not written because the ring buffer
	// was full (the packets were dropped and counted all the same).
	EventsLost uint64
	// CountersFull counts packets not counted because the counter map was
	// full.
	CountersFull uint64
}

// Stats reads the programs' own counters.
func (d *Datapath) Stats() (Stats, error) {
	read := func(slot uint32) (uint64, error) {
		var vs []uint64
		if err := d.objs.PalStats.Lookup(slot, &vs); err != nil {
			return 0, fmt.Errorf("datapath: read stats: %w", err)
		}
		var n uint64
		for _, v := range vs {
			n += v
		}
		return n, nil
	}
	var (
		s   Stats
		err error
	)
	if s.EventsLost, err = read(statEventsLost); err != nil {
		return Stats{}, err
	}
	if s.CountersFull, err = read(statCountersFull); err != nil {
		return Stats{}, err
	}
	return s, nil
}

// Slots of pal_stats (datapath.h).
const (
	statEventsLost   = 0
	statCountersFull = 1
)
