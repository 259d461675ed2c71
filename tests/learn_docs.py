#!/usr/bin/env python3
"""Runs the curriculum's commands (docs/learn/*.md) and checks the output each chapter promises.

A chapter marks a command block as runnable with the fence info string ``sh run`` and shows what
it prints in the next ``text expect`` block (before the next runnable block):

    ```sh run
    meshtrain train --set train.steps=30 ...
    ```
    ```text expect
    step    30/30 | loss 7.28 ...
    ```

Rules for an expect block, so that the promise survives another CPU or a slower machine:
  * each non-empty line must be found, in order, in the output (stdout and stderr together);
    lines between them may be anything, and a line `...` is only there for the reader;
  * a line matches when its tokens (words, punctuation, numbers; spaces ignored) appear as a
    contiguous run of the output line's tokens;
  * numbers match within a relative tolerance (`tol=0.02` on the fence line, the default), and a
    number written `~123` matches any number (for times, speeds and other machine-dependent values).
Fence attributes on a runnable block: `timeout=SECONDS` (default 300, a guard against hangs, not a
speed target) and `gpu` (runs only where nvidia-smi sees a GPU; skipped with a message otherwise).
Other blocks run with CUDA_VISIBLE_DEVICES empty: the pages show what a CPU prints.

The blocks of docs/learn/README.md (the set-up) run first, then every chapter in file order, all in
one scratch folder, each block in `bash -eo pipefail` with the build's programs first on PATH, as a
reader's shell would be after the README's set-up. `python3` is the system's (/usr/bin/python3).
Before any block runs, every project file that the README or a page under docs/ names by its path
(`launch/serve/serve.cpp`, `bench/layouts.sh`, ...) must exist, so a moved or renamed file cannot
leave the pages pointing at nothing (`--self-test`, the quick check every build runs, checks it too).
Exit status: 0 when every named file exists and every block ran and printed what it promised, 1 otherwise.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NUMBER = r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?"
TOKEN = re.compile(r"~" + NUMBER + "|" + NUMBER + r"|\w+|[^\w\s]")


def tokens(line):
    return TOKEN.findall(line)


def is_number(tok):
    return re.fullmatch(NUMBER, tok) is not None


def token_matches(expected, actual, tol):
    if expected.startswith("~") and len(expected) > 1:
        return is_number(actual)
    if is_number(expected) and is_number(actual):
        e, a = float(expected), float(actual)
        return abs(a - e) <= tol * abs(e) + 1e-12
    return expected == actual


def line_matches(expected_line, actual_line, tol):
    exp, act = tokens(expected_line), tokens(actual_line)
    if not exp:
        return True
    for start in range(len(act) - len(exp) + 1):
        if all(token_matches(e, a, tol) for e, a in zip(exp, act[start:start + len(exp)])):
            return True
    return False


def check_output(expected_text, output, tol):
    """Returns None when every expected line is found in order, else a message naming the first miss."""
    lines = output.splitlines()
    pos = 0
    for want in expected_text.splitlines():
        if not want.strip() or want.strip() == "...":
            continue
        found = next((i for i in range(pos, len(lines)) if line_matches(want, lines[i], tol)), None)
        if found is None:
            return f"expected a line like\n    {want.strip()}\nafter output line {pos}, not found"
        pos = found + 1
    return None


class Block:
    def __init__(self, path, line, code, attrs):
        self.path, self.line, self.code, self.attrs = path, line, code, attrs
        self.expect = None
        self.expect_attrs = {}


def parse_attrs(words):
    attrs = {}
    for w in words:
        key, _, value = w.partition("=")
        attrs[key] = value if value else True
    return attrs


def parse(path):
    """Runnable blocks of a markdown file, each with its expect block (or None)."""
    blocks, text = [], Path(path).read_text().splitlines()
    i = 0
    while i < len(text):
        m = re.match(r"^(\s*)```(\S*)\s*(.*)$", text[i])
        if not m:
            i += 1
            continue
        lang, words = m.group(2), m.group(3).split()
        start, body = i + 1, []
        i += 1
        while i < len(text) and not re.match(r"^\s*```\s*$", text[i]):
            body.append(text[i])
            i += 1
        if i >= len(text):
            raise SystemExit(f"{path}:{start}: a code block is never closed")
        i += 1
        attrs = parse_attrs(words)
        if lang == "sh" and "run" in attrs:
            blocks.append(Block(path, start, "\n".join(body) + "\n", attrs))
        elif lang == "text" and "expect" in attrs:
            if not blocks or blocks[-1].expect is not None:
                raise SystemExit(f"{path}:{start}: an expect block with no runnable block before it")
            blocks[-1].expect, blocks[-1].expect_attrs = "\n".join(body), attrs
    return blocks


def have_gpu():
    smi = shutil.which("nvidia-smi")
    return smi is not None and subprocess.run([smi, "-L"], capture_output=True).returncode == 0


def run_block(block, work, env, gpu):
    where = f"{block.path.name}:{block.line}"
    if "gpu" in block.attrs and not gpu:
        print(f"[learn] {where}: skipped (needs a GPU; none found by nvidia-smi)")
        return True
    timeout = float(block.attrs.get("timeout", 300))
    # The pages show CPU output: on a machine with a GPU, blocks not marked `gpu` run with it hidden
    # (train.device = auto would choose it), as the README's set-up tells readers to do.
    if "gpu" not in block.attrs:
        env = dict(env, CUDA_VISIBLE_DEVICES="")
    t0 = time.time()
    try:
        p = subprocess.run(["bash", "-eo", "pipefail", "-c", block.code], cwd=work, env=env, timeout=timeout,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
        output, rc = p.stdout, p.returncode
    except subprocess.TimeoutExpired as e:
        output = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        rc = f"timeout after {timeout:.0f} s"
    seconds = time.time() - t0
    problem = None
    if rc != 0:
        problem = f"exit status {rc}"
    elif block.expect is not None:
        problem = check_output(block.expect, output, float(block.expect_attrs.get("tol", 0.02)))
    if problem:
        print(f"[learn] {where}: FAILED ({seconds:.1f} s): {problem}")
        print("---- the block ----\n" + block.code.rstrip())
        print("---- its output (last 60 lines) ----")
        print("\n".join(output.splitlines()[-60:]))
        print("----")
        return False
    checked = "output checked" if block.expect is not None else "ran"
    print(f"[learn] {where}: {checked} ({seconds:.1f} s)")
    return True


def self_test():
    """The matcher must reject what it should: a checker that cannot fail checks nothing."""
    out = "step    30/30 | loss 7.2801 | val 7.2958 | 19 ms | 27037 tok/s\n[train] checkpoint runs/a/ckpt_000030.h5\n"
    cases = [
        ("loss 7.28 | val 7.30", 0.02, True),
        ("loss 7.28 | val 7.30\n[train] checkpoint runs/a/ckpt_000030.h5", 0.02, True),
        ("| ~20 ms | ~30000 tok/s", 0.02, True),
        ("loss 7.9", 0.02, False),            # number out of tolerance
        ("loss 7.9", 0.2, True),              # ... inside a wider one
        ("val 7.2958 | loss 7.2801", 0.02, False),  # wrong order inside a line
        ("[train] checkpoint runs/a/ckpt_000030.h5\nloss 7.28", 0.02, False),  # wrong line order
        ("loss ~7 | val", 0.02, True),
        ("los 7.28", 0.02, False),            # different word
        ("~20 tok/s", 0.02, True),
        ("~20 ms/step", 0.02, False),         # words still count next to a wildcard number
        ("...\nloss 7.28\n...", 0.02, True),
    ]
    bad = 0
    for expected, tol, want in cases:
        got = check_output(expected, out, tol) is None
        if got != want:
            bad += 1
            print(f"[learn] self-test: {expected!r} (tol {tol}) matched={got}, expected {want}")
    print(f"[learn] self-test: {len(cases) - bad} of {len(cases)} matcher cases behave")
    # The path check: a page naming a file that is not there is found, one naming a file that is,
    # or a checkpoint dataset's name (no file extension), is not.
    with tempfile.TemporaryDirectory() as d:
        repo = Path(d)
        (repo / "docs").mkdir()
        (repo / "model").mkdir()
        (repo / "model" / "here.h").write_text("")
        (repo / "README.md").write_text("See `model/here.h` and model/gone.cpp.\n")
        (repo / "docs" / "a.md").write_text("Dataset `model/h.0.attn.c_attn.bias`; (bench/gone.sh).\n")
        found = missing_paths(repo)
        want = ["README.md:1: model/gone.cpp", "docs/a.md:1: bench/gone.sh"]
        if found != want:
            bad += 1
            print(f"[learn] self-test: missing_paths found {found}, expected {want}")
    # ... and this repository's pages name only files that exist (here too, so that every build's
    # quick test run catches a moved file, not only the full run of the pages).
    for m in missing_paths(Path(__file__).resolve().parent.parent):
        bad += 1
        print(f"[learn] self-test: {m} does not exist: the page names a file that was moved or removed")
    return bad == 0


# A path into the project's folders with a file extension, in prose or code: `model/text/data.h`.
PROJECT_PATH = re.compile(r"(?<![\w/.])((?:core|model|parallel|launch|tests|bench|scripts|docs|hardware|tools|slurm"
                          r"|cmake)/[A-Za-z0-9_/.-]+\.(?:h|cpp|c|cu|cuh|py|sh|md|toml|txt|json|cmake|sbatch|supp|dict))(?!\w)")


def missing_paths(repo):
    """'page:line: path' for each project file the README or docs/ name that does not exist."""
    missing = []
    for page in [repo / "README.md"] + sorted((repo / "docs").rglob("*.md")):
        for n, line in enumerate(page.read_text().splitlines(), 1):
            for m in PROJECT_PATH.finditer(line):
                if not (repo / m.group(1)).exists():
                    missing.append(f"{page.relative_to(repo)}:{n}: {m.group(1)}")
    return missing


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    repo = Path(__file__).resolve().parent.parent
    ap.add_argument("--build", default=str(repo / "build" / "release"), help="the CMake build folder")
    ap.add_argument("--work", help="scratch folder (default: a new temporary one, removed when all passes)")
    ap.add_argument("--only", action="append", default=[],
                    help="run only chapters whose file name starts with this (after the README), repeatable")
    ap.add_argument("--list", action="store_true", help="list the runnable blocks and exit")
    ap.add_argument("--self-test", action="store_true", help="check the output matcher itself and exit")
    args = ap.parse_args()
    if args.self_test:
        return 0 if self_test() else 1

    learn = repo / "docs" / "learn"
    chapters = sorted(p for p in learn.glob("[0-9][0-9]-*.md"))
    if args.only:
        chapters = [p for p in chapters if any(p.name.startswith(o) for o in args.only)]
        if not chapters:
            print(f"[learn] no chapter matches {args.only}", file=sys.stderr)
            return 1
    files = [learn / "README.md"] + chapters
    plan = [(f, parse(f)) for f in files]
    if args.list:
        for f, blocks in plan:
            for b in blocks:
                print(f"{f.name}:{b.line}: {b.code.strip().splitlines()[0]}{' [gpu]' if 'gpu' in b.attrs else ''}")
        return 0

    missing = missing_paths(repo)
    for m in missing:
        print(f"[learn] {m} does not exist: the page names a file that was moved or removed", file=sys.stderr)
    if missing:
        return 1

    build = Path(args.build).resolve()
    if not (build / "meshtrain").exists():
        print(f"[learn] {build}/meshtrain not found: build first (cmake --preset release && cmake --build "
              "build/release), or pass --build", file=sys.stderr)
        return 1
    work = Path(args.work).resolve() if args.work else Path(tempfile.mkdtemp(prefix="meshtrain-learn-"))
    work.mkdir(parents=True, exist_ok=True)
    shim = work / ".bin"
    shim.mkdir(exist_ok=True)
    if Path("/usr/bin/python3").exists() and not (shim / "python3").exists():
        (shim / "python3").symlink_to("/usr/bin/python3")
    env = dict(os.environ)
    env["MESHTRAIN_HOME"] = str(repo)
    env["PATH"] = os.pathsep.join([str(shim), str(build), str(build / "learn"), str(build / "bench"), env["PATH"]])
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # containers and CI run as root; Open MPI refuses by default
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    # Without a munge daemon, PMIx's default security check retries its socket for 2.3 s per
    # mpiexec (README, "Running under MPI"); the native check needs none.
    env.setdefault("PMIX_MCA_psec", "native")
    gpu = have_gpu()
    print(f"[learn] scratch folder {work}; GPU: {'yes' if gpu else 'no'}")
    t0, failed, count = time.time(), 0, 0
    for f, blocks in plan:
        tf = time.time()
        for b in blocks:
            count += 1
            if not run_block(b, work, env, gpu):
                failed += 1
                break  # later blocks of a chapter build on earlier ones
        print(f"[learn] {f.name}: {len(blocks)} blocks, {time.time() - tf:.1f} s")
    print(f"[learn] {count} blocks in {len(files)} files, {failed} failed, {time.time() - t0:.1f} s")
    if failed == 0 and not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
