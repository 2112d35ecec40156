package manifests_test

import (
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"sigs.k8s.io/yaml"
)

// kustomization is the part of kustomize's Kustomization these manifests
// use; decoding is strict, so a field outside it fails the test.
type kustomization struct {
	APIVersion         string   `json:"apiVersion"`
	Kind               string   `json:"kind"`
	Resources          []string `json:"resources"`
	ConfigMapGenerator []struct {
		Name      string   `json:"name"`
		Namespace string   `json:"namespace"`
		Files     []string `json:"files"`
		Literals  []string `json:"literals"`
	} `json:"configMapGenerator"`
	Images []struct {
		Name    string `json:"name"`
		NewName string `json:"newName"`
		NewTag  string `json:"newTag"`
	} `json:"images"`
}

func loadKustomization(t *testing.T, dir string) *kustomization {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var k kustomization
	if err := yaml.UnmarshalStrict(data, &k); err != nil {
		t.Fatalf("%s/kustomization.yaml: %v", dir, err)
	}
	return &k
}

// generated are the ConfigMaps of the kustomizations' generators:
// namespace/name -> keys.
func generated(t *testing.T) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	for _, dir := range []string{".", "spire"} {
		for _, g := range loadKustomization(t, dir).ConfigMapGenerator {
			var keys []string
			for _, f := range g.Files {
				keys = append(keys, filepath.Base(f))
			}
			for _, l := range g.Literals {
				k, _, _ := strings.Cut(l, "=")
				keys = append(keys, k)
			}
			out[g.Namespace+"/"+g.Name] = keys
		}
	}
	return out
}

// TestKustomizations checks that every manifest file is a resource of a
// kustomization, and that everything a kustomization names exists.
func TestKustomizations(t *testing.T) {
	listed := map[string]bool{}
	for _, dir := range []string{".", "spire"} {
		k := loadKustomization(t, dir)
		if k.APIVersion != "kustomize.config.k8s.io/v1beta1" || k.Kind != "Kustomization" {
			t.Errorf("%s: %s %s", dir, k.APIVersion, k.Kind)
		}
		for _, r := range k.Resources {
			p := filepath.Join(dir, r)
			st, err := os.Stat(p)
			if err != nil {
				t.Errorf("%s/kustomization.yaml: resource %s: %v", dir, r, err)
				continue
			}
			if st.IsDir() {
				if _, err := os.Stat(filepath.Join(p, "kustomization.yaml")); err != nil {
					t.Errorf("%s/kustomization.yaml: resource %s is a directory without kustomization.yaml", dir, r)
				}
				continue
			}
			listed[filepath.Clean(p)] = true
		}
		for _, g := range k.ConfigMapGenerator {
			for _, f := range g.Files {
				if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
					t.Errorf("%s/kustomization.yaml: generator %s: %v", dir, g.Name, err)
				}
			}
		}
	}
	for _, f := range append(manifestFiles(t), crdFiles...) {
		if !listed[filepath.Clean(f)] {
			t.Errorf("%s is not a resource of any kustomization.yaml", f)
		}
	}
	if !slices.Contains(loadKustomization(t, ".").Resources, "spire") {
		t.Error("manifests/kustomization.yaml does not include spire")
	}
}

// TestKustomizeBuild builds the kustomization with kubectl (offline) and
// decodes every object strictly.
func TestKustomizeBuild(t *testing.T) {
	kubectl := lookPath(t, "kubectl")
	out, err := exec.Command(kubectl, "kustomize", ".").Output()
	if err != nil {
		t.Fatalf("kubectl kustomize: %v\n%s", err, exitStderr(err))
	}
	kinds := map[string]int{}
	for i, doc := range yamlDocs(t, out) {
		var meta struct {
			Kind string `json:"kind"`
		}
		if err := yaml.Unmarshal(doc, &meta); err != nil {
			t.Fatal(err)
		}
		kinds[meta.Kind]++
		if meta.Kind == "CustomResourceDefinition" {
			continue
		}
		obj, _, err := strictDecoder.Decode(doc, nil, nil)
		if err != nil {
			t.Errorf("object %d of the build: %v", i+1, err)
			continue
		}
		// The generated ConfigMaps carry a content hash, and every
		// reference follows it.
		if cm, ok := obj.(*corev1.ConfigMap); ok && cm.Name != "spire-bundle" && !regexp.MustCompile(`-[a-z0-9]{10}$`).MatchString(cm.Name) {
			t.Errorf("ConfigMap %s has no kustomize hash suffix", cm.Name)
		}
		if ds, ok := obj.(*appsv1.DaemonSet); ok {
			for _, c := range append(ds.Spec.Template.Spec.InitContainers, ds.Spec.Template.Spec.Containers...) {
				if !strings.HasPrefix(c.Image, "ghcr.io/") {
					t.Errorf("%s/%s: image %q", ds.Name, c.Name, c.Image)
				}
			}
		}
	}
	want := map[string]int{
		"CustomResourceDefinition": 3, "Namespace": 2, "ServiceAccount": 4,
		"ClusterRole": 4, "ClusterRoleBinding": 4, "Role": 2, "RoleBinding": 2,
		"ConfigMap": 5, "Service": 1, "StatefulSet": 1, "DaemonSet": 3,
	}
	if fmt.Sprint(kinds) != fmt.Sprint(want) {
		t.Errorf("kustomize build: %v, want %v", kinds, want)
	}
}

