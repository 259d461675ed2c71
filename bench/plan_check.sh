#!/usr/bin/env bash
# `meshtrain plan`'s step-time prediction against measured runs: calibrates this machine for the
# layouts model (`plan calibrate` under mpiexec with one rank per core), runs every layout of
# bench/layouts.sh, and prints predicted vs measured ms/step per layout with the mean absolute and
# worst relative error (measured: the median step after two warm-up steps). Prints numbers; never
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
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1 \
  OMPI_MCA_hwloc_base_binding_policy=$BIND OMPI_MCA_mpi_yield_when_idle=1
mkdir -p "$work"
# The model of bench/layouts.sh (its vocabulary: the tokenizer it trains has 2048 entries).
model=(--set model.n_layer=4 --set model.n_head=4 --set model.n_embd=128 --set model.seq_len=64
       --set train.batch_size=16 --set parallel.microbatches=4 --set model.vocab_size=2048 --set train.threads=1)
cores=$(nproc)
mpiexec -n "$cores" "$bin" plan calibrate "${model[@]}" --out "$work/hardware.toml" --overwrite 2>&1 | grep -v "^\[plan calibrate\] linear"
bash "$(dirname "$0")/layouts.sh" "$build" "$work/runs" "$steps" > "$work/layouts.md"
for n in 1 2 4 8; do "$bin" plan --ranks "$n" "${model[@]}" --hardware "$work/hardware.toml" --json > "$work/plan_$n.json"; done
/usr/bin/python3 - "$work" <<'PY'
import glob, json, os, sys
work = sys.argv[1]
pred = {}
for f in glob.glob(f"{work}/plan_*.json"):
    for o in json.load(open(f)):
        if "step_ms" in o:
            pred[(o["dp"], o["tp"], o["pp"], o["zero"])] = o
rows = []
for f in sorted(glob.glob(f"{work}/runs/run_*.jsonl")):
    dp, tp, pp, zero = map(int, os.path.basename(f)[4:-6].split("_"))
    lines = [json.loads(l) for l in open(f)][2:]  # the first two steps warm up
    if not lines or (dp, tp, pp, zero) not in pred:
        continue
    ms = sorted(r["ms"] for r in lines)[len(lines) // 2]  # the median step
    p = pred[(dp, tp, pp, zero)]
    rows.append((dp, tp, pp, zero, ms, p["step_ms"], p["oversubscribed"]))
print("| dp | tp | pp | zero | measured ms | predicted ms | error |")
print("|---|---|---|---|---:|---:|---:|")
errs = []
for dp, tp, pp, zero, ms, pr, over in sorted(rows, key=lambda r: (r[0] * r[1] * r[2], r)):
    e = (pr - ms) / ms
    errs.append(abs(e))
    print(f"| {dp} | {tp} | {pp} | {zero} | {ms:.1f} | {pr:.1f}{'*' if over else ''} | {100 * e:+.1f}% |")
if errs:
    print(f"\n{len(errs)} layouts: mean absolute error {100 * sum(errs) / len(errs):.1f}%, worst {100 * max(errs):.1f}% "
          "(* = more ranks than cores: the prediction is the cores' bound)")
PY
