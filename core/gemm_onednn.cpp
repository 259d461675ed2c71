// oneDNN matmul wrapper (core/gemm_onednn.h). Compiled only when CMake finds oneDNN.
#include "core/gemm_onednn.h"

#include <dnnl.hpp>

#include <map>
#include <mutex>
#include <tuple>

#include "core/error.h"

namespace meshtrain {

namespace {

using dnnl::memory;
using Dims = memory::dims;

struct Key {
  GemmType type;
  bool ta, tb;
  int64_t M, N, K, lda, ldb, ldc;
  float beta;
  bool operator<(const Key& o) const {
    return std::tie(type, ta, tb, M, N, K, lda, ldb, ldc, beta) <
           std::tie(o.type, o.ta, o.tb, o.M, o.N, o.K, o.lda, o.ldb, o.ldc, o.beta);
  }
};

struct Entry {
  memory::desc a, b, c;
  dnnl::matmul prim;
};

struct Runtime {
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  dnnl::stream stream{engine};
  std::mutex mutex;  // the cache; a primitive itself may run from several threads
  std::map<Key, Entry> cache;
  int64_t created = 0;
};

Runtime& runtime() {
  static Runtime rt;
  return rt;
}

Entry& entry_for(const Key& k) {
  Runtime& rt = runtime();
  std::lock_guard<std::mutex> lock(rt.mutex);
  auto it = rt.cache.find(k);
  if (it != rt.cache.end()) return it->second;
  const auto dt = k.type == GemmType::bf16 ? memory::data_type::bf16 : memory::data_type::f32;
  // Row-major A (M x K) is strides {lda, 1}; stored transposed (K x M) it is {1, lda}. Likewise B.
  const memory::desc a(Dims{k.M, k.K}, dt, k.ta ? Dims{1, k.lda} : Dims{k.lda, 1});
  const memory::desc b(Dims{k.K, k.N}, dt, k.tb ? Dims{1, k.ldb} : Dims{k.ldb, 1});
  const memory::desc c(Dims{k.M, k.N}, memory::data_type::f32, Dims{k.ldc, 1});
  dnnl::primitive_attr attr;
  if (k.beta != 0.0f) {
    dnnl::post_ops ops;
    ops.append_sum(k.beta);
    attr.set_post_ops(ops);
  }
  try {
    const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a, b, c), attr, rt.engine);
    ++rt.created;
    return rt.cache.emplace(k, Entry{a, b, c, dnnl::matmul(pd)}).first->second;
  } catch (const dnnl::error& e) {
    MT_FAIL("[bf16-cpu] oneDNN has no matmul for {} x {} x {} ({}): {}", k.M, k.N, k.K,
            k.type == GemmType::bf16 ? "bf16" : "fp32", e.what());
  }
}

}  // namespace

bool onednn_built() { return true; }

std::string onednn_bf16_isa() {
  const dnnl::cpu_isa isa = dnnl::get_effective_cpu_isa();
  if (isa == dnnl::cpu_isa::avx512_core_amx) return "AMX";
  if (isa == dnnl::cpu_isa::avx512_core_bf16) return "AVX512_BF16";
  return "";
}

bool onednn_bf16_matmuls() {
  static const bool available = [] {
    try {
      const memory::desc x(Dims{1, 1}, memory::data_type::bf16, Dims{1, 1});
      const memory::desc y(Dims{1, 1}, memory::data_type::f32, Dims{1, 1});
      const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(x, x, y), runtime().engine);
      return true;
    } catch (const dnnl::error&) {
      return false;
    }
  }();
  return available;
}

void gemm_onednn(GemmType type, bool trans_a, bool trans_b, int M, int N, int K, const void* A, int lda,
                 const void* B, int ldb, float beta, float* C, int ldc) {
  MT_CHECK(M > 0 && N > 0 && K > 0, "[bf16-cpu] GEMM sizes must be positive (M {} N {} K {})", M, N, K);
  MT_CHECK(lda >= (trans_a ? M : K) && ldb >= (trans_b ? K : N) && ldc >= N,
           "[bf16-cpu] GEMM strides too small (lda {} ldb {} ldc {} for M {} N {} K {})", lda, ldb, ldc, M, N, K);
  Entry& e = entry_for({type, trans_a, trans_b, M, N, K, lda, ldb, ldc, beta});
  Runtime& rt = runtime();
  memory a(e.a, rt.engine, const_cast<void*>(A)), b(e.b, rt.engine, const_cast<void*>(B)), c(e.c, rt.engine, C);
  e.prim.execute(rt.stream, {{DNNL_ARG_SRC, a}, {DNNL_ARG_WEIGHTS, b}, {DNNL_ARG_DST, c}});
  rt.stream.wait();
}

int64_t onednn_primitives_created() {
  std::lock_guard<std::mutex> lock(runtime().mutex);
  return runtime().created;
}

}  // namespace meshtrain
