#!/usr/bin/python3
"""Predicted against measured step time. Reads rounds: WORK/round_*/ (bench/plan_check.sh), each with
plan_*.json (`meshtrain plan --json --hardware` from that round's calibration) and runs*/run_DP_TP_PP_ZERO.jsonl
(`bench/layouts.sh` metrics); a folder without round_* is one round (plan_*.json and runs*/ in WORK).
Per layout, the round with the lowest median step is compared with that round's prediction. A round
whose calibration warned that the machine's speed moved while it measured (its calibrate.log, kept by
plan_check.sh) is left out, and named, as long as another round is left: that calibration says itself
that predictions from it follow the noise. Prints a table per layout, the mean absolute and worst
relative error, and each round's own errors. The
`rank spread` column is that run's median of (slowest rank's compute / fastest rank's - 1): ranks
of a dp-only or tp-only layout do the same work, so a large spread there means the cores ran at
different speeds during the measurement (pipeline stages differ by design)."""
import glob, json, os, sys

work = sys.argv[1]


def read_round(folder):
    pred, measured, rss, spread = {}, {}, {}, {}
    for f in glob.glob(f"{folder}/plan_*.json"):
        for o in json.load(open(f)):
            if "step_ms" in o:
                pred[(o["dp"], o["tp"], o["pp"], o["zero"])] = o
    for f in sorted(glob.glob(f"{folder}/runs*/run_*.jsonl")):
        key = tuple(map(int, os.path.basename(f)[4:-6].split("_")))
        lines = [json.loads(l) for l in open(f)][2:]  # the first two steps warm up
        if lines:
            ms = sorted(r["ms"] for r in lines)[len(lines) // 2]
            if ms <= measured.get(key, ms):
                ratios = sorted(r["compute_ms_max"] / r["compute_ms_min"] - 1 for r in lines
                                if r.get("compute_ms_min", 0) > 0 and "compute_ms_max" in r)
                spread[key] = ratios[len(ratios) // 2] if ratios else None
            measured[key] = min(ms, measured.get(key, ms))
            peak = max(r.get("rss_peak_mib", 0.0) for r in lines)
            rss[key] = max(peak, rss.get(key, 0.0))
    return pred, measured, rss, spread


MOVED = "this machine's speed moved while it was measured"  # plan calibrate's warning (plan_test checks the words)


def moved(folder):
    log = os.path.join(folder, "calibrate.log")
    return os.path.exists(log) and MOVED in open(log, errors="replace").read()


folders = sorted(glob.glob(f"{work}/round_*"))
rounds = [read_round(r) for r in folders] or [read_round(work)]
flagged = {i for i, f in enumerate(folders) if moved(f)}
left_out = flagged if len(flagged) < len(rounds) else set()  # every round flagged: all are compared
compared = [r for i, r in enumerate(rounds) if i not in left_out]
for i in sorted(flagged):
    print(f"round {i + 1} left out: its calibration warned that the machine's speed moved while it measured"
          if left_out else
          f"round {i + 1}: its calibration warned that the machine's speed moved (every round did; all compared)")
best = {}  # layout -> (measured ms, prediction, rank spread) of the round where it ran fastest
for pred, measured, peaks, spreads in compared:
    for key, ms in measured.items():
        if key in pred and (key not in best or ms < best[key][0]):
            best[key] = (ms, pred[key], spreads.get(key))
rss = {}  # the largest peak over every round (the machine's speed does not move memory)
for pred, measured, peaks, spreads in rounds:
    for key, mib in peaks.items():
        rss[key] = max(mib, rss.get(key, 0.0))
print("| dp | tp | pp | zero | measured ms | predicted ms | error | rank spread | peak resident MiB | predicted MiB | error |")
print("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
errs, merrs = [], []
for key in sorted(best, key=lambda k: (k[0] * k[1] * k[2], k)):
    dp, tp, pp, zero = key
    ms, p, sp = best[key]
    pr, over, pmib, mib = p["step_ms"], p["oversubscribed"], p["resident_bytes"] / 2**20, rss.get(key, 0.0)
    e = (pr - ms) / ms
    errs.append(abs(e))
    mem = "- | - | -"
    if mib > 0:
        me = (pmib - mib) / mib
        merrs.append(abs(me))
        mem = f"{mib:.0f} | {pmib:.0f} | {100 * me:+.1f}%"
    sp = "-" if sp is None else f"{100 * sp:.0f}%"
    print(f"| {dp} | {tp} | {pp} | {zero} | {ms:.1f} | {pr:.1f}{'*' if over else ''} | {100 * e:+.1f}% | {sp} | {mem} |")
if errs:
    print(f"\n{len(errs)} layouts, step time: mean absolute error {100 * sum(errs) / len(errs):.1f}%, worst "
          f"{100 * max(errs):.1f}% (* = ranks share cores: the prediction is the cores' bound)")
if merrs:
    print(f"peak memory (the largest rank's resident set): mean absolute error {100 * sum(merrs) / len(merrs):.1f}%, "
          f"worst {100 * max(merrs):.1f}%")
if len(rounds) > 1:
    for i, (pred, measured, _, _) in enumerate(rounds, 1):
        e = [abs(pred[k]["step_ms"] - ms) / ms for k, ms in measured.items() if k in pred]
        if e:
            note = " (left out: the machine moved under its calibration)" if i - 1 in left_out else ""
            print(f"round {i} alone: mean absolute error {100 * sum(e) / len(e):.1f}%, worst {100 * max(e):.1f}%{note}")
