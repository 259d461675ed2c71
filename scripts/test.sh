#!/usr/bin/env bash
# Installs what is missing, builds everything (tests and benchmarks included) and runs the whole
# test suite through CTest; then the same suite under AddressSanitizer + UBSan
# (scripts/test_sanitizers.sh), the CPU code's threads under ThreadSanitizer (scripts/test_tsan.sh),
# the CUDA code on the CPU (scripts/test_emulation.sh), and the fuzz
# targets (tests/fuzz/run.sh). Tests that
# need ../shared/data skip, saying so, when it is missing. Each stage prints its time.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh tests
t0=$(date +%s)
bash scripts/configure.sh release -DMESHTRAIN_TESTS=ON -DMESHTRAIN_BENCH=ON
cmake --build build/release -j"$(nproc)"
t1=$(date +%s)
echo "[test] build: $((t1 - t0)) s"
# The tests labelled `long` (the layout matrix, resume, resharding, damaged files, Slurm, the soak:
# many processes each) run once, in the sanitizer stage below, under AddressSanitizer + UBSan.
ctest --preset release -j1 -LE long "$@"
# The whole layout matrix (22 runs against one process) at full speed; under the sanitizers below,
# where each process runs several times slower, parallel_train_test runs a subset of it.
ctest --preset release -j1 -R '^parallel_train_test$'
t2=$(date +%s)
echo "[test] test suite: $((t2 - t1)) s"
bash scripts/test_sanitizers.sh
bash scripts/test_tsan.sh
bash scripts/test_emulation.sh
# Every input parser under libFuzzer with AddressSanitizer and UBSan, 10 s each (tests/fuzz/run.sh
# SECONDS runs them longer); a finding fails the run and leaves its input in tests/fuzz/regressions/.
t3=$(date +%s)
bash tests/fuzz/run.sh "${MESHTRAIN_FUZZ_SECONDS:-10}"
echo "[test] fuzzing: $(($(date +%s) - t3)) s"
echo "[test] all stages: $(($(date +%s) - t0)) s"