func exitStderr(err error) string {
	if ee, ok := err.(*exec.ExitError); ok {
		return string(ee.Stderr)
	}
	return ""
}

// TestManifestsDecodeStrictly decodes every manifest file into the API
// types, refusing unknown and duplicate fields.
func TestManifestsDecodeStrictly(t *testing.T) {
	for _, f := range manifestFiles(t) {
		t.Run(f, func(t *testing.T) {
			if objs := decodeFile(t, f); len(objs) == 0 && !t.Failed() {
				t.Error("no objects")
			}
		})
	}
}

// TestRBACGolden lists every rule and binding; testdata/rbac.golden is
// the reviewed least-privilege set.
func TestRBACGolden(t *testing.T) {
	var lines []string
	roles := map[string]bool{}
	sas := map[string]bool{}
	var bindings []struct {
		name, role string
		subjects   []rbacv1.Subject
	}
	for _, o := range allObjects(t) {
		switch x := o.obj.(type) {
		case *rbacv1.ClusterRole:
			roles["ClusterRole/"+x.Name] = true
			lines = append(lines, ruleLines("ClusterRole "+x.Name, x.Rules)...)
		case *rbacv1.Role:
			roles["Role/"+x.Namespace+"/"+x.Name] = true
			lines = append(lines, ruleLines("Role "+x.Namespace+"/"+x.Name, x.Rules)...)
		case *rbacv1.ClusterRoleBinding:
			bindings = append(bindings, struct {
				name, role string
				subjects   []rbacv1.Subject
			}{"ClusterRoleBinding " + x.Name, x.RoleRef.Kind + "/" + x.RoleRef.Name, x.Subjects})
		case *rbacv1.RoleBinding:
			role := x.RoleRef.Kind + "/" + x.RoleRef.Name
			if x.RoleRef.Kind == "Role" {
				role = "Role/" + x.Namespace + "/" + x.RoleRef.Name
			}
			bindings = append(bindings, struct {
				name, role string
				subjects   []rbacv1.Subject
			}{"RoleBinding " + x.Namespace + "/" + x.Name, role, x.Subjects})
		case *corev1.ServiceAccount:
			sas[x.Namespace+"/"+x.Name] = true
		}
	}
	for _, b := range bindings {
		if !roles[b.role] {
			t.Errorf("%s refers to %s, which the manifests do not define", b.name, b.role)
		}
		for _, s := range b.subjects {
			if s.Kind != "ServiceAccount" || !sas[s.Namespace+"/"+s.Name] {
				t.Errorf("%s: subject %s %s/%s is not a service account of the manifests", b.name, s.Kind, s.Namespace, s.Name)
			}
			lines = append(lines, fmt.Sprintf("%s: %s -> ServiceAccount %s/%s", b.name, b.role, s.Namespace, s.Name))
		}
	}
	sort.Strings(lines)
	goldenCompare(t, "rbac.golden", strings.Join(lines, "\n")+"\n")
}

