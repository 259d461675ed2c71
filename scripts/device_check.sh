#!/usr/bin/env bash
# GPU check for a lent machine without a package registry. Prepare once on the Debian dev machine:
#   apt-get update && DEVDEPS_EXTRA="libcli11-dev libtomlplusplus-dev nlohmann-json3-dev libfmt-dev \
#     libbenchmark-dev libgmock-dev libopenblas-openmp-dev libomp-dev" bash ../shared/device/pack-deps.sh
# then run this script on the GPU machine carrying .devdeps (device tool: carry [".devdeps"]).
# It unpacks the carried packages, configures a CUDA build for the card found, builds, runs the GPU
# tests (CUDA kernels against their CPU twins, NCCL), compute-sanitizer memcheck over the kernel
# tests where the tool works, the CPU suite, and the step benchmark, writes full logs to $OUT (or
# ./device-logs) and ends with a short table. Budget: under 8 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-device-logs}
mkdir -p "$out"
declare -A result
step() {  # step NAME TIMEOUT_S COMMAND...: runs one stage, logs it, records pass/fail and seconds
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  if timeout "$limit" "$@" >"$out/$name.log" 2>&1; then result[$name]="ok ($((SECONDS - t0)) s)"
  else result[$name]="FAILED rc=$? ($((SECONDS - t0)) s, see $out/$name.log)"; fi
  echo "[device-check] $name: ${result[$name]}"
}

if [ -f .devdeps/unpack.sh ]; then
  # shellcheck disable=SC1091
  source .devdeps/unpack.sh >"$out/unpack.log" 2>&1 || echo "[device-check] unpack failed (see $out/unpack.log)"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >"$out/gpu.txt" 2>&1
cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d '.')
arch=${cap:-90}
echo "[device-check] GPU: $(cat "$out/gpu.txt") (sm_$arch)"

# shellcheck disable=SC2086
step configure 180 cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DMESHTRAIN_CUDA=ON \
  -DCMAKE_CUDA_ARCHITECTURES="$arch" ${DEVDEPS_CMAKE_ARGS:-}
step build 300 cmake --build build-gpu -j"$(nproc)"
step gpu_tests 120 ctest --test-dir build-gpu --output-on-failure -R "cuda|nccl"
if command -v compute-sanitizer >/dev/null && [ -x build-gpu/tests/kernels_cuda_test ]; then
  step memcheck 180 compute-sanitizer --tool memcheck --error-exitcode 1 build-gpu/tests/kernels_cuda_test
else
  result[memcheck]="skipped (compute-sanitizer or kernels_cuda_test missing)"
fi
step cpu_tests 240 ctest --test-dir build-gpu --output-on-failure -E "cuda|nccl"
step bench 120 build-gpu/bench/train_step_bench --steps 3

echo
echo "| stage | result |"
echo "|---|---|"
for k in configure build gpu_tests memcheck cpu_tests bench; do echo "| $k | ${result[$k]:-not run} |"; done
grep -hE "ms/step|peak resident" "$out/bench.log" 2>/dev/null | sed 's/^/    /'
