package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"

	pnetns "github.com/palisade-net/palisade/pkg/netns"
	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// netnsDir is where "ip netns" keeps its named namespaces.
const netnsDir = "/var/run/netns"

// etcNetnsDir is where "ip netns exec" finds per-namespace /etc files.
const etcNetnsDir = "/etc/netns"

// system runs the host tools the lab needs. It never changes anything in the
// root network namespace: every command either manages named namespaces
// ("ip netns add/delete") or runs inside one ("ip netns exec NAME ...").
type system struct {
	ip string // path of iproute2's ip
}

func newSystem() (*system, error) {
	ip, err := exec.LookPath("ip")
	if err != nil {
		for _, p := range []string{"/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"} {
			if st, serr := os.Stat(p); serr == nil && !st.IsDir() {
				ip, err = p, nil
				break
			}
		}
	}
	if err != nil {
		return nil, fmt.Errorf("iproute2's ip not found: %w", err)
	}
	return &system{ip: ip}, nil
}

// run runs a command and returns its output; the error carries the output.
func run(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("%s %s: %w: %s", filepath.Base(name), strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return out, nil
}

// inNetns runs a command inside the named netns.
func (sys *system) inNetns(ctx context.Context, ns string, stdin []byte, args ...string) ([]byte, error) {
	return run(ctx, stdin, sys.ip, append([]string{"netns", "exec", ns}, args...)...)
}

func netnsPath(name string) string { return filepath.Join(netnsDir, name) }

func netnsExists(name string) bool {
	_, err := os.Stat(netnsPath(name))
	return err == nil
}

// listNetns returns the names of all named network namespaces.
func listNetns() ([]string, error) {
	entries, err := os.ReadDir(netnsDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list netns: %w", err)
	}
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	sort.Strings(out)
	return out, nil
}

func (sys *system) addNetns(ctx context.Context, name string) error {
	if _, err := run(ctx, nil, sys.ip, "netns", "add", name); err != nil {
		return fmt.Errorf("create netns %s: %w", name, err)
	}
	return nil
}

// deleteNetns removes a named netns; a missing one is not an error.
func (sys *system) deleteNetns(ctx context.Context, name string) error {
	if !netnsExists(name) {
		return nil
	}
	if _, err := run(ctx, nil, sys.ip, "netns", "delete", name); err != nil {
		if !netnsExists(name) {
			return nil
		}
		return fmt.Errorf("delete netns %s: %w", name, err)
	}
	return nil
}

// netnsInode returns the inode that identifies the named netns, or 0.
func netnsInode(name string) uint64 {
	var st unix.Stat_t
	if err := unix.Stat(netnsPath(name), &st); err != nil {
		return 0
	}
	return st.Ino
}

// doInNetns runs fn on a thread switched into the named netns, and checks
// that the switch really happened before fn runs, so that nothing meant for
// a lab namespace can ever land in the root namespace.
func doInNetns(name string, fn func() error) error {
	h, err := pnetns.Open(netnsPath(name))
	if err != nil {
		return err
	}
	defer h.Close()
	want, err := h.Inode()
	if err != nil {
		return err
	}
	return h.Do(func() error {
		var st unix.Stat_t
		if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
			return fmt.Errorf("netns %s: verify: %w", name, err)
		}
		if st.Ino != want {
			return fmt.Errorf("netns %s: thread is in netns inode %d, want %d; refusing to continue", name, st.Ino, want)
		}
		return fn()
	})
}

// sysctl is one /proc/sys setting. Optional ones are skipped when the kernel
// does not have them (for example net/bridge without br_netfilter).
type sysctl struct {
	key, value string
	optional   bool
}

func setSysctls(ns string, settings ...sysctl) error {
	return doInNetns(ns, func() error {
		for _, s := range settings {
			path := filepath.Join("/proc/sys", s.key)
			if err := os.WriteFile(path, []byte(s.value), 0o644); err != nil {
				if s.optional && errors.Is(err, os.ErrNotExist) {
					continue
				}
				return fmt.Errorf("netns %s: sysctl %s=%s: %w", ns, s.key, s.value, err)
			}
		}
		return nil
	})
}

// withNetlink runs fn with a netlink handle bound to the named netns.
func withNetlink(name string, fn func(h *netlink.Handle, fd int) error) error {
	ns, err := vnetns.GetFromName(name)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", name, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("netlink in netns %s: %w", name, err)
	}
	defer h.Close()
	return fn(h, int(ns))
}

// mac derives a stable, locally administered MAC address from an IPv4
// address, so captures and neighbour tables are easy to read.
func mac(kind byte, a netip.Addr) net.HardwareAddr {
	b := a.As4()
	return net.HardwareAddr{0x02, kind, b[0], b[1], b[2], b[3]}
}

// MAC kinds.
const (
	macBridge   = 0x01
	macInterior = 0x02 // the end of a veth inside a node or pod
	macHost     = 0x03 // the end of a veth on a bridge
)

