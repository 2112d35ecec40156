#!/usr/bin/env bash
# Runs every Go fuzz target of the module for a short budget each.
# Usage: scripts/fuzz.sh [DURATION]   (default 10s per target)
set -euo pipefail
budget=${1:-10s}
cd "$(dirname "$0")/.."
status=0
found=0
while IFS= read -r file; do
  pkg=./$(dirname "$file")
  for target in $(grep -oE '^func (Fuzz[A-Za-z0-9_]+)\(f \*testing\.F\)' "$file" | sed -E 's/^func (Fuzz[A-Za-z0-9_]+).*/\1/'); do
    found=$((found + 1))
    echo "fuzz: $pkg $target for $budget"
    if ! go test -run '^$' -fuzz "^${target}\$" -fuzztime "$budget" -fuzzminimizetime 5s "$pkg"; then
      status=1
    fi
  done
done < <(git ls-files '*_test.go')
if [ "$found" = 0 ]; then
  echo "fuzz: no fuzz targets found" >&2
  exit 1
fi
exit $status
