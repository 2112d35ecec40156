package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Identity modes (Config.Identity).
const (
	// IdentityDev: the node proxies issue SVIDs from the built-in
	// development CA in CADir.
	IdentityDev = "dev"
	// IdentitySPIRE: the lab runs a SPIRE server and one SPIRE agent per
	// node, and the node proxies get their SVIDs from SPIRE.
	IdentitySPIRE = "spire"
)

// Who manages the SPIRE workload entries (Config.SPIREEntries).
const (
	// SPIREEntriesManage: the Palisade agents create and delete the pods'
	// workload entries on the SPIRE server.
	SPIREEntriesManage = "manage"
	// SPIREEntriesOff: the Palisade agents leave entries alone; whoever
	// uses the lab creates them (see SPIREServer).
	SPIREEntriesOff = "off"
)

// SPIRE binaries and the server's address. The server listens on the
// loopback of the lab's underlay netns, where the SPIRE agents run too, so
// nothing of SPIRE is reachable from the root network namespace.
const (
	SPIREServerBinary  = "spire-server"
	SPIREAgentBinary   = "spire-agent"
	SPIREServerAddress = "127.0.0.1"
	SPIREServerPort    = 8081
)

// spireState is what the lab records about its SPIRE deployment.
type spireState struct {
	// BinDir holds spire-server and spire-agent.
	BinDir string `json:"binDir"`
	// SVIDTTL is passed to the Palisade agents (0: their default).
	SVIDTTL time.Duration `json:"svidTTL,omitempty"`
	// Entries is SPIREEntriesManage or SPIREEntriesOff.
	Entries string `json:"entries"`
	// NodeProxyPath is the node proxy's executable as /proc/PID/exe shows
	// it: the unix:path selector of the node proxies' entries.
	NodeProxyPath string     `json:"nodeProxyPath"`
	Server        *procState `json:"server,omitempty"`
}

func (s *state) spire() bool { return s.Identity == IdentitySPIRE && s.SPIRE != nil }

func (s *state) spireDir() string          { return filepath.Join(s.dir(), "spire") }
func (s *state) spireServerDir() string    { return filepath.Join(s.spireDir(), "server") }
func (s *state) spireServerSocket() string { return filepath.Join(s.spireServerDir(), "api.sock") }
func (s *state) spireServerConfig() string { return filepath.Join(s.spireServerDir(), "server.conf") }
func (s *state) spireServerData() string   { return filepath.Join(s.spireServerDir(), "data") }
func (s *state) spireServerLog() string    { return filepath.Join(s.spireDir(), "server.log") }
func (s *state) spireBundle() string       { return filepath.Join(s.spireDir(), "bundle.pem") }

func (s *state) spireAgentDir(node string) string {
	return filepath.Join(s.nodeDir(node), "spire-agent")
}
func (s *state) spireAgentConfig(node string) string {
	return filepath.Join(s.spireAgentDir(node), "agent.conf")
}
func (s *state) spireAgentData(node string) string {
	return filepath.Join(s.spireAgentDir(node), "data")
}
func (s *state) spireAgentLog(node string) string {
	return filepath.Join(s.nodeDir(node), "spire-agent.log")
}

// The Workload API and admin (Delegated Identity API) sockets must live in
// different directories: SPIRE refuses an admin socket beside the public one.
func (s *state) spireWorkloadSocket(node string) string {
	return filepath.Join(s.spireAgentDir(node), "workload", "api.sock")
}
func (s *state) spireAdminSocket(node string) string {
	return filepath.Join(s.spireAgentDir(node), "admin", "admin.sock")
}

// spireSockets lists every unix socket SPIRE binds, for the length check.
func (s *state) spireSockets() []string {
	out := []string{s.spireServerSocket()}
	for _, n := range s.Nodes {
		out = append(out, s.spireWorkloadSocket(n.Name), s.spireAdminSocket(n.Name))
	}
	return out
}

