#!/usr/bin/env bash
# Installs what is missing, builds meshtrain and runs the built-in default training (a small GPT on
# Debian's fortunes with its own BPE vocabulary), ending with generated text. Extra arguments go to
# `meshtrain train` (e.g. --set train.steps=100).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/configure.sh release -DMESHTRAIN_TESTS=OFF -DMESHTRAIN_BENCH=OFF
cmake --build build/release --target meshtrain -j"$(nproc)"
exec ./build/release/meshtrain train "$@"
