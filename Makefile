# Palisade: `make demo` runs the lab demo, `make test` runs every test.
# Both need root on Linux (network namespaces, iptables) and install the
# Debian packages they use.

GO        ?= go
BIN       := $(CURDIR)/bin
GOFLAGS   ?=
TESTFLAGS ?=
export PATH := $(BIN):$(PATH)

BINARIES := palisade-agent palisade-nodeproxy lab

TEST_BIN  := $(CURDIR)/.cache/test-bin

.PHONY: all build deps test test-tools spire interop demo bench bench-tools lint fuzz clean

all: build

deps:
	@scripts/install-deps.sh

build:
	@mkdir -p $(BIN)
	$(GO) build $(GOFLAGS) -o $(BIN)/palisade-agent ./cmd/agent
	$(GO) build $(GOFLAGS) -o $(BIN)/palisade-nodeproxy ./cmd/nodeproxy
	$(GO) build $(GOFLAGS) -o $(BIN)/lab ./cmd/lab

# Every test: unit tests of each package, the end-to-end tests on the lab,
# a short run of every fuzz target, and the Istio interop module.
test: deps build lint test-tools spire
	PALISADE_BIN=$(BIN) PALISADE_TEST_BIN=$(TEST_BIN) $(GO) test $(GOFLAGS) $(TESTFLAGS) -count=1 -timeout 30m ./...
	$(MAKE) fuzz
	$(MAKE) interop

# Test clients that are Go programs (grpcurl), built from the tools module
# (tools/go.mod, kept out of Palisade's go.mod) into the gitignored
# .cache/test-bin, once per machine: rebuilt only when tools/go.sum changes.
test-tools: $(TEST_BIN)/.stamp
$(TEST_BIN)/.stamp: tools/go.mod tools/go.sum
	cd tools && $(GO) build $(GOFLAGS) -o $(TEST_BIN)/ github.com/fullstorydev/grpcurl/cmd/grpcurl
	@touch $@

# SPIRE server and agent (the identity tests and "lab up --identity spire"),
# built from their own tools module (tools/spire/go.mod, pinned to one SPIRE
# release) into .cache/test-bin, once per machine: rebuilt only when
# tools/spire/go.mod or go.sum change. A cold build takes several minutes.
spire: $(TEST_BIN)/.spire-stamp
$(TEST_BIN)/.spire-stamp: tools/spire/go.mod tools/spire/go.sum
	cd tools/spire && $(GO) build $(GOFLAGS) -o $(TEST_BIN)/ github.com/spiffe/spire/cmd/spire-server github.com/spiffe/spire/cmd/spire-agent
	@touch $@

# Every fuzz target for FUZZTIME each (seed corpora are checked in under
# each package's testdata/fuzz and also run as plain tests).
FUZZTIME ?= 10s
fuzz:
	@scripts/fuzz.sh $(FUZZTIME)

# Interop with Istio's Go HBONE package, in its own module so that Istio's
# dependencies stay out of go.mod.
interop:
	cd test/interop && $(GO) vet ./... && $(GO) test $(GOFLAGS) -count=1 -timeout 10m ./...

STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.6.1

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...

demo: deps build
	scripts/demo.sh

# Benchmarks (not part of test, needs root): direct vs Palisade vs an HAProxy
# mutual-TLS pair on a two-node lab; prints a table and rewrites the results
# section of docs/benchmarks.md. BENCH_ARGS go to the benchmark program, for
# example BENCH_ARGS="--pprof .cache/bench/pprof" or "--no-doc".
bench: build bench-tools
	PALISADE_BENCH_DEPS=1 scripts/install-deps.sh
	scripts/bench.sh $(BENCH_ARGS)

# fortio, built from the benchmark's own tools module (bench/tools/go.mod),
# into the gitignored .cache/bench-bin.
bench-tools:
	cd bench/tools && $(GO) build $(GOFLAGS) -o $(CURDIR)/.cache/bench-bin/ fortio.org/fortio

clean:
	rm -rf $(BIN)