func (s *state) spireID(segments ...string) spiffeid.ID {
	td, err := spiffeid.TrustDomainFromString(s.TrustDomain)
	if err != nil {
		return spiffeid.ID{}
	}
	id, err := spiffeid.FromSegments(td, segments...)
	if err != nil {
		return spiffeid.ID{}
	}
	return id
}

// spireNodeID is the node's alias: the parent of its workload entries.
func (s *state) spireNodeID(node string) spiffeid.ID {
	return s.spireID("palisade", "node", node)
}

// spireNodeProxyID is the identity of the node's proxy, an authorized
// delegate of the node's SPIRE agent.
func (s *state) spireNodeProxyID(node string) spiffeid.ID {
	return s.spireID("palisade", "nodeproxy", node)
}

// spireAgentArgs are the Palisade agent's SPIRE flags.
func (s *state) spireAgentArgs(n *nodeState) []string {
	if !s.spire() {
		return nil
	}
	if s.SPIRE.Entries == SPIREEntriesOff {
		return []string{"--spire-entries", SPIREEntriesOff}
	}
	args := []string{
		"--spire-entries", SPIREEntriesManage,
		"--spire-server-socket", s.spireServerSocket(),
		"--spire-node-id", s.spireNodeID(n.Name).String(),
		"--trust-domain", s.TrustDomain,
	}
	if s.SPIRE.SVIDTTL > 0 {
		args = append(args, "--spire-svid-ttl", s.SPIRE.SVIDTTL.String())
	}
	return args
}

// hclString quotes s for an HCL configuration file.
func hclString(s string) string { return strconv.Quote(s) }

// spireServerConf is the SPIRE server's configuration: loopback of the
// underlay netns, SQLite and on-disk keys in the data directory (so a
// restarted server keeps its CA and entries), join-token node attestation.
// The entry cache reloads every second and rate limits are off, so that
// entries reach the agents quickly and several agents can attest from
// 127.0.0.1 at once.
func (s *state) spireServerConf() string {
	data := s.spireServerData()
	return fmt.Sprintf(`server {
    bind_address = %s
    bind_port = %d
    socket_path = %s
    trust_domain = %s
    data_dir = %s
    log_level = "INFO"
    ca_ttl = "24h"
    default_x509_svid_ttl = "1h"
    ratelimit {
        attestation = false
        signing = false
    }
    experimental {
        cache_reload_interval = "1s"
    }
}

plugins {
    DataStore "sql" {
        plugin_data {
            database_type = "sqlite3"
            connection_string = %s
        }
    }
    KeyManager "disk" {
        plugin_data {
            keys_path = %s
        }
    }
    NodeAttestor "join_token" {
        plugin_data {}
    }
}
`, hclString(SPIREServerAddress), SPIREServerPort, hclString(s.spireServerSocket()), hclString(s.TrustDomain),
		hclString(data), hclString(filepath.Join(data, "datastore.sqlite3")), hclString(filepath.Join(data, "keys.json")))
}

// spireAgentConf is a node's SPIRE agent configuration. joinToken is empty
// when the agent has an SVID on disk already (tokens are single use).
func (s *state) spireAgentConf(node, joinToken string) string {
	data := s.spireAgentData(node)
	token := ""
	if joinToken != "" {
		token = "\n    join_token = " + hclString(joinToken)
	}
	return fmt.Sprintf(`agent {
    data_dir = %s
    log_level = "INFO"
    server_address = %s
    server_port = %d
    trust_domain = %s
    trust_bundle_path = %s%s
    socket_path = %s
    admin_socket_path = %s
    authorized_delegates = [%s]
    experimental {
        sync_interval = "1s"
    }
}

plugins {
    NodeAttestor "join_token" {
        plugin_data {}
    }
    KeyManager "disk" {
        plugin_data {
            directory = %s
        }
    }
    WorkloadAttestor "unix" {
        plugin_data {
            discover_workload_path = true
            workload_size_limit = -1
        }
    }
}
`, hclString(data), hclString(SPIREServerAddress), SPIREServerPort, hclString(s.TrustDomain), hclString(s.spireBundle()), token,
		hclString(s.spireWorkloadSocket(node)), hclString(s.spireAdminSocket(node)),
		hclString(s.spireNodeProxyID(node).String()), hclString(data))
}

