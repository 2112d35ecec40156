package redirect

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"golang.org/x/sys/unix"
)

// ip6tSOOriginalDst is IP6T_SO_ORIGINAL_DST from linux/netfilter_ipv6/ip6_tables.h.
const ip6tSOOriginalDst = 80

// OriginalDst returns the destination a connection was addressed to before
// a REDIRECT (or any DNAT) rewrote it, as recorded by conntrack: SO_ORIGINAL_DST
// for IPv4 (also on an IPv6 socket accepting IPv4 as v4-mapped addresses)
// and IP6T_SO_ORIGINAL_DST for IPv6. IPv4 results are plain IPv4 addresses,
// never v4-mapped. For a connection that was not rewritten it returns the
// connection's own local address, provided conntrack tracks the namespace.
func OriginalDst(conn *net.TCPConn) (netip.AddrPort, error) {
	if conn == nil {
		return netip.AddrPort{}, errors.New("original dst: nil connection")
	}
	la, ok := conn.LocalAddr().(*net.TCPAddr)
	if !ok || la == nil {
		return netip.AddrPort{}, errors.New("original dst: connection has no TCP local address")
	}
	v4 := la.IP.To4() != nil
	rc, err := conn.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("original dst: %w", err)
	}
	var (
		dst  netip.AddrPort
		serr error
	)
	if err := rc.Control(func(fd uintptr) {
		if v4 {
			dst, serr = originalDstV4(int(fd))
		} else {
			dst, serr = originalDstV6(int(fd))
		}
	}); err != nil {
		return netip.AddrPort{}, fmt.Errorf("original dst: %w", err)
	}
	if serr != nil {
		return netip.AddrPort{}, fmt.Errorf("original dst of %s: %w", la, serr)
	}
	return dst, nil
}

func originalDstV4(fd int) (netip.AddrPort, error) {
	// struct sockaddr_in is 16 bytes; IPv6Mreq is a 20-byte buffer that
	// holds it: family (host order), port (network order), address.
	m, err := unix.GetsockoptIPv6Mreq(fd, unix.SOL_IP, unix.SO_ORIGINAL_DST)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("getsockopt SO_ORIGINAL_DST: %w", err)
	}
	raw := m.Multiaddr[:]
	if fam := binary.NativeEndian.Uint16(raw[0:2]); fam != unix.AF_INET {
		return netip.AddrPort{}, fmt.Errorf("SO_ORIGINAL_DST returned address family %d", fam)
	}
	port := binary.BigEndian.Uint16(raw[2:4])
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte(raw[4:8])), port), nil
}

func originalDstV6(fd int) (netip.AddrPort, error) {
	// IPv6MTUInfo starts with a struct sockaddr_in6, which is what the
	// kernel writes.
	m, err := unix.GetsockoptIPv6MTUInfo(fd, unix.SOL_IPV6, ip6tSOOriginalDst)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("getsockopt IP6T_SO_ORIGINAL_DST: %w", err)
	}
	sa := m.Addr
	if sa.Family != unix.AF_INET6 {
		return netip.AddrPort{}, fmt.Errorf("IP6T_SO_ORIGINAL_DST returned address family %d", sa.Family)
	}
	// Port holds the bytes in network order.
	var p [2]byte
	binary.NativeEndian.PutUint16(p[:], sa.Port)
	port := binary.BigEndian.Uint16(p[:])
	return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), port), nil
}
