// Package datapath is Palisade's kernel datapath: two tc programs
// (bpf/datapath.c, compiled by bpf2go into this package) that mark, guard
// and count the traffic of enrolled pods, and the Go side that loads them,
// fills their maps, attaches them to pod interfaces and reads what they
// count and report.
//
// # Programs and attachment
//
// FromPod runs on tc ingress of an enrolled pod's host-side veth (packets
// the pod sends), ToPod on tc egress of the same interface (packets for the
// pod). The host side is outside the pod's reach: a pod that flushes its own
// redirect rules cannot remove the guard. Attach places both there, with
// TCX where the kernel has it (Linux 6.6) and clsact + cls_bpf otherwise.
//
// # Mark
//
// Every IP packet let through leaves with the bits of MarkMask set or
// cleared: MarkSrcEnrolled when its source address is an enrolled endpoint,
// MarkDstEnrolled when its destination is. The bits sit above the node
// proxy's mark (0x539 under mask 0xfff, never written) and below
// kube-proxy's 0x4000 and 0x8000:
//
//	0x00000fff  node proxy SO_MARK 0x539 (read: the proxy's packets are never dropped)
//	0x00001000  MarkSrcEnrolled
//	0x00002000  MarkDstEnrolled
//	0x0000c000  kube-proxy masquerade / drop (not touched)
//	0xffff0000  others: Calico, Cilium identities (not touched)
//
// Marks do not survive a change of network namespace (the kernel clears
// them when a packet crosses a veth into another namespace), so on the host
// side they are for the node's routing and iptables (ip rule fwmark
// 0x1000/0x1000), not for the rules inside the pod.
//
// # Guard
//
// From the map of enrolled endpoints (every enrolled pod address in the
// cluster, IPv4 and IPv6, with the pod's index and mode), the programs drop
//
//   - TCP between two enrolled endpoints that is not HBONE (to port 15008,
//     or from it without being a connection attempt) nor DNS (port 53):
//     ReasonPlaintext;
//   - TCP connection attempts (SYN without ACK) into a strict endpoint from
//     a source that is not enrolled, except to 15008 or 53 and from the
//     kubelet probe source: ReasonStrict;
//   - what cannot be parsed where it matters (fail closed): invalid IP
//     headers (ReasonMalformed), cut-short TCP or IPv6 extension headers of
//     guarded packets (ReasonTruncated), IPv6 extension header chains longer
//     than the programs follow (ReasonUnparsed), non-first fragments of TCP
//     between enrolled endpoints (ReasonFragment).
//
// UDP (DNS included), ICMP, ICMPv6, other protocols, non-IP frames, traffic
// into permissive endpoints from outside the mesh and every packet carrying
// the proxy mark pass. The rules and parsing limits are spelled out at the
// top of bpf/datapath.c.
//
// # Count
//
// Every IP packet is counted in a per-CPU hash keyed by the pod's endpoint
// index (that of the source for FromPod, of the destination for ToPod; 0
// when that address is not enrolled), direction, verdict and drop reason:
// Counters sums the CPUs. Every drop is also written to a ring buffer read
// with Datapath.Events, with addresses, ports, both endpoint indexes and the
// reason.
package datapath

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"

	"github.com/palisade-net/palisade/pkg/redirect"
)

// Mark bits written by the programs (see the package documentation).
const (
	MarkSrcEnrolled uint32 = 0x1000
	MarkDstEnrolled uint32 = 0x2000
	MarkMask               = MarkSrcEnrolled | MarkDstEnrolled
)

// Mode is an endpoint's enforcement mode.
type Mode uint8

// Modes, as in the namespace label palisade.dev/mtls-mode.
const (
	// ModePermissive lets plaintext from outside the mesh in.
	ModePermissive Mode = 0
	// ModeStrict refuses plaintext connections from outside the mesh.
	ModeStrict Mode = 1
)