// spireBinDir finds spire-server and spire-agent: dir if given, else the
// Palisade bin dir, $PALISADE_TEST_BIN, and the directories of $PATH.
func spireBinDir(dir, binDir string) (string, error) {
	usable := func(d string) bool {
		for _, b := range []string{SPIREServerBinary, SPIREAgentBinary} {
			if st, err := os.Stat(filepath.Join(d, b)); err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
				return false
			}
		}
		return true
	}
	if dir != "" {
		abs, err := filepath.Abs(dir)
		if err != nil {
			return "", fmt.Errorf("SPIRE bin dir: %w", err)
		}
		if !usable(abs) {
			return "", fmt.Errorf("%s lacks executable %s and %s (build them with: make spire)", abs, SPIREServerBinary, SPIREAgentBinary)
		}
		return abs, nil
	}
	candidates := []string{binDir}
	if d := os.Getenv("PALISADE_TEST_BIN"); d != "" {
		candidates = append(candidates, d)
	}
	if p, err := exec.LookPath(SPIREServerBinary); err == nil {
		candidates = append(candidates, filepath.Dir(p))
	}
	for _, d := range candidates {
		if abs, err := filepath.Abs(d); err == nil && usable(abs) {
			return abs, nil
		}
	}
	return "", fmt.Errorf("%s and %s not found in %s, $PALISADE_TEST_BIN or $PATH (build them with \"make spire\", which puts them in .cache/test-bin, and pass --spire-bin-dir)",
		SPIREServerBinary, SPIREAgentBinary, binDir)
}

// configureSPIRE validates the SPIRE part of cfg and fills st. It changes
// nothing on the host.
func configureSPIRE(cfg Config, st *state) error {
	switch cfg.Identity {
	case "", IdentityDev:
		if cfg.SPIREEntries != "" || cfg.SPIRESVIDTTL != 0 {
			return fmt.Errorf("SPIREEntries and SPIRESVIDTTL need Identity %q", IdentitySPIRE)
		}
		st.Identity = IdentityDev
		return nil
	case IdentitySPIRE:
	default:
		return fmt.Errorf("identity %q: want %q or %q", cfg.Identity, IdentityDev, IdentitySPIRE)
	}
	entries := cfg.SPIREEntries
	switch entries {
	case "":
		entries = SPIREEntriesManage
	case SPIREEntriesManage, SPIREEntriesOff:
	default:
		return fmt.Errorf("SPIRE entries %q: want %q or %q", entries, SPIREEntriesManage, SPIREEntriesOff)
	}
	if cfg.SPIRESVIDTTL < 0 {
		return fmt.Errorf("SPIRE SVID TTL %s is negative", cfg.SPIRESVIDTTL)
	}
	if _, err := spiffeid.TrustDomainFromString(cfg.TrustDomain); err != nil {
		return fmt.Errorf("trust domain %q: %w", cfg.TrustDomain, err)
	}
	bin, err := spireBinDir(cfg.SPIREBinDir, cfg.BinDir)
	if err != nil {
		return err
	}
	// /proc/PID/exe of the node proxy names the binary itself, not a
	// symlink to it.
	proxy := filepath.Join(cfg.BinDir, NodeProxyBinary)
	if r, err := filepath.EvalSymlinks(proxy); err == nil {
		proxy = r
	}
	st.Identity = IdentitySPIRE
	st.SPIRE = &spireState{BinDir: bin, SVIDTTL: cfg.SPIRESVIDTTL, Entries: entries, NodeProxyPath: proxy}
	return nil
}

