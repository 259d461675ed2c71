#!/usr/bin/env bash
# Installs what is missing, builds everything (tests and benchmarks included) and runs the whole
# test suite through CTest; then the CUDA code on the CPU (scripts/test_emulation.sh). Tests that
# need ../shared/data skip, saying so, when it is missing. Each stage prints its time.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh tests
t0=$(date +%s)
cmake --preset release -DMESHTRAIN_TESTS=ON -DMESHTRAIN_BENCH=ON >/dev/null
cmake --build build/release -j"$(nproc)"
t1=$(date +%s)
echo "[test] build: $((t1 - t0)) s"
ctest --preset release -j1 "$@"
t2=$(date +%s)
echo "[test] test suite: $((t2 - t1)) s"
bash scripts/test_emulation.sh
echo "[test] all stages: $(($(date +%s) - t0)) s"
