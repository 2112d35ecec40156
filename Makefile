# Palisade: `make demo` runs the lab demo, `make test` runs every test.
# Both need root on Linux (network namespaces, iptables) and install the
# Debian packages they use.

GO        ?= go
BIN       := $(CURDIR)/bin
GOFLAGS   ?=
TESTFLAGS ?=
export PATH := $(BIN):$(PATH)

BINARIES := palisade-agent palisade-nodeproxy lab

.PHONY: all build deps test unit e2e fuzz demo bench lint clean

all: build

deps:
	@scripts/install-deps.sh

build:
	@mkdir -p $(BIN)
	$(GO) build $(GOFLAGS) -o $(BIN)/palisade-agent ./cmd/agent
	$(GO) build $(GOFLAGS) -o $(BIN)/palisade-nodeproxy ./cmd/nodeproxy
	$(GO) build $(GOFLAGS) -o $(BIN)/lab ./cmd/lab

# Every test: unit tests of each package and the end-to-end tests on the lab.
test: deps build lint
	PALISADE_BIN=$(BIN) $(GO) test $(GOFLAGS) $(TESTFLAGS) -count=1 -timeout 30m ./...

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

demo: deps build
	scripts/demo.sh

bench: build
	PALISADE_BENCH_DEPS=1 scripts/install-deps.sh
	scripts/bench.sh

clean:
	rm -rf $(BIN)
