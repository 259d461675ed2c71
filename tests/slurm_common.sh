# Sourced by the tests that go through the shared Slurm cluster (tests/slurm_*_test.sh), with $bin
# (the meshtrain binary) and $src (the checkout) set: exits 77 (CTest: skipped) when the shared Slurm
# scripts are missing; otherwise starts the cluster (stopped on exit only if this test started it),
# makes a scratch folder $work, enters it, and makes data there: this checkout's own prose, a
# vocabulary learned from it (tok/) and its token shards (shards/).
shared=${MESHTRAIN_SHARED_DIR:-$src/../shared}
if [ ! -f "$shared/slurm/start.sh" ]; then
  echo "SKIPPED: $shared/slurm/start.sh is missing (the shared Slurm cluster scripts); set MESHTRAIN_SHARED_DIR"
  exit 77
fi
pidfile=${TMPDIR:-/tmp}/meshtrain-slurm/run/slurmctld.pid
was_up=0
if [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then was_up=1; fi
eval "$(bash "$shared/slurm/start.sh")"
work=$(mktemp -d "${TMPDIR:-/tmp}/meshtrain_slurm_XXXXXX")
trap 'rm -rf "$work"; [ $was_up = 1 ] || bash "$shared/slurm/stop.sh" > /dev/null 2>&1 || true' EXIT
cd "$work"
cat "$src"/README.md "$src"/docs/*.md > corpus.txt
"$bin" tokenizer train --vocab-size 300 --input corpus.txt --output tok > /dev/null
"$bin" tokenize --tokenizer tok --input corpus.txt --output shards > /dev/null