// ruleLines expands rules to one line per group, resource (and resource
// name) with its sorted verbs, so the golden file reads as a permission
// list and equal permissions written differently compare equal.
func ruleLines(owner string, rules []rbacv1.PolicyRule) []string {
	verbs := map[string]map[string]bool{}
	for _, r := range rules {
		if len(r.NonResourceURLs) > 0 {
			for _, u := range r.NonResourceURLs {
				k := "url " + u
				if verbs[k] == nil {
					verbs[k] = map[string]bool{}
				}
				for _, v := range r.Verbs {
					verbs[k][v] = true
				}
			}
			continue
		}
		names := r.ResourceNames
		if len(names) == 0 {
			names = []string{""}
		}
		for _, g := range r.APIGroups {
			if g == "" {
				g = "core"
			}
			for _, res := range r.Resources {
				for _, n := range names {
					k := g + " " + res
					if n != "" {
						k += " name=" + n
					}
					if verbs[k] == nil {
						verbs[k] = map[string]bool{}
					}
					for _, v := range r.Verbs {
						verbs[k][v] = true
					}
				}
			}
		}
	}
	var out []string
	for k, vs := range verbs {
		var l []string
		for v := range vs {
			l = append(l, v)
		}
		sort.Strings(l)
		out = append(out, fmt.Sprintf("%s: %s: %s", owner, k, strings.Join(l, ",")))
	}
	return out
}

// workload is a pod template of the manifests.
type workload struct {
	kind, namespace, name string
	spec                  *corev1.PodSpec
	// claims are a StatefulSet's volume claim templates.
	claims []string
	// podAnnotations are the pod template's annotations.
	podAnnotations map[string]string
}

func workloads(t *testing.T) []workload {
	t.Helper()
	var out []workload
	for _, o := range allObjects(t) {
		switch x := o.obj.(type) {
		case *appsv1.DaemonSet:
			out = append(out, workload{"DaemonSet", x.Namespace, x.Name, &x.Spec.Template.Spec, nil, x.Spec.Template.Annotations})
		case *appsv1.StatefulSet:
			var claims []string
			for _, c := range x.Spec.VolumeClaimTemplates {
				claims = append(claims, c.Name)
			}
			out = append(out, workload{"StatefulSet", x.Namespace, x.Name, &x.Spec.Template.Spec, claims, x.Spec.Template.Annotations})
		case *appsv1.Deployment:
			out = append(out, workload{"Deployment", x.Namespace, x.Name, &x.Spec.Template.Spec, nil, x.Spec.Template.Annotations})
		case *corev1.Pod, *appsv1.ReplicaSet:
			t.Errorf("%s: %T is not expected in the manifests", o.file, x)
		}
	}
	return out
}

func findWorkload(t *testing.T, kind, ns, name string) workload {
	t.Helper()
	for _, w := range workloads(t) {
		if w.kind == kind && w.namespace == ns && w.name == name {
			return w
		}
	}
	t.Fatalf("no %s %s/%s in the manifests", kind, ns, name)
	return workload{}
}

func findContainer(t *testing.T, w workload, name string) *corev1.Container {
	t.Helper()
	for i := range w.spec.Containers {
		if w.spec.Containers[i].Name == name {
			return &w.spec.Containers[i]
		}
	}
	for i := range w.spec.InitContainers {
		if w.spec.InitContainers[i].Name == name {
			return &w.spec.InitContainers[i]
		}
	}
	t.Fatalf("%s %s has no container %s", w.kind, w.name, name)
	return nil
}

