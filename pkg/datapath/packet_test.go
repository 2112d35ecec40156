package datapath

import (
	"encoding/binary"
	"net/netip"
)

// A tiny packet builder for the program tests: Ethernet frames carrying
// IPv4 or IPv6 (with options, extension headers, fragments), TCP, UDP and
// ICMP, every field settable, including to wrong values. Checksums are left
// zero: the programs do not read them.

const (
	etherIPv4 = 0x0800
	etherIPv6 = 0x86dd
	etherARP  = 0x0806

	protoHopOpts  = 0
	protoICMP     = 1
	protoTCP      = 6
	protoUDP      = 17
	protoRouting  = 43
	protoFragment = 44
	protoAH       = 51
	protoICMPv6   = 58
	protoNone     = 59
	protoDstOpts  = 60

	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpPSH = 0x08
	tcpACK = 0x10
)

func frame(etherType uint16, payload []byte) []byte {
	b := make([]byte, 14, 14+len(payload))
	copy(b[0:6], []byte{0x02, 0, 0, 0, 0, 0x02})
	copy(b[6:12], []byte{0x02, 0, 0, 0, 0, 0x01})
	binary.BigEndian.PutUint16(b[12:], etherType)
	return append(b, payload...)
}

// ip4 describes an IPv4 header; zero fields get sane values.
type ip4 struct {
	src, dst netip.Addr
	proto    uint8
	options  []byte // padded to a multiple of 4
	ihl      int    // overrides the computed IHL when non-zero
	version  int    // overrides 4 when non-zero
	fragOff  uint16 // in 8-byte units
	more     bool   // MF
}

func (h ip4) packet(payload []byte) []byte {
	opts := append([]byte(nil), h.options...)
	for len(opts)%4 != 0 {
		opts = append(opts, 0) // end of options list
	}
	hl := 20 + len(opts)
	b := make([]byte, hl, hl+len(payload))
	ihl, ver := hl/4, 4
	if h.ihl != 0 {
		ihl = h.ihl
	}
	if h.version != 0 {
		ver = h.version
	}
	b[0] = byte(ver<<4 | ihl&0x0f)
	binary.BigEndian.PutUint16(b[2:], uint16(hl+len(payload)))
	binary.BigEndian.PutUint16(b[4:], 0x1234)
	frag := h.fragOff & 0x1fff
	if h.more {
		frag |= 0x2000
	}
	binary.BigEndian.PutUint16(b[6:], frag)
	b[8] = 64
	b[9] = h.proto
	s, d := h.src.As4(), h.dst.As4()
	copy(b[12:16], s[:])
	copy(b[16:20], d[:])
	copy(b[20:], opts)
	return frame(etherIPv4, append(b, payload...))
}

// ext6 is an IPv6 extension header: its type and its body after the
// next-header and length bytes. Bodies are padded to the header's unit.
type ext6 struct {
	typ  uint8
	body []byte
}

// fragExt is an IPv6 fragment header at offset off (8-byte units).
func fragExt(off uint16, more bool) ext6 {
	v := off << 3
	if more {
		v |= 1
	}
	return ext6{typ: protoFragment, body: []byte{byte(v >> 8), byte(v), 0, 0, 0, 42}}
}

// ip6 describes an IPv6 header and its extension headers.
type ip6 struct {
	src, dst netip.Addr
	exts     []ext6
	proto    uint8 // the protocol after the extension headers
	version  int   // overrides 6 when non-zero
}

func (h ip6) packet(payload []byte) []byte {
	var chain []byte
	for i, e := range h.exts {
		next := h.proto
		if i+1 < len(h.exts) {
			next = h.exts[i+1].typ
		}
		switch e.typ {
		case protoFragment:
			chain = append(chain, next, 0)
			chain = append(chain, e.body...)
		case protoAH:
			body := append([]byte(nil), e.body...)
			for (len(body)+2)%4 != 0 {
				body = append(body, 0)
			}
			chain = append(chain, next, byte((len(body)+2)/4-2))
			chain = append(chain, body...)
		default:
			body := append([]byte(nil), e.body...)
			for (len(body)+2)%8 != 0 {
				body = append(body, 1) // PadN-ish filler
			}
			chain = append(chain, next, byte((len(body)+2)/8-1))
			chain = append(chain, body...)
		}
	}
	first := h.proto
	if len(h.exts) > 0 {
		first = h.exts[0].typ
	}
	ver := 6
	if h.version != 0 {
		ver = h.version
	}
	b := make([]byte, 40, 40+len(chain)+len(payload))
	b[0] = byte(ver << 4)
	binary.BigEndian.PutUint16(b[4:], uint16(len(chain)+len(payload)))
	b[6] = first
	b[7] = 64
	s, d := h.src.As16(), h.dst.As16()
	copy(b[8:24], s[:])
	copy(b[24:40], d[:])
	b = append(b, chain...)
	return frame(etherIPv6, append(b, payload...))
}

// tcpSeg is a TCP header (20 bytes unless doff says otherwise) and payload.
func tcpSeg(sport, dport uint16, flags uint8, payload string) []byte {
	return tcpSegOff(sport, dport, flags, 5, payload)
}

func tcpSegOff(sport, dport uint16, flags uint8, doff uint8, payload string) []byte {
	b := make([]byte, 20, 20+len(payload))
	binary.BigEndian.PutUint16(b[0:], sport)
	binary.BigEndian.PutUint16(b[2:], dport)
	binary.BigEndian.PutUint32(b[4:], 1000)
	if flags&tcpACK != 0 {
		binary.BigEndian.PutUint32(b[8:], 2000)
	}
	b[12] = doff << 4
	b[13] = flags
	binary.BigEndian.PutUint16(b[14:], 65535)
	return append(b, payload...)
}

func udpDgram(sport, dport uint16, payload string) []byte {
	b := make([]byte, 8, 8+len(payload))
	binary.BigEndian.PutUint16(b[0:], sport)
	binary.BigEndian.PutUint16(b[2:], dport)
	binary.BigEndian.PutUint16(b[4:], uint16(8+len(payload)))
	return append(b, payload...)
}

// icmpEcho is an ICMP (typ 8) or ICMPv6 (typ 128) echo request.
func icmpEcho(typ uint8) []byte {
	return []byte{typ, 0, 0, 0, 0, 1, 0, 1, 'p', 'i', 'n', 'g'}
}

func arpRequest() []byte {
	b := []byte{0, 1, 8, 0, 6, 4, 0, 1}
	b = append(b, make([]byte, 20)...)
	return frame(etherARP, b)
}