func (m Mode) String() string {
	switch m {
	case ModePermissive:
		return "permissive"
	case ModeStrict:
		return "strict"
	}
	return fmt.Sprintf("mode(%d)", uint8(m))
}

// Direction tells which program saw a packet.
type Direction uint8

// Directions.
const (
	// FromPod: sent by the pod (host-side veth ingress).
	FromPod Direction = 0
	// ToPod: delivered to the pod (host-side veth egress).
	ToPod Direction = 1
)

func (d Direction) String() string {
	switch d {
	case FromPod:
		return "from_pod"
	case ToPod:
		return "to_pod"
	}
	return fmt.Sprintf("direction(%d)", uint8(d))
}

// Verdict is what the guard did with a packet.
type Verdict uint8

// Verdicts.
const (
	// VerdictPass: let through, not guarded or allowed plaintext.
	VerdictPass Verdict = 0
	// VerdictHBONE: let through, TCP to or from the HBONE port.
	VerdictHBONE Verdict = 1
	// VerdictProxy: would have been dropped but carries the proxy mark.
	VerdictProxy Verdict = 2
	// VerdictDrop: dropped.
	VerdictDrop Verdict = 3
)

func (v Verdict) String() string {
	switch v {
	case VerdictPass:
		return "pass"
	case VerdictHBONE:
		return "hbone"
	case VerdictProxy:
		return "proxy"
	case VerdictDrop:
		return "drop"
	}
	return fmt.Sprintf("verdict(%d)", uint8(v))
}

// Reason says why a packet was dropped.
type Reason uint8

// Drop reasons.
const (
	ReasonNone Reason = 0
	// ReasonPlaintext: TCP between two enrolled endpoints that is not HBONE.
	ReasonPlaintext Reason = 1
	// ReasonStrict: plaintext TCP connection attempt into a strict endpoint.
	ReasonStrict Reason = 2
	// ReasonMalformed: IP header cut short or invalid.
	ReasonMalformed Reason = 3
	// ReasonTruncated: TCP or IPv6 extension header of a guarded packet
	// cut short.
	ReasonTruncated Reason = 4
	// ReasonUnparsed: guarded IPv6 packet with an extension header chain
	// longer than the programs follow.
	ReasonUnparsed Reason = 5
	// ReasonFragment: non-first fragment of TCP between two enrolled
	// endpoints.
	ReasonFragment Reason = 6
)

func (r Reason) String() string {
	switch r {
	case ReasonNone:
		return "none"
	case ReasonPlaintext:
		return "plaintext_between_enrolled"
	case ReasonStrict:
		return "strict_plaintext_inbound"
	case ReasonMalformed:
		return "malformed_ip_header"
	case ReasonTruncated:
		return "truncated_header"
	case ReasonUnparsed:
		return "unparsed_ipv6_extension_headers"
	case ReasonFragment:
		return "tcp_fragment_between_enrolled"
	}
	return fmt.Sprintf("reason(%d)", uint8(r))
}

// Endpoint is what the programs know about an enrolled address.
type Endpoint struct {
	// Index identifies the pod in the caller's table; every address of a
	// pod has the same one. It keys the counters and appears in events.
	// 0 is reserved (it means "not enrolled") and rejected.
	Index uint32
	// Mode is the pod's enforcement mode.
	Mode Mode
}

// Config is fixed when the programs are loaded.
type Config struct {
	// HBONEPort is the port of HBONE tunnels (15008).
	HBONEPort uint16
	// ProxyMark and ProxyMask identify the node proxy's packets
	// (mark&ProxyMask == ProxyMark), which are never dropped.
	ProxyMark uint32
	ProxyMask uint32
	// ProbeSourceV4 and ProbeSourceV6 are the kubelet probe sources
	// exempted from strict mode; a zero Addr disables one.
	ProbeSourceV4 netip.Addr
	ProbeSourceV6 netip.Addr
}

