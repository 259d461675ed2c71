// CPU thread control: one number drives both OpenMP regions and OpenBLAS.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace meshtrain {

/// The CPU's model name (/proc/cpuinfo's first "model name"), or "this CPU"; benchmarks and hardware
/// descriptions name the CPU their numbers came from.
std::string cpu_model_name();
/// Cores available to this process (its CPU affinity mask), at least 1.
int available_cores();
/// One flag per CPU id (1024 of them): 1 where this process may run (its affinity mask). Ranks that
/// mpiexec binds to cores each see only theirs; the union over a host's ranks is the host's share.
std::vector<int32_t> affinity_flags();
/// Sets the thread count for OpenMP and OpenBLAS.
void set_num_threads(int n);
/// The thread count last set (or OpenMP's default).
int num_threads();

/// Keeps OpenBLAS single-threaded while alive, for GEMMs issued from inside OpenMP parallel loops.
/// OpenBLAS's OpenMP build (the one meshtrain links) already runs single-threaded there and this does
/// nothing; the pthread build would split each small GEMM over its own pool and oversubscribe the
/// cores (measured 4-5x slower), so it is pinned to one thread and restored afterwards. The setting
/// is process-wide, which is fine while one thread per process issues BLAS calls (ranks are processes).
class BlasSingleThreadScope {
 public:
  BlasSingleThreadScope();
  ~BlasSingleThreadScope();
  BlasSingleThreadScope(const BlasSingleThreadScope&) = delete;
  BlasSingleThreadScope& operator=(const BlasSingleThreadScope&) = delete;

 private:
  int saved_;
};

}  // namespace meshtrain