// commonSysctls apply to every netns the lab creates: no IPv6 on the lab's
// interfaces (lo keeps ::1), so captures show only the IPv4 the lab routes;
// and, where the kernel has br_netfilter, bridged frames skip iptables, so
// forwarding behaves the same on every host.
func commonSysctls() []sysctl {
	return []sysctl{
		{key: "net/ipv6/conf/default/disable_ipv6", value: "1", optional: true},
		{key: "net/bridge/bridge-nf-call-iptables", value: "0", optional: true},
		{key: "net/bridge/bridge-nf-call-ip6tables", value: "0", optional: true},
		{key: "net/bridge/bridge-nf-call-arptables", value: "0", optional: true},
	}
}

func linkUp(h *netlink.Handle, name string) error {
	l, err := h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("link %s: %w", name, err)
	}
	if err := h.LinkSetUp(l); err != nil {
		return fmt.Errorf("link %s up: %w", name, err)
	}
	return nil
}

func addAddr(h *netlink.Handle, name string, p netip.Prefix) error {
	l, err := h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("link %s: %w", name, err)
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), 32)}}
	if err := h.AddrReplace(l, addr); err != nil {
		return fmt.Errorf("address %s on %s: %w", p, name, err)
	}
	return nil
}

// createBridge creates a bridge with a fixed MAC (a bridge otherwise takes
// the lowest MAC of its ports, which changes as pods come and go).
func createBridge(h *netlink.Handle, name string, hw net.HardwareAddr) error {
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name, HardwareAddr: hw}}
	if err := h.LinkAdd(br); err != nil {
		return fmt.Errorf("create bridge %s: %w", name, err)
	}
	return linkUp(h, name)
}

// createVethToBridge creates a veth pair from the namespace of h: hostName
// stays there and is attached to bridge; the peer is created directly inside
// the namespace peerFd as peerName. Neither end ever exists in the root
// namespace.
func createVethToBridge(h *netlink.Handle, hostName, bridge string, hostHW net.HardwareAddr, peerFd int, peerName string, peerHW net.HardwareAddr, isolated bool) error {
	br, err := h.LinkByName(bridge)
	if err != nil {
		return fmt.Errorf("bridge %s: %w", bridge, err)
	}
	veth := &netlink.Veth{
		LinkAttrs:        netlink.LinkAttrs{Name: hostName, HardwareAddr: hostHW, MasterIndex: br.Attrs().Index},
		PeerName:         peerName,
		PeerHardwareAddr: peerHW,
		PeerNamespace:    netlink.NsFd(peerFd),
	}
	if err := h.LinkAdd(veth); err != nil {
		return fmt.Errorf("create veth %s (peer %s): %w", hostName, peerName, err)
	}
	l, err := h.LinkByName(hostName)
	if err != nil {
		return fmt.Errorf("veth %s: %w", hostName, err)
	}
	if l.Attrs().MasterIndex != br.Attrs().Index {
		if err := h.LinkSetMaster(l, br); err != nil {
			return fmt.Errorf("attach %s to %s: %w", hostName, bridge, err)
		}
	}
	if isolated {
		if err := h.LinkSetIsolated(l, true); err != nil {
			return fmt.Errorf("isolate bridge port %s: %w", hostName, err)
		}
	}
	return linkUp(h, hostName)
}

// setupUnderlay creates the underlay netns and its bridge.
func (sys *system) setupUnderlay(ctx context.Context, name string) error {
	if err := sys.addNetns(ctx, name); err != nil {
		return err
	}
	if err := setSysctls(name, commonSysctls()...); err != nil {
		return err
	}
	return withNetlink(name, func(h *netlink.Handle, _ int) error {
		if err := linkUp(h, "lo"); err != nil {
			return err
		}
		return createBridge(h, UnderlayBridge, net.HardwareAddr{0x02, macBridge, 10, 88, 0, 1})
	})
}

