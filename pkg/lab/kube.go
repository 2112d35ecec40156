package lab

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Binaries of the Kubernetes control plane (Config.Kube).
const (
	KubeAPIServerBinary = "kube-apiserver"
	EtcdBinary          = "etcd"
	KubectlBinary       = "kubectl"
)

// Where the control plane listens. etcd listens on the loopback of the
// lab's underlay netns, the API server on the underlay bridge's address
// (KubeAPIServerIP), so that the nodes reach it over the underlay; nothing
// of either listens in the root network namespace. Users there reach the
// API server through a forwarder on 127.0.0.1 (see Lab.Kubeconfig).
const (
	KubeAPIServerPort = 6443
	EtcdClientPort    = 2379
	EtcdPeerPort      = 2380
	// KubeAdminUser is the user of the lab's admin token, in the group
	// system:masters.
	KubeAdminUser = "palisade-lab-admin"
	// KubeFieldManager is the field manager of everything the lab applies.
	KubeFieldManager = "palisade-lab"
	// KubeServiceAccountIssuer is the API server's service account issuer.
	KubeServiceAccountIssuer = "https://kubernetes.default.svc.cluster.local"
)

// kubeAPIServerIP is the address the lab gives the underlay bridge, inside
// the underlay netns, for the API server (the nodes have 10.88.0.(10+i)).
func kubeAPIServerIP() netip.Addr { return netip.AddrFrom4([4]byte{10, 88, 0, 1}) }

// kubeState is what the lab records about its control plane.
type kubeState struct {
	// BinDir holds kube-apiserver and etcd.
	BinDir string `json:"binDir"`
	// Kubectl is the kubectl executable ("" when none was found).
	Kubectl string `json:"kubectl,omitempty"`
	// CRDs are the CRD manifests (files or directories) applied at up.
	CRDs []string `json:"crds,omitempty"`
	// APIServerIP is the underlay bridge's address the API server binds.
	APIServerIP netip.Addr `json:"apiServerIP"`
	// ForwardPort is the forwarder's port on 127.0.0.1 of the root netns.
	ForwardPort int        `json:"forwardPort,omitempty"`
	Etcd        *procState `json:"etcd,omitempty"`
	APIServer   *procState `json:"apiServer,omitempty"`
	Forwarder   *procState `json:"forwarder,omitempty"`
	// Applied lists the objects the lab applied (other than pods), so that
	// apply can delete the ones that are gone from the YAML.
	Applied []kubeRef `json:"applied,omitempty"`
}

// kubeRef names an object in the API.
type kubeRef struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Namespace  string `json:"namespace,omitempty"`
	Name       string `json:"name"`
}

func (r kubeRef) String() string {
	if r.Namespace == "" {
		return r.Kind + " " + r.Name
	}
	return r.Kind + " " + r.Namespace + "/" + r.Name
}

func (s *state) kube() bool { return s.Kube != nil }

func (s *state) kubeDir() string            { return filepath.Join(s.dir(), "kube") }
func (s *state) kubePKIDir() string         { return filepath.Join(s.kubeDir(), "pki") }
func (s *state) kubeServingCert() string    { return filepath.Join(s.kubePKIDir(), "apiserver.crt") }
func (s *state) kubeServingKey() string     { return filepath.Join(s.kubePKIDir(), "apiserver.key") }
func (s *state) kubeSAKey() string          { return filepath.Join(s.kubePKIDir(), "sa.key") }
func (s *state) kubeSAPub() string          { return filepath.Join(s.kubePKIDir(), "sa.pub") }
func (s *state) kubeTokenFile() string      { return filepath.Join(s.kubePKIDir(), "tokens.csv") }
func (s *state) etcdDataDir() string        { return filepath.Join(s.kubeDir(), "etcd") }
func (s *state) etcdLog() string            { return filepath.Join(s.kubeDir(), "etcd.log") }
func (s *state) kubeAPIServerLog() string   { return filepath.Join(s.kubeDir(), "apiserver.log") }
func (s *state) kubeForwarderLog() string   { return filepath.Join(s.kubeDir(), "forward.log") }
func (s *state) kubeconfigPath() string     { return filepath.Join(s.dir(), "kubeconfig") }
func (s *state) nodeKubeconfigPath() string { return filepath.Join(s.dir(), "kubeconfig-nodes") }