// spireCmd runs a SPIRE command line (outside any lab netns: it only talks
// to unix sockets) and returns its standard output; the error carries its
// standard error.
func spireCmd(ctx context.Context, argv ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			msg = strings.TrimSpace(stdout.String())
		}
		return stdout.Bytes(), fmt.Errorf("%s %s: %w: %s", filepath.Base(argv[0]), strings.Join(argv[1:], " "), err, msg)
	}
	return stdout.Bytes(), nil
}

// spireServerArgv puts -socketPath after the subcommand words (the leading
// arguments that are not flags), where spire-server expects its flags.
func (s *state) spireServerArgv(args []string) []string {
	i := 0
	for i < len(args) && !strings.HasPrefix(args[i], "-") {
		i++
	}
	argv := []string{filepath.Join(s.SPIRE.BinDir, SPIREServerBinary)}
	argv = append(argv, args[:i]...)
	argv = append(argv, "-socketPath", s.spireServerSocket())
	return append(argv, args[i:]...)
}

// spireServer runs a spire-server subcommand against the lab's server.
func (s *state) spireServer(ctx context.Context, args ...string) ([]byte, error) {
	if !s.spire() {
		return nil, fmt.Errorf("lab %s: identity is %q, not %q", s.Name, s.Identity, IdentitySPIRE)
	}
	if len(args) == 0 {
		return nil, errors.New("spire-server: no subcommand")
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return spireCmd(ctx, s.spireServerArgv(args)...)
}

// startSPIRE starts the server, creates each node's alias and node proxy
// entry, and starts one SPIRE agent per node; l.mu is held.
func (l *Lab) startSPIRE(ctx context.Context) error {
	st := l.st
	if err := l.startSPIREServer(ctx); err != nil {
		return err
	}
	for _, n := range st.Nodes {
		if err := l.createNodeProxyEntry(ctx, n); err != nil {
			return err
		}
	}
	var started []*nodeState
	for _, n := range st.Nodes {
		if err := l.launchSPIREAgent(ctx, n); err != nil {
			return err
		}
		started = append(started, n)
	}
	for _, n := range started {
		if err := l.waitSPIREAgentReady(ctx, n); err != nil {
			return err
		}
	}
	return nil
}

// createNodeProxyEntry registers the node proxy of n: a unix workload
// (uid 0, the node proxy binary) under the node's alias. l.mu is held.
func (l *Lab) createNodeProxyEntry(ctx context.Context, n *nodeState) error {
	st := l.st
	l.log.Info("creating SPIRE entry", "spiffeID", st.spireNodeProxyID(n.Name), "parentID", st.spireNodeID(n.Name), "path", st.SPIRE.NodeProxyPath)
	if _, err := st.spireServer(ctx, "entry", "create",
		"-parentID", st.spireNodeID(n.Name).String(),
		"-spiffeID", st.spireNodeProxyID(n.Name).String(),
		"-selector", "unix:uid:0",
		"-selector", "unix:path:"+st.SPIRE.NodeProxyPath,
	); err != nil {
		return fmt.Errorf("node %s: SPIRE entry for the node proxy: %w", n.Name, err)
	}
	return nil
}

// startSPIREServer starts the SPIRE server in the underlay netns, waits
// until it is healthy and writes the trust bundle the agents bootstrap
// from. l.mu is held.
func (l *Lab) startSPIREServer(ctx context.Context) error {
	st := l.st
	if l.procs.alive(st.SPIRE.Server) {
		return fmt.Errorf("SPIRE server is running (pid %d)", st.SPIRE.Server.PID)
	}
	if err := os.MkdirAll(st.spireServerData(), 0o700); err != nil {
		return fmt.Errorf("SPIRE server: %w", err)
	}
	if err := os.WriteFile(st.spireServerConfig(), []byte(st.spireServerConf()), 0o600); err != nil {
		return fmt.Errorf("SPIRE server: %w", err)
	}
	spec := procSpec{
		name: "SPIRE server",
		argv: []string{l.sys.ip, "netns", "exec", st.Underlay,
			filepath.Join(st.SPIRE.BinDir, SPIREServerBinary), "run", "-config", st.spireServerConfig()},
		env: os.Environ(),
		dir: st.spireServerDir(),
		log: st.spireServerLog(),
	}
	l.log.Info("starting SPIRE server", "netns", st.Underlay, "socket", st.spireServerSocket(), "log", spec.log)
	ps, err := l.procs.start(spec)
	if err != nil {
		return err
	}
	st.SPIRE.Server = ps
	if err := st.save(); err != nil {
		return err
	}
	if err := l.waitSPIREServerReady(ctx); err != nil {
		return err
	}
	bundle, err := st.spireServer(ctx, "bundle", "show")
	if err != nil {
		return fmt.Errorf("SPIRE trust bundle: %w", err)
	}
	if err := os.WriteFile(st.spireBundle(), bundle, 0o644); err != nil {
		return fmt.Errorf("SPIRE trust bundle: %w", err)
	}
	return nil
}

// waitSPIREServerReady polls "spire-server healthcheck"; l.mu is held.
func (l *Lab) waitSPIREServerReady(ctx context.Context) error {
	st := l.st
	return l.pollReady(ctx, "SPIRE server", st.SPIRE.Server, func(ctx context.Context) error {
		_, err := st.spireServer(ctx, "healthcheck")
		return err
	})
}

// spireJoinToken asks the server for a join token that makes the agent
// holding it the node's alias.
func (l *Lab) spireJoinToken(ctx context.Context, n *nodeState) (string, error) {
	out, err := l.st.spireServer(ctx, "token", "generate", "-spiffeID", l.st.spireNodeID(n.Name).String(), "-ttl", "600")
	if err != nil {
		return "", fmt.Errorf("node %s: SPIRE join token: %w", n.Name, err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if tok, ok := strings.CutPrefix(strings.TrimSpace(line), "Token:"); ok && strings.TrimSpace(tok) != "" {
			return strings.TrimSpace(tok), nil
		}
	}
	return "", fmt.Errorf("node %s: SPIRE join token: no token in %q", n.Name, out)
}

// launchSPIREAgent starts the node's SPIRE agent in the underlay netns
// without waiting for it. An agent that has never attested (no SVID in its
// data directory) gets a fresh join token; one that has keeps its SVID and
// keys across restarts (KeyManager "disk"). l.mu is held.
func (l *Lab) launchSPIREAgent(ctx context.Context, n *nodeState) error {
	st := l.st
	if l.procs.alive(n.SPIREAgent) {
		return fmt.Errorf("node %s: SPIRE agent is running (pid %d)", n.Name, n.SPIREAgent.PID)
	}
	// The Workload API socket is for every workload, the rest for root.
	for _, d := range []struct {
		path string
		mode os.FileMode
	}{
		{st.spireAgentDir(n.Name), 0o755},
		{filepath.Dir(st.spireWorkloadSocket(n.Name)), 0o755},
		{filepath.Dir(st.spireAdminSocket(n.Name)), 0o700},
		{st.spireAgentData(n.Name), 0o700},
	} {
		if err := os.MkdirAll(d.path, d.mode); err != nil {
			return fmt.Errorf("node %s: SPIRE agent: %w", n.Name, err)
		}
	}
	token := ""
	if _, err := os.Stat(filepath.Join(st.spireAgentData(n.Name), "agent-data.json")); err != nil {
		if token, err = l.spireJoinToken(ctx, n); err != nil {
			return err
		}
	}
	if err := os.WriteFile(st.spireAgentConfig(n.Name), []byte(st.spireAgentConf(n.Name, token)), 0o600); err != nil {
		return fmt.Errorf("node %s: SPIRE agent: %w", n.Name, err)
	}
	spec := procSpec{
		name: "SPIRE agent of " + n.Name,
		argv: []string{l.sys.ip, "netns", "exec", st.Underlay,
			filepath.Join(st.SPIRE.BinDir, SPIREAgentBinary), "run", "-config", st.spireAgentConfig(n.Name)},
		env: os.Environ(),
		dir: st.spireAgentDir(n.Name),
		log: st.spireAgentLog(n.Name),
	}
	l.log.Info("starting SPIRE agent", "node", n.Name, "netns", st.Underlay, "socket", st.spireWorkloadSocket(n.Name), "log", spec.log)
	ps, err := l.procs.start(spec)
	if err != nil {
		return fmt.Errorf("node %s: %w", n.Name, err)
	}
	n.SPIREAgent = ps
	return st.save()
}

// waitSPIREAgentReady polls "spire-agent healthcheck" on the node's
// Workload API socket; l.mu is held.
func (l *Lab) waitSPIREAgentReady(ctx context.Context, n *nodeState) error {
	st := l.st
	argv := []string{filepath.Join(st.SPIRE.BinDir, SPIREAgentBinary), "healthcheck", "-socketPath", st.spireWorkloadSocket(n.Name)}
	return l.pollReady(ctx, "SPIRE agent of node "+n.Name, n.SPIREAgent, func(ctx context.Context) error {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		_, err := spireCmd(cctx, argv...)
		return err
	})
}

// stopSPIRE stops the SPIRE agents, then the server (SIGTERM, then
// SIGKILL after grace); l.mu is held.
func (l *Lab) stopSPIRE(ctx context.Context, grace time.Duration) error {
	st := l.st
	var mu sync.Mutex
	var errs []error
	var wg sync.WaitGroup
	for _, n := range st.Nodes {
		if n.SPIREAgent == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := l.procs.stop(ctx, n.SPIREAgent, grace); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if st.SPIRE != nil && st.SPIRE.Server != nil {
		errs = append(errs, l.procs.stop(ctx, st.SPIRE.Server, grace))
	}
	return errors.Join(errs...)
}

// spireFor checks that the lab runs SPIRE; l.mu is held.
func (l *Lab) spireFor() error {
	if !l.st.spire() {
		return fmt.Errorf("lab %s: identity is %q, not %q", l.st.Name, l.st.Identity, IdentitySPIRE)
	}
	return nil
}

// spireNodeFor returns the node of a lab that runs SPIRE; l.mu is held.
func (l *Lab) spireNodeFor(name string) (*nodeState, error) {
	if err := l.spireFor(); err != nil {
		return nil, err
	}
	n := l.st.node(name)
	if n == nil {
		return nil, fmt.Errorf("lab %s: no node %q", l.st.Name, name)
	}
	return n, nil
}

// Identity returns the lab's identity mode: IdentityDev or IdentitySPIRE.
func (l *Lab) Identity() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.st.Identity == "" {
		return IdentityDev
	}
	return l.st.Identity
}

// StopSPIREServer sends sig to the SPIRE server and waits until it has
// exited (see StopAgent). Its CA keys and entries stay on disk.
func (l *Lab) StopSPIREServer(ctx context.Context, sig syscall.Signal) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.spireFor(); err != nil {
		return err
	}
	if err := l.stopDaemon(ctx, l.st.SPIRE.Server, sig); err != nil {
		return fmt.Errorf("SPIRE server: %w", err)
	}
	return nil
}

// StartSPIREServer starts the SPIRE server again (after StopSPIREServer)
// and waits until it is healthy. It keeps its CA, entries and agents.
func (l *Lab) StartSPIREServer(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.spireFor(); err != nil {
		return err
	}
	return l.startSPIREServer(ctx)
}

// WaitSPIREServerReady waits until "spire-server healthcheck" succeeds.
func (l *Lab) WaitSPIREServerReady(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.spireFor(); err != nil {
		return err
	}
	return l.waitSPIREServerReady(ctx)
}

// StopSPIREAgent sends sig to the node's SPIRE agent and waits until it
// has exited (see StopAgent).
func (l *Lab) StopSPIREAgent(ctx context.Context, node string, sig syscall.Signal) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	n, err := l.spireNodeFor(node)
	if err != nil {
		return err
	}
	if err := l.stopDaemon(ctx, n.SPIREAgent, sig); err != nil {
		return fmt.Errorf("node %s: SPIRE agent: %w", node, err)
	}
	return nil
}

