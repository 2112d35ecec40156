package datapath

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/palisade-net/palisade/pkg/netns"
)

// AttachMode says how the programs are attached to an interface.
type AttachMode int

// Attach modes.
const (
	// AttachAuto uses TCX when the kernel has it (Linux 6.6), tc otherwise.
	AttachAuto AttachMode = iota
	// AttachTCX attaches with TCX links, first in the interface's chain,
	// pinned under Options.PinDir/links.
	AttachTCX
	// AttachTC attaches direct-action cls_bpf filters under a clsact qdisc
	// (priority TCPriority, handle TCHandle). Filters stay until removed or
	// the interface goes, with or without pins.
	AttachTC
)

func (m AttachMode) String() string {
	switch m {
	case AttachAuto:
		return "auto"
	case AttachTCX:
		return "tcx"
	case AttachTC:
		return "tc"
	}
	return fmt.Sprintf("attach-mode(%d)", int(m))
}

// The cls_bpf filters of AttachTC. Only filters with this priority and
// handle whose name is one of the programs' are ever replaced or deleted.
const (
	TCPriority = 1
	TCHandle   = 0x539
)

// hook is one attachment point of an interface.
type hook struct {
	dir       Direction
	tcx       ebpf.AttachType
	tcParent  uint32
	pinSuffix string
}

var hooks = []hook{
	{dir: FromPod, tcx: ebpf.AttachTCXIngress, tcParent: netlink.HANDLE_MIN_INGRESS, pinSuffix: "ingress"},
	{dir: ToPod, tcx: ebpf.AttachTCXEgress, tcParent: netlink.HANDLE_MIN_EGRESS, pinSuffix: "egress"},
}

func (d *Datapath) program(dir Direction) (*ebpf.Program, string) {
	if dir == FromPod {
		return d.objs.PalFromPod, datapathProgPalFromPod
	}
	return d.objs.PalToPod, datapathProgPalToPod
}

// target is a resolved interface.
type target struct {
	ns      *netns.Handle
	nl      *netlink.Handle
	link    netlink.Link
	ifindex int
	// key names the interface's pins: netns inode and ifindex, which
	// together identify it for its lifetime.
	key string
}

func (d *Datapath) resolve(ns *netns.Handle, ifname string) (*target, error) {
	var (
		nl  *netlink.Handle
		err error
		ino uint64
	)
	if ns == nil {
		nl, err = netlink.NewHandle()
		if err == nil {
			var st unix.Stat_t
			if err = unix.Stat("/proc/thread-self/ns/net", &st); err == nil {
				ino = st.Ino
			}
		}
	} else {
		nl, err = netlink.NewHandleAt(vnetns.NsHandle(ns.Fd()))
		if err == nil {
			ino, err = ns.Inode()
		}
	}
	if err != nil {
		if nl != nil {
			nl.Close()
		}
		return nil, fmt.Errorf("netns of %s: %w", ifname, err)
	}
	l, err := nl.LinkByName(ifname)
	if err != nil {
		nl.Close()
		return nil, fmt.Errorf("interface %s: %w", ifname, err)
	}
	if et := l.Attrs().EncapType; et != "ether" {
		nl.Close()
		return nil, fmt.Errorf("interface %s is %q, the programs need Ethernet", ifname, et)
	}
	return &target{
		ns:      ns,
		nl:      nl,
		link:    l,
		ifindex: l.Attrs().Index,
		key:     fmt.Sprintf("%d_%d", ino, l.Attrs().Index),
	}, nil
}

func (t *target) close() { t.nl.Close() }

// do runs fn inside the interface's namespace (TCX attaches by ifindex,
// which the kernel resolves in the caller's namespace).
func (t *target) do(fn func() error) error {
	if t.ns == nil {
		return fn()
	}
	return t.ns.Do(fn)
}

// Attach puts FromPod on the ingress and ToPod on the egress of the
// interface ifname in ns (nil: the caller's namespace): normally the
// host-side end of an enrolled pod's veth. It returns the mode used.
//
// Attach is idempotent and takes over from an earlier Datapath (a
// restarted agent): a pinned TCX link of the interface is updated to this
// Datapath's program in place, and a cls_bpf filter of ours replaced, both
// atomically, so no packet passes unguarded. Switching modes attaches the
// new way first and then removes the old one.
func (d *Datapath) Attach(ns *netns.Handle, ifname string, mode AttachMode) (AttachMode, error) {
	t, err := d.resolve(ns, ifname)
	if err != nil {
		return 0, fmt.Errorf("datapath: attach: %w", err)
	}
	defer t.close()
	switch mode {
	case AttachAuto, AttachTCX:
		err := d.attachTCX(t)
		if err == nil {
			if err := d.detachTC(t); err != nil {
				return AttachTCX, fmt.Errorf("datapath: attach %s: remove old tc filters: %w", ifname, err)
			}
			return AttachTCX, nil
		}
		if mode == AttachTCX || !errors.Is(err, ebpf.ErrNotSupported) {
			return 0, fmt.Errorf("datapath: attach %s (tcx): %w", ifname, err)
		}
		fallthrough
	case AttachTC:
		if err := d.attachTC(t); err != nil {
			return 0, fmt.Errorf("datapath: attach %s (tc): %w", ifname, err)
		}
		if err := d.detachTCX(t); err != nil {
			return AttachTC, fmt.Errorf("datapath: attach %s: remove old tcx links: %w", ifname, err)
		}
		return AttachTC, nil
	}
	return 0, fmt.Errorf("datapath: attach %s: unknown mode %d", ifname, int(mode))
}