// DefaultConfig returns the values fixed by the Palisade design, the same
// the redirect rules use.
func DefaultConfig() Config {
	r := redirect.DefaultConfig()
	return Config{
		HBONEPort:     r.InboundHBONEPort,
		ProxyMark:     r.Mark,
		ProxyMask:     r.Mask,
		ProbeSourceV4: r.ProbeSourceV4,
		ProbeSourceV6: r.ProbeSourceV6,
	}
}

// Validate reports every problem with c, naming the fields.
func (c Config) Validate() error {
	var errs []error
	if c.HBONEPort == 0 {
		errs = append(errs, errors.New("HBONEPort: must not be 0"))
	}
	if c.ProxyMask == 0 || c.ProxyMark == 0 || c.ProxyMark&^c.ProxyMask != 0 {
		errs = append(errs, fmt.Errorf("ProxyMark: %#x must be non-zero and within ProxyMask %#x", c.ProxyMark, c.ProxyMask))
	}
	if c.ProxyMask&MarkMask != 0 {
		errs = append(errs, fmt.Errorf("ProxyMask: %#x overlaps the datapath's mark bits %#x", c.ProxyMask, MarkMask))
	}
	if c.ProbeSourceV4.IsValid() && !c.ProbeSourceV4.Is4() {
		errs = append(errs, fmt.Errorf("ProbeSourceV4: %s is not an IPv4 address", c.ProbeSourceV4))
	}
	if c.ProbeSourceV6.IsValid() && (!c.ProbeSourceV6.Is6() || c.ProbeSourceV6.Is4In6()) {
		errs = append(errs, fmt.Errorf("ProbeSourceV6: %s is not a plain IPv6 address", c.ProbeSourceV6))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("datapath config: %w", err)
	}
	return nil
}

// addrKey is the 16-byte map key of an address: IPv6 as is, IPv4 (also
// when written IPv4-mapped) as ::ffff:a.b.c.d. Zones are dropped.
func addrKey(a netip.Addr) ([16]byte, error) {
	if !a.IsValid() {
		return [16]byte{}, errors.New("invalid address")
	}
	return a.Unmap().WithZone("").As16(), nil
}

// keyAddr is the inverse of addrKey.
func keyAddr(k [16]byte) netip.Addr {
	return netip.AddrFrom16(k).Unmap()
}

// palAddr converts the generated struct to a key (its words hold the
// address bytes in memory order).
func palAddr(a datapathPalAddr) [16]byte {
	var k [16]byte
	for i, w := range a.W {
		binary.NativeEndian.PutUint32(k[4*i:], w)
	}
	return k
}

// spec returns the embedded collection with cfg applied to its constants.
func spec(cfg Config) (*ebpf.CollectionSpec, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s, err := loadDatapath()
	if err != nil {
		return nil, fmt.Errorf("datapath: %w", err)
	}
	var zero [16]byte
	probe4, probe6 := zero, zero
	if cfg.ProbeSourceV4.IsValid() {
		probe4, _ = addrKey(cfg.ProbeSourceV4)
	}
	if cfg.ProbeSourceV6.IsValid() {
		probe6, _ = addrKey(cfg.ProbeSourceV6)
	}
	set := []struct {
		name string
		v    any
	}{
		{datapathVarPalHbonePort, cfg.HBONEPort},
		{datapathVarPalProxyMark, cfg.ProxyMark},
		{datapathVarPalProxyMask, cfg.ProxyMask},
		{datapathVarPalProbeV4, probe4},
		{datapathVarPalProbeV6, probe6},
	}
	for _, v := range set {
		vs, ok := s.Variables[v.name]
		if !ok {
			return nil, fmt.Errorf("datapath: object has no variable %s", v.name)
		}
		if err := vs.Set(v.v); err != nil {
			return nil, fmt.Errorf("datapath: set %s: %w", v.name, err)
		}
	}
	return s, nil
}
