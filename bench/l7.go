package main

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/palisade-net/palisade/pkg/lab"
)

// The L7 runs put an L7Policy on mesh/server's HTTP port: ruleSets[i]
// HTTP rules, of which only the LAST one (POST /echo) matches what fortio
// sends. The others are distinct paths of realistic shapes: mostly literal
// prefixes per service (which the engine's prefix index can skip), and
// every 50th a regular expression that the index cannot skip (no literal
// prefix, or only "/"), so every request pays for trying those. That is
// the worst realistic placement of the matching rule.
const (
	l7PolicyName = "bench-l7"
	// echoPath is the path fortio requests on every path (the echo server
	// answers any path), and the path of the matching rule.
	echoPath = "/echo"
	// deniedPath matches no rule of any set.
	deniedPath = "/not-allowed"
	// accessDenied is the body of Palisade's HTTP denial.
	accessDenied = "Access denied\r\n"
	// policyInForceTimeout bounds the wait for a policy change to reach the
	// node proxies (they pick changes up within about 200 ms).
	policyInForceTimeout = 30 * time.Second
)

// ruleSets are the L7 rule-set sizes measured.
var ruleSets = []int{10, 1000}

// probe is one request that tells which policy is in force.
type probe struct {
	Method, Path string
	Want         int // HTTP status
}

// filler returns the i-th non-matching rule and a request that it (and
// no other rule of any set) allows.
func filler(i int) (rule string, p probe) {
	q := strconv.Quote
	if i%50 == 5 {
		// Regular expressions the prefix index cannot skip.
		if (i/50)%2 == 0 {
			path := fmt.Sprintf("(?i)/legacy-%d/.*\\.php", i)
			return fmt.Sprintf("{method: GET, path: %s}", q(path)), probe{"GET", fmt.Sprintf("/Legacy-%d/index.php", i), 200}
		}
		path := fmt.Sprintf("/[a-z]+/svc-%d/healthz", i)
		return fmt.Sprintf("{method: \"GET|HEAD\", path: %s}", q(path)), probe{"GET", fmt.Sprintf("/internal/svc-%d/healthz", i), 200}
	}
	switch i % 5 {
	case 0:
		return fmt.Sprintf("{method: GET, path: %s}", q(fmt.Sprintf("/svc-%d/v1/.*", i))), probe{"GET", fmt.Sprintf("/svc-%d/v1/probe", i), 200}
	case 1:
		return fmt.Sprintf("{method: \"GET|HEAD\", path: %s}", q(fmt.Sprintf("/svc-%d/v1/items/[0-9]+", i))), probe{"GET", fmt.Sprintf("/svc-%d/v1/items/42", i), 200}
	case 2:
		return fmt.Sprintf("{method: POST, path: %s}", q(fmt.Sprintf("/svc-%d/v1/orders", i))), probe{"POST", fmt.Sprintf("/svc-%d/v1/orders", i), 200}
	case 3:
		return fmt.Sprintf("{method: \"PUT|PATCH\", path: %s}", q(fmt.Sprintf("/svc-%d/v1/items/[0-9]+", i))), probe{"PUT", fmt.Sprintf("/svc-%d/v1/items/7", i), 200}
	default:
		return fmt.Sprintf("{method: DELETE, path: %s}", q(fmt.Sprintf("/svc-%d/v1/items/[0-9]+/tags/[a-z-]+", i))), probe{"DELETE", fmt.Sprintf("/svc-%d/v1/items/42/tags/blue", i), 200}
	}
}

// policyYAML is the L7Policy with n HTTP rules (n-1 fillers, then the
// matching rule); "" for n == 0 (no policy: the L4 tunnel).
func policyYAML(n int) string {
	if n <= 0 {
		return ""
	}
	var b strings.Builder
	fmt.Fprintf(&b, `---
apiVersion: policy.palisade.dev/v1alpha1
kind: L7Policy
metadata:
  name: %s
  namespace: mesh
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: "%d", protocol: TCP}]
      rules:
        http:
`, l7PolicyName, httpPort)
	for i := 0; i < n-1; i++ {
		r, _ := filler(i)
		fmt.Fprintf(&b, "        - %s\n", r)
	}
	fmt.Fprintf(&b, "        - {method: POST, path: %s}\n", strconv.Quote(echoPath))
	return b.String()
}