// TestContainers checks each container's privileges against the
// documented need (the table is the documentation's mirror: a new
// container or capability must be added here on purpose), and that every
// container has resources and probes.
func TestContainers(t *testing.T) {
	type want struct {
		caps                 []string
		hostNetwork, hostPID bool
	}
	wants := map[string]want{
		// setns (SYS_ADMIN); iptables/nft in pod netns and tc (NET_ADMIN,
		// NET_RAW); the eBPF datapath (BPF, PERFMON).
		"DaemonSet palisade-system/palisade-agent agent":       {caps: []string{"BPF", "NET_ADMIN", "NET_RAW", "PERFMON", "SYS_ADMIN"}, hostNetwork: true, hostPID: true},
		"DaemonSet palisade-system/palisade-agent install-cni": {hostNetwork: true, hostPID: true},
		// setns (SYS_ADMIN); SO_MARK (NET_ADMIN).
		"DaemonSet palisade-system/palisade-nodeproxy nodeproxy": {caps: []string{"NET_ADMIN", "SYS_ADMIN"}, hostNetwork: true},
		"DaemonSet spire/spire-agent spire-agent":                {hostNetwork: true, hostPID: true},
		"StatefulSet spire/spire-server spire-server":            {},
	}
	seen := map[string]bool{}
	for _, w := range workloads(t) {
		ps := w.spec
		all := append(slices.Clone(ps.InitContainers), ps.Containers...)
		for _, c := range all {
			id := fmt.Sprintf("%s %s/%s %s", w.kind, w.namespace, w.name, c.Name)
			seen[id] = true
			t.Run(id, func(t *testing.T) {
				wt, ok := wants[id]
				if !ok {
					t.Fatalf("not in the test's table: add it with the capabilities it needs")
				}
				if ps.HostNetwork != wt.hostNetwork || ps.HostPID != wt.hostPID || ps.HostIPC {
					t.Errorf("hostNetwork=%v hostPID=%v hostIPC=%v, want %v %v false", ps.HostNetwork, ps.HostPID, ps.HostIPC, wt.hostNetwork, wt.hostPID)
				}
				if ps.HostNetwork && ps.DNSPolicy != corev1.DNSClusterFirstWithHostNet {
					t.Errorf("host network with dnsPolicy %q: use ClusterFirstWithHostNet to resolve Services", ps.DNSPolicy)
				}
				if ps.TerminationGracePeriodSeconds == nil {
					t.Error("no terminationGracePeriodSeconds")
				}
				sc := c.SecurityContext
				if sc == nil || sc.Capabilities == nil {
					t.Fatal("no securityContext.capabilities")
				}
				if sc.Privileged != nil && *sc.Privileged {
					t.Error("privileged")
				}
				if !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
					t.Errorf("drops %v, want [ALL]", sc.Capabilities.Drop)
				}
				var add []string
				for _, c := range sc.Capabilities.Add {
					add = append(add, string(c))
				}
				sort.Strings(add)
				if !slices.Equal(add, wt.caps) {
					t.Errorf("adds %v, want exactly %v", add, wt.caps)
				}
				if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
					t.Error("root filesystem not read-only")
				}
				// Kubernetes treats allowPrivilegeEscalation as true for a
				// container with SYS_ADMIN, so false there would mislead;
				// without SYS_ADMIN it must be off.
				ape := sc.AllowPrivilegeEscalation
				if slices.Contains(add, "SYS_ADMIN") {
					if ape != nil && !*ape {
						t.Error("allowPrivilegeEscalation: false has no effect with SYS_ADMIN; leave it out")
					}
				} else if ape == nil || *ape {
					t.Error("allowPrivilegeEscalation not false")
				}
				for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
					if _, ok := c.Resources.Requests[r]; !ok {
						t.Errorf("no %s request", r)
					}
				}
				if _, ok := c.Resources.Limits[corev1.ResourceMemory]; !ok {
					t.Error("no memory limit")
				}
				if c.ReadinessProbe == nil || c.LivenessProbe == nil {
					t.Error("needs a readiness and a liveness probe")
				}
				if slices.ContainsFunc(ps.InitContainers, func(i corev1.Container) bool { return i.Name == c.Name }) &&
					(c.RestartPolicy == nil || *c.RestartPolicy != corev1.ContainerRestartPolicyAlways) {
					t.Error("an init container with probes must be a sidecar (restartPolicy: Always)")
				}
				if strings.HasSuffix(c.Image, ":latest") && !strings.HasPrefix(c.Image, "ghcr.io/palisade-net/palisade:") {
					t.Errorf("image %s: pin a version", c.Image)
				}
				mountsExist(t, w, &c)
			})
		}
	}
	for id := range wants {
		if !seen[id] {
			t.Errorf("%s is in the table but not in the manifests", id)
		}
	}
}

// mountsExist checks that every volume mount names a volume of the pod.
func mountsExist(t *testing.T, w workload, c *corev1.Container) {
	t.Helper()
	for _, m := range c.VolumeMounts {
		if volume(w.spec, m.Name) == nil && !slices.Contains(w.claims, m.Name) {
			t.Errorf("mount %s: no such volume", m.Name)
		}
	}
}

func volume(ps *corev1.PodSpec, name string) *corev1.Volume {
	for i := range ps.Volumes {
		if ps.Volumes[i].Name == name {
			return &ps.Volumes[i]
		}
	}
	return nil
}

