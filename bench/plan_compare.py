#!/usr/bin/python3
"""Predicted against measured step time: reads WORK/plan_*.json (`meshtrain plan --json --hardware`)
and WORK/runs*/run_DP_TP_PP_ZERO.jsonl (`bench/layouts.sh` metrics; with several runs of a layout, the
lowest median step), prints a table per layout and the
mean absolute and worst relative error. Run by bench/plan_check.sh; usable alone on its folder."""
import glob, json, os, sys
work = sys.argv[1]
pred = {}
for f in glob.glob(f"{work}/plan_*.json"):
    for o in json.load(open(f)):
        if "step_ms" in o:
            pred[(o["dp"], o["tp"], o["pp"], o["zero"])] = o
measured, rss = {}, {}  # layout -> the lowest of its runs' median steps; the largest peak resident MiB
for f in sorted(glob.glob(f"{work}/runs*/run_*.jsonl")):
    key = tuple(map(int, os.path.basename(f)[4:-6].split("_")))
    lines = [json.loads(l) for l in open(f)][2:]  # the first two steps warm up
    if lines:
        ms = sorted(r["ms"] for r in lines)[len(lines) // 2]
        measured[key] = min(ms, measured.get(key, ms))
        peak = max(r.get("rss_peak_mib", 0.0) for r in lines)
        rss[key] = max(peak, rss.get(key, 0.0))
rows = []
for key, ms in measured.items():
    if key in pred:
        p = pred[key]
        rows.append((*key, ms, p["step_ms"], p["oversubscribed"], rss.get(key, 0.0), p["resident_bytes"] / 2**20))
print("| dp | tp | pp | zero | measured ms | predicted ms | error | peak resident MiB | predicted MiB | error |")
print("|---|---|---|---|---:|---:|---:|---:|---:|---:|")
errs, merrs = [], []
for dp, tp, pp, zero, ms, pr, over, mib, pmib in sorted(rows, key=lambda r: (r[0] * r[1] * r[2], r)):
    e = (pr - ms) / ms
    errs.append(abs(e))
    mem = "- | - | -"
    if mib > 0:
        me = (pmib - mib) / mib
        merrs.append(abs(me))
        mem = f"{mib:.0f} | {pmib:.0f} | {100 * me:+.1f}%"
    print(f"| {dp} | {tp} | {pp} | {zero} | {ms:.1f} | {pr:.1f}{'*' if over else ''} | {100 * e:+.1f}% | {mem} |")
if errs:
    print(f"\n{len(errs)} layouts, step time: mean absolute error {100 * sum(errs) / len(errs):.1f}%, worst "
          f"{100 * max(errs):.1f}% (* = ranks share cores: the prediction is the cores' bound)")
if merrs:
    print(f"peak memory (the largest rank's resident set): mean absolute error {100 * sum(merrs) / len(merrs):.1f}%, "
          f"worst {100 * max(merrs):.1f}%")
