package manifests_test

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// repoRoot is the repository, seen from this package's directory.
const repoRoot = ".."

// missing skips the test outside CI and fails it in CI, where "make test"
// builds or installs what the test needs.
func missing(t *testing.T, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip(msg + " (skipped outside CI)")
}

// testBin finds a tool built into .cache/test-bin by make target.
func testBin(t *testing.T, name, target string) string {
	t.Helper()
	for _, d := range []string{os.Getenv("PALISADE_TEST_BIN"), filepath.Join(repoRoot, ".cache", "test-bin")} {
		if d == "" {
			continue
		}
		p, err := filepath.Abs(filepath.Join(d, name))
		if err != nil {
			t.Fatal(err)
		}
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p
		}
	}
	missing(t, "%s not found in $PALISADE_TEST_BIN or .cache/test-bin: run make %s", name, target)
	return ""
}

// palisadeBin finds a binary of "make build": $PALISADE_BIN, else bin/.
func palisadeBin(t *testing.T, name string) string {
	t.Helper()
	for _, d := range []string{os.Getenv("PALISADE_BIN"), filepath.Join(repoRoot, "bin")} {
		if d == "" {
			continue
		}
		p, err := filepath.Abs(filepath.Join(d, name))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	missing(t, "%s not found in $PALISADE_BIN or bin/: run make build", name)
	return ""
}

// lookPath finds a program on PATH.
func lookPath(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		missing(t, "%s not on PATH (scripts/install-deps.sh installs it)", name)
	}
	return p
}

// yamlDocs splits a multi-document YAML stream, dropping empty documents.
func yamlDocs(t *testing.T, data []byte) [][]byte {
	t.Helper()
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var out [][]byte
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		if len(bytes.TrimSpace(stripComments(doc))) > 0 {
			out = append(out, doc)
		}
	}
}

func stripComments(doc []byte) []byte {
	var b bytes.Buffer
	for _, l := range strings.Split(string(doc), "\n") {
		if strings.HasPrefix(strings.TrimSpace(l), "#") || strings.TrimSpace(l) == "---" {
			continue
		}
		b.WriteString(l + "\n")
	}
	return b.Bytes()
}

// strictDecoder decodes the built-in API kinds, refusing unknown and
// duplicate fields.
var strictDecoder = serializer.NewCodecFactory(scheme.Scheme, serializer.EnableStrict).UniversalDeserializer()

// object is one decoded manifest document.
type object struct {
	file string
	obj  runtime.Object
}

// decodeFile decodes every document of a manifest file strictly.
func decodeFile(t *testing.T, path string) []object {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return decodeStream(t, path, data)
}

func decodeStream(t *testing.T, name string, data []byte) []object {
	t.Helper()
	var out []object
	for i, doc := range yamlDocs(t, data) {
		obj, gvk, err := strictDecoder.Decode(doc, nil, nil)
		if err != nil {
			t.Errorf("%s, document %d: %v", name, i+1, err)
			continue
		}
		if gvk.Kind == "" || gvk.Version == "" {
			t.Errorf("%s, document %d: no apiVersion/kind", name, i+1)
			continue
		}
		out = append(out, object{file: name, obj: obj})
	}
	return out
}

// manifestFiles are the YAML files of manifests/ and manifests/spire/
// that hold Kubernetes objects (not the kustomizations, not the CRDs).
func manifestFiles(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, pat := range []string{"*.yaml", "spire/*.yaml"} {
		m, err := filepath.Glob(pat)
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range m {
			if filepath.Base(f) != "kustomization.yaml" {
				out = append(out, f)
			}
		}
	}
	slices.Sort(out)
	if len(out) == 0 {
		t.Fatal("no manifest files found")
	}
	return out
}

// allObjects decodes every manifest file.
func allObjects(t *testing.T) []object {
	t.Helper()
	var out []object
	for _, f := range manifestFiles(t) {
		out = append(out, decodeFile(t, f)...)
	}
	return out
}

// goldenCompare compares got with testdata/name, or rewrites it with -update.
func goldenCompare(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./manifests -update to create it)", err)
	}
	if string(want) != got {
		t.Errorf("%s differs from what the manifests say (go test ./manifests -update rewrites it after review):\n%s",
			path, lineDiff(string(want), got))
	}
}

// lineDiff lists the lines only in want (-) and only in got (+).
func lineDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	var b strings.Builder
	for _, l := range w {
		if !slices.Contains(g, l) {
			b.WriteString("- " + l + "\n")
		}
	}
	for _, l := range g {
		if !slices.Contains(w, l) {
			b.WriteString("+ " + l + "\n")
		}
	}
	if b.Len() == 0 {
		return "(same lines, different order)"
	}
	return b.String()
}
