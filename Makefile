# Palisade: `make demo` runs the lab demo, `make test` runs every test.
# Both need root on Linux (network namespaces, iptables) and install the
# Debian packages they use.

GO        ?= go
BIN       := $(CURDIR)/bin
GOFLAGS   ?=
TESTFLAGS ?=
export PATH := $(BIN):$(PATH)

BINARIES := palisade-agent palisade-nodeproxy lab kubectl-palisade

TEST_BIN  := $(CURDIR)/.cache/test-bin

.PHONY: all build deps test test-tools spire kube interop demo bench bench-tools lint fuzz clean

all: build

deps:
	@scripts/install-deps.sh

build:
	@mkdir -p $(BIN)
	$(GO) build $(GOFLAGS) -o $(BIN)/palisade-agent ./cmd/agent
	$(GO) build $(GOFLAGS) -o $(BIN)/palisade-nodeproxy ./cmd/nodeproxy
	$(GO) build $(GOFLAGS) -o $(BIN)/lab ./cmd/lab
	$(GO) build $(GOFLAGS) -o $(BIN)/kubectl-palisade ./cmd/kubectl-palisade

# Every test: unit tests of each package, the end-to-end tests on the lab,
# a short run of every fuzz target, and the Istio interop module.
test: deps build lint test-tools spire kube prometheus
	PALISADE_BIN=$(BIN) PALISADE_TEST_BIN=$(TEST_BIN) $(GO) test $(GOFLAGS) $(TESTFLAGS) -count=1 -timeout 30m ./...
	$(MAKE) fuzz
	$(MAKE) interop

# Prometheus, Debian's package, for the dashboards' tests (promtool in
# manifests/dashboards, a real server in test/e2e's TestPrometheus);
# installed only when missing.
.PHONY: prometheus
prometheus:
	@command -v prometheus >/dev/null 2>&1 || { \
		echo "installing prometheus"; \
		apt-get update -q >/dev/null && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >/dev/null; }

# Test clients that are Go programs (grpcurl), built from the tools module
# (tools/go.mod, kept out of Palisade's go.mod) into the gitignored
# .cache/test-bin, once per machine: rebuilt only when tools/go.sum changes.
test-tools: $(TEST_BIN)/.stamp
$(TEST_BIN)/.stamp: tools/go.mod tools/go.sum
	cd tools && $(GO) build $(GOFLAGS) -o $(TEST_BIN)/ github.com/fullstorydev/grpcurl/cmd/grpcurl sigs.k8s.io/controller-tools/cmd/controller-gen
	@touch $@

# The policy CRDs in manifests/crds, generated from pkg/apis/policy/v1alpha1
# by controller-gen (from the tools module). A test fails when they are stale.
.PHONY: crds
crds: test-tools
	rm -f manifests/crds/*.yaml
	$(TEST_BIN)/controller-gen crd paths=./pkg/apis/policy/v1alpha1/... output:crd:dir=manifests/crds

# SPIRE server and agent (the identity tests and "lab up --identity spire"),
# built from their own tools module (tools/spire/go.mod, pinned to one SPIRE
# release) into .cache/test-bin, once per machine: rebuilt only when
# tools/spire/go.mod or go.sum change. A cold build takes several minutes.
spire: $(TEST_BIN)/.spire-stamp
$(TEST_BIN)/.spire-stamp: tools/spire/go.mod tools/spire/go.sum
	cd tools/spire && $(GO) build $(GOFLAGS) -o $(TEST_BIN)/ github.com/spiffe/spire/cmd/spire-server github.com/spiffe/spire/cmd/spire-agent
	@touch $@

# kube-apiserver, etcd and kubectl ("lab up --kube" and the tests against a
# real API server), built from their own tools module (tools/kube/go.mod:
# Kubernetes v1.34.4 with its staging modules replaced by their v0.34.4
# releases, etcd v3.6.6) into .cache/test-bin, once per machine: rebuilt only
# when tools/kube/go.mod or go.sum change. A cold build takes several minutes
# (over ten on 2 busy cores). The lab prefers this kubectl, of the server's
# version, to one in $PATH.
KUBE_VERSION := v1.34.4
KUBE_LDFLAGS := -X k8s.io/component-base/version.gitVersion=$(KUBE_VERSION) \
	-X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=34 \
	-X k8s.io/component-base/version.gitTreeState=clean
kube: $(TEST_BIN)/.kube-stamp
$(TEST_BIN)/.kube-stamp: tools/kube/go.mod tools/kube/go.sum
	cd tools/kube && $(GO) build $(GOFLAGS) -ldflags '$(KUBE_LDFLAGS)' -o $(TEST_BIN)/kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver
	cd tools/kube && $(GO) build $(GOFLAGS) -ldflags '$(KUBE_LDFLAGS)' -o $(TEST_BIN)/kubectl k8s.io/kubernetes/cmd/kubectl
	cd tools/kube && $(GO) build $(GOFLAGS) -o $(TEST_BIN)/etcd go.etcd.io/etcd/server/v3
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
bench: build bench-tools kube
	PALISADE_BENCH_DEPS=1 scripts/install-deps.sh
	scripts/bench.sh $(BENCH_ARGS)

# fortio, built from the benchmark's own tools module (bench/tools/go.mod),
# into the gitignored .cache/bench-bin.
bench-tools:
	cd bench/tools && $(GO) build $(GOFLAGS) -o $(CURDIR)/.cache/bench-bin/ fortio.org/fortio

clean:
	rm -rf $(BIN)
