#!/usr/bin/env bash
# `meshtrain plan calibrate` under mpiexec with 2 ranks: it measures the collectives (blocking and
# non-blocking) and the tensor- and data-parallel factors on real micro-batches, writes them, and
# `meshtrain plan --ranks 2` reads the file back and plans every layout with them.
# Usage: plan_calibrate_test.sh MESHTRAIN_BINARY MPIEXEC
set -euo pipefail
bin=$1
mpiexec=$2
work=$(mktemp -d "${TMPDIR:-/tmp}/meshtrain_plan_calibrate_XXXXXX")
trap 'rm -rf "$work"' EXIT
fail() { echo "FAILED: $*"; exit 1; }
model=(--set model.n_layer=2 --set model.n_head=2 --set model.n_embd=32 --set model.seq_len=16
       --set model.vocab_size=256 --set train.batch_size=8 --set parallel.microbatches=2 --set train.threads=1
       --set parallel.bucket_mb=0.01)
"$mpiexec" -n 2 "$bin" plan calibrate "${model[@]}" --out "$work/hw.toml" 2> "$work/calibrate.log" ||
  { cat "$work/calibrate.log"; fail "plan calibrate under mpiexec -n 2 exited non-zero"; }
cat "$work/calibrate.log"
grep -q 'a data-parallel micro-batch of 2 sequences over 2 ranks' "$work/calibrate.log" ||
  fail "calibrate did not measure a data-parallel micro-batch"
# Each figure is written, is a number and is what the file says it is (a factor is 0 or above; the
# links' bandwidths above 0).
for key in gbs async_gbs tp_factor dp_factor zero_dp_factor; do
  value=$(sed -n "s/^$key = \([0-9.e+-]*\)$/\1/p" "$work/hw.toml")
  [ -n "$value" ] || fail "$key missing from the calibration: $(cat "$work/hw.toml")"
  /usr/bin/python3 -c "import sys; v = float('$value'); sys.exit(0 if (v > 0 if '$key'.endswith('gbs') else v >= 0) else 1)" ||
    fail "$key = $value"
done
"$bin" plan --ranks 2 "${model[@]}" --hardware "$work/hw.toml" --json > "$work/plan.json"
/usr/bin/python3 - "$work/plan.json" "$work/hw.toml" <<'PY'
import json, re, sys
layouts = json.load(open(sys.argv[1]))
hw = open(sys.argv[2]).read()
factor = {k: float(re.search(rf"^{k} = (\S+)$", hw, re.M).group(1)) for k in ("dp_factor", "zero_dp_factor")}
dp2 = [l for l in layouts if l.get("dp") == 2 and l.get("tp") == 1 and l.get("pp") == 1]
assert {l["zero"] for l in dp2} == {0, 1}, f"dp 2 without and with ZeRO-1 not both planned: {layouts}"
for l in dp2:
    assert l["step_ms"] > 0, l
    # The hooked buckets (all of them; ZeRO-1's reduce-scatters, half) cost the calibrated factor.
    hooked = l["dp_ms"] / 2 if l["zero"] else l["dp_ms"]
    want = hooked * factor["zero_dp_factor" if l["zero"] else "dp_factor"] + l["dp_ms"] - hooked
    assert abs(l["dp_exposed_ms"] - want) <= 1e-6 * max(1.0, want), (l, factor)
print(f"planned {len(layouts)} layouts; dp 2: " + ", ".join(f"zero {l.get('zero')}: {l['step_ms']:.2f} ms" for l in dp2))
PY
echo "plan calibrate under 2 ranks: ok"