// StartSPIREAgent starts the node's SPIRE agent again (after
// StopSPIREAgent) and waits until its Workload API is healthy. The agent
// re-attests with the SVID and key kept in its data directory.
func (l *Lab) StartSPIREAgent(ctx context.Context, node string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	n, err := l.spireNodeFor(node)
	if err != nil {
		return err
	}
	if err := l.launchSPIREAgent(ctx, n); err != nil {
		return err
	}
	return l.waitSPIREAgentReady(ctx, n)
}

// WaitSPIREAgentReady waits until "spire-agent healthcheck" succeeds on the
// node's Workload API socket.
func (l *Lab) WaitSPIREAgentReady(ctx context.Context, node string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	n, err := l.spireNodeFor(node)
	if err != nil {
		return err
	}
	return l.waitSPIREAgentReady(ctx, n)
}

// SPIREServer runs "spire-server ARGS..." against the lab's server and
// returns its standard output; a failure's error carries its standard
// error. The leading arguments that are not flags are the subcommand;
// -socketPath is inserted after them, for example
//
//	l.SPIREServer(ctx, "entry", "show", "-spiffeID", id)
//
// runs "spire-server entry show -socketPath S -spiffeID ID".
func (l *Lab) SPIREServer(ctx context.Context, args ...string) ([]byte, error) {
	l.mu.Lock()
	var argv []string
	err := l.spireFor()
	if err == nil && len(args) == 0 {
		err = errors.New("spire-server: no subcommand")
	}
	if err == nil {
		argv = l.st.spireServerArgv(args)
	}
	l.mu.Unlock()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return spireCmd(ctx, argv...)
}