// kubeAPIServerAddr is the API server's address inside the underlay netns
// (and from the nodes).
func (s *state) kubeAPIServerAddr() string {
	return net.JoinHostPort(s.Kube.APIServerIP.String(), strconv.Itoa(KubeAPIServerPort))
}

// kubeForwardAddr is the forwarder's address in the root netns.
func (s *state) kubeForwardAddr() string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.Kube.ForwardPort))
}

// kubeBinDir finds kube-apiserver and etcd: dir if given, else the
// Palisade bin dir, $PALISADE_TEST_BIN, and the directory of kube-apiserver
// in $PATH.
func kubeBinDir(dir, binDir string) (string, error) {
	usable := func(d string) bool {
		for _, b := range []string{KubeAPIServerBinary, EtcdBinary} {
			if !isExecutable(filepath.Join(d, b)) {
				return false
			}
		}
		return true
	}
	if dir != "" {
		abs, err := filepath.Abs(dir)
		if err != nil {
			return "", fmt.Errorf("kube bin dir: %w", err)
		}
		if !usable(abs) {
			return "", fmt.Errorf("%s lacks executable %s and %s (build them with: make kube)", abs, KubeAPIServerBinary, EtcdBinary)
		}
		return abs, nil
	}
	candidates := []string{binDir}
	if d := os.Getenv("PALISADE_TEST_BIN"); d != "" {
		candidates = append(candidates, d)
	}
	if p, err := exec.LookPath(KubeAPIServerBinary); err == nil {
		candidates = append(candidates, filepath.Dir(p))
	}
	for _, d := range candidates {
		if d == "" {
			continue
		}
		if abs, err := filepath.Abs(d); err == nil && usable(abs) {
			return abs, nil
		}
	}
	return "", fmt.Errorf("%s and %s not found in %s, $PALISADE_TEST_BIN or $PATH (build them with \"make kube\", which puts them in .cache/test-bin, and pass --kube-bin-dir)",
		KubeAPIServerBinary, EtcdBinary, binDir)
}

func isExecutable(path string) bool {
	st, err := os.Stat(path)
	return err == nil && !st.IsDir() && st.Mode()&0o111 != 0
}

// findKubectl returns kubectl from the kube bin dir, else from $PATH, else "".
func findKubectl(kubeBin string) string {
	if p := filepath.Join(kubeBin, KubectlBinary); isExecutable(p) {
		return p
	}
	if p, err := exec.LookPath(KubectlBinary); err == nil {
		if abs, err := filepath.Abs(p); err == nil {
			return abs
		}
	}
	return ""
}

// defaultCRDPaths returns the repository's manifests/crds: next to the bin
// dir (bin/../manifests/crds), else in the working directory or the
// nearest parent of it that holds a go.mod. Nil if there is none.
func defaultCRDPaths(binDir string) []string {
	candidates := []string{filepath.Join(binDir, "..", "manifests", "crds")}
	if wd, err := os.Getwd(); err == nil {
		for d := wd; ; d = filepath.Dir(d) {
			if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
				candidates = append(candidates, filepath.Join(d, "manifests", "crds"))
				break
			}
			if filepath.Dir(d) == d {
				break
			}
		}
	}
	for _, c := range candidates {
		if st, err := os.Stat(c); err == nil && st.IsDir() {
			return []string{filepath.Clean(c)}
		}
	}
	return nil
}

// configureKube validates the Kubernetes part of cfg and fills st. It
// changes nothing on the host.
func configureKube(cfg Config, st *state) error {
	if !cfg.Kube {
		if cfg.KubeBinDir != "" || len(cfg.KubeCRDs) > 0 {
			return errors.New("KubeBinDir and KubeCRDs need Kube")
		}
		return nil
	}
	bin, err := kubeBinDir(cfg.KubeBinDir, cfg.BinDir)
	if err != nil {
		return err
	}
	crds := slices.Clone(cfg.KubeCRDs)
	if len(crds) == 0 {
		crds = defaultCRDPaths(cfg.BinDir)
	}
	for i, p := range crds {
		abs, err := filepath.Abs(p)
		if err != nil {
			return fmt.Errorf("CRDs %s: %w", p, err)
		}
		crds[i] = abs
	}
	st.Kube = &kubeState{BinDir: bin, Kubectl: findKubectl(bin), CRDs: crds, APIServerIP: kubeAPIServerIP()}
	return nil
}

