#!/usr/bin/env bash
# meshtrain's CPU training step against PyTorch's on the same model and machine: train_step_bench
# --precision bf16 (fp32 and bf16 GEMMs) and bench/torch_step.py in its four configurations (eager and
# torch.compile, fp32 and bf16 autocast), then meshtrain's fastest over PyTorch's fastest. PyTorch
# (PyPI's wheel, with its CUDA libraries: some 3 GB, once) goes into a virtual environment this script
# makes (default build/torch-venv; TORCH_VENV=DIR for another). torch.compile needs a C++ compiler
# (build-essential). Prints numbers; never fails on a slow machine. On a CPU without bf16 instructions
# (neither AVX512_BF16 nor AMX) PyTorch's bf16 autocast is emulated, over 50 s per step on a 2-core
# AVX2 EPYC, so only the two fp32 configurations run there unless TORCH_CONFIGS names others
# (torch_step.py --configs).
# Usage: bench/torch_compare.sh [BUILD_DIR] [THREADS]
set -euo pipefail
build=${1:-build/release}
threads=${2:-2}
venv=${TORCH_VENV:-build/torch-venv}
here=$(dirname "$0")
bench=$build/bench/train_step_bench
[ -x "$bench" ] || { echo "torch_compare: $bench not found: build with -DMESHTRAIN_BENCH=ON first" >&2; exit 1; }
if [ ! -x "$venv/bin/python" ]; then
  echo "[torch_compare] making $venv and installing PyTorch from PyPI (about 4 GB)"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q torch
fi
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $threads threads"
mt=$("$bench" --precision bf16 --steps 5 --threads "$threads")
echo "$mt" | grep -E "^== |^ms/step"
configs=${TORCH_CONFIGS:-eager-fp32,eager-bf16,compile-fp32,compile-bf16}
if [ -z "${TORCH_CONFIGS:-}" ] && ! grep -qwE 'avx512_bf16|amx_bf16' /proc/cpuinfo; then
  configs=eager-fp32,compile-fp32
  echo "no bf16 instructions on this CPU: PyTorch's bf16 autocast would be emulated (over 50 s a step), so it is" \
       "left out (TORCH_CONFIGS=eager-fp32,eager-bf16,compile-fp32,compile-bf16 runs it anyway)"
fi
pt=$("$venv/bin/python" "$here/torch_step.py" --threads "$threads" --configs "$configs")
echo "$pt"
/usr/bin/python3 - "$mt" "$pt" <<'PY'
import re, sys
mt = [float(x) for x in re.findall(r"^ms/step: mean ([0-9.]+)", sys.argv[1], re.M)]
pt = {m.group(1): float(m.group(2)) for m in re.finditer(r"^torch (\S+): ([0-9.]+) ms/step", sys.argv[2], re.M)}
best_mt, best_pt = min(mt), min(pt.values())
which = min(pt, key=pt.get)
print(f"meshtrain fastest {best_mt:.1f} ms/step; PyTorch fastest {best_pt:.1f} ms/step ({which}); "
      f"ratio {best_mt / best_pt:.2f}x (below 1: meshtrain ahead)")
PY
