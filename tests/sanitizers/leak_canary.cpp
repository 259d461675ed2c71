// A program that leaks on purpose, under mpiexec: the `asan` build's test that LeakSanitizer still
// reports a leak in meshtrain's own code with the test preset's settings (fast unwinding, the Open MPI
// suppressions of tests/lsan.supp, keep_modules.c preloaded). The suppressions are broad (whole
// libraries); this shows they do not swallow a leak whose allocation is ours.
#include <mpi.h>

#include <cstdio>
#include <cstdlib>

namespace {
// Not inlined, so the report names this function.
__attribute__((noinline)) void* allocate_and_forget() {
  void* p = std::malloc(4242);
  std::printf("leak_canary: allocated 4242 bytes at %p and dropped the pointer\n", p);
  return nullptr;
}
}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  allocate_and_forget();
  MPI_Finalize();
  return 0;
}
