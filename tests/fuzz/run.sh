#!/usr/bin/env bash
# Builds the fuzz targets in the `asan` preset's tree (clang 14 with libFuzzer, AddressSanitizer and
# UBSan; the parsers' files carry libFuzzer's coverage, tests/fuzz/coverage_allowlist.txt) and runs
# each for SECONDS (default 60) on a copy of its committed seeds, with its dictionary when there is
# one, printing executions and corpus size per target. An input that crashes, hangs (more
# than 10 s), leaks or trips a sanitizer is copied into tests/fuzz/regressions/<target>/ (which the
# normal test build replays) and the script fails.
#
#   bash tests/fuzz/run.sh [SECONDS] [TARGET...]     e.g. bash tests/fuzz/run.sh 600 fuzz_checkpoint
#
# Needs clang-14, libfuzzer-14-dev and libclang-rt-14-dev (Debian); scripts/setup.sh fuzz installs them.
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-60}
shift || true
bash scripts/setup.sh fuzz
t0=$(date +%s)
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for f in tests/fuzz/fuzz_*.cpp; do targets+=("$(basename "$f" .cpp)"); done
fi
# (After scripts/test_sanitizers.sh, which builds the whole tree, there is nothing left to build.)
bash scripts/configure.sh asan
cmake --build build/asan -j"$(nproc)" --target "${targets[@]}" 2>&1 | grep -E "error|warning: " || true
for t in "${targets[@]}"; do
  [ -x "build/asan/fuzz/$t" ] || { echo "[fuzz] build/asan/fuzz/$t was not built" >&2; exit 1; }
done
echo "[fuzz] build: $(($(date +%s) - t0)) s"

work=$(mktemp -d "${TMPDIR:-/tmp}/meshtrain_fuzz_XXXXXX")
trap 'rm -rf "$work"' EXIT
failed=0
# Open MPI and HDF5 keep some allocations for the life of the process (see tests/lsan.supp).
export LSAN_OPTIONS="suppressions=$PWD/tests/lsan.supp:print_suppressions=0"
export ASAN_OPTIONS="halt_on_error=1:detect_leaks=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
# One target per core at a time (each libFuzzer process is single-threaded); the results print in
# the targets' order.
fuzz_one() {
  local t=$1 corpus=$work/$1 log=$work/$1.log rc runs size
  mkdir -p "$corpus" "$work/artifacts_$t"
  cp -r "tests/fuzz/seeds/$t/." "$corpus/" 2> /dev/null || true
  local dict=()
  [ -f "tests/fuzz/dicts/$t.dict" ] && dict=(-dict="tests/fuzz/dicts/$t.dict")
  set +e
  "build/asan/fuzz/$t" "$corpus" "${dict[@]}" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 \
    -max_len=65536 -print_final_stats=1 -artifact_prefix="$work/artifacts_$t/" > "$log" 2>&1
  rc=$?
  set -e
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
  size=$(ls "$corpus" | wc -l)
  if [ $rc -ne 0 ]; then
    mkdir -p "tests/fuzz/regressions/$t"
    cp "$work/artifacts_$t"/* "tests/fuzz/regressions/$t/" 2> /dev/null || true
    { echo "[fuzz] $t: FINDING after ${runs} executions (exit $rc); input(s) saved in tests/fuzz/regressions/$t/"
      grep -E "ERROR|SUMMARY|property violated|terminate|what\(\)" "$log" | head -8; } > "$work/$t.result"
  else
    echo "[fuzz] $t: ${runs} executions in ${seconds} s, corpus ${size} inputs, no finding" > "$work/$t.result"
  fi
  return $rc
}
at_once=$(nproc)
pids=()
for t in "${targets[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$at_once" ]; do wait -n || true; done
  fuzz_one "$t" &
  pids+=($!)
done
for i in "${!targets[@]}"; do
  wait "${pids[$i]}" || failed=1
  cat "$work/${targets[$i]}.result"
done
exit $failed
