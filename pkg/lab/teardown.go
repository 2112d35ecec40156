package lab

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
)

// Down tears the lab down: it stops every pod process (SIGTERM, then
// SIGKILL), runs CNI DEL for every pod, stops the node proxies and agents,
// then the SPIRE agents and server, then the API server's forwarder, the
// API server and etcd (SIGTERM, then SIGKILL), kills anything else still
// inside a lab netns, deletes every netns of the
// lab (also ones found only by the "<name>-" prefix), the /etc/netns/<netns>
// directories, every mount under the state directory (the nodes' bpffs)
// and the state directory. It is idempotent and works on a lab
// that was only partly built.
func (l *Lab) Down(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.teardown(ctx)
}

// Destroy tears down the lab called name in stateDir like Down, and also
// when its lab.json is missing or unreadable (then by name prefix only).
func Destroy(ctx context.Context, name, stateDir string, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := ValidateName(name); err != nil {
		return err
	}
	if err := requireRoot(); err != nil {
		return err
	}
	if stateDir == "" {
		stateDir = DefaultStateDir
	}
	root, err := filepath.Abs(stateDir)
	if err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	l, err := Load(name, root)
	if err == nil {
		l.SetLogger(log)
		return l.Down(ctx)
	}
	if !errors.Is(err, ErrNotFound) {
		log.Warn("lab state unreadable; cleaning up by name", "error", err)
	}
	sys, serr := newSystem()
	if serr != nil {
		return serr
	}
	l = &Lab{
		st:   &state{Version: stateVersion, Name: name, StateRoot: root, Underlay: name + "-underlay", NoPalisade: true},
		objs: nil, sys: sys, procs: &children{}, log: log.With("lab", name), readyTimeout: DefaultReadyTimeout,
	}
	return l.Down(ctx)
}

// teardown does the work of Down; l.mu is held.
func (l *Lab) teardown(ctx context.Context) error {
	st := l.st
	var errs []error
	var mu sync.Mutex
	addErr := func(err error) {
		if err != nil {
			mu.Lock()
			errs = append(errs, err)
			mu.Unlock()
		}
	}
	l.log.Info("tearing down", "state", st.dir())

	// 1. Pods' processes, all pods at once.
	var wg sync.WaitGroup
	for _, p := range st.Pods {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, pr := range p.Procs {
				addErr(l.procs.stop(ctx, pr, defaultGrace))
			}
		}()
	}
	wg.Wait()

	// 2. CNI DEL while the agents still run.
	if !st.NoPalisade {
		if _, err := os.Stat(filepath.Join(st.BinDir, AgentBinary)); err == nil {
			for _, p := range sortedPods(st.Pods) {
				if p.CNIAdded && netnsExists(p.Netns) {
					if err := l.cni(ctx, "DEL", p); err != nil {
						l.log.Warn("CNI DEL failed; continuing", "pod", p.Namespace+"/"+p.Name, "error", err)
					}
					p.CNIAdded = false
				}
			}
		}
	}

	// 3. Node proxies and agents.
	for _, n := range st.Nodes {
		for _, pr := range []*procState{n.NodeProxy, n.Agent} {
			if pr == nil {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				addErr(l.procs.stop(ctx, pr, defaultGrace))
			}()
		}
	}
	wg.Wait()

	// 3b. The SPIRE agents, then the SPIRE server (their clients, the
	// node proxies and agents, are gone). They run in the underlay netns,
	// so step 4 would catch them too, without a chance to shut down.
	addErr(l.stopSPIRE(ctx, defaultGrace))

	// 3c. The API server forwarder (in the root netns, which step 4 does
	// not sweep), the API server, then etcd.
	addErr(l.stopKube(ctx, defaultGrace))

	// 4. Every netns of the lab, and whatever still runs inside one.
	names, err := l.labNetns()
	addErr(err)
	inodes := map[uint64]bool{}
	for _, n := range names {
		if ino := netnsInode(n); ino != 0 {
			inodes[ino] = true
		}
	}
	addErr(killInNetns(ctx, inodes))
	for _, n := range names {
		addErr(l.sys.deleteNetns(ctx, n))
	}
	// A process that was entering a namespace while we looked keeps it
	// alive without a name; its inode still finds it.
	addErr(killInNetns(ctx, inodes))

	// 5. /etc/netns/<netns> directories.
	dirs, err := l.labEtcDirs()
	addErr(err)
	for _, d := range dirs {
		addErr(removeEtcDir(d))
	}
	_ = os.Remove(etcNetnsDir) // only if empty

	// 5b. Mounts under the state directory (the nodes' bpffs): their
	// pins go with them, and with the pins the programs the agents left.
	addErr(unmountUnder(st.dir()))

	// 6. The state directory.
	if err := os.RemoveAll(st.dir()); err != nil {
		addErr(fmt.Errorf("remove state: %w", err))
	}
	if filepath.Clean(st.StateRoot) == DefaultStateDir {
		_ = os.Remove(st.StateRoot) // only if empty
	}

	// 7. Check.
	if left, err := l.labNetns(); err == nil {
		var still []string
		for _, n := range left {
			if netnsExists(n) {
				still = append(still, n)
			}
		}
		if len(still) > 0 {
			addErr(fmt.Errorf("network namespaces left behind: %s", strings.Join(still, ", ")))
		}
	}
	st.Pods, st.Nodes, st.Netns, st.EtcDirs = nil, nil, nil, nil
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("lab %s: down: %w", st.Name, err)
	}
	l.log.Info("lab is down")
	return nil
}