// hostPathOf returns the node path behind a path inside the container,
// or "" when it is not on a hostPath volume.
func hostPathOf(ps *corev1.PodSpec, c *corev1.Container, p string) string {
	best := ""
	host := ""
	for _, m := range c.VolumeMounts {
		if p != m.MountPath && !strings.HasPrefix(p, strings.TrimSuffix(m.MountPath, "/")+"/") {
			continue
		}
		v := volume(ps, m.Name)
		if v == nil || v.HostPath == nil || len(m.MountPath) <= len(best) {
			continue
		}
		best = m.MountPath
		host = path.Join(v.HostPath.Path, strings.TrimPrefix(p, m.MountPath))
	}
	return host
}

// flagArgs returns the --name=value arguments of a container.
func flagArgs(t *testing.T, c *corev1.Container) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, a := range c.Args {
		name, val, ok := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		if !strings.HasPrefix(a, "--") || !ok {
			t.Fatalf("%s: argument %q: write flags as --name=value", c.Name, a)
		}
		out[name] = val
	}
	return out
}

// TestPaths checks what the pods must agree on through the node: the
// agent's sockets, the node proxy's and the CNI plugin's view of them,
// and the SPIRE agent's sockets as the node proxy mounts them.
func TestPaths(t *testing.T) {
	agentW := findWorkload(t, "DaemonSet", "palisade-system", "palisade-agent")
	agent := findContainer(t, agentW, "agent")
	cni := findContainer(t, agentW, "install-cni")
	proxyW := findWorkload(t, "DaemonSet", "palisade-system", "palisade-nodeproxy")
	proxy := findContainer(t, proxyW, "nodeproxy")
	spireW := findWorkload(t, "DaemonSet", "spire", "spire-agent")
	spire := findContainer(t, spireW, "spire-agent")

	af, pf := flagArgs(t, agent), flagArgs(t, proxy)
	agentConf := hclStrings(t, "spire/agent.conf")

	for _, tc := range []struct {
		what       string
		a, b       string // node paths that must be equal
		mustBeHost bool
	}{
		{"handoff socket (agent --proxy-socket, proxy --agent-socket)",
			hostPathOf(agentW.spec, agent, af["proxy-socket"]), hostPathOf(proxyW.spec, proxy, pf["agent-socket"]), true},
		{"CNI socket (agent --cni-socket, plugin agentSocket; the plugin runs on the node)",
			hostPathOf(agentW.spec, agent, af["cni-socket"]), envOf(cni, "PALISADE_CNI_SOCKET"), true},
		{"SPIRE admin socket (agent.conf admin_socket_path, proxy --spire-admin-socket)",
			hostPathOf(spireW.spec, spire, agentConf["admin_socket_path"]), hostPathOf(proxyW.spec, proxy, pf["spire-admin-socket"]), true},
		{"SPIRE Workload API socket (agent.conf socket_path, proxy --spire-workload-socket)",
			hostPathOf(spireW.spec, spire, agentConf["socket_path"]), hostPathOf(proxyW.spec, proxy, pf["spire-workload-socket"]), true},
		{"netns directory (agent --netns-dir on the node's /var/run/netns)",
			hostPathOf(agentW.spec, agent, af["netns-dir"]), "/var/run/netns", true},
		{"eBPF pins (agent --bpffs on the node's bpffs, /sys/fs/bpf)",
			hostPathOf(agentW.spec, agent, af["bpffs"]), "/sys/fs/bpf/palisade", true},
	} {
		if tc.a == "" || tc.b == "" || tc.a != tc.b {
			t.Errorf("%s: %q vs %q, want the same path on the node", tc.what, tc.a, tc.b)
		}
	}
	for _, m := range agent.VolumeMounts {
		if m.MountPath == af["netns-dir"] && (m.MountPropagation == nil || *m.MountPropagation != corev1.MountPropagationHostToContainer) {
			t.Error("the agent's netns mount needs mountPropagation HostToContainer to see pods created after it started")
		}
		if strings.HasPrefix(af["bpffs"], m.MountPath+"/") && (m.MountPropagation == nil || *m.MountPropagation != corev1.MountPropagationHostToContainer) {
			t.Error("the agent's bpffs mount needs mountPropagation HostToContainer to see a bpffs the node mounts after the agent started")
		}
	}
	if _, ok := af["ebpf"]; ok || envOf(agent, "PALISADE_EBPF") != "auto" {
		t.Errorf("agent: --ebpf=%q, PALISADE_EBPF=%q: want PALISADE_EBPF=auto (runs everywhere, iptables-only where eBPF cannot load; kubectl set env switches it)", af["ebpf"], envOf(agent, "PALISADE_EBPF"))
	}
	if port := strings.TrimPrefix(af["metrics-addr"], ":"); port == "" || agentW.podAnnotations["prometheus.io/port"] != port {
		t.Errorf("agent --metrics-addr=%q vs prometheus.io/port %q", af["metrics-addr"], agentW.podAnnotations["prometheus.io/port"])
	}
	// The CNI script writes into these node directories.
	for _, p := range []string{"/host/opt/cni/bin", "/host/etc/cni/net.d"} {
		if hostPathOf(agentW.spec, cni, p) != strings.TrimPrefix(p, "/host") {
			t.Errorf("install-cni: %s is not the node's %s", p, strings.TrimPrefix(p, "/host"))
		}
	}
}

