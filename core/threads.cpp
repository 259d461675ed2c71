// Thread-count plumbing for OpenMP and OpenBLAS.
#include "core/threads.h"

#include <omp.h>
#include <sched.h>

#include <fstream>

extern "C" void openblas_set_num_threads(int num_threads);
extern "C" int openblas_get_num_threads(void);
extern "C" int openblas_get_parallel(void);  // 0 sequential, 1 pthreads, 2 OpenMP

namespace meshtrain {

std::string cpu_model_name() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("model name", 0) == 0) {
      const auto colon = line.find(':');
      if (colon != std::string::npos && colon + 2 <= line.size()) return line.substr(colon + 2);
    }
  return "this CPU";
}

int available_cores() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
  return 1;
}

std::vector<int32_t> affinity_flags() {
  std::vector<int32_t> flags(CPU_SETSIZE, 0);
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    for (int c = 0; c < CPU_SETSIZE; ++c) flags[c] = CPU_ISSET(c, &set) ? 1 : 0;
  } else {
    flags[0] = 1;
  }
  return flags;
}

void set_num_threads(int n) {
  if (n < 1) n = 1;
  omp_set_num_threads(n);
  openblas_set_num_threads(n);
}

int num_threads() { return omp_get_max_threads(); }

BlasSingleThreadScope::BlasSingleThreadScope()
    : saved_(openblas_get_parallel() == 1 ? openblas_get_num_threads() : 1) {
  if (saved_ > 1) openblas_set_num_threads(1);
}

BlasSingleThreadScope::~BlasSingleThreadScope() {
  if (saved_ > 1) openblas_set_num_threads(saved_);
}

}  // namespace meshtrain