// setupNode creates a node's netns, plugs it into the underlay and creates
// its pod bridge.
//
// Pods on one node reach each other through the node, at layer 3: the pod
// ports of the bridge are isolated from each other, and the bridge answers
// ARP for the whole pod CIDR (proxy_arp with proxy_arp_pvlan). So every
// packet between two pods passes the node's IP stack (and its conntrack),
// which is what makes Service DNAT work for pods on the same node without
// relying on br_netfilter, and gives one place to observe all pod traffic.
func (sys *system) setupNode(ctx context.Context, underlay string, n *nodeState) error {
	if err := sys.addNetns(ctx, n.Netns); err != nil {
		return err
	}
	settings := append(commonSysctls(),
		sysctl{key: "net/ipv4/ip_forward", value: "1"},
		sysctl{key: "net/ipv4/conf/all/send_redirects", value: "0"},
		sysctl{key: "net/ipv4/conf/default/send_redirects", value: "0"},
		sysctl{key: "net/ipv4/conf/all/rp_filter", value: "0"},
		sysctl{key: "net/ipv4/conf/default/rp_filter", value: "0"},
	)
	if err := setSysctls(n.Netns, settings...); err != nil {
		return err
	}
	nodeNS, err := vnetns.GetFromName(n.Netns)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", n.Netns, err)
	}
	defer nodeNS.Close()
	err = withNetlink(underlay, func(h *netlink.Handle, _ int) error {
		return createVethToBridge(h, n.UnderlayPort, UnderlayBridge, mac(macHost, n.UnderlayIP),
			int(nodeNS), NodeUplink, mac(macInterior, n.UnderlayIP), false)
	})
	if err != nil {
		return fmt.Errorf("node %s: %w", n.Name, err)
	}
	err = withNetlink(n.Netns, func(h *netlink.Handle, _ int) error {
		if err := linkUp(h, "lo"); err != nil {
			return err
		}
		if err := addAddr(h, NodeUplink, netip.PrefixFrom(n.UnderlayIP, 24)); err != nil {
			return err
		}
		if err := linkUp(h, NodeUplink); err != nil {
			return err
		}
		if err := createBridge(h, NodeBridge, mac(macBridge, n.Gateway)); err != nil {
			return err
		}
		return addAddr(h, NodeBridge, netip.PrefixFrom(n.Gateway, n.PodCIDR.Bits()))
	})
	if err != nil {
		return fmt.Errorf("node %s: %w", n.Name, err)
	}
	bridge := "net/ipv4/conf/" + NodeBridge + "/"
	return setSysctls(n.Netns,
		sysctl{key: bridge + "proxy_arp", value: "1"},
		sysctl{key: bridge + "proxy_arp_pvlan", value: "1"},
		sysctl{key: bridge + "send_redirects", value: "0"},
		sysctl{key: "net/ipv4/neigh/" + NodeBridge + "/proxy_delay", value: "0"},
	)
}

// syncRoutes gives every node a route to every other node's pod CIDR via
// that node's underlay address.
func syncRoutes(nodes []*nodeState) error {
	for _, n := range nodes {
		err := withNetlink(n.Netns, func(h *netlink.Handle, _ int) error {
			up, err := h.LinkByName(NodeUplink)
			if err != nil {
				return fmt.Errorf("link %s: %w", NodeUplink, err)
			}
			for _, o := range nodes {
				if o == n {
					continue
				}
				r := &netlink.Route{
					LinkIndex: up.Attrs().Index,
					Dst:       &net.IPNet{IP: o.PodCIDR.Addr().AsSlice(), Mask: net.CIDRMask(o.PodCIDR.Bits(), 32)},
					Gw:        o.UnderlayIP.AsSlice(),
				}
				if err := h.RouteReplace(r); err != nil {
					return fmt.Errorf("route %s via %s: %w", o.PodCIDR, o.UnderlayIP, err)
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("node %s: %w", n.Name, err)
		}
	}
	return nil
}

// setupPodNetwork creates a pod's netns and wires it to its node's bridge.
func (sys *system) setupPodNetwork(ctx context.Context, n *nodeState, p *podState) error {
	if err := sys.addNetns(ctx, p.Netns); err != nil {
		return err
	}
	if err := setSysctls(p.Netns, commonSysctls()...); err != nil {
		return err
	}
	podNS, err := vnetns.GetFromName(p.Netns)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", p.Netns, err)
	}
	defer podNS.Close()
	err = withNetlink(n.Netns, func(h *netlink.Handle, _ int) error {
		return createVethToBridge(h, p.HostVeth, NodeBridge, mac(macHost, p.IP),
			int(podNS), PodInterface, mac(macInterior, p.IP), true)
	})
	if err != nil {
		return fmt.Errorf("pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	err = withNetlink(p.Netns, func(h *netlink.Handle, _ int) error {
		if err := linkUp(h, "lo"); err != nil {
			return err
		}
		if err := addAddr(h, PodInterface, netip.PrefixFrom(p.IP, n.PodCIDR.Bits())); err != nil {
			return err
		}
		if err := linkUp(h, PodInterface); err != nil {
			return err
		}
		eth, err := h.LinkByName(PodInterface)
		if err != nil {
			return fmt.Errorf("link %s: %w", PodInterface, err)
		}
		r := &netlink.Route{LinkIndex: eth.Attrs().Index, Gw: n.Gateway.AsSlice()}
		if err := h.RouteReplace(r); err != nil {
			return fmt.Errorf("default route via %s: %w", n.Gateway, err)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	return nil
}

// deleteLink removes a link inside a netns; a missing netns or link is fine.
func deleteLink(ns, name string) error {
	if !netnsExists(ns) {
		return nil
	}
	return withNetlink(ns, func(h *netlink.Handle, _ int) error {
		l, err := h.LinkByName(name)
		if err != nil {
			var nf netlink.LinkNotFoundError
			if errors.As(err, &nf) {
				return nil
			}
			return fmt.Errorf("link %s in %s: %w", name, ns, err)
		}
		if err := h.LinkDel(l); err != nil {
			return fmt.Errorf("delete link %s in %s: %w", name, ns, err)
		}
		return nil
	})
}
