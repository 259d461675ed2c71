#!/usr/bin/env bash
# GPU check for a lent machine without a package registry. Prepare once on the Debian dev machine:
#   apt-get update && bash scripts/pack_device_deps.sh
# then run this script on the GPU machine carrying .devdeps (device tool: carry [".devdeps"]).
# It unpacks the carried packages, configures a CUDA build for the card found, builds, runs the GPU
# tests (every CUDA kernel family against its CPU twin, GPU training against the CPU, NCCL),
# compute-sanitizer memcheck over the kernel tests where the tool works, the benchmarks (GPT-2 124M
# bf16 training: tokens/s, MFU, peak memory, eager vs CUDA graph; every layout of up to 4 ranks with
# its split; generation with and without the key/value cache; flash vs materialised attention;
# cuBLASLt GEMMs) and the CPU suite, writes full logs to $OUT (or ./device-logs) and ends with a
# short table. Budget: under 8 minutes.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
out=${OUT:-device-logs}
mkdir -p "$out"
declare -A result
step() {  # step NAME TIMEOUT_S COMMAND...: runs one stage, logs it, records pass/fail and seconds
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  if timeout "$limit" "$@" >"$out/$name.log" 2>&1; then result[$name]="ok ($((SECONDS - t0)) s)"
  else
    result[$name]="FAILED rc=$? ($((SECONDS - t0)) s, see $out/$name.log)"
    # The end of the log here too: the first lines a caller sees may be all it gets back.
    tail -n 15 "$out/$name.log" | sed "s/^/[device-check] $name | /"
  fi
  echo "[device-check] $name: ${result[$name]}"
}

if [ -f .devdeps/unpack.sh ]; then
  # shellcheck disable=SC1091
  source .devdeps/unpack.sh >"$out/unpack.log" 2>&1 || echo "[device-check] unpack failed (see $out/unpack.log)"
  # unpack.sh puts OpenBLAS's pthread build on the library path; the project links the OpenMP one (one
  # thread pool with the kernels', cmake/MeshtrainDeps.cmake finds it), which must come first at run time.
  lib=${DEVDEPS_PREFIX:-/opt/devdeps}/usr/lib/$(uname -m)-linux-gnu/openblas-openmp
  [ -d "$lib" ] && export LD_LIBRARY_PATH="$lib:${LD_LIBRARY_PATH:-}"
fi
# nvcc and compute-sanitizer live under the toolkit, which is not always on PATH.
for d in /usr/local/cuda/bin /usr/local/cuda/compute-sanitizer /usr/local/cuda-*/bin; do
  [ -d "$d" ] && PATH="$PATH:$d"
done
export PATH
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >"$out/gpu.txt" 2>&1
else
  echo "none (no nvidia-smi: no GPU driver here)" >"$out/gpu.txt"
fi
cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d '.')
arch=${cap:-90}
echo "[device-check] GPU: $(cat "$out/gpu.txt") (sm_$arch)"

# shellcheck disable=SC2086
step configure 180 cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DMESHTRAIN_CUDA=ON \
  -DCMAKE_CUDA_ARCHITECTURES="$arch" ${DEVDEPS_CMAKE_ARGS:-}
step build 300 cmake --build build-gpu -j"$(nproc)"
if [[ ${result[build]} != ok* ]]; then  # nothing below can run (binaries left from an earlier call would
  # be stale): say so instead of running or failing each stage
  for k in gpu_tests memcheck bench_gpt2 bench_layouts bench_generate bench_attention bench_matmul cpu_tests; do
    result[$k]="skipped (the build failed)"
  done
else
  # (--no-tests=error: a build without the CUDA tests must not pass as "ok")
  step gpu_tests 150 ctest --test-dir build-gpu --output-on-failure --no-tests=error -j2 -R "cuda|nccl"
  if command -v compute-sanitizer >/dev/null && [ -x build-gpu/tests/kernels_cuda_test ]; then
    memcheck() {
      local rc=0
      for t in kernels_cuda_test kernels_bf16_cuda_test attention_cuda_test matmul_cuda_test; do
        [ -x "build-gpu/tests/$t" ] || continue
        echo "== $t"
        compute-sanitizer --tool memcheck --error-exitcode 1 "build-gpu/tests/$t" --gtest_brief=1 || rc=1
      done
      return $rc
    }
    step memcheck 150 memcheck
  else
    result[memcheck]="skipped (compute-sanitizer or the kernel tests missing)"
  fi
  step bench_gpt2 150 build-gpu/bench/gpu_train_bench --precision bf16 --T 1024 --steps 10
  # Every layout of up to 4 ranks on this machine's GPUs (NCCL where each rank has a GPU, otherwise
  # the ranks share them over MPI): tokens/s, MFU, peak memory and where each step's time goes.
  step bench_layouts 120 env DEVICE=cuda PRECISION=bf16 COMM=auto GRAPH=true MAX_RANKS=4 \
    bash bench/layouts.sh build-gpu "$out/layouts-work" 6
  step bench_generate 40 build-gpu/bench/generate_bench --device cuda
  step bench_attention 60 build-gpu/bench/attention_bench
  step bench_matmul 40 build-gpu/bench/matmul_bench
  # The CPU suite also runs in CI; here it only uses what is left of the 8 minutes, and leaves out the
  # tests that need what a GPU machine lacks: Debian's fortunes (learn_docs), h5diff (soak_short) and
  # Chromium (serve_test).
  if [ "$SECONDS" -lt 390 ]; then
    step cpu_tests $((470 - SECONDS)) ctest --test-dir build-gpu -j8 --output-on-failure \
      -E "cuda|nccl|^learn_docs$|soak_short|serve_test"
  else
    result[cpu_tests]="skipped (8-minute budget spent; CI runs it)"
  fi
fi

echo
echo "| stage | result |"
echo "|---|---|"
for k in configure build gpu_tests memcheck bench_gpt2 bench_layouts bench_generate bench_attention bench_matmul \
    cpu_tests; do
  echo "| $k | ${result[$k]:-not run} |"
done
echo
for b in bench_gpt2 bench_layouts bench_generate bench_attention bench_matmul; do
  [ -f "$out/$b.log" ] && { echo "## $b"; grep -E "^\||^device|^GPT|^FLOPs|micro-batch|^model|cache|recompute|speed-up" \
    "$out/$b.log"; echo; }
done
grep -hE "Failed|FAILED|\*\*\*" "$out/gpu_tests.log" 2>/dev/null | head -20
