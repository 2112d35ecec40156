package datapath

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// sumFile records, at generation, the compiler and the hashes of the
// sources and outputs (see gen.go).
const sumFile = "datapath_bpfel.sum"

// sumGlobs are the files the record covers, as gen.go lists them.
var sumGlobs = []string{"gen.go", "datapath_bpfel.go", "datapath_bpfel.o", "../../bpf/*.c", "../../bpf/*.h", "../../bpf/include/*.h"}

func readSums(t *testing.T) (compiler string, sums map[string]string) {
	t.Helper()
	f, err := os.Open(sumFile)
	if err != nil {
		t.Fatalf("%v (run go generate ./pkg/datapath)", err)
	}
	defer f.Close()
	sums = map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if c, ok := strings.CutPrefix(line, "# "); ok {
			compiler = c
			continue
		}
		sum, path, ok := strings.Cut(line, "  ")
		if !ok {
			t.Fatalf("%s: bad line %q", sumFile, line)
		}
		sums[path] = sum
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return compiler, sums
}

// TestGeneratedUpToDate fails when bpf/ or gen.go changed after the
// committed objects were generated, or when the objects were edited. When
// the recorded clang is on PATH it also regenerates into a temporary
// directory and compares byte for byte (another clang version compiles to
// other bytes, so then only the record is checked).
func TestGeneratedUpToDate(t *testing.T) {
	compiler, recorded := readSums(t)
	current := map[string]string{}
	for _, g := range sumGlobs {
		paths, err := filepath.Glob(g)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range paths {
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			h := sha256.Sum256(b)
			current[p] = hex.EncodeToString(h[:])
		}
	}
	for p, sum := range current {
		switch rec, ok := recorded[p]; {
		case !ok:
			t.Errorf("%s is not in %s: run go generate ./pkg/datapath", p, sumFile)
		case rec != sum:
			t.Errorf("%s changed since the objects were generated: run go generate ./pkg/datapath", p)
		}
	}
	for p := range recorded {
		if _, ok := current[p]; !ok {
			t.Errorf("%s is recorded in %s but gone: run go generate ./pkg/datapath", p, sumFile)
		}
	}

	clang, err := exec.LookPath("clang")
	if err != nil {
		t.Logf("no clang on PATH: checked the record only")
		return
	}
	out, err := exec.Command(clang, "--version").Output()
	if err != nil {
		t.Fatalf("clang --version: %v", err)
	}
	if have, _, _ := strings.Cut(string(out), "\n"); have != compiler {
		t.Logf("clang on PATH is %q, the objects were built with %q: checked the record only", have, compiler)
		return
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Logf("no go command on PATH: checked the record only")
		return
	}
	args := bpf2goArgs(t)
	dir := t.TempDir()
	args = append([]string{"tool", "bpf2go", "-output-dir", dir}, args...)
	cmd := exec.Command(goBin, args...)
	cmd.Env = append(os.Environ(), "GOPACKAGE=datapath", "GOFILE=gen.go")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	for _, name := range []string{"datapath_bpfel.o", "datapath_bpfel.go"} {
		want, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s differs from a fresh build of bpf/: run go generate ./pkg/datapath", name)
		}
	}
}

// bpf2goArgs returns the arguments of gen.go's bpf2go directive.
func bpf2goArgs(t *testing.T) []string {
	t.Helper()
	src, err := os.ReadFile("gen.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(src), "\n") {
		if rest, ok := strings.CutPrefix(line, "//go:generate go tool bpf2go "); ok {
			return strings.Fields(rest)
		}
	}
	t.Fatal("gen.go has no bpf2go directive")
	return nil
}
