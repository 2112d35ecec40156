#!/usr/bin/env bash
# Installs the system packages Palisade's build, tests, demo and benchmarks use.
# Idempotent: does nothing when everything is present. Needs root (apt-get).
set -euo pipefail

# command -> Debian package
declare -A need=(
  [ip]=iproute2
  [iptables]=iptables
  [iptables-restore]=iptables
  [ip6tables-restore]=iptables
  [nft]=nftables
  [tcpdump]=tcpdump
  [curl]=curl
  [jq]=jq
  [nsenter]=util-linux
  [kcat]=kcat
  # Only to regenerate pkg/datapath from bpf/ (go generate ./pkg/datapath) and
  # for its up-to-date check; building uses the committed objects. bpf/include
  # vendors the libbpf headers, so libbpf-dev is not needed.
  [clang]=clang
  [llvm-strip]=llvm
)
if [ "${PALISADE_BENCH_DEPS:-0}" = 1 ]; then
  need[iperf3]=iperf3
  need[haproxy]=haproxy
fi

missing=()
for cmd in "${!need[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${need[$cmd]}")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "install-deps: missing packages (${missing[*]}) and not root; install them or run as root" >&2
  exit 1
fi
pkgs=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')
echo "install-deps: installing $pkgs"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
# shellcheck disable=SC2086
apt-get install -y -q --no-install-recommends $pkgs >/dev/null
