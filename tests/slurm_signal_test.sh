#!/usr/bin/env bash
# Through a real Slurm cluster (../shared/slurm: two simulated nodes on this machine): a two-rank
# job submitted with sbatch and stopped with `scancel --signal=TERM` mid-run writes a checkpoint
# and exits; resumed with srun it repeats the uninterrupted run's losses bit for bit.
# Usage: slurm_signal_test.sh MESHTRAIN_BINARY SOURCE_DIR. Exit 77 (CTest: skipped) when the
# shared Slurm scripts are missing.
set -euo pipefail
bin=$1
src=$2
# shellcheck source=slurm_common.sh
source "$(dirname "$0")/slurm_common.sh"
args=(--set data.train="$work/shards/train_*.bin" --set data.tokenizer="$work/tok" --set model.n_layer=2
      --set model.n_head=2 --set model.n_embd=32 --set model.seq_len=16 --set train.batch_size=4
      --set train.steps=2000 --set train.checkpoint_every=0 --set train.eval_every=0 --set train.sample_every=0
      --set train.threads=1 --set train.log_every=1000 --set parallel.dp=2)
srun_args=(-N 2 --ntasks-per-node=1 --time=5)

losses() { grep -o '"loss":[^,]*' "$1"; }

echo "== the uninterrupted run (srun, 2 nodes)"
srun "${srun_args[@]}" "$bin" train "${args[@]}" --set train.out_dir="$work/ref" --metrics "$work/ref.jsonl" > ref.log 2>&1 \
  || { cat ref.log; exit 1; }

echo "== the same run submitted with sbatch, stopped by scancel --signal=TERM"
cat > job.sbatch <<EOF
#!/usr/bin/env bash
#SBATCH -N 2
#SBATCH --ntasks-per-node=1
#SBATCH --time=5
srun "$bin" train $(printf '%q ' "${args[@]}") --set train.out_dir="$work/run" --metrics "$work/run.jsonl"
EOF
job=$(sbatch --parsable -o "$work/job.log" job.sbatch)
for _ in $(seq 1 600); do
  [ -f run.jsonl ] && [ "$(wc -l < run.jsonl)" -ge 30 ] && break
  sleep 0.1
done
[ -f run.jsonl ] && [ "$(wc -l < run.jsonl)" -ge 30 ] || { echo "the job never reached step 30"; cat job.log; exit 1; }
scancel --signal=TERM "$job"
for _ in $(seq 1 300); do
  squeue -h -j "$job" 2>/dev/null | grep -q . || break
  sleep 0.1
done
cat job.log | grep -v '^step' || true
latest=$(cat run/latest)
stopped=$(wc -l < run.jsonl)
echo "stopped after step $stopped of 2000; latest checkpoint $latest"
[ "$latest" = "$(printf 'ckpt_%06d.h5' "$stopped")" ] || { echo "FAIL: the checkpoint is not the last logged step"; exit 1; }
[ "$stopped" -lt 2000 ] || { echo "FAIL: the run was not stopped mid-way"; exit 1; }

echo "== resumed with srun"
srun "${srun_args[@]}" "$bin" train --resume "$work/run" --metrics "$work/run.jsonl" > resume.log 2>&1 \
  || { cat resume.log; exit 1; }
if cmp <(losses ref.jsonl) <(losses run.jsonl); then
  echo "PASS: stopped at step $stopped by scancel --signal=TERM and resumed; all 2000 losses bit-identical"
else
  echo "FAIL: the resumed losses differ from the uninterrupted run's"
  exit 1
fi
