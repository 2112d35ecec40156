package datapath

// The tc programs in bpf/ compiled for little-endian BPF (amd64, arm64) with
// their Go bindings, and a record of the sources and compiler they were
// built from. The output is committed, so building needs no clang;
// TestGeneratedUpToDate checks it against bpf/. Regenerate with
// `go generate ./pkg/datapath` (clang 14 and llvm-strip on PATH:
// scripts/install-deps.sh installs them).
//
//go:generate go tool bpf2go -cc clang -strip llvm-strip -target bpfel -type pal_addr -type pal_endpoint -type pal_counter_key -type pal_counter -type pal_event datapath ../../bpf/datapath.c -- -I../../bpf/include -O2 -g -Wall -Werror -mcpu=v3
//go:generate sh -c "{ echo \"# $(clang --version | head -n1)\"; sha256sum gen.go datapath_bpfel.go datapath_bpfel.o ../../bpf/*.c ../../bpf/*.h ../../bpf/include/*.h; } > datapath_bpfel.sum"
