#!/usr/bin/env bash
# Runs a sanitizer preset's CTest suite and fails on a failing test or on any sanitizer report.
# Usage: sanitized_ctest.sh PRESET TAG WHAT [CTEST ARGS...]
# The preset's environment writes reports under build/PRESET/sanitizer-reports/ (log_path), so a
# report from a process that a test expected to fail still fails the stage. Prints, after the tests,
# "[TAG] N tests under WHAT, M reports: S s". Used by scripts/test_sanitizers.sh and test_tsan.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
preset=$1 tag=$2 what=$3
shift 3
t0=$(date +%s)
reports=build/$preset/sanitizer-reports
rm -rf "$reports"
mkdir -p "$reports"
status=0
ctest --preset "$preset" -j1 "$@" || status=$?
found=$(find "$reports" -type f | wc -l)
if [ "$found" -gt 0 ]; then
  for f in "$reports"/*; do echo "==== $f"; cat "$f"; done
  echo "[$tag] $found sanitizer report(s) above (files in $reports)" >&2
  status=1
fi
tests=$(ctest --preset "$preset" -N "$@" | sed -n 's/^Total Tests: //p')  # those the arguments select
echo "[$tag] $tests tests under $what, $found sanitizer reports: $(($(date +%s) - t0)) s"
exit "$status"
