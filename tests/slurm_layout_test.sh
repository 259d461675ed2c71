#!/usr/bin/env bash
# Through a real Slurm cluster (../shared/slurm: two simulated nodes on this machine): dp 2 x tp 2
# over 2 nodes x 2 tasks trains the same model as one process, started with srun and submitted with
# sbatch as the shipped slurm/train.sbatch (losses within 1e-5 relative).
# Usage: slurm_layout_test.sh MESHTRAIN_BINARY SOURCE_DIR. Exit 77 (CTest: skipped) when the shared
# Slurm scripts are missing.
set -euo pipefail
bin=$1
src=$2
# shellcheck source=slurm_common.sh
source "$(dirname "$0")/slurm_common.sh"
args=(--set data.train="$work/shards/train_*.bin" --set data.tokenizer="$work/tok" --set model.n_layer=2
      --set model.n_head=4 --set model.n_embd=32 --set model.seq_len=16 --set train.batch_size=8
      --set train.steps=10 --set train.checkpoint_every=0 --set train.eval_every=0 --set train.sample_every=0
      --set train.threads=1)

# Every loss within 1e-5 (relative) of the one-process run's.
same_losses() {
  python3 - "$1" "$2" <<'PY'
import json, sys
a = [json.loads(l)["loss"] for l in open(sys.argv[1])]
b = [json.loads(l)["loss"] for l in open(sys.argv[2])]
assert len(a) == len(b) == 10, (len(a), len(b))
worst = max(abs(x - y) / abs(x) for x, y in zip(a, b))
print(f"largest relative loss difference {worst:.1e}")
sys.exit(0 if worst <= 1e-5 else 1)
PY
}

echo "== one process"
"$bin" train "${args[@]}" --set train.out_dir="$work/one" --metrics "$work/one.jsonl" > one.log 2>&1 || { cat one.log; exit 1; }

echo "== srun -N 2 --ntasks-per-node=2, dp 2 x tp 2"
srun -N 2 --ntasks-per-node=2 --time=5 "$bin" train "${args[@]}" --set parallel.dp=2 --set parallel.tp=2 \
  --set train.out_dir="$work/srun" --metrics "$work/srun.jsonl" > srun.log 2>&1 || { cat srun.log; exit 1; }
same_losses one.jsonl srun.jsonl || { echo "FAIL: srun's losses differ"; cat srun.log; exit 1; }

echo "== sbatch of slurm/train.sbatch (1 node x 4 tasks and 2 nodes x 2 tasks), dp 2 x tp 2"
for shape in "-N 1 --ntasks-per-node=4" "-N 2 --ntasks-per-node=2"; do
  tag=$(echo "$shape" | tr -dc '0-9')
  # shellcheck disable=SC2086
  MESHTRAIN_BIN="$bin" sbatch --wait $shape --time=5 -o "$work/sbatch$tag.log" "$src/slurm/train.sbatch" "${args[@]}" \
    --set parallel.pp=1 --set train.out_dir="$work/sbatch$tag" --metrics "$work/sbatch$tag.jsonl" > /dev/null \
    || { echo "FAIL: the batch job failed"; cat "$work/sbatch$tag.log"; exit 1; }
  same_losses one.jsonl "sbatch$tag.jsonl" || { echo "FAIL: sbatch ($shape) losses differ"; exit 1; }
done
echo "PASS: dp 2 x tp 2 through srun and through sbatch of slurm/train.sbatch trains the one-process model"