// labNetns returns the lab's netns that exist: those recorded in its state
// and any other "<name>-*" namespace that no other lab in the same state
// directory claims. Pods first, the underlay last.
func (l *Lab) labNetns() ([]string, error) {
	st := l.st
	all, err := listNetns()
	if err != nil {
		return nil, err
	}
	exists := map[string]bool{}
	for _, n := range all {
		exists[n] = true
	}
	claims, prefixes := foreignClaims(st)
	seen := map[string]bool{}
	var pods, nodes, other []string
	add := func(list *[]string, n string) {
		if n != "" && exists[n] && !seen[n] {
			seen[n] = true
			*list = append(*list, n)
		}
	}
	for _, p := range st.Pods {
		add(&pods, p.Netns)
	}
	for _, n := range st.Nodes {
		add(&nodes, n.Netns)
	}
	for _, n := range st.Netns {
		if n != st.Underlay {
			add(&other, n)
		}
	}
	for _, n := range all {
		if strings.HasPrefix(n, st.Name+"-") && n != st.Underlay && !claims[n] && !hasAnyPrefix(n, prefixes) {
			add(&other, n)
		}
	}
	out := append(append(pods, other...), nodes...)
	if exists[st.Underlay] && !claims[st.Underlay] {
		out = append(out, st.Underlay)
	}
	return out, nil
}

// labEtcDirs returns the /etc/netns entries of the lab.
func (l *Lab) labEtcDirs() ([]string, error) {
	st := l.st
	set := map[string]bool{}
	for _, d := range st.EtcDirs {
		set[d] = true
	}
	for _, p := range st.Pods {
		set[p.Netns] = true
	}
	entries, err := os.ReadDir(etcNetnsDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("list %s: %w", etcNetnsDir, err)
	}
	claims, prefixes := foreignClaims(st)
	for _, e := range entries {
		n := e.Name()
		if strings.HasPrefix(n, st.Name+"-") && !claims[n] && !hasAnyPrefix(n, prefixes) {
			set[n] = true
		}
	}
	var out []string
	for d := range set {
		if _, err := os.Stat(filepath.Join(etcNetnsDir, d)); err == nil {
			out = append(out, d)
		}
	}
	sort.Strings(out)
	return out, nil
}

// foreignClaims collects what the other labs in the same state directory
// own, so that the prefix scan of lab "a" never touches lab "a-b": their
// netns names, and "<other>-" prefixes of labs whose names extend ours.
func foreignClaims(st *state) (map[string]bool, []string) {
	claims := map[string]bool{}
	var prefixes []string
	entries, err := os.ReadDir(st.StateRoot)
	if err != nil {
		return claims, nil
	}
	for _, e := range entries {
		if !e.IsDir() || e.Name() == st.Name {
			continue
		}
		if strings.HasPrefix(e.Name(), st.Name+"-") {
			prefixes = append(prefixes, e.Name()+"-")
		}
		other, err := loadState(e.Name(), st.StateRoot)
		if err != nil {
			continue
		}
		claims[other.Underlay] = true
		for _, n := range other.Netns {
			claims[n] = true
		}
		for _, n := range other.Nodes {
			claims[n.Netns] = true
		}
		for _, p := range other.Pods {
			claims[p.Netns] = true
		}
	}
	return claims, prefixes
}

func hasAnyPrefix(s string, prefixes []string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}
