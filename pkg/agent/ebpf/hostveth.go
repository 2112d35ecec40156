package ebpf

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"

	"github.com/palisade-net/palisade/pkg/netns"
)

// hostLink is the host-side end of a pod's veth pair.
type hostLink struct {
	name  string
	index int
	// peer is the pod-side interface, in the pod's namespace.
	peer string
}

// hostVeths returns the veths of the caller's network namespace (the
// node's, where the agent runs) whose peer is in the pod namespace h: a
// link of the node points into h (IFLA_LINK_NETNSID is the id the node
// gives h) and its IFLA_LINK names a veth of h whose own IFLA_LINK names
// it back. With ips, only pairs whose pod-side end carries one of them
// count. No id for h, or no such link, gives none and no error.
func hostVeths(h *netns.Handle, ips []netip.Addr) ([]hostLink, error) {
	id, err := netlink.GetNetNsIdByFd(h.Fd())
	if err != nil {
		return nil, fmt.Errorf("netns id of the pod's namespace: %w", err)
	}
	if id < 0 {
		return nil, nil // nothing of this namespace refers to it
	}
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list the node's links: %w", err)
	}
	pod, err := netlink.NewHandleAt(vnetns.NsHandle(h.Fd()))
	if err != nil {
		return nil, fmt.Errorf("netlink in the pod's namespace: %w", err)
	}
	defer pod.Close()
	var out []hostLink
	for _, l := range links {
		a := l.Attrs()
		if l.Type() != "veth" || a.NetNsID != id || a.ParentIndex == 0 {
			continue
		}
		peer, err := pod.LinkByIndex(a.ParentIndex)
		if err != nil {
			var nf netlink.LinkNotFoundError
			if errors.As(err, &nf) {
				continue
			}
			return nil, fmt.Errorf("peer of %s: %w", a.Name, err)
		}
		if peer.Type() != "veth" || peer.Attrs().ParentIndex != a.Index {
			continue
		}
		if len(ips) > 0 {
			ok, err := hasAddr(pod, peer, ips)
			if err != nil {
				return nil, err
			}
			if !ok {
				continue
			}
		}
		out = append(out, hostLink{name: a.Name, index: a.Index, peer: peer.Attrs().Name})
	}
	return out, nil
}

func hasAddr(h *netlink.Handle, l netlink.Link, ips []netip.Addr) (bool, error) {
	addrs, err := h.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return false, fmt.Errorf("addresses of %s in the pod: %w", l.Attrs().Name, err)
	}
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if ok && slices.Contains(ips, ip.Unmap()) {
			return true, nil
		}
	}
	return false, nil
}
