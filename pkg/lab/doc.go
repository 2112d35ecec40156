// Package lab builds a multi-node, Kubernetes-like cluster on one Linux host
// out of network namespaces, for demos and end-to-end tests of Palisade.
//
// # What it builds
//
// From Kubernetes YAML (Namespaces, Pods with spec.nodeName, Services, and
// any other kind, such as policies, passed through):
//
//   - an underlay netns "<name>-underlay" with the bridge br-underlay;
//   - per node (the distinct spec.nodeName values, in name order, i = 1, 2,
//     ...) a netns "<name>-node-<node>" whose eth0 hangs off the underlay
//     bridge (its peer there is veth-n<i>) with 10.88.0.(10+i)/24, and a
//     bridge br-pods with 10.244.i.1/24, the gateway of the node's pod CIDR
//     10.244.i.0/24; ip_forward is on and every node routes the other nodes'
//     pod CIDRs via their underlay addresses;
//   - per pod a netns "<name>-<namespace>-<pod>" whose eth0 has 10.244.i.N/24
//     (N from 2) and a default route via 10.244.i.1; its peer in the node
//     netns is veth-p<k> (k numbers pods lab-wide), attached to br-pods.
//     Pod ports are isolated on the bridge and the bridge answers ARP for the
//     pod CIDR, so even pods on the same node talk through the node's IP
//     stack;
//   - kube-proxy: in each node netns, iptables nat rules (chains PLAB-*) DNAT
//     a Service's clusterIP:port to its ready endpoints, chosen at random
//     with equal probability. Cluster IPs come from 10.96.0.0/16 unless the
//     Service sets spec.clusterIP;
//   - per pod /etc/netns/<netns>/hosts (localhost, the pod's name, and for
//     every Service "VIP name name.ns name.ns.svc name.ns.svc.cluster.local",
//     the pod's own namespace first) and resolv.conf, which "ip netns exec"
//     bind-mounts for every process it starts in the pod;
//   - the cluster state: the objects as the kube API would report them (pods
//     with uid, podIP(s), hostIP, phase and Ready condition; Services with
//     their cluster IPs), one YAML file per kind in <state>/<name>/cluster/,
//     each replaced atomically. Agents and node proxies read it with
//     --cluster DIR and watch it;
//   - with Identity IdentitySPIRE (also with NoPalisade), before the agents
//     and node proxies: a SPIRE server and one SPIRE agent per node, all
//     inside the underlay netns (started with "ip netns exec"), so nothing
//     of SPIRE is reachable from the root namespace. The server listens on
//     127.0.0.1:8081 there and on <state>/<name>/spire/server/api.sock,
//     keeps SQLite and its CA keys in spire/server/data (a restarted server
//     keeps its CA and entries) and attests agents by join token; it logs
//     to spire/server.log. Per node the lab generates a join token for the
//     node's alias spiffe://<td>/palisade/node/<node>, registers the node
//     proxy as spiffe://<td>/palisade/nodeproxy/<node> under that alias
//     (selectors unix:uid:0 and unix:path:<palisade-nodeproxy, symlinks
//     resolved>) and starts an agent with data in
//     nodes/<node>/spire-agent/data (KeyManager "disk": a restarted agent
//     keeps its SVID), the Workload API on
//     nodes/<node>/spire-agent/workload/api.sock, the admin (Delegated
//     Identity) API on nodes/<node>/spire-agent/admin/admin.sock with the
//     node proxy as the only authorized delegate, the unix workload
//     attestor with discover_workload_path, logging to
//     nodes/<node>/spire-agent.log. Up waits for "spire-server healthcheck"
//     and "spire-agent healthcheck". The agents then run with
//     --spire-entries manage (creating the pods' entries under the node's
//     alias) or off, the node proxies with --identity spire and the two
//     agent sockets instead of --dev-ca-dir;
//   - with Kube (also with NoPalisade), after SPIRE and before the agents
//     and node proxies: a real etcd and kube-apiserver ("make kube" builds
//     them from tools/kube), both inside the underlay netns. The lab gives
//     br-underlay the address 10.88.0.1/24 (unless it has one), so the
//     nodes reach the API server over the underlay. etcd listens on
//     127.0.0.1:2379 (peer 2380) of that netns with its data in
//     <state>/<name>/kube/etcd; the API server on https://10.88.0.1:6443
//     with a self-signed serving certificate (SANs 10.88.0.1, 127.0.0.1,
//     10.96.0.1, kubernetes, kubernetes.default[.svc[.cluster.local]],
//     localhost), a static token file with one admin token in
//     system:masters, RBAC authorization, a service account signing key
//     pair (issuer KubeServiceAccountIssuer) and the Service CIDR
//     10.96.0.0/16; keys and tokens in kube/pki, logs in kube/etcd.log and
//     kube/apiserver.log. Up waits for etcd's /health and the API server's
//     /readyz (with the token). For the root namespace a forwarder ("LAB_BIN
//     forward", see RunForward) listens on 127.0.0.1:<free port> and
//     connects each client to the API server from inside the underlay
//     netns; it exits by itself when that netns goes. Two kubeconfigs
//     carry the certificate and the token: <state>/<name>/kubeconfig
//     (through the forwarder, for users, kubectl and tests) and
//     <state>/<name>/kubeconfig-nodes (https://10.88.0.1:6443, for the
//     agents and node proxies, which then run with --kubeconfig instead of
//     --cluster). The lab applies stand-ins for Cilium's CNP and CCNP CRDs
//     (kube_cilium_crds.yaml, schema-less) and the CRD manifests
//     (Config.KubeCRDs, default manifests/crds) and waits until each is
//     established; registers a Node per node (pod CIDR, InternalIP, Ready);
//     applies the Namespaces, a ServiceAccount for every one the pods run
//     as (created when missing, since no controller makes "default"), the
//     Services with spec.clusterIP set to the lab's, and every other kind
//     with server-side apply (field manager KubeFieldManager); and plays
//     kubelet for every pod: the pod object (its UID becomes the pod's;
//     containers without an image get DefaultContainerImage), the network,
//     CNI ADD, the status with podIP(s), hostIP and phase Pending (a kubelet
//     learns the IP from the CNI result), the containers, and once they are
//     ready phase Running with the PodScheduled, Initialized,
//     ContainersReady and Ready conditions True.
//     Apply and DeletePod go through the API too: a deleted pod first gets
//     a deletion timestamp (the user's delete), then its processes stop,
//     CNI DEL runs, its network goes and the object is deleted (the
//     kubelet's final delete); objects the lab applied and the YAML no
//     longer has are deleted, except Namespaces (no namespace controller
//     would finish deleting them). The cluster state files are still
//     written;
//   - unless NoPalisade: per node, palisade-agent and palisade-nodeproxy run
//     inside the node netns, detached, logging to
//     <state>/<name>/nodes/<node>/{agent,nodeproxy}.log; Up waits for the
//     agent's GET /readyz on its CNI socket and the node proxy's
//     127.0.0.1:15021/healthz/ready inside the node netns. The agents run
//     with --ebpf off, or with EBPF with --ebpf on and --bpffs on a bpffs
//     the lab mounts per node on <state>/<name>/nodes/<node>/bpffs before
//     the agent starts (ip netns exec copies it into the agent's mount
//     namespace);
//   - per pod, after its network exists and before its containers start,
//     CNI ADD of the chained plugin "palisade-agent cni" (and DEL on
//     deletion), the way a container runtime calls it;
//   - the pod's containers as detached processes ("ip netns exec <netns>
//     command args...") with the container's env, logging to
//     <state>/<name>/pods/<ns>_<pod>.log. "$(LAB_BIN)" in command, args and
//     env is the lab's own executable, whose hidden subcommands serve-http
//     and serve-echo are small servers for demos and tests. Init containers
//     run to completion first. A container is ready when its readinessProbe
//     passes, or, without one, when all its TCP containerPorts accept
//     connections.
//
// # State
//
// Everything the lab creates is recorded in <state>/<name>/lab.json before
// it is created, so Down (and "lab down") can tear down a lab whose "up"
// crashed at any point; it also removes stray "<name>-*" namespaces. Down
// stops the API server's forwarder, which runs in the root namespace, by
// its recorded PID before it deletes the namespaces, and unmounts every
// mount under <state>/<name> (found in /proc/self/mountinfo, so also after
// a crash) before it removes the state directory. No lab
// address, route, rule or sysctl is ever configured in the root network
// namespace: links are created from inside lab namespaces (a veth's peer is
// created directly in its target namespace), and sysctls are written from a
// thread verified to be inside the lab namespace.
package lab
