#!/usr/bin/env bash
# The CUDA code on the CPU: builds the `emulation` preset (the real .cu sources and CUDA test files
# over tests/cuda_emulation), runs every CUDA test file as <name>_emulated, then the mutation check
# (injected bugs must each make an emulated test fail), and the kernel test files again under
# ThreadSanitizer (`emulation-tsan`: a race on shared memory between threads of a block is an error
# whatever order they ran in). scripts/test.sh runs it after the main suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
t0=$(date +%s)
bash scripts/configure.sh emulation
cmake --build build/emulation -j"$(nproc)"
t1=$(date +%s)
echo "[emulation] build: $((t1 - t0)) s"
ctest --preset emulation -j1 "$@"
t2=$(date +%s)
echo "[emulation] emulated tests: $((t2 - t1)) s"
/usr/bin/env python3 tests/cuda_emulation/mutation_check.py build/emulation
t3=$(date +%s)
echo "[emulation] mutation check: $((t3 - t2)) s"
bash scripts/configure.sh emulation-tsan
cmake --build build/emulation-tsan -j"$(nproc)" --target kernels_cuda_test kernels_bf16_cuda_test attention_cuda_test \
  matmul_cuda_test
ctest --preset emulation-tsan -j1
echo "[emulation] ThreadSanitizer build and kernel tests: $(($(date +%s) - t3)) s"
