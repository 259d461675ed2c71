#!/usr/bin/env bash
# Installs what is missing, builds everything (tests and benchmarks included) and runs the whole
# test suite through CTest. Tests that need ../shared/data skip, saying so, when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cmake --preset release -DMESHTRAIN_TESTS=ON -DMESHTRAIN_BENCH=ON >/dev/null
cmake --build build/release -j"$(nproc)"
ctest --preset release -j1 "$@"