// probes are the requests, and the statuses, that identify the policy
// with n rules: the matching rule allows POST /echo; a path no rule names
// is denied (or passes, without L7 policy); the set's own last filler is
// allowed and the last filler of every larger set is denied, so a set of
// 10 is told from a set of 1,000 both ways.
func probes(n int) []probe {
	if n == 0 {
		return []probe{{"POST", echoPath, 200}, {"GET", deniedPath, 200}}
	}
	ps := []probe{{"POST", echoPath, 200}, {"GET", deniedPath, 403}}
	if n >= 2 {
		_, p := filler(n - 2)
		ps = append(ps, p)
	}
	for _, m := range ruleSets {
		if m > n {
			_, p := filler(m - 2)
			p.Want = 403
			ps = append(ps, p)
		}
	}
	return ps
}

// policyCtl switches the benchmark's L7 policy with lab.Apply and waits
// until the node proxies enforce it.
type policyCtl struct {
	l *lab.Lab
	// prober is the pod that sends the probes, serverNode the node whose
	// proxy enforces the policy, base the URL of mesh/server's HTTP port.
	prober, serverNode, base string
	current                  int // rules in force; 0: no policy
	// extra is YAML applied with the policy (the telemetry phase's
	// FlowLog); change it only with setExtra.
	extra string
	uids  map[string]string
	// Switches records how long each change took to be in force.
	Switches []policySwitch
}

type policySwitch struct {
	Rules   int     `json:"rules"`
	Seconds float64 `json:"seconds"`
}

func newPolicyCtl(l *lab.Lab, prober, serverNode, base string) *policyCtl {
	p := &policyCtl{l: l, prober: prober, serverNode: serverNode, base: base, uids: map[string]string{}}
	for _, pod := range l.Status().Pods {
		p.uids[pod.Namespace+"/"+pod.Name] = pod.UID
	}
	return p
}

// setExtra sets the YAML applied with the policy from the next ensure on:
// it forgets which policy is in force, so that ensure applies (and
// verifies) it again with the new extra.
func (p *policyCtl) setExtra(s string) {
	p.extra, p.current = s, -1
}

// ensure puts the policy with n rules (0: none) in force, unless it is
// already, and verifies it: the probes answer as that policy says, the
// node proxy reports no policy problems, the request to the matching path
// was allowed by the last rule, and no pod was recreated.
func (p *policyCtl) ensure(ctx context.Context, n int) error {
	if p.current == n {
		return nil
	}
	objs, err := lab.Decode(labYAML + "\n" + policyYAML(n) + p.extra)
	if err != nil {
		return fmt.Errorf("policy with %d rules: %w", n, err)
	}
	logf("policy: applying %s", describeRules(n))
	t0 := time.Now()
	if err := p.l.Apply(ctx, objs); err != nil {
		return fmt.Errorf("apply %s: %w", describeRules(n), err)
	}
	p.current = -1
	deadline := t0.Add(policyInForceTimeout)
	for {
		err = p.verify(ctx, n)
		if err == nil {
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("%s not in force %s after lab.Apply: %w", describeRules(n), policyInForceTimeout, err)
		}
		sleep(ctx, 100*time.Millisecond)
	}
	d := time.Since(t0)
	p.current = n
	p.Switches = append(p.Switches, policySwitch{n, d.Seconds()})
	logf("policy: %s in force after %.2f s", describeRules(n), d.Seconds())
	for _, pod := range p.l.Status().Pods {
		if uid := p.uids[pod.Namespace+"/"+pod.Name]; uid != "" && uid != pod.UID {
			return fmt.Errorf("applying the policy recreated pod %s/%s (uid %s -> %s)", pod.Namespace, pod.Name, uid, pod.UID)
		}
	}
	return nil
}

// recheck verifies that the policy ensure put in force still is.
func (p *policyCtl) recheck(ctx context.Context) error {
	if p.current < 0 {
		return fmt.Errorf("policy state unknown")
	}
	if err := p.verify(ctx, p.current); err != nil {
		return fmt.Errorf("%s no longer in force: %w", describeRules(p.current), err)
	}
	return nil
}

