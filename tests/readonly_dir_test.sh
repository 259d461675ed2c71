#!/usr/bin/env bash
# A run folder that cannot be written: (1) from the start, train refuses before training, naming the
# folder; (2) turned read-only while the run goes on, the next checkpoint save fails with a clear
# error and a non-zero exit, every checkpoint already there stays complete and verifiable, `latest`
# names one of them, nothing partial carries a checkpoint's name; once writable again, the run resumes.
# As root (CI) the runs are made as user nobody through setpriv, since root writes anywhere.
# Usage: readonly_dir_test.sh MESHTRAIN_BINARY CHECKOUT
set -euo pipefail
bin=$1
src=$2
work=$(mktemp -d "${TMPDIR:-/tmp}/meshtrain_readonly_XXXXXX")
trap 'chmod -R u+w "$work" 2> /dev/null; rm -rf "$work"' EXIT
[ -n "${KEEP_WORK:-}" ] && trap - EXIT
chmod 755 "$work"
cd "$work"
as_user=()
if [ "$(id -u)" = 0 ]; then as_user=(setpriv --reuid=65534 --regid=65534 --clear-groups); fi
fail() { echo "FAILED: $*"; exit 1; }

cat "$src"/README.md "$src"/docs/*.md > corpus.txt
"$bin" tokenizer train --vocab-size 300 --input corpus.txt --output tok > /dev/null
"$bin" tokenize --tokenizer tok --input corpus.txt --output shards > /dev/null
chmod -R a+rX "$work"
args=(--set data.train='shards/train_*.bin' --set data.tokenizer=tok --set model.n_layer=1 --set model.n_embd=32
      --set model.seq_len=32 --set train.batch_size=4 --set train.sample_every=0 --set train.eval_every=0
      --set train.log_every=1 --set train.threads=1)

# (1) Read-only from the start.
mkdir run1 && chmod 555 run1
[ "$(id -u)" = 0 ] && chown 65534:65534 run1
set +e
out=$("${as_user[@]}" "$bin" train "${args[@]}" --set train.steps=5 --set train.out_dir=run1 2>&1)
rc=$?
set -e
[ $rc -ne 0 ] || fail "training into a read-only folder succeeded"
grep -q "cannot write into train.out_dir 'run1'" <<< "$out" || fail "no clear message: $out"
grep -q "^step" <<< "$out" && fail "it trained before noticing the folder is read-only"
[ -z "$(ls -A run1)" ] || fail "something was written into the read-only folder"
echo "ok: a read-only folder is refused before training"

# (2) Turned read-only during the run: checkpoints every 20 steps, the folder locked after step 30.
mkdir run2
[ "$(id -u)" = 0 ] && chown 65534:65534 run2
"${as_user[@]}" "$bin" train "${args[@]}" --set train.steps=100000 --set train.checkpoint_every=20 \
  --set train.out_dir=run2 > run2.log 2>&1 &
pid=$!
for _ in $(seq 600); do grep -q "^step *30/" run2.log && break; kill -0 $pid 2> /dev/null || break; sleep 0.1; done
grep -q "^step *30/" run2.log || fail "the run did not reach step 30: $(tail -5 run2.log)"
chmod 555 run2
set +e
wait $pid
rc=$?
set -e
[ $rc -ne 0 ] || fail "the run went on after its folder became read-only"
# The folder locks at some moment of a save: creating its file, renaming it into place, or
# re-pointing `latest` after it. A .tmp created just before the lock cannot be removed any more; it
# never carries a checkpoint's name, and nothing loads it.
grep -Eq "\[checkpoint\] cannot (save|write|rename) '.*run2/(ckpt_[0-9]*\.h5|ckpt_[0-9]*\.h5\.tmp|latest\.tmp)'.*Permission denied" run2.log ||
  fail "no clear message: $(tail -3 run2.log)"
for f in run2/ckpt_*.h5; do "$bin" ckpt verify "$f" > /dev/null || fail "$f is not a complete checkpoint"; done
latest=$(cat run2/latest)
[ -f "run2/$latest" ] || fail "latest names '$latest', which is missing"
"$bin" ckpt verify run2 > /dev/null || fail "a checkpoint left in the folder does not verify"
echo "ok: $(grep -o "cannot [a-z]* '[^']*'" run2.log | head -1) failed clearly; $latest intact, every checkpoint verified"

# `latest` names the newest checkpoint, or the one before it when the lock came between renaming the
# newest into place and re-pointing `latest`; resuming the folder takes the newest complete one.
newest=$(cd run2 && ls ckpt_*.h5 | sort | tail -1)
[ "$latest" = "$newest" ] || [ "$latest" \< "$newest" ] || fail "latest names $latest, past the newest $newest"
chmod 755 run2
step=$(sed -E 's/^ckpt_0*([0-9]+)\.h5$/\1/' <<< "$newest")
"${as_user[@]}" "$bin" train --resume run2 --set train.steps=$((step + 10)) > resume.log 2>&1 || fail "resume failed: $(tail -3 resume.log)"
grep -q "resumed from run2/$newest" resume.log || fail "did not resume from $newest: $(head -5 resume.log)"
if [ "$latest" != "$newest" ]; then
  grep -q "names $latest, but $newest is newer and complete" resume.log || fail "no note that 'latest' lagged"
fi
[ "$(cat run2/latest)" = "$(cd run2 && ls ckpt_*.h5 | sort | tail -1)" ] || fail "latest does not name the newest checkpoint after resuming"
echo "ok: resumed from $newest once the folder was writable (latest named $latest)"

# (3) `latest` lagging on purpose (the state a lock or kill between the two renames leaves): resuming
# the folder takes the newest checkpoint and says that `latest` lagged.
cp -r run2 run3
[ "$(id -u)" = 0 ] && chown -R 65534:65534 run3
oldest=$(cd run3 && ls ckpt_*.h5 | sort | head -1)
newest=$(cd run3 && ls ckpt_*.h5 | sort | tail -1)
[ "$oldest" != "$newest" ] || fail "run2 holds one checkpoint only"
echo "$oldest" > run3/latest
step=$(sed -E 's/^ckpt_0*([0-9]+)\.h5$/\1/' <<< "$newest")
"${as_user[@]}" "$bin" train --resume run3 --set train.steps=$((step + 5)) > resume3.log 2>&1 || fail "resume failed: $(tail -3 resume3.log)"
grep -q "names $oldest, but $newest is newer and complete" resume3.log || fail "no note that 'latest' lagged: $(head -5 resume3.log)"
grep -q "resumed from run3/$newest" resume3.log || fail "did not resume from $newest"
echo "ok: with 'latest' naming $oldest, resuming the folder took $newest and said so"