// kubeCredentials are the control plane's secrets, generated at up.
type kubeCredentials struct {
	caPEM []byte // the API server's self-signed serving certificate
	token string // the admin's bearer token
}

// writeKubeCredentials generates the API server's self-signed serving
// certificate (SANs: its underlay address, 127.0.0.1 for the forwarder,
// localhost and the in-cluster names), the service account signing key
// pair and the static token file with one admin token in system:masters.
func (s *state) writeKubeCredentials() (*kubeCredentials, error) {
	if err := os.MkdirAll(s.kubePKIDir(), 0o700); err != nil {
		return nil, fmt.Errorf("kube credentials: %w", err)
	}
	certPEM, keyPEM, err := selfSignedCert(
		pkix.Name{CommonName: "kube-apiserver", Organization: []string{"palisade lab " + s.Name}},
		[]string{"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local", "localhost"},
		[]net.IP{s.Kube.APIServerIP.AsSlice(), net.IPv4(127, 0, 0, 1).To4(), net.IPv4(10, 96, 0, 1).To4()})
	if err != nil {
		return nil, fmt.Errorf("kube serving certificate: %w", err)
	}
	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("service account key: %w", err)
	}
	saDER, err := x509.MarshalPKCS8PrivateKey(saKey)
	if err != nil {
		return nil, fmt.Errorf("service account key: %w", err)
	}
	saPubDER, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("service account key: %w", err)
	}
	var tok [32]byte
	if _, err := rand.Read(tok[:]); err != nil {
		return nil, fmt.Errorf("admin token: %w", err)
	}
	token := hex.EncodeToString(tok[:])
	files := []struct {
		path string
		data []byte
		mode os.FileMode
	}{
		{s.kubeServingCert(), certPEM, 0o644},
		{s.kubeServingKey(), keyPEM, 0o600},
		{s.kubeSAKey(), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: saDER}), 0o600},
		{s.kubeSAPub(), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: saPubDER}), 0o644},
		// token,user,uid,"group,..."
		{s.kubeTokenFile(), fmt.Appendf(nil, "%s,%s,%s,\"system:masters\"\n", token, KubeAdminUser, KubeAdminUser), 0o600},
	}
	for _, f := range files {
		if err := os.WriteFile(f.path, f.data, f.mode); err != nil {
			return nil, fmt.Errorf("kube credentials: %w", err)
		}
	}
	return &kubeCredentials{caPEM: certPEM, token: token}, nil
}

// selfSignedCert makes a self-signed serving certificate (its own CA, valid
// for ten years) for the names and addresses, with a new P-256 key; both
// PEM-encoded.
func selfSignedCert(subject pkix.Name, dnsNames []string, ips []net.IP) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               subject,
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		DNSNames:              dnsNames,
		IPAddresses:           ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), nil
}

// writeKubeconfig writes a kubeconfig for server with the CA and token.
func writeKubeconfig(path, labName, server string, cred *kubeCredentials) error {
	name := "palisade-lab-" + labName
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[name] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: cred.caPEM}
	cfg.AuthInfos[KubeAdminUser] = &clientcmdapi.AuthInfo{Token: cred.token}
	cfg.Contexts[name] = &clientcmdapi.Context{Cluster: name, AuthInfo: KubeAdminUser, Namespace: "default"}
	cfg.CurrentContext = name
	data, err := clientcmd.Write(*cfg)
	if err != nil {
		return fmt.Errorf("kubeconfig: %w", err)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		return fmt.Errorf("kubeconfig: %w", err)
	}
	return nil
}

// ensureUnderlayAddr gives the underlay bridge (inside the underlay netns)
// the API server's address, unless it has an IPv4 address already, which
// is then used. It returns the address.
func ensureUnderlayAddr(underlay string, want netip.Addr) (netip.Addr, error) {
	got := want
	err := withNetlink(underlay, func(h *netlink.Handle, _ int) error {
		br, err := h.LinkByName(UnderlayBridge)
		if err != nil {
			return fmt.Errorf("link %s: %w", UnderlayBridge, err)
		}
		addrs, err := h.AddrList(br, netlink.FAMILY_V4)
		if err != nil {
			return fmt.Errorf("addresses of %s: %w", UnderlayBridge, err)
		}
		for _, a := range addrs {
			if ip, ok := netip.AddrFromSlice(a.IP.To4()); ok {
				got = ip
				return nil
			}
		}
		return addAddr(h, UnderlayBridge, netip.PrefixFrom(want, 24))
	})
	if err != nil {
		return netip.Addr{}, fmt.Errorf("underlay %s: %w", underlay, err)
	}
	return got, nil
}

