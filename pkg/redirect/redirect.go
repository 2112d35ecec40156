// Package redirect installs, checks and removes the rules that send an
// enrolled pod's TCP traffic to the node proxy listening inside the pod's
// network namespace.
//
// The rules live in the nat table of the pod's namespace, in chains of
// Palisade's own (prefix PALISADE_), each hooked by exactly one jump placed
// first in PREROUTING and OUTPUT:
//
//   - inbound TCP that is not addressed to the HBONE port (15008), does not
//     carry the proxy mark (0x539/0xfff) and does not come from the kubelet
//     probe source (169.254.7.127) is redirected to 15006;
//   - outbound TCP that is not addressed to loopback and does not carry the
//     proxy mark is redirected to 15001;
//   - nothing else (UDP, ICMP, loopback, the proxy's own traffic) is touched.
//
// The node proxy sets SO_MARK on all its sockets, so its own connections are
// never captured, and reads a redirected connection's original destination
// with OriginalDst.
//
// This version never spoofs source addresses (the proxy connects from the
// pod's own address), so no TPROXY, no mangle-table connection marks and no
// policy routing are needed, and none are installed.
//
// Every change is one iptables-restore --noflush transaction per IP family,
// computed from the namespace's current rules (iptables-save), so Install is
// idempotent and converges from any state a killed agent may have left
// behind: chains without jumps, duplicated jumps, jumps that are not first,
// stale chains of older versions, or rules left in the other iptables
// backend. Rules and chains that are not Palisade's are never touched.
// InstallNew skips the read where the caller knows the namespace holds
// nothing of Palisade's, and falls back to it where that was wrong.
//
// "Loopback" means 127.0.0.0/8 for IPv4 and ::1 for IPv6.
package redirect

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/palisade-net/palisade/pkg/netns"
)

var errNilHandle = errors.New("redirect: nil netns handle (refusing to touch the current namespace)")

// Install makes the redirect rules in the namespace h exactly those of
// Rules(cfg): for each IP family it reads the current rules with
// iptables-save and applies, in a single atomic iptables-restore --noflush,
// whatever is needed to get there (declaring a chain in such a restore
// flushes it; stale jumps are deleted by their exact text). When the state
// is already right nothing is applied. Palisade chains found in the other
// iptables backend (nft vs legacy), for example after the backend was
// changed, are removed afterwards, since they would capture traffic too.
//
// Install is safe to run any number of times and after the agent was killed
// at any point: a killed restore changes nothing, and the next Install
// converges. A concurrent change by someone else between the read and the
// restore either makes the restore fail without effect or leaves a state
// that Installed reports and the next Install fixes. Calls for the same
// namespace must not overlap; calls for different namespaces may.
func Install(ctx context.Context, h *netns.Handle, cfg Config) error {
	return install(ctx, h, cfg, false)
}

// InstallNew is Install for a namespace that most likely holds none of
// Palisade's rules, such as the namespace of a pod the agent has not
// enrolled before: for each IP family it applies Rules(cfg) in one
// iptables-restore --noflush whose chain creations (-N) make the whole
// transaction fail, changing nothing, when a chain of that name exists. It
// thus spares the iptables-save of Install (one process per family) and
// falls back to Install's read-and-converge where rules of ours are there.
//
// It is only as safe as its premise: chains of Palisade's under names this
// version does not use (left by an older version) are not looked for.
// Callers use it once every namespace they have not enrolled themselves
// has been swept clean (the agent's start-up sweep).
func InstallNew(ctx context.Context, h *netns.Handle, cfg Config) error {
	return install(ctx, h, cfg, true)
}

