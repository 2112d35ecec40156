package main

import (
	"context"
	"flag"
	"log/slog"

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/palisade-net/palisade/pkg/agent"
	"github.com/palisade-net/palisade/pkg/cluster"
	"github.com/palisade-net/palisade/pkg/kubestatus"
)

// kubeFlags are the agent's Kubernetes-mode settings.
type kubeFlags struct {
	policyStatus  bool
	leaseNS       string
	leaseName     string
	podAnnotation bool
}

func (k *kubeFlags) register(fs *flag.FlagSet) {
	fs.BoolVar(&k.policyStatus, "policy-status", true, "Kubernetes mode: write the Accepted condition of L7Policy/ClusterL7Policy objects (one agent, chosen by leader election, writes)")
	fs.StringVar(&k.leaseNS, "leader-election-namespace", "palisade-system", "Kubernetes mode: namespace of the leader election Lease for policy status")
	fs.StringVar(&k.leaseName, "leader-election-lease", "palisade-policy-status", "Kubernetes mode: name of that Lease")
	fs.BoolVar(&k.podAnnotation, "pod-status", true, "Kubernetes mode: annotate pods of this node with their enrollment state ("+agent.EnrollmentAnnotation+")")
}

// kubeStatus is what the agent writes back to the API server in
// Kubernetes mode; its zero value (standalone mode) does nothing.
type kubeStatus struct {
	pods     *kubestatus.PodAnnotator
	policies *kubestatus.PolicyStatusWriter
	start    func(ctx context.Context)
}

// newKubeStatus prepares the status writers when the agent runs against an
// API server.
func newKubeStatus(kubeconfig, node string, f kubeFlags, log *slog.Logger) (*kubeStatus, error) {
	cfg, err := cluster.RESTConfig(kubeconfig)
	if err != nil {
		return nil, err
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	ks := &kubeStatus{}
	var runs []func(ctx context.Context)
	if f.podAnnotation {
		ks.pods = kubestatus.NewPodAnnotator(client, log)
		runs = append(runs, ks.pods.Run)
	}
	if f.policyStatus {
		ks.policies = kubestatus.NewPolicyStatusWriter(dyn, log)
		runs = append(runs, ks.policies.Run, func(ctx context.Context) {
			if err := kubestatus.LeaderElection(ctx, client, f.leaseNS, f.leaseName, node, ks.policies, log); err != nil {
				log.Error("policy status leader election", "error", err)
			}
		})
	}
	ks.start = func(ctx context.Context) {
		for _, r := range runs {
			go r(ctx)
		}
	}
	return ks, nil
}

// onPodStatus is the agent hook (nil when not annotating).
func (k *kubeStatus) onPodStatus() func([]agent.PodStatus) {
	if k == nil || k.pods == nil {
		return nil
	}
	return k.pods.Update
}

// onSnapshot wraps the agent's snapshot handler to also feed the policy
// status writer.
func (k *kubeStatus) onSnapshot(next func(*cluster.Snapshot)) func(*cluster.Snapshot) {
	if k == nil || k.policies == nil {
		return next
	}
	return func(s *cluster.Snapshot) {
		next(s)
		k.policies.OnSnapshot(s)
	}
}
