#!/usr/bin/env bash
# Where a training step's time goes on every dp x tp x pp layout: runs `meshtrain train` under
# mpiexec for each layout on the same model and data and prints a table of ms/step split into
# compute, exposed data-parallel communication, tensor-parallel all-reduces and pipeline waits
# (means over ranks, steps after the first two), with tokens/s, MFU and peak GPU memory where
# known. Prints numbers; never fails on a slow machine.
# Usage: bench/layouts.sh [BUILD_DIR] [WORK_DIR] [STEPS]
# On GPUs: DEVICE=cuda [PRECISION=bf16] [COMM=auto|nccl|mpi] [GRAPH=true] [MODEL=gpt2] [MAX_RANKS=N]
# (COMM=mpi lets all ranks share one GPU; layouts needing more ranks than MAX_RANKS are skipped).
# BIND=core:overload-allowed pins each rank to a core (default none: the OS places them).
set -euo pipefail
build=${1:-build/release}
work=${2:-${TMPDIR:-/tmp}/meshtrain-layouts}
steps=${3:-10}
[ "$steps" -ge 3 ] 2>/dev/null || { echo "layouts.sh: STEPS is $steps; it must be 3 or more (the first two are warm-up, not counted)" >&2; exit 2; }
bin=$build/meshtrain
corpus=${CORPUS:-/usr/share/games/fortunes/cookie}
# shellcheck source=bench/mpi_env.sh
. "$(dirname "$0")/mpi_env.sh"
mkdir -p "$work"
if [ ! -f "$corpus" ]; then  # no fortunes here (a GPU machine): the project's own prose will do
  corpus="$work/corpus.txt"
  cat README.md docs/*.md model/*.cpp parallel/*.cpp > "$corpus"
fi
if [ ! -f "$work/shards/train_000000.bin" ]; then
  "$bin" tokenizer train --vocab-size 2048 --input "$corpus" --output "$work/tok" >/dev/null
  "$bin" tokenize --tokenizer "$work/tok" --input "$corpus" --output "$work/shards" >/dev/null
fi
device=${DEVICE:-cpu}
model=(--set model.n_layer=4 --set model.n_head=4 --set model.n_embd=128 --set model.seq_len=64
       --set train.batch_size=16)
if [ "${MODEL:-small}" = gpt2 ]; then  # GPT-2 124M's shape (on this corpus's vocabulary)
  model=(--set model.n_layer=12 --set model.n_head=12 --set model.n_embd=768 --set model.seq_len=1024
         --set train.batch_size=8)
fi
common=(--set "data.train=$work/shards/train_*.bin" --set "data.tokenizer=$work/tok" "${model[@]}"
        --set parallel.microbatches=4 --set "train.steps=$steps" --set train.checkpoint_every=0
        --set train.sample_every=0 --set train.eval_every=0 --set train.threads=1 --set train.log_every=1000
        --set parallel.bucket_mb=1 --set "train.device=$device" --set "train.precision=${PRECISION:-fp32}"
        --set "parallel.comm=${COMM:-auto}" --set "train.cuda_graph=${GRAPH:-false}"
        --set "train.peak_tflops=${PEAK_TFLOPS:-0}")
max_ranks=${MAX_RANKS:-8}
# The GPUs NCCL can use: those train would see (CUDA_VISIBLE_DEVICES first), none without NCCL built (parallel.comm =
# auto picks NCCL only when it is built and every rank has a GPU).
nccl_gpus=0
if [ "$device" = cuda ]; then
  if [ -n "${CUDA_VISIBLE_DEVICES+set}" ]; then
    nccl_gpus=$(tr ',' '\n' <<<"$CUDA_VISIBLE_DEVICES" | grep -c . || true)
  elif command -v nvidia-smi >/dev/null; then
    nccl_gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
  fi
  grep -q '^MESHTRAIN_NCCL:BOOL=ON' "$build/CMakeCache.txt" 2>/dev/null || nccl_gpus=0
fi
layouts=("1 1 1 0" "2 1 1 0" "2 1 1 1" "1 2 1 0" "1 1 2 0" "4 1 1 0" "1 4 1 0" "1 1 4 0" "2 2 1 0" "2 1 2 1"
         "1 2 2 0" "2 2 2 0" "2 2 2 1")
echo "device $device, precision ${PRECISION:-fp32}, comm ${COMM:-auto}, graph ${GRAPH:-false}, model ${MODEL:-small}"
printf '| dp | tp | pp | zero | ranks | ms/step | tokens/s | MFU | peak MiB | compute | dp comm | tp comm | pp wait | exposed comm |\n'
printf '|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n'
eager=()
for l in "${layouts[@]}"; do
  read -r dp tp pp zero <<<"$l"
  n=$((dp * tp * pp))
  [ "$n" -gt "$max_ranks" ] && continue
  # A CUDA graph captures one rank's step, or ranks that each have a GPU over NCCL, never a pipeline's
  # (train refuses the others): with GRAPH=true, pipelines and ranks sharing a GPU run eagerly.
  graph=()
  comm=${COMM:-auto}
  if [ "$pp" -gt 1 ] || { [ "$n" -gt 1 ] && { [ "$comm" = mpi ] || { [ "$comm" = auto ] && [ "$n" -gt "$nccl_gpus" ]; }; }; }; then
    graph=(--set train.cuda_graph=false)
    z=""
    [ "$zero" = 1 ] && z=" ZeRO-1"
    [ "${GRAPH:-false}" = true ] && eager+=("dp${dp} tp${tp} pp${pp}${z}")
  fi
  out="$work/run_${dp}_${tp}_${pp}_${zero}"
  rm -rf "$out" "$out.jsonl"
  launcher=()
  [ "$n" -gt 1 ] && launcher=(mpiexec -n "$n")
  "${launcher[@]}" "$bin" train "${common[@]}" --set "parallel.dp=$dp" --set "parallel.tp=$tp" \
    --set "parallel.pp=$pp" --set "parallel.zero=$zero" "${graph[@]}" --set "train.out_dir=$out" \
    --metrics "$out.jsonl" >"$out.log" 2>&1 || { echo "| $dp | $tp | $pp | $zero | $n | failed: $(grep -m1 "meshtrain: error" "$out.log" || tail -1 "$out.log") |"; continue; }
  /usr/bin/python3 - "$out.jsonl" "$dp" "$tp" "$pp" "$zero" "$n" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])][2:]
mean = lambda k: sum(r.get(k, 0.0) for r in rows) / len(rows)
ms, comp = mean("ms"), mean("compute_ms") if "compute_ms" in rows[0] else mean("ms")
dp, tp, pp = mean("dp_comm_ms"), mean("tp_comm_ms"), mean("pp_wait_ms")
tok, mfu, peak = mean("tokens_per_s"), mean("mfu"), max(r.get("gpu_peak_mib", 0.0) for r in rows)
mfu_s = f"{mfu:.1f}%" if mfu > 0 else "-"
peak_s = f"{peak:.0f}" if peak > 0 else "-"
print(f"| {sys.argv[2]} | {sys.argv[3]} | {sys.argv[4]} | {sys.argv[5]} | {sys.argv[6]} | {ms:.1f} | {tok:.0f} | {mfu_s} | "
      f"{peak_s} | {comp:.1f} | {dp:.1f} | {tp:.1f} | {pp:.1f} | {100 * (dp + tp + pp) / ms:.0f}% |")
PY
done
if [ "${#eager[@]}" -gt 0 ]; then
  echo
  eager_list=$(printf '%s, ' "${eager[@]}")
  echo "Ran eagerly (no CUDA graph: a pipeline, or ranks sharing a GPU over MPI): ${eager_list%, }"
fi
