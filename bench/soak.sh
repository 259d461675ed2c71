#!/usr/bin/env bash
# Kill-and-resume soak: trains a small model as dp 2 x tp 2 under mpiexec, kills the whole job with
# SIGKILL at random moments (mid-step, mid-save: a checkpoint is written every CKPT_EVERY steps),
# resumes from `latest` each time, and at the end compares the final weights and AdamW moments with
# an uninterrupted run's, bit for bit (h5diff with no tolerance). Exits non-zero when they differ or
# when a resume fails.
#
#   bench/soak.sh [--bin build/release/meshtrain] [--kills N] [--steps S] [--seed R] [--keep DIR]
#
# Defaults: 20 kills, 60 steps. CI runs a short version (tests/CMakeLists.txt: soak_short). Each launch
# is killed 0-99 ms after a random step up to 2 x steps/kills past the one it resumed from (inside the
# next step, or inside the checkpoint save that follows every second step), or one time in eight
# during start-up; after the last kill the run goes to the end (a kill that comes after the final
# checkpoint ends the soak early). Figures of a long run are in docs/reliability.md.
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
bin=$src/build/release/meshtrain
kills=20
steps=60
seed=1
keep=""
while [ $# -gt 0 ]; do
  case $1 in
    --bin) bin=$(realpath "$2"); shift 2 ;;
    --kills) kills=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    --keep) keep=$2; shift 2 ;;
    -h|--help) sed -n 2,12p "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "soak: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[ -x "$bin" ] || { echo "soak: $bin is not built (cmake --build build/release --target meshtrain)" >&2; exit 2; }
command -v h5diff > /dev/null || { echo "soak: h5diff is missing (Debian: hdf5-tools)" >&2; exit 2; }
fortunes=${FORTUNES_DIR:-/usr/share/games/fortunes}
[ -f "$fortunes/fortunes" ] || { echo "soak: $fortunes/fortunes is missing (Debian: fortunes-min)" >&2; exit 2; }

work=${keep:-$(mktemp -d "${TMPDIR:-/tmp}/meshtrain_soak_XXXXXX")}
mkdir -p "$work"
[ -n "$keep" ] || trap 'rm -rf "$work"' EXIT
cd "$work"
RANDOM=$seed

# Open MPI as root, 4 ranks on however few cores, idle ranks yielding (as the tests run it).
# shellcheck source=bench/mpi_env.sh
. "$src/bench/mpi_env.sh"
export OMPI_MCA_btl=self,vader
cat "$fortunes/fortunes" "$fortunes/riddles" > corpus.txt 2>/dev/null || cat "$fortunes/fortunes" > corpus.txt
"$bin" tokenizer train --vocab-size 512 --input corpus.txt --output tok > /dev/null
"$bin" tokenize --tokenizer tok --input corpus.txt --output shards > /dev/null

train() {  # train OUT_DIR [more args]: the soak's run, dp 2 x tp 2
  local out=$1; shift
  mpiexec -n 4 "$bin" train --set data.train='shards/train_*.bin' --set data.tokenizer=tok \
    --set model.n_layer=2 --set model.n_head=4 --set model.n_embd=128 --set model.seq_len=64 \
    --set train.batch_size=8 --set train.steps="$steps" --set train.checkpoint_every=2 \
    --set train.keep_checkpoints=3 --set train.eval_every=0 --set train.sample_every=0 --set train.log_every=1 \
    --set train.threads=1 --set parallel.tp=2 --set parallel.zero=1 --set train.out_dir="$out" "$@"
}
last=$(printf 'ckpt_%06d.h5' "$steps")

t0=$(date +%s.%N)
train ref > ref.log 2>&1 || { tail -20 ref.log; echo "soak: the uninterrupted run failed" >&2; exit 1; }
ref_ms=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%d", (b - a) * 1000 }')
echo "[soak] uninterrupted run: $steps steps in $((ref_ms / 1000)).$(( (ref_ms % 1000) / 100 )) s"

done_=0 killed=0 resumes=0 attempt=0 mid_save=0
start=$(date +%s)
while [ $done_ = 0 ]; do
  # A kill after the last checkpoint was written (in the final sample or the exit) ends the run too.
  if [ "$(cat soak/latest 2> /dev/null)" = "$last" ]; then break; fi
  attempt=$((attempt + 1))
  args=()
  if [ -e soak/latest ] || compgen -G 'soak/ckpt_*.h5' > /dev/null; then args=(--resume soak); resumes=$((resumes + 1)); fi
  touch launched
  # A session of its own (its id is $pid), so one kill reaches mpiexec and every rank.
  setsid bash -c "$(declare -f train); bin='$bin' steps='$steps'; train soak ${args[*]:-}" > "run_$attempt.log" 2>&1 &
  pid=$!
  if [ $killed -lt "$kills" ]; then
    # Where to kill: usually a random step past the one resumed from, plus 0-99 ms (inside that step,
    # or the save after it); one time in eight during start-up instead (0.1-1.6 s after launch).
    from=$( (cat soak/latest 2> /dev/null || echo ckpt_000000.h5) | grep -o 'ckpt_[0-9]*' | tr -dc '0-9' | sed 's/^0*//')
    from=${from:-0}
    span=$((2 * steps / kills > 2 ? 2 * steps / kills : 2))  # about steps/kills of progress per launch
    target=$((from + 1 + RANDOM % span))
    [ $target -lt "$steps" ] || target=$((steps - 1))
    extra=$((RANDOM % 100))
    if [ $((RANDOM % 8)) = 0 ]; then
      target=0 extra=$((100 + RANDOM % 1500))
    else
      until grep -q "^step *$target/" "run_$attempt.log" 2> /dev/null || ! kill -0 "$pid" 2> /dev/null; do sleep 0.01; done
    fi
    sleep "0.$(printf '%03d' $((extra % 1000)))"
    [ $extra -lt 1000 ] || sleep $((extra / 1000))
    if kill -0 "$pid" 2> /dev/null; then
      # Every process of the session: mpiexec puts each rank in a process group of its own, so a
      # group kill would leave the ranks running.
      pkill -KILL -s "$pid" 2> /dev/null || true
      wait "$pid" 2> /dev/null || true
      while pgrep -s "$pid" > /dev/null; do sleep 0.05; done
      killed=$((killed + 1))
      partial=$(find soak -name '*.tmp' -newer launched 2> /dev/null | wc -l)  # written by this launch
      [ "$partial" = 0 ] || mid_save=$((mid_save + 1))
      echo "[soak] kill $killed: resumed from step $from, killed $([ $target = 0 ] && echo "${extra} ms into start-up" || echo "${extra} ms after step $target")$([ "$partial" = 0 ] || echo ", mid-save ($partial partial file)")"
      continue
    fi
    echo "[soak] launch $attempt finished before its kill"
  fi
  if wait "$pid"; then
    done_=1
  else
    tail -20 "run_$attempt.log"
    echo "soak: run $attempt failed without being killed" >&2
    exit 1
  fi
done
wall=$(($(date +%s) - start))

same=yes
for group in /model /optim; do
  if ! h5diff -q "ref/$last" "soak/$last" "$group" "$group"; then same=no; h5diff -r "ref/$last" "soak/$last" "$group" "$group" | head -20; fi
done
"$bin" ckpt verify soak > /dev/null || same=no
echo "[soak] $killed kills ($mid_save mid-save), $resumes resumes, $attempt launches, ${wall} s; final weights and optimizer state identical to the uninterrupted run: $same"
[ $same = yes ]