func envOf(c *corev1.Container, name string) string {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value
		}
	}
	return ""
}

// hclStrings reads the top-level-looking key = "value" lines of a SPIRE
// configuration (enough for the keys the tests compare).
func hclStrings(t *testing.T, file string) map[string]string {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, m := range regexp.MustCompile(`(?m)^\s*([a-z_]+)\s*=\s*"([^"]*)"`).FindAllStringSubmatch(string(data), -1) {
		if _, dup := out[m[1]]; !dup {
			out[m[1]] = m[2]
		}
	}
	return out
}

// TestTrustDomain checks that Palisade and SPIRE use one trust domain and
// that the SPIRE agent lets exactly the node proxy's identity use the
// Delegated Identity API.
func TestTrustDomain(t *testing.T) {
	var td string
	for _, g := range loadKustomization(t, ".").ConfigMapGenerator {
		for _, l := range g.Literals {
			if v, ok := strings.CutPrefix(l, "trust-domain="); ok && g.Name == "palisade-config" {
				td = v
			}
		}
	}
	if td == "" {
		t.Fatal("palisade-config has no trust-domain")
	}
	server, agent := hclStrings(t, "spire/server.conf"), hclStrings(t, "spire/agent.conf")
	if server["trust_domain"] != td || agent["trust_domain"] != td {
		t.Errorf("trust domains: palisade-config %q, server.conf %q, agent.conf %q", td, server["trust_domain"], agent["trust_domain"])
	}
	data, err := os.ReadFile("spire/agent.conf")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?s)authorized_delegates\s*=\s*\[([^\]]*)\]`).FindStringSubmatch(string(data))
	if m == nil {
		t.Fatal("agent.conf has no authorized_delegates")
	}
	var delegates []string
	for _, q := range regexp.MustCompile(`"([^"]*)"`).FindAllStringSubmatch(m[1], -1) {
		delegates = append(delegates, q[1])
	}
	proxyW := findWorkload(t, "DaemonSet", "palisade-system", "palisade-nodeproxy")
	want := fmt.Sprintf("spiffe://%s/ns/%s/sa/%s", td, proxyW.namespace, proxyW.spec.ServiceAccountName)
	if !slices.Equal(delegates, []string{want}) {
		t.Errorf("authorized_delegates %v, want [%s]", delegates, want)
	}
	// The node proxy's service account is that of the SPIFFE ID above.
	if proxyW.spec.ServiceAccountName != "palisade-nodeproxy" {
		t.Errorf("node proxy runs as %s", proxyW.spec.ServiceAccountName)
	}
}

// TestConfigMapReferences checks that every ConfigMap a pod uses exists
// (in a file or a generator) with the keys it asks for.
func TestConfigMapReferences(t *testing.T) {
	maps := generated(t)
	for _, o := range allObjects(t) {
		if cm, ok := o.obj.(*corev1.ConfigMap); ok {
			var keys []string
			for k := range cm.Data {
				keys = append(keys, k)
			}
			maps[cm.Namespace+"/"+cm.Name] = keys
		}
	}
	for _, w := range workloads(t) {
		for _, v := range w.spec.Volumes {
			if v.ConfigMap != nil {
				if _, ok := maps[w.namespace+"/"+v.ConfigMap.Name]; !ok {
					t.Errorf("%s %s: volume %s: no ConfigMap %s", w.kind, w.name, v.Name, v.ConfigMap.Name)
				}
			}
		}
		for _, c := range append(slices.Clone(w.spec.InitContainers), w.spec.Containers...) {
			for _, e := range c.Env {
				if e.ValueFrom == nil || e.ValueFrom.ConfigMapKeyRef == nil {
					continue
				}
				ref := e.ValueFrom.ConfigMapKeyRef
				keys, ok := maps[w.namespace+"/"+ref.Name]
				if !ok || !slices.Contains(keys, ref.Key) {
					t.Errorf("%s %s/%s: env %s: no key %s in ConfigMap %s (have %v)", w.kind, w.name, c.Name, e.Name, ref.Key, ref.Name, keys)
				}
			}
		}
	}
}