// EnsureUnderlayAddr gives the underlay bridge, inside the lab's own
// underlay netns, the address the --kube API server uses, so that
// processes in the underlay netns can reach the nodes. A bridge that has an
// IPv4 address already (a --kube lab's) keeps it. It returns the bridge's
// address.
func (l *Lab) EnsureUnderlayAddr() (netip.Addr, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return ensureUnderlayAddr(l.st.Underlay, kubeAPIServerIP())
}

// etcdArgv runs etcd in the underlay netns on its loopback only.
func (s *state) etcdArgv(ip string) []string {
	client := fmt.Sprintf("http://127.0.0.1:%d", EtcdClientPort)
	peer := fmt.Sprintf("http://127.0.0.1:%d", EtcdPeerPort)
	return []string{ip, "netns", "exec", s.Underlay,
		filepath.Join(s.Kube.BinDir, EtcdBinary),
		"--name", "lab",
		"--data-dir", s.etcdDataDir(),
		"--listen-client-urls", client,
		"--advertise-client-urls", client,
		"--listen-peer-urls", peer,
		"--initial-advertise-peer-urls", peer,
		"--initial-cluster", "lab=" + peer,
		"--initial-cluster-state", "new",
		// A lab is thrown away; fsync only slows it down.
		"--unsafe-no-fsync",
		"--log-level", "warn",
	}
}

// kubeAPIServerArgv runs the API server in the underlay netns, bound to the
// underlay bridge's address.
func (s *state) kubeAPIServerArgv(ip string) []string {
	addr := s.Kube.APIServerIP.String()
	return []string{ip, "netns", "exec", s.Underlay,
		filepath.Join(s.Kube.BinDir, KubeAPIServerBinary),
		"--etcd-servers", fmt.Sprintf("http://127.0.0.1:%d", EtcdClientPort),
		"--bind-address", addr,
		"--advertise-address", addr,
		"--secure-port", strconv.Itoa(KubeAPIServerPort),
		"--tls-cert-file", s.kubeServingCert(),
		"--tls-private-key-file", s.kubeServingKey(),
		"--cert-dir", s.kubePKIDir(),
		"--token-auth-file", s.kubeTokenFile(),
		"--authorization-mode", "RBAC",
		"--service-account-issuer", KubeServiceAccountIssuer,
		"--service-account-key-file", s.kubeSAPub(),
		"--service-account-signing-key-file", s.kubeSAKey(),
		"--service-cluster-ip-range", serviceCIDR().String(),
		// pods/portforward goes to the node's kubelet (the lab's stand-in,
		// see kubelet.go) at its InternalIP, the underlay address; without
		// --kubelet-certificate-authority the API server does not verify
		// the kubelet's certificate, and the stand-in asks for no client
		// certificate.
		"--kubelet-preferred-address-types", "InternalIP",
		"--allow-privileged",
		"--profiling=false",
		"--v", "1",
	}
}