func describeRules(n int) string {
	if n == 0 {
		return "no L7 policy"
	}
	return fmt.Sprintf("L7 policy with %d HTTP rules", n)
}

// verify sends the probes of n in one curl (one connection) and checks the
// answers, then what the node proxy says about the policy.
func (p *policyCtl) verify(ctx context.Context, n int) error {
	ps := probes(n)
	args := []string{"curl", "-sS"}
	for i, pr := range ps {
		if i > 0 {
			args = append(args, "--next")
		}
		args = append(args, "--max-time", "3", "-o", "/dev/null", "-w", "%{http_code} %{size_download}\\n", "-X", pr.Method)
		if pr.Method == "POST" || pr.Method == "PUT" {
			args = append(args, "--data-binary", "probe")
		}
		args = append(args, p.base+pr.Path)
	}
	out, err := p.l.Exec(ctx, p.prober, args...)
	if err != nil {
		return fmt.Errorf("probe requests: %w: %s", err, out)
	}
	lines := strings.Fields(strings.TrimSpace(string(out)))
	if len(lines) != 2*len(ps) {
		return fmt.Errorf("probe requests: unexpected output %q", out)
	}
	for i, pr := range ps {
		code, _ := strconv.Atoi(lines[2*i])
		size, _ := strconv.Atoi(lines[2*i+1])
		if code != pr.Want {
			return fmt.Errorf("%s %s answered %d, want %d", pr.Method, pr.Path, code, pr.Want)
		}
		if code == 403 && size != len(accessDenied) {
			return fmt.Errorf("%s %s answered 403 with %d bytes, not Palisade's %q", pr.Method, pr.Path, size, accessDenied)
		}
	}
	if n == 0 {
		return nil
	}
	probs, err := p.adminJSON(ctx, "/policy")
	if err != nil {
		return err
	}
	var pol struct {
		Problems []json.RawMessage `json:"problems"`
	}
	if err := json.Unmarshal(probs, &pol); err != nil {
		return fmt.Errorf("node proxy %s /policy: %w", p.serverNode, err)
	}
	if len(pol.Problems) > 0 {
		return fmt.Errorf("node proxy %s reports policy problems: %s", p.serverNode, probs)
	}
	// The matching request was allowed by the last rule of our policy.
	data, err := p.adminJSON(ctx, "/debug/requests")
	if err != nil {
		return err
	}
	var reqs []struct {
		Verdict string `json:"verdict"`
		Policy  string `json:"policy"`
		Rule    string `json:"rule"`
		HTTP    *struct {
			Method string `json:"method"`
			Path   string `json:"path"`
		} `json:"http"`
	}
	if err := json.Unmarshal(data, &reqs); err != nil {
		return fmt.Errorf("node proxy %s /debug/requests: %w", p.serverNode, err)
	}
	for _, r := range slices.Backward(reqs) {
		if r.HTTP == nil || r.HTTP.Method != "POST" || r.HTTP.Path != echoPath {
			continue
		}
		wantRule := fmt.Sprintf(".http[%d]", n-1)
		if r.Verdict != "allowed" || !strings.Contains(r.Policy, "mesh/"+l7PolicyName) || !strings.HasSuffix(r.Rule, wantRule) {
			return fmt.Errorf("POST %s: verdict %s by %q rule %q, want allowed by mesh/%s rule ...%s", echoPath, r.Verdict, r.Policy, r.Rule, l7PolicyName, wantRule)
		}
		return nil
	}
	return fmt.Errorf("node proxy %s has no record of the POST %s probe", p.serverNode, echoPath)
}

func (p *policyCtl) adminJSON(ctx context.Context, path string) ([]byte, error) {
	out, err := p.l.NodeCommand(ctx, p.serverNode, "curl", "-sS", "-f", "--max-time", "5", "http://127.0.0.1:15000"+path).Output()
	if err != nil {
		return nil, fmt.Errorf("node proxy %s %s: %w", p.serverNode, path, err)
	}
	return out, nil
}
