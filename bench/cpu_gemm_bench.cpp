// CPU GEMM engines at the benchmark model's shapes (train_step_bench: L4 H4 C256 T256 B4, vocabulary
// 50304, so 1024 tokens): OpenBLAS sgemm (what the fp32 CPU path runs), oneDNN fp32 and oneDNN bf16
// (fp32 accumulation; AMX or AVX512_BF16 as oneDNN finds them), forward-shaped C = A B^T and the
// classifier's two backward GEMMs (dinp = dlogits W: C = A B; dW = dlogits^T X: C = A^T B), in GFLOP/s
// as a markdown table with the CPU model. Prints numbers and never fails on a slow machine.
// Usage: cpu_gemm_bench [--iters N] [--threads N]
#include <fmt/format.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "core/bf16.h"
#include "core/gemm.h"
#include "core/gemm_onednn.h"
#include "core/threads.h"

using namespace meshtrain;

namespace {

template <class Fn>
double best_seconds(Fn&& fn, int iters) {
  fn();  // first call: packing buffers, oneDNN's primitive
  double best = 1e300;
  for (int i = 0; i < iters; ++i) {
    const auto a = std::chrono::steady_clock::now();
    fn();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - a).count());
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  int iters = 5, threads = 0;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--iters") && i + 1 < argc) iters = std::max(1, std::atoi(argv[++i]));
    else if (!std::strcmp(argv[i], "--threads") && i + 1 < argc) threads = std::atoi(argv[++i]);
    else {
      std::fprintf(stderr, "usage: cpu_gemm_bench [--iters N] [--threads N]\n");
      return std::strcmp(argv[i], "--help") == 0 ? 0 : 2;
    }
  }
  if (threads > 0) set_num_threads(threads);
  struct Shape {
    const char* what;
    int M, N, K;
    bool ta = false, tb = true;  // C = op(A) op(B): A is M x K (K x M when ta), B is N x K (K x N unless tb)
  };
  const Shape shapes[] = {{"qkv", 1024, 768, 256},
                          {"attention proj", 1024, 256, 256},
                          {"fc", 1024, 1024, 256},
                          {"fc proj", 1024, 256, 1024},
                          {"classifier", 1024, 50304, 256},
                          {"classifier dinp", 1024, 256, 50304, false, false},
                          {"classifier dweight", 50304, 256, 1024, true, false},
                          {"square", 1024, 1024, 1024}};
  std::printf("CPU: %s, %d threads; oneDNN bf16 on: %s\n\n", cpu_model_name().c_str(), omp_get_max_threads(),
              !onednn_built()            ? "not built"
              : !onednn_bf16_isa().empty() ? onednn_bf16_isa().c_str()
              : onednn_bf16_matmuls()      ? "no bf16 instructions (emulated on AVX-512)"
                                           : "none: no AVX-512, so no bf16 column");
  std::printf("| GEMM | M x N x K | OpenBLAS fp32 | oneDNN fp32 | oneDNN bf16 | bf16 / OpenBLAS |\n"
              "|---|---|---:|---:|---:|---:|\n");
  for (const Shape& s : shapes) {
    const int lda = s.ta ? s.M : s.K, ldb = s.tb ? s.K : s.N;
    std::vector<float> A(size_t(s.M) * s.K, 0.01f), B(size_t(s.N) * s.K, 0.02f), C(size_t(s.M) * s.N);
    std::vector<uint16_t> A16(A.size(), float_to_bf16(0.01f)), B16(B.size(), float_to_bf16(0.02f));
    const double flops = 2.0 * s.M * s.N * s.K;
    const double blas = flops / best_seconds([&] {
      gemm_cpu(s.ta, s.tb, s.M, s.N, s.K, 1.0f, A.data(), lda, B.data(), ldb, 0.0f, C.data(), s.N);
    }, iters) / 1e9;
    double f32 = 0, bf16 = 0;
    if (onednn_built()) {
      f32 = flops / best_seconds([&] {
        gemm_onednn(GemmType::f32, s.ta, s.tb, s.M, s.N, s.K, A.data(), lda, B.data(), ldb, 0.0f, C.data(), s.N);
      }, iters) / 1e9;
      if (onednn_bf16_matmuls())
        bf16 = flops / best_seconds([&] {
          gemm_onednn(GemmType::bf16, s.ta, s.tb, s.M, s.N, s.K, A16.data(), lda, B16.data(), ldb, 0.0f, C.data(), s.N);
        }, iters) / 1e9;
    }
    // An engine this build or CPU lacks prints a dash, not a rate of 0.
    auto rate = [](double r) { return r > 0 ? fmt::format("{:.0f}", r) : std::string("—"); };
    std::printf("| %s | %d x %d x %d%s | %.0f | %s | %s | %s |\n", s.what, s.M, s.N, s.K,
                s.ta ? " (A^T B)" : s.tb ? "" : " (A B)", blas, rate(f32).c_str(), rate(bf16).c_str(),
                bf16 > 0 ? fmt::format("{:.2f}x", bf16 / blas).c_str() : "—");
  }
  return 0;
}
