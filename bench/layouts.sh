#!/usr/bin/env bash
# Where a training step's time goes on every dp x tp x pp layout: runs `meshtrain train` under
# mpiexec for each layout on the same model and data and prints a table of ms/step split into
# compute, exposed data-parallel communication, tensor-parallel all-reduces and pipeline waits
# (means over ranks, steps after the first two). Prints numbers; never fails on a slow machine.
# Usage: bench/layouts.sh [BUILD_DIR] [WORK_DIR] [STEPS]
set -euo pipefail
build=${1:-build/release}
work=${2:-${TMPDIR:-/tmp}/meshtrain-layouts}
steps=${3:-10}
bin=$build/meshtrain
corpus=${CORPUS:-/usr/share/games/fortunes/cookie}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1 \
  OMPI_MCA_hwloc_base_binding_policy=none OMPI_MCA_mpi_yield_when_idle=1
mkdir -p "$work"
if [ ! -f "$work/shards/train_000000.bin" ]; then
  "$bin" tokenizer train --vocab-size 2048 --input "$corpus" --output "$work/tok" >/dev/null
  "$bin" tokenize --tokenizer "$work/tok" --input "$corpus" --output "$work/shards" >/dev/null
fi
common=(--set "data.train=$work/shards/train_*.bin" --set "data.tokenizer=$work/tok" --set model.n_layer=4
        --set model.n_head=4 --set model.n_embd=128 --set model.seq_len=64 --set train.batch_size=16
        --set parallel.microbatches=4 --set "train.steps=$steps" --set train.checkpoint_every=0
        --set train.sample_every=0 --set train.eval_every=0 --set train.threads=1 --set train.log_every=1000
        --set parallel.bucket_mb=1)
layouts=("1 1 1 0" "2 1 1 0" "2 1 1 1" "1 2 1 0" "1 1 2 0" "4 1 1 0" "1 4 1 0" "1 1 4 0" "2 2 1 0" "2 1 2 1"
         "1 2 2 0" "2 2 2 0" "2 2 2 1")
printf '| dp | tp | pp | zero | ranks | ms/step | compute | dp comm | tp comm | pp wait | exposed comm |\n'
printf '|---|---|---|---|---|---:|---:|---:|---:|---:|---:|\n'
for l in "${layouts[@]}"; do
  read -r dp tp pp zero <<<"$l"
  n=$((dp * tp * pp))
  out="$work/run_${dp}_${tp}_${pp}_${zero}"
  rm -rf "$out" "$out.jsonl"
  launcher=()
  [ "$n" -gt 1 ] && launcher=(mpiexec -n "$n")
  "${launcher[@]}" "$bin" train "${common[@]}" --set "parallel.dp=$dp" --set "parallel.tp=$tp" \
    --set "parallel.pp=$pp" --set "parallel.zero=$zero" --set "train.out_dir=$out" --metrics "$out.jsonl" >/dev/null
  /usr/bin/python3 - "$out.jsonl" "$dp" "$tp" "$pp" "$zero" "$n" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])][2:]
mean = lambda k: sum(r.get(k, 0.0) for r in rows) / len(rows)
ms, comp = mean("ms"), mean("compute_ms") if "compute_ms" in rows[0] else mean("ms")
dp, tp, pp = mean("dp_comm_ms"), mean("tp_comm_ms"), mean("pp_wait_ms")
print(f"| {sys.argv[2]} | {sys.argv[3]} | {sys.argv[4]} | {sys.argv[5]} | {sys.argv[6]} | {ms:.1f} | {comp:.1f} | "
      f"{dp:.1f} | {tp:.1f} | {pp:.1f} | {100 * (dp + tp + pp) / ms:.0f}% |")
PY
done
