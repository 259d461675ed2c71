#!/usr/bin/python3
"""Scaling sweep: runs `meshtrain train` under mpiexec on a list of dp x tp x pp layouts and on
strong- and weak-scaling series, collects each run's --metrics, and writes a CSV and PNG plots:

  sweep.csv            one row per run: layout, ranks, batch, ms/step, tokens/s and the split
  layouts_time.png     stacked compute / dp / tp / pp milliseconds per step for each layout
  layouts_tokens.png   tokens/s for each layout
  scaling.png          strong scaling (fixed global batch: tokens/s against ranks, with the ideal)
                       and weak scaling (fixed batch per rank: efficiency against ranks)

Numbers are means over the steps after the first two (warm-up) and, for the split, over ranks.
Plots use Debian's python3-matplotlib (apt-get install python3-matplotlib); without it the CSV is
still written. Prints numbers; never fails on a slow machine.

Usage: /usr/bin/python3 bench/sweep.py [--build build/release] [--out DIR] [--steps N]
       [--layouts 1x1x1,2x1x1,...] [--ranks 1,2,4] [--model small|tiny]
"""
import argparse
import csv
import json
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = {  # the benchmark shapes (on this corpus's 2,048-token vocabulary)
    "small": ["model.n_layer=4", "model.n_head=4", "model.n_embd=128", "model.seq_len=64"],
    "tiny": ["model.n_layer=2", "model.n_head=2", "model.n_embd=32", "model.seq_len=16"],
}


def run(cmd, env=None, log=None):
    with open(log, "w") if log else open(os.devnull, "w") as out:
        return subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT).returncode


def prepare_data(binary, work):
    shards = os.path.join(work, "shards")
    if os.path.exists(os.path.join(shards, "train_000000.bin")):
        return
    corpus = "/usr/share/games/fortunes/cookie"
    if not os.path.exists(corpus):  # the project's own prose will do
        corpus = os.path.join(work, "corpus.txt")
        with open(corpus, "w") as out:
            for folder in ("docs", "model", "parallel"):
                for name in sorted(os.listdir(os.path.join(ROOT, folder))):
                    path = os.path.join(ROOT, folder, name)
                    if os.path.isfile(path):
                        out.write(open(path, errors="replace").read())
    run([binary, "tokenizer", "train", "--vocab-size", "2048", "--input", corpus, "--output", os.path.join(work, "tok")])
    run([binary, "tokenize", "--tokenizer", os.path.join(work, "tok"), "--input", corpus, "--output", shards])


def train(args, work, env, kind, dp, tp, pp, zero, batch):
    ranks = dp * tp * pp
    name = f"{kind}_dp{dp}_tp{tp}_pp{pp}_z{zero}_b{batch}"
    out = os.path.join(work, name)
    shutil.rmtree(out, ignore_errors=True)
    metrics = out + ".jsonl"
    if os.path.exists(metrics):
        os.remove(metrics)
    sets = MODELS[args.model] + [
        f"data.train={work}/shards/train_*.bin", f"data.tokenizer={work}/tok", f"train.batch_size={batch}",
        f"parallel.dp={dp}", f"parallel.tp={tp}", f"parallel.pp={pp}", f"parallel.zero={zero}",
        "parallel.microbatches=4" if pp > 1 else "parallel.microbatches=0", f"train.steps={args.steps}",
        "train.checkpoint_every=0", "train.sample_every=0", "train.eval_every=0", "train.threads=1",
        "train.log_every=1000", "parallel.bucket_mb=1", f"train.out_dir={out}"]
    cmd = ([] if ranks == 1 else ["mpiexec", "-n", str(ranks)]) + [args.binary, "train"]
    for s in sets:
        cmd += ["--set", s]
    cmd += ["--metrics", metrics]
    if run(cmd, env=env, log=out + ".log") != 0:
        print(f"{name}: failed (see {out}.log)")
        return None
    rows = [json.loads(line) for line in open(metrics)][2:] or [json.loads(line) for line in open(metrics)]
    mean = lambda key: sum(r.get(key, 0.0) for r in rows) / len(rows)
    row = {"kind": kind, "dp": dp, "tp": tp, "pp": pp, "zero": zero, "ranks": ranks, "global_batch": batch,
           "ms_step": mean("ms"), "tokens_s": mean("tokens_per_s"),
           "compute_ms": mean("compute_ms") if ranks > 1 else mean("ms"), "dp_ms": mean("dp_comm_ms"),
           "tp_ms": mean("tp_comm_ms"), "pp_ms": mean("pp_wait_ms"), "max_ms": mean("max_ms") if ranks > 1 else mean("ms")}
    print(f"{name:34s} {row['ms_step']:8.1f} ms/step {row['tokens_s']:9.0f} tokens/s  (compute {row['compute_ms']:.1f}"
          f" + dp {row['dp_ms']:.1f} + tp {row['tp_ms']:.1f} + pp {row['pp_ms']:.1f})")
    sys.stdout.flush()
    return row


