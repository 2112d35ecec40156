package redirect

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/palisade-net/palisade/pkg/netns"
)

// Names of the iptables variants as iptables --version reports them.
const (
	variantNFT    = "nf_tables"
	variantLegacy = "legacy"
)

// tools is a matching pair of iptables-save and iptables-restore for one
// IP family and one backend.
type tools struct {
	fam     family
	variant string // variantNFT or variantLegacy
	save    string // absolute path
	restore string // absolute path
	wait    []string
}

// lookPath finds name in dir, or on PATH when dir is empty.
func lookPath(dir, name string) (string, error) {
	if dir == "" {
		p, err := exec.LookPath(name)
		if err != nil {
			// Agents often run with a PATH that lacks the sbin directories.
			for _, d := range []string{"/usr/sbin", "/sbin"} {
				if p, derr := lookPath(d, name); derr == nil {
					return p, nil
				}
			}
			return "", fmt.Errorf("find %s: %w", name, err)
		}
		return filepath.Abs(p)
	}
	p := filepath.Join(dir, name)
	st, err := os.Stat(p)
	if err != nil {
		return "", fmt.Errorf("find %s: %w", name, err)
	}
	if st.IsDir() || st.Mode()&0o111 == 0 {
		return "", fmt.Errorf("find %s: %s is not executable", name, p)
	}
	return p, nil
}

// binaryName returns the name of a tool, for example "ip6tables-nft-save".
func binaryName(fam family, b Backend, op string) string {
	if b == BackendDefault {
		return fam.name + "-" + op
	}
	return fam.name + "-" + string(b) + "-" + op
}

// variantOf tells which iptables implementation the binary at path is. It
// recognises the multi-call binaries the links resolve to without running
// anything, and otherwise asks the binary for its version.
func variantOf(ctx context.Context, path string) (string, error) {
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return "", fmt.Errorf("resolve %s: %w", path, err)
	}
	switch filepath.Base(real) {
	case "xtables-nft-multi":
		return variantNFT, nil
	case "xtables-legacy-multi":
		return variantLegacy, nil
	}
	out, err := run(ctx, nil, "", path, "--version")
	if err != nil {
		return "", err
	}
	// "iptables-restore v1.8.9 (nf_tables)"; 1.6 and older have no suffix
	// and only exist as legacy.
	if strings.Contains(out, "("+variantNFT+")") {
		return variantNFT, nil
	}
	return variantLegacy, nil
}

// findTools resolves the save/restore pair for fam and backend b, checking
// that both belong to the same iptables implementation.
func findTools(ctx context.Context, cfg Config, fam family, b Backend) (*tools, error) {
	restore, err := lookPath(cfg.BinDir, binaryName(fam, b, "restore"))
	if err != nil {
		return nil, err
	}
	// The save binary must sit next to the restore binary we use.
	dir := cfg.BinDir
	if dir == "" {
		dir = filepath.Dir(restore)
	}
	save, err := lookPath(dir, binaryName(fam, b, "save"))
	if err != nil {
		return nil, err
	}
	rv, err := variantOf(ctx, restore)
	if err != nil {
		return nil, err
	}
	sv, err := variantOf(ctx, save)
	if err != nil {
		return nil, err
	}
	if rv != sv {
		return nil, fmt.Errorf("%s is %s but %s is %s: save and restore must use the same iptables backend", restore, rv, save, sv)
	}
	if want := map[Backend]string{BackendNFT: variantNFT, BackendLegacy: variantLegacy}[b]; want != "" && rv != want {
		return nil, fmt.Errorf("%s is %s, not %s", restore, rv, want)
	}
	t := &tools{fam: fam, variant: rv, save: save, restore: restore}
	if cfg.LockWait > 0 {
		ok, err := supportsWait(ctx, restore)
		if err != nil {
			return nil, err
		}
		if ok {
			secs := int(math.Ceil(cfg.LockWait.Seconds()))
			t.wait = []string{fmt.Sprintf("--wait=%d", secs)}
		}
	}
	return t, nil
}

// supportsWait reports whether an iptables-restore accepts --wait. The
// 1.8 multi-call binaries (both variants) do; for anything else the help
// text decides.
func supportsWait(ctx context.Context, restore string) (bool, error) {
	real, err := filepath.EvalSymlinks(restore)
	if err != nil {
		return false, fmt.Errorf("resolve %s: %w", restore, err)
	}
	switch filepath.Base(real) {
	case "xtables-nft-multi", "xtables-legacy-multi":
		return true, nil
	}
	// --help exits non-zero on some versions; only its text matters.
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, restore, "--help")
	cmd.Stdout, cmd.Stderr = &out, &out
	_ = cmd.Run()
	return strings.Contains(out.String(), "--wait"), nil
}

// backendSet is the tools Install, Remove and Installed work with for one
// family: the configured pair, and the pair of the other iptables
// implementation when it is installed on this host.
type backendSet struct {
	primary *tools
	other   *tools // nil when the other implementation is not available
}

// resolve finds the tools for every family cfg handles.
func resolve(ctx context.Context, cfg Config) ([]backendSet, error) {
	var sets []backendSet
	for _, fam := range families(cfg) {
		p, err := findTools(ctx, cfg, fam, cfg.Backend)
		if err != nil {
			return nil, err
		}
		otherBackend := BackendLegacy
		if p.variant == variantLegacy {
			otherBackend = BackendNFT
		}
		o, err := findTools(ctx, cfg, fam, otherBackend)
		if err != nil {
			o = nil // not installed, or not usable: nothing of ours can be there
		}
		sets = append(sets, backendSet{primary: p, other: o})
	}
	return sets, nil
}

// save returns the parsed iptables-save output of every table in the
// namespace. It lists all tables instead of using -t, because asking for a
// table that does not exist yet creates it with the legacy backend.
func (t *tools) saveState(ctx context.Context, h *netns.Handle) (map[string]*savedTable, error) {
	if t.variant == variantLegacy && h != nil && !legacyTablesExist(h, t.fam) {
		return map[string]*savedTable{}, nil // what iptables-legacy-save would list
	}
	out, err := run(ctx, h, "", t.save)
	if err != nil {
		return nil, err
	}
	tables, err := parseSave(out)
	if err != nil {
		return nil, fmt.Errorf("parse %s output: %w", t.save, err)
	}
	return tables, nil
}

// apply runs script through iptables-restore --noflush in one transaction.
func (t *tools) apply(ctx context.Context, h *netns.Handle, script string) error {
	args := append([]string{"--noflush"}, t.wait...)
	_, err := run(ctx, h, script, t.restore, args...)
	return err
}

// run executes a command, inside the namespace h when h is not nil: the
// child process is started from a thread switched into h and so inherits it.
// Errors carry the command line and the tool's stderr.
func run(ctx context.Context, h *netns.Handle, stdin, name string, args ...string) (string, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	var err error
	if h == nil {
		err = cmd.Run()
	} else {
		err = h.Do(cmd.Run)
	}
	if err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			msg = "no stderr"
		}
		if ctxErr := ctx.Err(); ctxErr != nil && !errors.Is(err, ctxErr) {
			err = fmt.Errorf("%w (%w)", err, ctxErr)
		}
		return "", fmt.Errorf("%s %s: %w: %s", filepath.Base(name), strings.Join(args, " "), err, msg)
	}
	return stdout.String(), nil
}
