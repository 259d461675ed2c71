#!/usr/bin/env bash
# ThreadSanitizer over the CPU code's threads (the `tsan` preset: clang 14, -O1 -g, CPU only). The
# tests it runs are the ones whose code has threads of its own:
#   watchdog_test   the communication watchdog's thread against Guards entered from many threads
#   serve_test      the chat server's request queue under concurrent HTTP requests (cpp-httplib's
#                   worker pool in front of one generation thread)
#   comm_test, data_parallel_test (mpiexec, 2 and 4 ranks)  the host side of non-blocking
#                   collectives and of the overlapped bucket reductions (OpenMP packing, dtype
#                   conversion, gradient accumulation while a bucket is in flight). Open MPI itself
#                   is not instrumented, so TSan cannot see MPI writing into a buffer; that order is
#                   checked by the values these tests compare
#   mesh_test       communicator groups split from a world of threads
#   kernels_test, model_test, train_test  every OpenMP loop of the CPU kernels and the trainer,
#                   with 2 threads; LLVM's Archer (OMP_TOOL_LIBRARIES) gives TSan the OpenMP
#                   regions' ordering, so a race inside a loop body is reported
# A report stops its process and lands under build/tsan/sanitizer-reports/; the stage fails when a
# test fails or any report file appears. Suppressions, each with its reason: tests/tsan.supp.
# scripts/test.sh runs this after the AddressSanitizer stage.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh tests fuzz  # the tests' packages, clang 14; libomp-dev brings Archer
t0=$(date +%s)
bash scripts/configure.sh tsan
cmake --build build/tsan -j"$(nproc)" --target meshtrain watchdog_test serve_test comm_test data_parallel_test \
  mesh_test kernels_test model_test train_test
t1=$(date +%s)
echo "[tsan] build: $((t1 - t0)) s"
exec bash scripts/sanitized_ctest.sh tsan tsan "ThreadSanitizer" "$@"