// SPIREBundlePEM returns the trust domain's X.509 authorities in PEM, as
// "spire-server bundle show" reports them now.
func (l *Lab) SPIREBundlePEM() ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return l.SPIREServer(ctx, "bundle", "show")
}

// SPIREServerSocket returns the SPIRE server API socket (empty unless the
// identity is IdentitySPIRE).
func (l *Lab) SPIREServerSocket() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.st.spire() {
		return ""
	}
	return l.st.spireServerSocket()
}

// SPIREAgentSockets returns the node's SPIRE agent Workload API socket and
// its admin socket (Delegated Identity API); both are empty for an unknown
// node or unless the identity is IdentitySPIRE.
func (l *Lab) SPIREAgentSockets(node string) (workload, admin string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, err := l.spireNodeFor(node); err != nil {
		return "", ""
	}
	return l.st.spireWorkloadSocket(node), l.st.spireAdminSocket(node)
}

// SPIRENodeID returns the node's alias, spiffe://<td>/palisade/node/<node>:
// its SPIRE agent holds it, and workload entries of the node's pods name it
// as their parent.
func (l *Lab) SPIRENodeID(node string) spiffeid.ID {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.st.spireNodeID(node)
}

// SPIRENodeProxyID returns the node proxy's SPIFFE ID,
// spiffe://<td>/palisade/nodeproxy/<node>, the authorized delegate of the
// node's SPIRE agent.
func (l *Lab) SPIRENodeProxyID(node string) spiffeid.ID {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.st.spireNodeProxyID(node)
}