// Detach removes the programs from the interface ifname in ns, whichever
// way they were attached (by this or an earlier Datapath). Detaching an
// interface without them is not an error. The clsact qdisc is left in
// place: others may use it.
func (d *Datapath) Detach(ns *netns.Handle, ifname string) error {
	t, err := d.resolve(ns, ifname)
	if err != nil {
		return fmt.Errorf("datapath: detach: %w", err)
	}
	defer t.close()
	return errors.Join(d.detachTCX(t), d.detachTC(t))
}

func (d *Datapath) linkPin(t *target, h hook) string {
	if d.pinDir == "" {
		return ""
	}
	return filepath.Join(d.pinDir, pinLinks, t.key+"_"+h.pinSuffix)
}

func (d *Datapath) attachTCX(t *target) error {
	for _, h := range hooks {
		prog, _ := d.program(h.dir)
		pin := d.linkPin(t, h)
		if pin != "" {
			updated, err := updatePinnedTCX(pin, t.ifindex, h, prog)
			if err != nil {
				return err
			}
			if updated {
				continue
			}
		}
		var l link.Link
		err := t.do(func() error {
			var err error
			l, err = link.AttachTCX(link.TCXOptions{
				Interface: t.ifindex,
				Program:   prog,
				Attach:    h.tcx,
				Anchor:    link.Head(),
			})
			return err
		})
		if err != nil {
			return fmt.Errorf("%s: %w", h.pinSuffix, err)
		}
		if pin == "" {
			d.mu.Lock()
			if old := d.links[t.key+"_"+h.pinSuffix]; old != nil {
				old.Close()
			}
			d.links[t.key+"_"+h.pinSuffix] = l
			d.mu.Unlock()
			continue
		}
		if err := l.Pin(pin); err != nil {
			l.Close()
			return fmt.Errorf("%s: pin link: %w", h.pinSuffix, err)
		}
		if err := l.Close(); err != nil {
			return fmt.Errorf("%s: %w", h.pinSuffix, err)
		}
	}
	return nil
}

// updatePinnedTCX points the link pinned at pin to prog. It reports false
// (and removes the pin) when there is no usable link there: none, or one
// whose interface is gone.
func updatePinnedTCX(pin string, ifindex int, h hook, prog *ebpf.Program) (bool, error) {
	l, err := link.LoadPinnedLink(pin, nil)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("%s: load pinned link %s: %w", h.pinSuffix, pin, err)
	}
	defer l.Close()
	info, err := l.Info()
	if err != nil {
		return false, fmt.Errorf("%s: pinned link %s: %w", h.pinSuffix, pin, err)
	}
	if tcx := info.TCX(); tcx == nil || int(tcx.Ifindex) != ifindex || ebpf.AttachType(tcx.AttachType) != h.tcx {
		// Defunct (its interface was deleted and the index reused) or
		// not ours: start again.
		if err := l.Unpin(); err != nil {
			return false, fmt.Errorf("%s: unpin stale link %s: %w", h.pinSuffix, pin, err)
		}
		return false, nil
	}
	if err := l.Update(prog); err != nil {
		return false, fmt.Errorf("%s: update pinned link %s: %w", h.pinSuffix, pin, err)
	}
	return true, nil
}

func (d *Datapath) detachTCX(t *target) error {
	var errs []error
	for _, h := range hooks {
		key := t.key + "_" + h.pinSuffix
		d.mu.Lock()
		if l := d.links[key]; l != nil {
			delete(d.links, key)
			if err := l.Close(); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", h.pinSuffix, err))
			}
		}
		d.mu.Unlock()
		pin := d.linkPin(t, h)
		if pin == "" {
			continue
		}
		if err := detachPinned(pin); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", h.pinSuffix, err))
		}
	}
	return errors.Join(errs...)
}

