package redirect

import (
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// Backend selects which iptables implementation manages the rules.
type Backend string

const (
	// BackendDefault uses iptables-restore, iptables-save, ip6tables-restore
	// and ip6tables-save as found (in Config.BinDir or on PATH), that is
	// whatever the distribution's alternatives point at.
	BackendDefault Backend = ""
	// BackendNFT uses the iptables-nft-* binaries (nf_tables kernel API).
	BackendNFT Backend = "nft"
	// BackendLegacy uses the iptables-legacy-* binaries (x_tables kernel API).
	BackendLegacy Backend = "legacy"
)

// Default values, as fixed by the Palisade design.
const (
	DefaultOutboundPort         = 15001
	DefaultInboundPlaintextPort = 15006
	DefaultInboundHBONEPort     = 15008
	DefaultMark                 = 0x539
	DefaultMask                 = 0xfff
	DefaultLockWait             = 10 * time.Second
)

// defaultProbeSourceV4 is the address the node SNATs kubelet probes to
// before they enter a pod; the in-pod rules never capture it.
var defaultProbeSourceV4 = netip.MustParseAddr("169.254.7.127")

// defaultProbeSourceV6 is the IPv6 counterpart. Palisade's design only names
// the IPv4 address; this is the address ambient-mode Istio uses for IPv6
// probes, so that host-side SNAT rules written for that world keep working.
var defaultProbeSourceV6 = netip.MustParseAddr("fd16:9254:7127:1337:ffff:ffff:ffff:ffff")

// Config describes the redirect rules and how they are applied.
type Config struct {
	// OutboundPort is where locally originated TCP is redirected (15001).
	OutboundPort uint16
	// InboundPlaintextPort is where inbound TCP is redirected (15006).
	InboundPlaintextPort uint16
	// InboundHBONEPort receives inbound TCP directly, uncaptured (15008).
	InboundHBONEPort uint16

	// Mark and Mask identify packets of the node proxy's own sockets
	// (SO_MARK); packets with mark&Mask == Mark are never captured.
	Mark uint32
	Mask uint32

	// ProbeSourceV4 and ProbeSourceV6 are the source addresses of kubelet
	// health probes; connections from them are never captured. A zero
	// (invalid) address disables the exemption for that family.
	ProbeSourceV4 netip.Addr
	ProbeSourceV6 netip.Addr

	// IPv6 enables the ip6tables rules. Without it only IPv4 is handled and
	// IPv6 rules are neither installed nor removed.
	IPv6 bool

	// Backend chooses the iptables implementation. Save and restore always
	// come from the same implementation; Install, Remove and Installed check
	// this and fail otherwise.
	Backend Backend
	// BinDir, when not empty, is the directory holding the iptables
	// binaries; otherwise they are looked up on PATH.
	BinDir string
	// LockWait is passed as --wait to iptables-restore so that it waits for
	// the xtables lock (held by other legacy iptables users on the host)
	// instead of failing. Zero means do not wait.
	LockWait time.Duration
}

// DefaultConfig returns the configuration fixed by the Palisade design:
// ports 15001/15006/15008, mark 0x539/0xfff, probe source 169.254.7.127,
// IPv4 and IPv6, iptables from PATH, and a 10s wait for the xtables lock.
func DefaultConfig() Config {
	return Config{
		OutboundPort:         DefaultOutboundPort,
		InboundPlaintextPort: DefaultInboundPlaintextPort,
		InboundHBONEPort:     DefaultInboundHBONEPort,
		Mark:                 DefaultMark,
		Mask:                 DefaultMask,
		ProbeSourceV4:        defaultProbeSourceV4,
		ProbeSourceV6:        defaultProbeSourceV6,
		IPv6:                 true,
		Backend:              BackendDefault,
		LockWait:             DefaultLockWait,
	}
}

// Validate reports every problem with c, naming the fields.
func (c Config) Validate() error {
	var errs []error
	ports := []struct {
		name string
		v    uint16
	}{
		{"OutboundPort", c.OutboundPort},
		{"InboundPlaintextPort", c.InboundPlaintextPort},
		{"InboundHBONEPort", c.InboundHBONEPort},
	}
	seen := map[uint16]string{}
	for _, p := range ports {
		if p.v == 0 {
			errs = append(errs, fieldErr(p.name, "must not be 0"))
			continue
		}
		if other, ok := seen[p.v]; ok {
			errs = append(errs, fieldErr(p.name, "%d is already used by %s", p.v, other))
		}
		seen[p.v] = p.name
	}
	if c.Mask == 0 {
		errs = append(errs, fieldErr("Mask", "must not be 0"))
	}
	if c.Mark == 0 || c.Mark&^c.Mask != 0 {
		errs = append(errs, fieldErr("Mark", "%#x must be non-zero and within Mask %#x", c.Mark, c.Mask))
	}
	if c.ProbeSourceV4.IsValid() && !c.ProbeSourceV4.Is4() {
		errs = append(errs, fieldErr("ProbeSourceV4", "%s is not an IPv4 address", c.ProbeSourceV4))
	}
	if c.ProbeSourceV6.IsValid() && (!c.ProbeSourceV6.Is6() || c.ProbeSourceV6.Is4In6() || c.ProbeSourceV6.Zone() != "") {
		errs = append(errs, fieldErr("ProbeSourceV6", "%s is not a plain IPv6 address", c.ProbeSourceV6))
	}
	switch c.Backend {
	case BackendDefault, BackendNFT, BackendLegacy:
	default:
		errs = append(errs, fieldErr("Backend", "%q is not one of \"\", %q, %q", c.Backend, BackendNFT, BackendLegacy))
	}
	if c.LockWait < 0 {
		errs = append(errs, fieldErr("LockWait", "must not be negative"))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("redirect config: %w", err)
	}
	return nil
}

// fieldErr names the Config field a problem is about.
func fieldErr(field, format string, args ...any) error {
	return fmt.Errorf("%s: "+format, append([]any{field}, args...)...)
}
