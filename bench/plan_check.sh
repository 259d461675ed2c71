#!/usr/bin/env bash
# `meshtrain plan`'s step-time prediction against measured runs: calibrates this machine for the
# layouts model (`plan calibrate` under mpiexec with one rank per core), runs every layout of
# bench/layouts.sh, and prints predicted vs measured ms/step per layout with the mean absolute and
# worst relative error (measured: the median step after two warm-up steps, the lowest of RUNS rounds,
# each round calibrated afresh). About 4 minutes a round on 2 cores. Prints numbers; never
# fails on a slow machine or a large error.
# Usage: bench/plan_check.sh [BUILD_DIR] [WORK_DIR] [STEPS]
set -euo pipefail
build=${1:-build/release}
work=${2:-${TMPDIR:-/tmp}/meshtrain-plan-check}
steps=${3:-30}
# Each rank pinned to a core (several per core when they outnumber the cores): left to the OS, two
# busy ranks now and then share a core and a layout's time moves by a quarter between runs.
export BIND=${BIND:-core:overload-allowed}
bin=$build/meshtrain
# shellcheck source=bench/mpi_env.sh
. "$(dirname "$0")/mpi_env.sh"
mkdir -p "$work"
# The model of bench/layouts.sh (its vocabulary: the tokenizer it trains has 2048 entries).
model=(--set model.n_layer=4 --set model.n_head=4 --set model.n_embd=128 --set model.seq_len=64
       --set train.batch_size=16 --set parallel.microbatches=4 --set model.vocab_size=2048 --set train.threads=1)
cores=$(nproc)
# RUNS rounds (default 3), each a fresh calibration followed by every layout: the machine's speed
# drifts (a neighbour, a migrated vCPU) by a quarter over minutes, so each round's runs are predicted
# from the calibration taken just before them. Per layout, the round whose median step was lowest
# (the machine at its quietest) is compared with that round's prediction; rounds whose calibration
# warned that the machine's speed moved under it are left out (and named) while another round is left.
rm -rf "$work"/runs* "$work"/round_*
for run in $(seq 1 "${RUNS:-3}"); do
  round=$work/round_$run
  mkdir -p "$round"
  # (Kept in the round's folder: plan_compare.py leaves out a round whose calibration warned that
  # the machine's speed moved while it measured.)
  mpiexec -n "$cores" "$bin" plan calibrate "${model[@]}" --out "$round/hardware.toml" --overwrite 2>&1 |
    tee "$round/calibrate.log" | grep -v "^\[plan calibrate\] linear" | sed "s/^/[round $run] /"
  bash "$(dirname "$0")/layouts.sh" "$build" "$round/runs" "$steps" > "$round/layouts.md"
  for n in 1 2 4 8; do
    "$bin" plan --ranks "$n" "${model[@]}" --hardware "$round/hardware.toml" --json > "$round/plan_$n.json"
  done
done
/usr/bin/python3 "$(dirname "$0")/plan_compare.py" "$work"