// install is Install, or InstallNew when fresh is set.
func install(ctx context.Context, h *netns.Handle, cfg Config, fresh bool) error {
	if h == nil {
		return errNilHandle
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	sets, err := resolve(ctx, cfg)
	if err != nil {
		return fmt.Errorf("redirect install: %w", err)
	}
	for _, s := range sets {
		want := desired(cfg, s.primary.fam)
		// When the one-restore attempt fails (most likely a chain of ours
		// exists), read and converge, which reports the error if the
		// tables are unusable.
		if !fresh || s.primary.apply(ctx, h, planNew(want)) != nil {
			if err := converge(ctx, h, s.primary, want); err != nil {
				return fmt.Errorf("redirect install (%s, %s): %w", s.primary.fam.name, s.primary.variant, err)
			}
		}
		if err := cleanOther(ctx, h, s.other); err != nil {
			return fmt.Errorf("redirect install: %w", err)
		}
	}
	return nil
}

// Remove deletes every jump to a Palisade chain (all copies, wherever they
// are) and flushes and deletes every Palisade chain, for IPv4 and (when
// cfg.IPv6) IPv6, in both iptables backends when both are installed. It is
// idempotent: when nothing is installed it changes nothing. Tables that
// Install had to create are left in place, empty, as iptables cannot delete
// them (see Dump).
func Remove(ctx context.Context, h *netns.Handle, cfg Config) error {
	if h == nil {
		return errNilHandle
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	sets, err := resolve(ctx, cfg)
	if err != nil {
		return fmt.Errorf("redirect remove: %w", err)
	}
	for _, s := range sets {
		if err := converge(ctx, h, s.primary, nil); err != nil {
			return fmt.Errorf("redirect remove (%s, %s): %w", s.primary.fam.name, s.primary.variant, err)
		}
		if err := cleanOther(ctx, h, s.other); err != nil {
			return fmt.Errorf("redirect remove: %w", err)
		}
	}
	return nil
}

// Installed reports whether the namespace holds exactly the rules Install
// would leave: the chains with their exact content, one jump each, first in
// its hook, nothing else of Palisade's in any table, and nothing of
// Palisade's in the other iptables backend.
func Installed(ctx context.Context, h *netns.Handle, cfg Config) (bool, error) {
	if h == nil {
		return false, errNilHandle
	}
	if err := cfg.Validate(); err != nil {
		return false, err
	}
	sets, err := resolve(ctx, cfg)
	if err != nil {
		return false, fmt.Errorf("redirect installed: %w", err)
	}
	for _, s := range sets {
		state, err := s.primary.saveState(ctx, h)
		if err != nil {
			return false, fmt.Errorf("redirect installed: %w", err)
		}
		if plan(state, desired(cfg, s.primary.fam)) != "" {
			return false, nil
		}
		if s.other != nil {
			if state, err := s.other.saveState(ctx, h); err == nil && plan(state, nil) != "" {
				return false, nil
			}
		}
	}
	return true, nil
}

// converge brings the tables t manages to want (nil: nothing of ours).
func converge(ctx context.Context, h *netns.Handle, t *tools, want []tableSpec) error {
	state, err := t.saveState(ctx, h)
	if err != nil {
		return err
	}
	script := plan(state, want)
	if script == "" {
		return nil
	}
	return t.apply(ctx, h, script)
}

// cleanOther removes Palisade's rules from the other backend. When that
// backend cannot even list its rules (for example its kernel modules are
// missing), nothing can have been installed through it.
func cleanOther(ctx context.Context, h *netns.Handle, t *tools) error {
	if t == nil {
		return nil
	}
	state, err := t.saveState(ctx, h)
	if err != nil {
		return nil
	}
	if script := plan(state, nil); script != "" {
		if err := t.apply(ctx, h, script); err != nil {
			return fmt.Errorf("remove stale rules from %s (%s): %w", t.fam.name, t.variant, err)
		}
	}
	return nil
}

// legacyTablesExist reports whether the legacy iptables backend has any table
// in the namespace h. The kernel lists them, per network namespace, in
// /proc/net/ip_tables_names (ip6_tables_names for IPv6); without a table
// nothing of ours can be there, and reading the file spares saveState an
// iptables-legacy-save process per pod and family on every enrollment. When
// the file cannot be read for another reason than its absence (no legacy
// module loaded: no tables), it answers true and the caller looks.
func legacyTablesExist(h *netns.Handle, fam family) bool {
	var data []byte
	err := h.Do(func() error {
		var err error
		data, err = os.ReadFile("/proc/thread-self/net/" + fam.legacyTables)
		return err
	})
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return false
	case err != nil:
		return true
	}
	return len(bytes.TrimSpace(data)) > 0
}

// Dump returns a normalised listing of every firewall rule in the namespace
// h, meant for comparing states: the output of iptables-save and
// ip6tables-save of each installed backend (legacy and nft, or the plain
// binaries when neither variant exists), and of nft -s list ruleset when nft
// is installed, each under a "### tool" heading.
//
// Normalisation removes comments, dates and counters and sorts tables (and
// the items inside nft tables, whose listing order does not matter). It also
// leaves out what iptables creates on first use and never deletes, and what
// behaves exactly like nothing: iptables-save tables consisting only of
// built-in chains with policy ACCEPT and no rules, and in the nft listing
// base chains with policy accept and no rules, and tables left empty. With
// that, the dump after Remove equals the dump before Install.
func Dump(ctx context.Context, h *netns.Handle) (string, error) {
	if h == nil {
		return "", errNilHandle
	}
	var b strings.Builder
	for _, fam := range []family{familyV4, familyV6} {
		var paths []string
		for _, be := range []Backend{BackendLegacy, BackendNFT} {
			if p, err := lookPath("", binaryName(fam, be, "save")); err == nil {
				paths = append(paths, p)
			}
		}
		if len(paths) == 0 {
			p, err := lookPath("", binaryName(fam, BackendDefault, "save"))
			if err != nil {
				return "", fmt.Errorf("redirect dump: %w", err)
			}
			paths = append(paths, p)
		}
		for _, p := range paths {
			out, err := run(ctx, h, "", p)
			if err != nil {
				return "", fmt.Errorf("redirect dump: %w", err)
			}
			norm, err := normaliseSave(out)
			if err != nil {
				return "", fmt.Errorf("redirect dump: parse %s output: %w", p, err)
			}
			fmt.Fprintf(&b, "### %s\n%s", filepath.Base(p), norm)
		}
	}
	if p, err := exec.LookPath("nft"); err == nil {
		out, err := run(ctx, h, "", p, "-s", "list", "ruleset")
		if err != nil {
			return "", fmt.Errorf("redirect dump: %w", err)
		}
		fmt.Fprintf(&b, "### nft\n%s", normaliseNft(out))
	}
	return b.String(), nil
}