// detachPinned detaches and unpins the link pinned at pin, if any.
func detachPinned(pin string) error {
	l, err := link.LoadPinnedLink(pin, nil)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("load pinned link %s: %w", pin, err)
	}
	defer l.Close()
	if err := l.Detach(); err != nil && !errors.Is(err, unix.ENOLINK) {
		return fmt.Errorf("detach %s: %w", pin, err)
	}
	if err := l.Unpin(); err != nil {
		return fmt.Errorf("unpin %s: %w", pin, err)
	}
	return nil
}

func (d *Datapath) attachTC(t *target) error {
	q := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{
			LinkIndex: t.ifindex,
			Handle:    netlink.MakeHandle(0xffff, 0),
			Parent:    netlink.HANDLE_CLSACT,
		},
		QdiscType: "clsact",
	}
	if err := t.nl.QdiscAdd(q); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("add clsact qdisc: %w", err)
	}
	for _, h := range hooks {
		prog, name := d.program(h.dir)
		f := &netlink.BpfFilter{
			FilterAttrs: netlink.FilterAttrs{
				LinkIndex: t.ifindex,
				Parent:    h.tcParent,
				Handle:    TCHandle,
				Priority:  TCPriority,
				Protocol:  unix.ETH_P_ALL,
			},
			Fd:           prog.FD(),
			Name:         name,
			DirectAction: true,
		}
		if err := t.nl.FilterReplace(f); err != nil {
			return fmt.Errorf("%s: replace cls_bpf filter: %w", h.pinSuffix, err)
		}
	}
	return nil
}

// ourFilter tells the cls_bpf filters of AttachTC from anyone else's.
func ourFilter(f netlink.Filter) bool {
	b, ok := f.(*netlink.BpfFilter)
	return ok && b.Handle == TCHandle && b.Priority == TCPriority &&
		(b.Name == datapathProgPalFromPod || b.Name == datapathProgPalToPod)
}

func (d *Datapath) detachTC(t *target) error {
	var errs []error
	for _, h := range hooks {
		fs, err := t.nl.FilterList(t.link, h.tcParent)
		if err != nil {
			// No clsact qdisc: nothing of ours either.
			if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
				continue
			}
			errs = append(errs, fmt.Errorf("%s: list filters: %w", h.pinSuffix, err))
			continue
		}
		for _, f := range fs {
			if !ourFilter(f) {
				continue
			}
			if err := t.nl.FilterDel(f); err != nil && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("%s: delete filter: %w", h.pinSuffix, err))
			}
		}
	}
	return errors.Join(errs...)
}

// Prune removes the pins of TCX links whose interface is gone (a deleted
// pod's veth) and returns how many it removed. The kernel detached those
// links when the interface went; the pins only keep their memory.
func (d *Datapath) Prune() (int, error) {
	if d.pinDir == "" {
		return 0, nil
	}
	dir := filepath.Join(d.pinDir, pinLinks)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return 0, fmt.Errorf("datapath: prune: %w", err)
	}
	var (
		n    int
		errs []error
	)
	for _, e := range entries {
		pin := filepath.Join(dir, e.Name())
		l, err := link.LoadPinnedLink(pin, nil)
		if err != nil {
			errs = append(errs, fmt.Errorf("load %s: %w", pin, err))
			continue
		}
		info, err := l.Info()
		if err == nil && info.TCX() != nil && info.TCX().Ifindex != 0 {
			l.Close()
			continue
		}
		if err := l.Unpin(); err != nil {
			errs = append(errs, fmt.Errorf("unpin %s: %w", pin, err))
		} else {
			n++
		}
		l.Close()
	}
	if err := errors.Join(errs...); err != nil {
		return n, fmt.Errorf("datapath: prune: %w", err)
	}
	return n, nil
}

// Remove detaches every TCX link pinned under pinDir and deletes the pins
// (maps, programs, links) and the directory: the datapath is gone from the
// kernel once no interface holds a cls_bpf filter of it. Removing a
// directory that does not exist is not an error.
func Remove(pinDir string) error {
	links, err := os.ReadDir(filepath.Join(pinDir, pinLinks))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("datapath: remove %s: %w", pinDir, err)
	}
	var errs []error
	for _, e := range links {
		if err := detachPinned(filepath.Join(pinDir, pinLinks, e.Name())); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("datapath: remove %s: %w", pinDir, err)
	}
	if err := os.RemoveAll(pinDir); err != nil {
		return fmt.Errorf("datapath: remove %s: %w", pinDir, err)
	}
	return nil
}

// linkNames lists the pins of TCX links, for tests and diagnostics.
func (d *Datapath) linkNames() ([]string, error) {
	if d.pinDir == "" {
		return nil, nil
	}
	entries, err := os.ReadDir(filepath.Join(d.pinDir, pinLinks))
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), ".") {
			out = append(out, e.Name())
		}
	}
	return out, nil
}
