package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/palisade-net/palisade/pkg/netns"
)

// Finder locates a pod's network namespace. The CNI plugin tells the agent
// the path for new pods; pods that were already running when the agent
// started are found by scanning named namespaces (/var/run/netns) and every
// process's namespace (/proc/PID/ns/net), de-duplicated by inode. This is how
// the agent recovers after a crash without any state of its own.
//
// A pod IP alone does not identify a namespace: other namespaces on the host
// (another node of a lab, a nested runtime, a test) may hold the same
// address. A scanned namespace is therefore accepted only when it holds one
// of the pod's IPs and is attached to this node: one of the links in the
// agent's own namespace (the pod's veth peer) points into it, compared by the
// kernel's namespace id (IFLA_LINK_NETNSID against RTM_GETNSID).
type Finder struct {
	// NetnsDir holds named namespaces; default /var/run/netns.
	NetnsDir string
	// ProcDir is the proc filesystem; default /proc.
	ProcDir string
	// AnyAttachment skips the check that a scanned namespace is linked to
	// the agent's namespace, for CNIs whose pod interfaces are not veth
	// pairs into the node (the IP match alone then decides).
	AnyAttachment bool
	Logger        *slog.Logger
}

// ErrNotFound says no namespace holds any of the pod's IPs.
var ErrNotFound = errors.New("network namespace not found")

// Find returns an open handle on the namespace of the pod with the given IPs.
// hint, when non-empty, is tried first (a path from CNI ADD).
func (f *Finder) Find(uid, hint string, ips []netip.Addr) (*netns.Handle, string, error) {
	if hint != "" {
		h, err := netns.Open(hint)
		if err == nil {
			if ok, _ := hasAnyIP(h, ips); ok {
				return h, hint, nil
			}
			h.Close()
		}
	}
	self, _ := inodeOf("/proc/self/ns/net")
	seen := map[uint64]bool{self: true}
	for _, path := range f.candidates() {
		ino, err := inodeOf(path)
		if err != nil || seen[ino] {
			continue
		}
		seen[ino] = true
		h, err := netns.Open(path)
		if err != nil {
			continue
		}
		if ok, _ := hasAnyIP(h, ips); ok && (f.AnyAttachment || attachedHere(h)) {
			return h, path, nil
		}
		h.Close()
	}
	return nil, "", fmt.Errorf("pod %s with IPs %v: %w", uid, ips, ErrNotFound)
}

func (f *Finder) candidates() []string {
	nsDir := f.NetnsDir
	if nsDir == "" {
		nsDir = "/var/run/netns"
	}
	procDir := f.ProcDir
	if procDir == "" {
		procDir = "/proc"
	}
	var out []string
	if entries, err := os.ReadDir(nsDir); err == nil {
		for _, e := range entries {
			out = append(out, filepath.Join(nsDir, e.Name()))
		}
	}
	if entries, err := os.ReadDir(procDir); err == nil {
		for _, e := range entries {
			if _, err := strconv.Atoi(e.Name()); err == nil {
				out = append(out, filepath.Join(procDir, e.Name(), "ns", "net"))
			}
		}
	}
	return out
}

func inodeOf(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

// hasAnyIP reports whether any of ips is configured on an interface inside
// the namespace.
func hasAnyIP(h *netns.Handle, ips []netip.Addr) (bool, error) {
	var found bool
	err := h.Do(func() error {
		addrs, err := net.InterfaceAddrs()
		if err != nil {
			return err
		}
		for _, a := range addrs {
			pfx, err := netip.ParsePrefix(a.String())
			if err != nil {
				continue
			}
			for _, ip := range ips {
				if pfx.Addr() == ip {
					found = true
					return nil
				}
			}
		}
		return nil
	})
	return found, err
}

// attachedHere reports whether a link in the caller's network namespace has
// its peer inside h (a veth pair between this node and the pod).
func attachedHere(h *netns.Handle) bool {
	id, err := netlink.GetNetNsIdByFd(h.Fd())
	if err != nil || id < 0 {
		return false // no id assigned: nothing here refers to that namespace
	}
	links, err := netlink.LinkList()
	if err != nil {
		return false
	}
	for _, l := range links {
		if l.Attrs().NetNsID == id {
			return true
		}
	}
	return false
}