def plot(rows, out_dir):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no plots: python3-matplotlib is missing (apt-get install python3-matplotlib)")
        return []
    written = []
    layouts = [r for r in rows if r["kind"] == "layout"]
    if layouts:
        labels = [f"{r['dp']}x{r['tp']}x{r['pp']}" + (" z1" if r["zero"] else "") for r in layouts]
        fig, ax = plt.subplots(figsize=(max(6, len(labels) * 0.8), 4))
        bottom = [0.0] * len(layouts)
        for key, name, color in (("compute_ms", "compute", "#4c72b0"), ("dp_ms", "dp (exposed)", "#dd8452"),
                                 ("tp_ms", "tp", "#55a868"), ("pp_ms", "pp wait", "#c44e52")):
            values = [max(0.0, r[key]) for r in layouts]
            ax.bar(labels, values, bottom=bottom, label=name, color=color)
            bottom = [b + v for b, v in zip(bottom, values)]
        ax.set_ylabel("ms per step (mean over ranks)")
        ax.set_xlabel("layout dp x tp x pp")
        ax.set_title("Where a step's time goes")
        ax.legend()
        plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
        fig.tight_layout()
        written.append(os.path.join(out_dir, "layouts_time.png"))
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
        fig, ax = plt.subplots(figsize=(max(6, len(labels) * 0.8), 4))
        ax.bar(labels, [r["tokens_s"] for r in layouts], color="#4c72b0")
        ax.set_ylabel("tokens/s")
        ax.set_xlabel("layout dp x tp x pp")
        ax.set_title("Throughput by layout")
        plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
        fig.tight_layout()
        written.append(os.path.join(out_dir, "layouts_tokens.png"))
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    strong = sorted((r for r in rows if r["kind"] == "strong"), key=lambda r: r["ranks"])
    weak = sorted((r for r in rows if r["kind"] == "weak"), key=lambda r: r["ranks"])
    if strong or weak:
        fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
        if strong:
            ranks = [r["ranks"] for r in strong]
            a.plot(ranks, [r["tokens_s"] for r in strong], "o-", label="measured")
            a.plot(ranks, [strong[0]["tokens_s"] * n / ranks[0] for n in ranks], "--", label="ideal")
            a.set_xlabel("data-parallel ranks")
            a.set_ylabel("tokens/s")
            a.set_title(f"Strong scaling (global batch {strong[0]['global_batch']})")
            a.set_xticks(ranks)
            a.legend()
        if weak:
            ranks = [r["ranks"] for r in weak]
            base = weak[0]["tokens_s"] / weak[0]["ranks"]
            a2 = [100.0 * r["tokens_s"] / r["ranks"] / base for r in weak]
            b.plot(ranks, a2, "o-")
            b.axhline(100.0, linestyle="--", color="gray")
            b.set_xlabel("data-parallel ranks")
            b.set_ylabel("efficiency (% of one rank's tokens/s per rank)")
            b.set_title(f"Weak scaling ({weak[0]['global_batch'] // weak[0]['ranks']} sequences per rank)")
            b.set_xticks(ranks)
            b.set_ylim(0, 110)
        fig.tight_layout()
        written.append(os.path.join(out_dir, "scaling.png"))
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    return written


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--build", default=os.path.join(ROOT, "build", "release"))
    p.add_argument("--out", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "meshtrain-sweep"))
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--layouts", default="1x1x1,2x1x1,1x2x1,1x1x2,2x2x1,2x1x2,1x2x2,2x2x2",
                   help="dp x tp x pp, comma-separated (suffix z1 for ZeRO-1, e.g. 2x1x1z1)")
    p.add_argument("--ranks", default="1,2,4", help="data-parallel ranks of the scaling series")
    p.add_argument("--batch", type=int, default=16, help="global batch of the layouts and the strong series")
    p.add_argument("--model", choices=sorted(MODELS), default="small")
    args = p.parse_args()
    args.binary = os.path.join(args.build, "meshtrain")
    if not os.access(args.binary, os.X_OK):
        sys.exit(f"no meshtrain binary at {args.binary}; build first (or pass --build)")
    if args.steps < 3:
        sys.exit("--steps must be at least 3 (the first two are warm-up)")
    os.makedirs(args.out, exist_ok=True)
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1", OMPI_MCA_hwloc_base_binding_policy="none",
               OMPI_MCA_mpi_yield_when_idle="1", PMIX_MCA_psec=os.environ.get("PMIX_MCA_psec", "native"),
               CUDA_VISIBLE_DEVICES=os.environ.get("CUDA_VISIBLE_DEVICES", ""))
    prepare_data(args.binary, args.out)
    rows = []
    for spec in args.layouts.split(","):
        zero = 1 if spec.endswith("z1") else 0
        try:
            dp, tp, pp = (int(x) for x in spec.removesuffix("z1").split("x"))
        except ValueError:
            sys.exit(f"--layouts: '{spec}' is not DPxTPxPP (e.g. 2x1x2, or 2x1x1z1 for ZeRO-1)")
        rows.append(train(args, args.out, env, "layout", dp, tp, pp, zero, args.batch))
    ranks = [int(x) for x in args.ranks.split(",")]
    per_rank = max(1, args.batch // max(ranks))
    for n in ranks:
        rows.append(train(args, args.out, env, "strong", n, 1, 1, 0, args.batch))
        rows.append(train(args, args.out, env, "weak", n, 1, 1, 0, per_rank * n))
    rows = [r for r in rows if r]
    path = os.path.join(args.out, "sweep.csv")
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {path}")
    for png in plot(rows, args.out):
        print(f"wrote {png}")


if __name__ == "__main__":
    main()