// startKube starts etcd, the API server and the root-namespace forwarder,
// writes the kubeconfigs and waits until the API server is ready through
// both paths. l.mu is held.
func (l *Lab) startKube(ctx context.Context) error {
	st := l.st
	if err := os.MkdirAll(st.kubeDir(), 0o755); err != nil {
		return fmt.Errorf("kube: %w", err)
	}
	if err := os.MkdirAll(st.etcdDataDir(), 0o700); err != nil {
		return fmt.Errorf("kube: %w", err)
	}
	ip, err := ensureUnderlayAddr(st.Underlay, st.Kube.APIServerIP)
	if err != nil {
		return err
	}
	st.Kube.APIServerIP = ip
	cred, err := st.writeKubeCredentials()
	if err != nil {
		return err
	}
	if err := writeKubeconfig(st.nodeKubeconfigPath(), st.Name, "https://"+st.kubeAPIServerAddr(), cred); err != nil {
		return err
	}
	if err := st.save(); err != nil {
		return err
	}

	spec := procSpec{name: "etcd", argv: st.etcdArgv(l.sys.ip), env: os.Environ(), dir: st.kubeDir(), log: st.etcdLog()}
	l.log.Info("starting etcd", "netns", st.Underlay, "client", fmt.Sprintf("127.0.0.1:%d", EtcdClientPort), "log", spec.log)
	ps, err := l.procs.start(spec)
	if err != nil {
		return err
	}
	st.Kube.Etcd = ps
	if err := st.save(); err != nil {
		return err
	}
	if err := l.waitEtcdReady(ctx); err != nil {
		return err
	}

	spec = procSpec{name: "kube-apiserver", argv: st.kubeAPIServerArgv(l.sys.ip), env: os.Environ(), dir: st.kubeDir(), log: st.kubeAPIServerLog()}
	l.log.Info("starting kube-apiserver", "netns", st.Underlay, "address", st.kubeAPIServerAddr(), "log", spec.log)
	if ps, err = l.procs.start(spec); err != nil {
		return err
	}
	st.Kube.APIServer = ps
	if err := st.save(); err != nil {
		return err
	}
	if err := l.waitKubeAPIServerReady(ctx, cred); err != nil {
		return err
	}
	if err := l.startKubeForwarder(ctx); err != nil {
		return err
	}
	if err := writeKubeconfig(st.kubeconfigPath(), st.Name, "https://"+st.kubeForwardAddr(), cred); err != nil {
		return err
	}
	if err := l.waitKubeForwarderReady(ctx, cred); err != nil {
		return err
	}
	return st.save()
}

// startKubeForwarder binds 127.0.0.1:0 in the root netns and hands the
// listener to "LAB_BIN forward", which connects every client to the API
// server inside the underlay netns. l.mu is held.
func (l *Lab) startKubeForwarder(ctx context.Context) error {
	st := l.st
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp4", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("kube forwarder: %w", err)
	}
	defer ln.Close()
	f, err := ln.(*net.TCPListener).File()
	if err != nil {
		return fmt.Errorf("kube forwarder: %w", err)
	}
	defer f.Close()
	st.Kube.ForwardPort = ln.Addr().(*net.TCPAddr).Port
	spec := procSpec{
		name: "kube-apiserver forwarder",
		argv: []string{st.LabBin, ForwardCommand,
			"--netns", st.Underlay, "--listen-fd", "3", "--to", st.kubeAPIServerAddr()},
		env:   os.Environ(),
		dir:   st.kubeDir(),
		log:   st.kubeForwarderLog(),
		files: []*os.File{f},
	}
	l.log.Info("starting kube-apiserver forwarder", "listen", st.kubeForwardAddr(), "to", st.kubeAPIServerAddr(), "log", spec.log)
	ps, err := l.procs.start(spec)
	if err != nil {
		return err
	}
	st.Kube.Forwarder = ps
	return st.save()
}

// underlayDial connects from inside the lab's underlay netns. The netns is
// opened for each dial only, so that nothing holds it once the lab is
// torn down.
func (s *state) underlayDial(ctx context.Context, network, addr string) (net.Conn, error) {
	return dialInNetns(ctx, s.Underlay, network, addr)
}

// waitEtcdReady polls etcd's /health inside the underlay netns. l.mu is
// held.
func (l *Lab) waitEtcdReady(ctx context.Context) error {
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true, DialContext: l.st.underlayDial}}
	url := fmt.Sprintf("http://127.0.0.1:%d/health", EtcdClientPort)
	return l.pollReady(ctx, "etcd", l.st.Kube.Etcd, func(ctx context.Context) error {
		return getOK(ctx, client, url)
	})
}

// kubeTLS trusts only the API server's serving certificate.
func kubeTLS(caPEM []byte) (*tls.Config, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("kube: no certificate in the API server's CA data")
	}
	return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, nil
}

// getReadyz asks the API server's /readyz with the admin token.
func getReadyz(ctx context.Context, client *http.Client, base, token string) error {
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, base+"/readyz", nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("GET %s/readyz: %s: %s", base, resp.Status, strings.TrimSpace(string(body)))
	}
	return nil
}

