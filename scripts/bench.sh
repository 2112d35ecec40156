#!/usr/bin/env bash
# Runs the benchmark (make bench): direct vs Palisade vs an HAProxy mutual-TLS
# pair on a two-node lab, and enrollment after a namespace label on a lab
# with a real API server; prints a table and writes docs/benchmarks.md.
# Needs root, bin/ (make build), fortio in .cache/bench-bin (make
# bench-tools) and kube-apiserver and etcd in .cache/test-bin (make kube);
# iperf3 and haproxy come from PALISADE_BENCH_DEPS=1 scripts/install-deps.sh.
# Extra arguments go to the benchmark program (bench/main.go: --fortio-time,
# --iperf-time, --pprof DIR, --no-doc, --phases, ...).
set -euo pipefail
cd "$(dirname "$0")/.."

LAB_NAME=zbench
STATE_DIR=/run/palisade-lab

if [ "$(id -u)" != 0 ]; then
  echo "bench: needs root (network namespaces); run: sudo make bench" >&2
  exit 1
fi
for f in bin/palisade-agent bin/palisade-nodeproxy bin/lab .cache/bench-bin/fortio; do
  if [ ! -x "$f" ]; then
    echo "bench: $f is missing; run: make bench (or make build bench-tools)" >&2
    exit 1
  fi
done
if ! command -v openssl >/dev/null 2>&1; then
  echo "bench: installing openssl"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends openssl >/dev/null ||
    { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends openssl >/dev/null; }
fi

# The program tears the lab down itself, also on failure and on SIGINT or
# SIGTERM; this catches the case where it was killed outright. Its
# temporary files (certificates, haproxy configs) live under $TMPDIR.
TMPDIR=$(mktemp -d /tmp/palisade-bench.XXXXXX)
export TMPDIR
cleanup() {
  # LAB_NAME is the main lab, ${LAB_NAME}k the enroll phase's (lab --kube).
  for lab in "$LAB_NAME" "${LAB_NAME}k"; do
    if [ -e "$STATE_DIR/$lab/lab.json" ] || ip netns list 2>/dev/null | grep -q "^$lab-"; then
      echo "bench: tearing down the leftover lab $lab" >&2
      bin/lab down --name "$lab" --state-dir "$STATE_DIR" >&2 || true
    fi
  done
  rm -rf "$TMPDIR"
}
trap cleanup EXIT

go build -o .cache/bench-bin/palisade-bench ./bench
.cache/bench-bin/palisade-bench --name "$LAB_NAME" --state-dir "$STATE_DIR" --bin-dir bin --tools-dir .cache/bench-bin "$@"
