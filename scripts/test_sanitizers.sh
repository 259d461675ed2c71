#!/usr/bin/env bash
# The whole CTest suite built with AddressSanitizer + UndefinedBehaviorSanitizer (the `asan` preset:
# clang 14, -O1 -g, CPU only; the mpiexec, Slurm and command-line tests included, every meshtrain
# process they start instrumented too). A report stops the process that found it (halt_on_error) and
# is written under build/asan/sanitizer-reports/, so a report from a process whose failure a test
# expected (a damaged file, a killed rank) still fails this stage: the stage passes only when every
# test passes and that folder stays empty. Leak checking is on; the few libraries that keep memory
# until exit on purpose are listed, each with its reason, in tests/lsan.supp.
# One test case is left out here: Serve.HeadlessChromiumShowsTheStreamedText (Chromium's virtual
# clock stops waiting before the instrumented server finishes its stream; the server's code runs
# under the sanitizers in every other serve test). scripts/test.sh runs this after the main suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh tests fuzz  # the tests' packages, clang 14 and its sanitizer runtimes
t0=$(date +%s)
bash scripts/configure.sh asan
cmake --build build/asan -j"$(nproc)"
t1=$(date +%s)
echo "[sanitizers] build: $((t1 - t0)) s"
exec bash scripts/sanitized_ctest.sh asan sanitizers "AddressSanitizer + UBSan" "$@"