// waitKubeAPIServerReady polls GET /readyz with the admin token from inside
// the underlay netns. l.mu is held.
func (l *Lab) waitKubeAPIServerReady(ctx context.Context, cred *kubeCredentials) error {
	tc, err := kubeTLS(cred.caPEM)
	if err != nil {
		return err
	}
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true, DialContext: l.st.underlayDial, TLSClientConfig: tc}}
	base := "https://" + l.st.kubeAPIServerAddr()
	return l.pollReady(ctx, "kube-apiserver", l.st.Kube.APIServer, func(ctx context.Context) error {
		return getReadyz(ctx, client, base, cred.token)
	})
}

// waitKubeForwarderReady polls GET /readyz through the forwarder, from the
// root netns. l.mu is held.
func (l *Lab) waitKubeForwarderReady(ctx context.Context, cred *kubeCredentials) error {
	tc, err := kubeTLS(cred.caPEM)
	if err != nil {
		return err
	}
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true, TLSClientConfig: tc}}
	base := "https://" + l.st.kubeForwardAddr()
	return l.pollReady(ctx, "kube-apiserver forwarder", l.st.Kube.Forwarder, func(ctx context.Context) error {
		return getReadyz(ctx, client, base, cred.token)
	})
}

// stopKube stops the nodes' kubelet stand-ins, the forwarder, the API
// server, then etcd (SIGTERM, then SIGKILL after grace). The forwarder runs
// in the root netns, where the teardown's sweep of the lab's namespaces
// would not find it. l.mu is held.
func (l *Lab) stopKube(ctx context.Context, grace time.Duration) error {
	k := l.st.Kube
	if k == nil {
		return nil
	}
	l.kc = nil
	errs := []error{l.stopKubelets(ctx, grace)}
	for _, p := range []*procState{k.Forwarder, k.APIServer, k.Etcd} {
		if p != nil {
			errs = append(errs, l.procs.stop(ctx, p, grace))
		}
	}
	return errors.Join(errs...)
}

// kubeFor checks that the lab runs an API server; l.mu is held.
func (l *Lab) kubeFor() error {
	if !l.st.kube() {
		return fmt.Errorf("lab %s: built without --kube", l.st.Name)
	}
	return nil
}

// Kube reports whether the lab runs a Kubernetes API server (Config.Kube).
func (l *Lab) Kube() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.st.kube()
}

// Kubeconfig returns the kubeconfig for users and tests in the root
// network namespace: https://127.0.0.1:<port> (the lab's forwarder to the
// API server), the API server's certificate and the admin token (group
// system:masters). Empty without Config.Kube.
func (l *Lab) Kubeconfig() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.st.kube() {
		return ""
	}
	return l.st.kubeconfigPath()
}

// NodeKubeconfig returns the kubeconfig the agents and node proxies use
// from the node netns: https://<underlay bridge address>:6443, the same
// certificate and token. Empty without Config.Kube.
func (l *Lab) NodeKubeconfig() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.st.kube() {
		return ""
	}
	return l.st.nodeKubeconfigPath()
}

// KubeRESTConfig returns the client configuration of Kubeconfig.
func (l *Lab) KubeRESTConfig() (*rest.Config, error) {
	l.mu.Lock()
	err := l.kubeFor()
	path := l.st.kubeconfigPath()
	l.mu.Unlock()
	if err != nil {
		return nil, err
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		return nil, fmt.Errorf("lab kubeconfig: %w", err)
	}
	return cfg, nil
}

// KubeClient returns a client of the lab's API server (through Kubeconfig).
func (l *Lab) KubeClient() (kubernetes.Interface, error) {
	cfg, err := l.KubeRESTConfig()
	if err != nil {
		return nil, err
	}
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	return c, nil
}

// Kubectl runs "kubectl --kubeconfig <Kubeconfig> ARGS..." and returns its
// standard output; a failure's error carries its standard error.
func (l *Lab) Kubectl(ctx context.Context, args ...string) ([]byte, error) {
	l.mu.Lock()
	err := l.kubeFor()
	var kubectl, path string
	if err == nil {
		kubectl, path = l.st.Kube.Kubectl, l.st.kubeconfigPath()
		if kubectl == "" {
			kubectl = findKubectl(l.st.Kube.BinDir)
		}
		if kubectl == "" {
			err = fmt.Errorf("lab %s: kubectl not found in %s or $PATH", l.st.Name, l.st.Kube.BinDir)
		}
	}
	l.mu.Unlock()
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, kubectl, append([]string{"--kubeconfig", path}, args...)...)
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "KUBECONFIG=") {
			env = append(env, kv)
		}
	}
	cmd.Env = env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}
