package main

import (
	"strings"
	"testing"
	"time"

	"github.com/palisade-net/palisade/pkg/lab"
)

func TestParseLogLine(t *testing.T) {
	// slog's JSON handler as the agent writes it: the hand-off's "acked"
	// record carries msg twice.
	ln, ok := parseLogLine(`{"time":"2026-11-21T22:30:01.123456789Z","level":"DEBUG","msg":"acked","component":"agent","conn":1,"msg":"add enroll/r1-n1-000 (0b9c)"}`)
	if !ok {
		t.Fatal("not parsed")
	}
	if ln.Msg != "acked" || ln.Attrs["msg"] != "add enroll/r1-n1-000 (0b9c)" || ln.Attrs["conn"] != "1" {
		t.Fatalf("parsed %+v", ln)
	}
	if want := time.Date(2026, 11, 21, 22, 30, 1, 123456789, time.UTC); !ln.T.Equal(want) {
		t.Fatalf("time %s, want %s", ln.T, want)
	}
	ln, ok = parseLogLine(`{"time":"2026-11-21T22:30:01.5Z","level":"INFO","msg":"pod enrolled","pod":"enroll/r1-n2-007","ips":["10.244.2.9"]}`)
	if !ok || ln.Msg != "pod enrolled" || ln.Attrs["pod"] != "enroll/r1-n2-007" || ln.Attrs["ips"] != `["10.244.2.9"]` {
		t.Fatalf("parsed %+v, %v", ln, ok)
	}
	for _, bad := range []string{
		"I1121 22:25:47.314000   21789 leaderelection.go:257] attempting to acquire leader lease",
		"--- 2026-11-21T22:25:47Z palisade lab: starting /usr/sbin/ip netns exec",
		`{"level":"INFO","msg":"no time"}`,
		`{"time":"yesterday","msg":"x"}`,
		`{"time":"2026-11-21T22:30:01Z","msg":`,
	} {
		if ln, ok := parseLogLine(bad); ok {
			t.Errorf("%q parsed as %+v", bad, ln)
		}
	}
}

func TestPct(t *testing.T) {
	v := []float64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	for _, c := range []struct{ p, want float64 }{{50, 5}, {90, 9}, {100, 10}, {1, 1}, {0, 1}} {
		if got := pct(v, c.p); got != c.want {
			t.Errorf("pct(%v) = %v, want %v", c.p, got, c.want)
		}
	}
	if pct(nil, 50) != 0 {
		t.Error("pct of nothing")
	}
}

func TestEnrollYAML(t *testing.T) {
	objs, err := lab.Decode(enrollYAML(200, 2))
	if err != nil {
		t.Fatal(err)
	}
	ns := objs.Namespace(enrollNS)
	if ns == nil || len(ns.Labels) != 0 {
		t.Fatalf("namespace %s missing or labelled: %+v", enrollNS, ns)
	}
	perNode := map[string]int{}
	names := map[string]bool{}
	for _, p := range objs.Pods {
		perNode[p.Spec.NodeName]++
		if names[p.Name] || !strings.HasPrefix(p.Name, "r2-") {
			t.Fatalf("pod name %q repeated or not of round 2", p.Name)
		}
		names[p.Name] = true
	}
	if len(objs.Pods) != 200 || perNode["node1"] != 100 || perNode["node2"] != 100 {
		t.Fatalf("%d pods, per node %v", len(objs.Pods), perNode)
	}
}

func TestEnrollReport(t *testing.T) {
	pass := func(agentAll, annotatedAll float64) enrollPass {
		return enrollPass{Floor: 0.004, Agent: []float64{agentAll / 2, agentAll}, Annotated: []float64{annotatedAll / 2, annotatedAll},
			Nodes: []enrollNode{{Node: "node1", Pods: 1, Last: agentAll}, {Node: "node2", Pods: 1, Last: agentAll}}}
	}
	for _, c := range []struct {
		annotated float64
		met       bool
	}{{1.5, true}, {2.5, false}} {
		r := &results{Enroll: &enrollResults{Pods: 2, Nodes: 2, Rounds: []enrollRound{
			{Fresh: pass(1, c.annotated), Again: pass(3, 4)},
			{Fresh: pass(1.2, c.annotated), Again: pass(3, 4)},
		}}}
		r.evaluate()
		if len(r.Targets) != 1 || r.Targets[0].Met != c.met {
			t.Fatalf("annotated after %.1f s: targets %+v, want met=%v", c.annotated, r.Targets, c.met)
		}
		md := r.markdown()
		for _, want := range []string{"### Enrollment after the namespace label (Kubernetes)", "### Enrollment: where each agent's time goes", "| label: p100, all 2 pods, median of 2 rounds (range) | 0.004 (0.004–0.004) | 1.10 (1.00–1.20) |"} {
			if !strings.Contains(md, want) {
				t.Errorf("markdown lacks %q:\n%s", want, md)
			}
		}
	}
}
