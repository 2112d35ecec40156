package cluster

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

const sample = `
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {palisade.dev/mtls: enabled}
---
# a comment-only document
---
apiVersion: v1
kind: Pod
metadata: {name: web, labels: {app: web}}
spec:
  nodeName: node1
  serviceAccountName: web
  containers: [{name: c, command: ["sleep", "1"]}]
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: web, namespace: shop}
  spec: {selector: {app: web}, ports: [{port: 80}]}
---
apiVersion: policy.palisade.dev/v1alpha1
kind: L7Policy
metadata: {name: p, namespace: shop}
spec: {}
`

func TestDecode(t *testing.T) {
	s := NewSnapshot()
	if err := s.Decode("sample", strings.NewReader(sample)); err != nil {
		t.Fatal(err)
	}
	if ns := s.Namespace("shop"); ns == nil || ns.Labels["palisade.dev/mtls"] != "enabled" {
		t.Fatalf("namespace: %+v", ns)
	}
	p := s.Pod("default", "web")
	if p == nil || p.Spec.NodeName != "node1" || p.Spec.ServiceAccountName != "web" {
		t.Fatalf("pod defaulted to namespace default: %+v", p)
	}
	if len(s.Services) != 1 || s.Services[0].Namespace != "shop" {
		t.Fatalf("services from List: %+v", s.Services)
	}
	if len(s.Other) != 1 || s.Other[0].GetKind() != "L7Policy" {
		t.Fatalf("other objects: %+v", s.Other)
	}
	if got := s.PodsOnNode("node1"); len(got) != 1 {
		t.Fatalf("PodsOnNode: %d", len(got))
	}
}

func TestDecodeErrors(t *testing.T) {
	tests := []struct {
		name, doc, want string
	}{
		{"no kind", "metadata: {name: x}", `missing field "kind"`},
		{"no name", "kind: Pod\napiVersion: v1\nmetadata: {}", `missing field "metadata.name"`},
		{"unknown field", "kind: Pod\napiVersion: v1\nmetadata: {name: x}\nspec: {nodeNme: a}", `unknown field "spec.nodeNme"`},
		{"bad yaml", "kind: [", "document 1"},
		{"wrong type", "kind: Service\napiVersion: v1\nmetadata: {name: s}\nspec: {ports: [{port: eighty}]}", "Service \"s\""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := NewSnapshot().Decode("f.yaml", strings.NewReader(tt.doc))
			var de *DecodeError
			if !errors.As(err, &de) || de.Source != "f.yaml" {
				t.Fatalf("want a DecodeError naming the file, got %v", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %q does not mention %q", err, tt.want)
			}
		})
	}
}

func TestFileSourceWatch(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "ns.yaml")
	write := func(s string) {
		t.Helper()
		if err := WriteFile(path, []byte(s)); err != nil {
			t.Fatal(err)
		}
	}
	write("apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n")
	var mu sync.Mutex
	var got []*Snapshot
	changed := make(chan struct{}, 10)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	src := &FileSource{Paths: []string{dir}, Interval: 10 * time.Millisecond}
	go src.Run(ctx, func(s *Snapshot) {
		mu.Lock()
		got = append(got, s)
		mu.Unlock()
		changed <- struct{}{}
	})
	wait := func() *Snapshot {
		t.Helper()
		select {
		case <-changed:
		case <-time.After(10 * time.Second):
			t.Fatal("no snapshot published")
		}
		mu.Lock()
		defer mu.Unlock()
		return got[len(got)-1]
	}
	if s := wait(); s.Namespace("a") == nil {
		t.Fatal("first snapshot lacks namespace a")
	}
	// A broken file keeps the previous view: no snapshot is published.
	write("kind: [")
	// Then a good change is picked up.
	time.Sleep(50 * time.Millisecond)
	write("apiVersion: v1\nkind: Namespace\nmetadata: {name: b, labels: {x: z}}\n")
	s := wait()
	if s.Namespace("b") == nil || s.Namespace("a") != nil {
		t.Fatalf("second snapshot: %v", s.Namespaces)
	}
	mu.Lock()
	n := len(got)
	mu.Unlock()
	if n != 2 {
		t.Fatalf("published %d snapshots, want 2 (the broken file must not publish)", n)
	}
	// Non-YAML files are ignored.
	os.WriteFile(filepath.Join(dir, "README"), []byte("not yaml"), 0o644)
	if _, err := Load(dir); err != nil {
		t.Fatal(err)
	}
}

// TestFileSourceDigest: the poll's hash follows the files' names and
// contents (an in-place edit of the same size included) and reads them
// with the caller's buffer, not a new one per file and poll.
func TestFileSourceDigest(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.yaml"), filepath.Join(dir, "b.yaml")
	for _, p := range []string{a, b} {
		if err := os.WriteFile(p, []byte(strings.Repeat("x", 40<<10)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	src := &FileSource{Paths: []string{dir}}
	buf := make([]byte, 32<<10)
	d1, err := src.digest(buf)
	if err != nil {
		t.Fatal(err)
	}
	if d2, _ := src.digest(buf); d2 != d1 {
		t.Fatal("digest of unchanged files changed")
	}
	if err := os.WriteFile(b, []byte(strings.Repeat("x", 40<<10-1)+"y"), 0o644); err != nil {
		t.Fatal(err)
	}
	if d3, _ := src.digest(buf); d3 == d1 {
		t.Fatal("digest missed an in-place edit of the same size")
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	const polls = 50
	for range polls {
		if _, err := src.digest(buf); err != nil {
			t.Fatal(err)
		}
	}
	runtime.ReadMemStats(&after)
	// Two files of 40 KiB: a 32 KiB buffer per file would be 64 KiB a poll.
	if per := (after.TotalAlloc - before.TotalAlloc) / polls; per > 8<<10 {
		t.Errorf("a poll allocates %d bytes; want the reads to use the caller's buffer", per)
	}
}