// helpFlags runs "BIN --help" and returns the flag names it lists.
func helpFlags(t *testing.T, bin string) map[string]bool {
	t.Helper()
	out, err := exec.Command(bin, "--help").CombinedOutput()
	if err != nil {
		t.Fatalf("%s --help: %v\n%s", bin, err, out)
	}
	flags := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^  -([a-z0-9][a-z0-9-]*)`).FindAllStringSubmatch(string(out), -1) {
		flags[m[1]] = true
	}
	if len(flags) < 5 {
		t.Fatalf("%s --help lists only %v:\n%s", bin, flags, out)
	}
	return flags
}

// TestFlags checks every --flag and PALISADE_* variable given to
// palisade-agent and palisade-nodeproxy against the flags the binaries
// (make build) list in --help.
func TestFlags(t *testing.T) {
	for _, tc := range []struct {
		workload, container, binary string
	}{
		{"palisade-agent", "agent", "palisade-agent"},
		{"palisade-nodeproxy", "nodeproxy", "palisade-nodeproxy"},
	} {
		t.Run(tc.binary, func(t *testing.T) {
			c := findContainer(t, findWorkload(t, "DaemonSet", "palisade-system", tc.workload), tc.container)
			if !slices.Equal(c.Command, []string{"/usr/local/bin/" + tc.binary}) {
				t.Errorf("command %v, want [/usr/local/bin/%s] (the Dockerfile's path)", c.Command, tc.binary)
			}
			known := helpFlags(t, palisadeBin(t, tc.binary))
			for name := range flagArgs(t, c) {
				if !known[name] {
					t.Errorf("--%s: %s has no such flag", name, tc.binary)
				}
			}
			for _, e := range c.Env {
				name, ok := strings.CutPrefix(e.Name, "PALISADE_")
				if !ok {
					continue
				}
				f := strings.ReplaceAll(strings.ToLower(name), "_", "-")
				if !known[f] {
					t.Errorf("env %s: %s has no flag --%s", e.Name, tc.binary, f)
				}
			}
			if envOf(c, "PALISADE_NODE") != "" || !hasFieldRef(c, "PALISADE_NODE", "spec.nodeName") {
				t.Error("PALISADE_NODE must come from spec.nodeName")
			}
		})
	}
}

func hasFieldRef(c *corev1.Container, env, field string) bool {
	for _, e := range c.Env {
		if e.Name == env && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == field {
			return true
		}
	}
	return false
}

// TestSPIREConfigs runs "spire-server validate" and "spire-agent
// validate" (make spire) on the configurations.
func TestSPIREConfigs(t *testing.T) {
	for _, tc := range []struct{ bin, conf string }{
		{"spire-server", "spire/server.conf"},
		{"spire-agent", "spire/agent.conf"},
	} {
		t.Run(tc.bin, func(t *testing.T) {
			bin := testBin(t, tc.bin, "spire")
			out, err := exec.Command(bin, "validate", "-config", tc.conf).CombinedOutput()
			if err != nil {
				t.Errorf("%s validate -config %s: %v\n%s", tc.bin, tc.conf, err, out)
			}
		})
	}
}

// TestDockerfile checks that the image puts the binaries where the
// manifests run them and has the programs the agent and scripts exec.
func TestDockerfile(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(repoRoot, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	df := string(data)
	for _, want := range []string{"/usr/local/bin/", "palisade-agent", "palisade-nodeproxy", "CGO_ENABLED=0"} {
		if !strings.Contains(df, want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
	m := regexp.MustCompile(`apt-get install[^\n]*`).FindString(df)
	for _, pkg := range []string{"iptables", "nftables", "curl", "jq"} {
		if !regexp.MustCompile(`\b` + pkg + `\b`).MatchString(m) {
			t.Errorf("the image does not install %s", pkg)
		}
	}
}
