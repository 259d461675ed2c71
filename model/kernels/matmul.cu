// CUDA linear layer through cuBLASLt (matmul_cuda.h); matmul_cpu.cpp is the specification.
//
// Layout. cuBLASLt is column-major, and a row-major X[R,K] is the same memory as a column-major
// X^T[K,R] with leading dimension K, so every product is computed transposed, with no copies. Each GEMM
// below is D[m,n] = op(A)[m,k] @ op(B)[k,n] (+ beta D), all matrices packed (ld = stored rows):
//   forward   out[N,OC] = inp[N,C] @ W[OC,C]^T     <=>  out^T[OC,N] = W[OC,C] @ inp^T[C,N]
//             A = weight, stored [C,OC] ld C, TRANSA = T;  B = inp, stored [C,N] ld C, N;
//             D = out [OC,N] ld OC;  m = OC, n = N, k = C. The bias runs along D's rows (OC), which is
//             what the BIAS epilogue broadcasts, and the GELU input (aux) gets ld OC.
//   backward  dinp[N,C] += dout[N,OC] @ W[OC,C]    <=>  dinp^T[C,N] = W^T[C,OC] @ dout^T[OC,N]
//             A = weight, stored [C,OC] ld C, N;  B = dout, stored [OC,N] ld OC, N;
//             D = dinp [C,N] ld C;  m = C, n = N, k = OC;  beta = 1.
//             dweight[OC,C] += dout^T[OC,N] @ inp[N,C]  <=>  dweight^T[C,OC] = inp^T[C,N] @ dout[N,OC]
//             A = inp, stored [C,N] ld C, N;  B = dout, stored [OC,N] ld OC, TRANSB = T;
//             D = dweight [C,OC] ld C;  m = C, n = OC, k = N;  beta = 1.
// Numerics: CUBLAS_COMPUTE_32F with fp32 scale type for both dtypes (never TF32: fp32 must stay within
// 1e-4 of the CPU); bf16 reads and writes bf16 A/B/C/D and accumulates in fp32.
//
// Plans. Descriptors, layouts and the heuristic's algorithm are made once per distinct GEMM (shape,
// transposes, dtype, epilogue and the alignment of every pointer, capped at cuBLASLt's default 256
// bytes) and cached. The alignments are part of the key because views into the flat parameter buffer
// may be only 4-byte (fp32) or 2-byte (bf16) aligned: the preference's MIN_ALIGNMENT_* and the bias/aux
// pointers present at heuristic time make cuBLASLt pick an algorithm valid for exactly those pointers.
//
// Epilogues. The bias is the BIAS epilogue. The GELU (forward with pre_gelu) is fused as GELU_AUX[_BIAS]
// for bf16 when OC % 8 == 0 (the aux ld must be a multiple of 8 elements, per cublasLt.h); fp32 never
// fuses it, because cuBLASLt does not document the accuracy of its GELU and fp32 is the 1e-4 reference
// path. Unfused, or when cuBLASLt offers no algorithm for an epilogue, the GEMM writes pre_gelu and
// bias_gelu_kernel (the formula of gelu_cpu.cpp, with tanhf) adds the bias and/or applies the GELU.
//
// Bias gradient: column sums of dout, deterministic without atomics in two kernels (as LayerNorm's):
// blocks of 32 columns (one per lane, so rows are read coalesced) by fixed chunks of rows write one
// fp32 partial per (chunk, column); then one thread per column adds its partials in chunk order into
// dbias. The partials live in the cuBLASLt workspace, which no GEMM uses while they do (same stream).
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <tuple>
#include <utility>

#include "core/cublas_check.h"
#include "core/cuda_check.h"
#include "core/device.h"
#include "model/kernels/convert.cuh"
#include "model/kernels/matmul_cuda.h"

namespace meshtrain {
namespace {

constexpr size_t kWorkspaceBytes = size_t{32} << 20;
constexpr uint32_t kMaxAlignment = 256;  // cuBLASLt's default MIN_ALIGNMENT_*: nothing asks for more
constexpr int kBlock = 256;
constexpr int64_t kMaxBlocks = 65536;  // grid-stride beyond this
constexpr int kWarp = 32;
constexpr int kRowsPerBlock = 8;  // warps per block of the bias-gradient partial kernel
constexpr int kChunkRows = 256;   // rows per bias-gradient partial (more when the workspace is short)
constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kCubic = 0.044715f;
constexpr const char* kOpForward = "CudaMatmul::forward";
constexpr const char* kOpBackward = "CudaMatmul::backward";

// ---- Device kernels ------------------------------------------------------------------------------

// pre[N*OC] holds the GEMM result. With bias: pre += bias (per column), rounded to T. With out: out =
// gelu(pre), computed from the value as stored, exactly as gelu_cpu.cpp writes it.
template <class T>
__global__ void bias_gelu_kernel(T* __restrict__ out, T* __restrict__ pre, const T* __restrict__ bias, int64_t total,
                                 int OC) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total; i += int64_t{gridDim.x} * blockDim.x) {
    float x = to_float(pre[i]);
    if (bias != nullptr) {
      const T stored = from_float<T>(x + to_float(bias[i % OC]));
      pre[i] = stored;
      x = to_float(stored);
    }
    if (out != nullptr) {
      const float u = kSqrt2OverPi * (x + kCubic * x * x * x);
      out[i] = from_float<T>(0.5f * x * (1.0f + tanhf(u)));
    }
  }
}

// Grid (column blocks of 32, row chunks); block 32 x kRowsPerBlock. Writes partial[chunk][c].
template <class T>
__global__ void bias_grad_partial_kernel(float* __restrict__ partial, const T* __restrict__ dout, int N, int OC,
                                         int chunk_rows) {
  __shared__ float sums[kRowsPerBlock][kWarp];
  const int c = blockIdx.x * kWarp + threadIdx.x;
  const int64_t n_begin = int64_t{blockIdx.y} * chunk_rows;
  const int64_t n_end = min(n_begin + chunk_rows, int64_t{N});
  float acc = 0.0f;
  if (c < OC) {
    for (int64_t n = n_begin + threadIdx.y; n < n_end; n += kRowsPerBlock) acc += to_float(dout[n * OC + c]);
  }
  sums[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && c < OC) {
    float total = 0.0f;
    for (int k = 0; k < kRowsPerBlock; ++k) total += sums[k][threadIdx.x];
    partial[int64_t{blockIdx.y} * OC + c] = total;
  }
}

// One thread per column: adds the chunk partials, in chunk order, into dbias.
template <class T>
__global__ void bias_grad_final_kernel(T* __restrict__ dbias, const float* __restrict__ partial, int num_chunks,
                                       int OC) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= OC) return;
  float total = 0.0f;
  for (int k = 0; k < num_chunks; ++k) total += partial[int64_t{k} * OC + c];
  dbias[c] = from_float<T>(to_float(dbias[c]) + total);
}

// ---- Host side -----------------------------------------------------------------------------------

// The cuBLASLt data type of each element type, and whether the GELU is fused.
template <class T>
struct TypeOf;
template <>
struct TypeOf<float> {
  static constexpr cudaDataType_t cuda = CUDA_R_32F;
  static constexpr bool fuse_gelu = false;  // fp32 keeps the exact GELU kernel (see the top of the file)
};
template <>
struct TypeOf<Bf16> {
  static constexpr cudaDataType_t cuda = CUDA_R_16BF;
  static constexpr bool fuse_gelu = true;
};

// The kernels' element pointers: float as is, Bf16 as __nv_bfloat16 (cuda_bf16 of convert.cuh).
float* dev(float* p) { return p; }
const float* dev(const float* p) { return p; }
__nv_bfloat16* dev(Bf16* p) { return cuda_bf16(p); }
const __nv_bfloat16* dev(const Bf16* p) { return cuda_bf16(p); }

bool epilogue_has_bias(cublasLtEpilogue_t e) {
  return e == CUBLASLT_EPILOGUE_BIAS || e == CUBLASLT_EPILOGUE_GELU_AUX_BIAS;
}
bool epilogue_has_aux(cublasLtEpilogue_t e) {
  return e == CUBLASLT_EPILOGUE_GELU_AUX || e == CUBLASLT_EPILOGUE_GELU_AUX_BIAS;
}

// The largest power of two dividing the address, capped at kMaxAlignment (null: no constraint).
uint32_t alignment_of(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  if (a == 0) return kMaxAlignment;
  const uintptr_t low = a & (~a + 1);
  return low >= kMaxAlignment ? kMaxAlignment : static_cast<uint32_t>(low);
}

// One GEMM as cuBLASLt sees it: D[m,n] = op(A)[m,k] @ op(B)[k,n] + beta D, every matrix packed.
struct Gemm {
  cublasOperation_t transa, transb;
  int64_t m, n, k;
  cudaDataType_t type;
  cublasLtEpilogue_t epilogue;
  const void* a;
  const void* b;
  void* d;
  const void* bias;  // with a BIAS epilogue: m values
  void* aux;         // with a GELU_AUX epilogue: the GELU input, [m,n] ld m
  float beta;
};

// A GEMM with the default epilogue (callers set bias/aux epilogues on the result).
Gemm gemm(cublasOperation_t transa, cublasOperation_t transb, int64_t m, int64_t n, int64_t k, cudaDataType_t type,
          const void* a, const void* b, void* d, float beta) {
  return Gemm{transa, transb, m, n, k, type, CUBLASLT_EPILOGUE_DEFAULT, a, b, d, nullptr, nullptr, beta};
}

struct PlanKey {
  int64_t m, n, k;
  int transa, transb, type, epilogue;
  uint32_t align_a, align_b, align_d, align_bias, align_aux;

  auto tie() const {
    return std::tie(m, n, k, transa, transb, type, epilogue, align_a, align_b, align_d, align_bias, align_aux);
  }
  bool operator<(const PlanKey& o) const { return tie() < o.tie(); }
};

PlanKey key_of(const Gemm& g) {
  return PlanKey{g.m,
                 g.n,
                 g.k,
                 static_cast<int>(g.transa),
                 static_cast<int>(g.transb),
                 static_cast<int>(g.type),
                 static_cast<int>(g.epilogue),
                 alignment_of(g.a),
                 alignment_of(g.b),
                 alignment_of(g.d),
                 alignment_of(epilogue_has_bias(g.epilogue) ? g.bias : nullptr),
                 alignment_of(epilogue_has_aux(g.epilogue) ? g.aux : nullptr)};
}

// The cached descriptors of one GEMM and the algorithm the heuristic chose (found = false: none).
struct Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;  // C shares D's layout (C == D)
  cublasLtMatmulAlgo_t algo{};
  cublasStatus_t status = CUBLAS_STATUS_NOT_SUPPORTED;
  bool found = false;

  Plan() = default;
  Plan(const Plan&) = delete;
  Plan& operator=(const Plan&) = delete;
  ~Plan() {
    if (d != nullptr) (void)cublasLtMatrixLayoutDestroy(d);
    if (b != nullptr) (void)cublasLtMatrixLayoutDestroy(b);
    if (a != nullptr) (void)cublasLtMatrixLayoutDestroy(a);
    if (desc != nullptr) (void)cublasLtMatmulDescDestroy(desc);
  }
};

struct Preference {
  cublasLtMatmulPreference_t pref = nullptr;
  Preference() { CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref)); }
  Preference(const Preference&) = delete;
  Preference& operator=(const Preference&) = delete;
  ~Preference() {
    if (pref != nullptr) (void)cublasLtMatmulPreferenceDestroy(pref);
  }
  template <class V>
  void set(cublasLtMatmulPreferenceAttributes_t attr, V value) {
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, attr, &value, sizeof(value)));
  }
};

template <class V>
void set_desc(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr, V value) {
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, attr, &value, sizeof(value)));
}

int grid_for(int64_t total) { return static_cast<int>(std::min((total + kBlock - 1) / kBlock, kMaxBlocks)); }

}  // namespace

struct CudaMatmul::Impl {
  cudaStream_t stream = nullptr;
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
  std::map<PlanKey, std::unique_ptr<Plan>> plans;

  Impl() = default;
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;
  ~Impl() {
    plans.clear();
    if (workspace != nullptr) device_free(workspace, kWorkspaceBytes);
    if (handle != nullptr) (void)cublasLtDestroy(handle);
  }

  // The cached plan of g, made (descriptors, layouts, heuristic) on first use.
  Plan& plan_for(const Gemm& g) {
    const PlanKey key = key_of(g);
    if (auto it = plans.find(key); it != plans.end()) return *it->second;
    auto p = std::make_unique<Plan>();
    CUBLAS_CHECK(cublasLtMatmulDescCreate(&p->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    set_desc(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, g.transa);
    set_desc(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, g.transb);
    set_desc(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, static_cast<uint32_t>(g.epilogue));
    // The heuristic reads the bias and aux pointers' values for their alignment; run() resets them per call.
    if (epilogue_has_bias(g.epilogue)) set_desc(p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, g.bias);
    if (epilogue_has_aux(g.epilogue)) {
      set_desc(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, static_cast<const void*>(g.aux));
      set_desc(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, int64_t{g.m});
    }
    // Stored (pre-op) shapes; packed, so ld = rows.
    const bool a_plain = g.transa == CUBLAS_OP_N, b_plain = g.transb == CUBLAS_OP_N;
    const int64_t a_rows = a_plain ? g.m : g.k, a_cols = a_plain ? g.k : g.m;
    const int64_t b_rows = b_plain ? g.k : g.n, b_cols = b_plain ? g.n : g.k;
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->a, g.type, a_rows, a_cols, a_rows));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->b, g.type, b_rows, b_cols, b_rows));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->d, g.type, g.m, g.n, g.m));

    Preference pref;
    pref.set(CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, uint64_t{kWorkspaceBytes});
    pref.set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, key.align_a);
    pref.set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, key.align_b);
    pref.set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, key.align_d);
    pref.set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, key.align_d);
    cublasLtMatmulHeuristicResult_t result{};
    int returned = 0;
    p->status =
        cublasLtMatmulAlgoGetHeuristic(handle, p->desc, p->a, p->b, p->d, p->d, pref.pref, 1, &result, &returned);
    p->found = p->status == CUBLAS_STATUS_SUCCESS && returned > 0 && result.state == CUBLAS_STATUS_SUCCESS;
    if (p->found) p->algo = result.algo;
    return *plans.emplace(key, std::move(p)).first->second;
  }

  // Queues g on the stream; false (and nothing queued) when cuBLASLt has no algorithm for it.
  bool run(const Gemm& g) {
    Plan& p = plan_for(g);
    if (!p.found) return false;
    if (epilogue_has_bias(g.epilogue)) set_desc(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, g.bias);
    if (epilogue_has_aux(g.epilogue)) {
      set_desc(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, static_cast<const void*>(g.aux));
    }
    const float alpha = 1.0f;
    CUBLAS_CHECK(cublasLtMatmul(handle, p.desc, &alpha, g.a, p.a, g.b, p.b, &g.beta, g.d, p.d, g.d, p.d, &p.algo,
                                workspace, kWorkspaceBytes, stream));
    return true;
  }

  void run_or_fail(const Gemm& g, const char* op) {
    if (run(g)) return;
    MT_FAIL("[{}] cuBLASLt has no algorithm for m={}, n={}, k={} ({}, transa={}, transb={}): heuristic status {}", op,
            g.m, g.n, g.k, g.type == CUDA_R_32F ? "f32" : "bf16", g.transa == CUBLAS_OP_T ? "T" : "N",
            g.transb == CUBLAS_OP_T ? "T" : "N", cublasLtGetStatusName(plan_for(g).status));
  }

  template <class T>
  void forward(T* out, const T* inp, const T* weight, const T* bias, int N, int C, int OC, T* pre_gelu) {
    MT_CHECK(N >= 1 && C >= 1 && OC >= 1, "[CudaMatmul::forward] N={}, C={}, OC={}: every dimension must be at least 1",
             N, C, OC);
    MT_CHECK(out != nullptr && inp != nullptr && weight != nullptr,
             "[CudaMatmul::forward] out, inp and weight must be device pointers, not null");
    MT_CHECK(out != pre_gelu, "[CudaMatmul::forward] out and pre_gelu must be distinct buffers");
    const bool gelu = pre_gelu != nullptr;
    Gemm g = gemm(CUBLAS_OP_T, CUBLAS_OP_N, OC, N, C, TypeOf<T>::cuda, weight, inp, out, 0.0f);
    if (gelu && TypeOf<T>::fuse_gelu && OC % 8 == 0) {
      g.epilogue = bias != nullptr ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX;
      g.bias = bias;
      g.aux = pre_gelu;
      if (run(g)) return;
      g.aux = nullptr;
    }
    // Unfused: the GEMM writes pre_gelu (or out), with the bias when cuBLASLt can add it.
    g.d = gelu ? pre_gelu : out;
    bool bias_added = false;
    if (bias != nullptr) {
      g.epilogue = CUBLASLT_EPILOGUE_BIAS;
      g.bias = bias;
      bias_added = run(g);
    }
    if (!bias_added) {
      g.epilogue = CUBLASLT_EPILOGUE_DEFAULT;
      g.bias = nullptr;
      run_or_fail(g, kOpForward);
    }
    const T* kernel_bias = bias_added ? nullptr : bias;
    if (!gelu && kernel_bias == nullptr) return;
    const int64_t total = int64_t{N} * OC;
    bias_gelu_kernel<<<grid_for(total), kBlock, 0, stream>>>(gelu ? dev(out) : nullptr, dev(gelu ? pre_gelu : out),
                                                             dev(kernel_bias), total, OC);
    CUDA_CHECK(cudaGetLastError());
  }

  template <class T>
  void backward(T* dinp, T* dweight, T* dbias, const T* dout, const T* inp, const T* weight, int N, int C, int OC,
                bool accumulate_dinp) {
    MT_CHECK(N >= 1 && C >= 1 && OC >= 1,
             "[CudaMatmul::backward] N={}, C={}, OC={}: every dimension must be at least 1", N, C, OC);
    MT_CHECK(dout != nullptr && (dweight == nullptr || inp != nullptr),
             "[CudaMatmul::backward] dout (and inp, for dweight) must be device pointers");
    MT_CHECK(dinp == nullptr || weight != nullptr, "[CudaMatmul::backward] dinp needs the weight, which is null");
    const cudaDataType_t type = TypeOf<T>::cuda;
    if (dinp != nullptr)
      run_or_fail(gemm(CUBLAS_OP_N, CUBLAS_OP_N, C, N, OC, type, weight, dout, dinp, accumulate_dinp ? 1.0f : 0.0f),
                  kOpBackward);
    if (dweight != nullptr)  // null: a frozen weight (LoRA fine-tuning) needs only dinp
      run_or_fail(gemm(CUBLAS_OP_N, CUBLAS_OP_T, C, OC, N, type, inp, dout, dweight, 1.0f), kOpBackward);
    if (dbias == nullptr) return;

    // Partials in the workspace: as many chunks of at least kChunkRows rows as fit.
    const int64_t max_chunks = std::min<int64_t>(kWorkspaceBytes / (sizeof(float) * OC), 65535);
    MT_CHECK(max_chunks >= 1, "[CudaMatmul::backward] OC={}: the bias gradient supports at most {} columns", OC,
             kWorkspaceBytes / sizeof(float));
    const int64_t wanted_chunks = (int64_t{N} + kChunkRows - 1) / kChunkRows;
    const int64_t chunks_bound = std::min(wanted_chunks, max_chunks);
    const int chunk_rows = static_cast<int>((N + chunks_bound - 1) / chunks_bound);
    const int num_chunks = (N + chunk_rows - 1) / chunk_rows;
    auto* partial = static_cast<float*>(workspace);
    const dim3 grid((OC + kWarp - 1) / kWarp, num_chunks);
    const dim3 block(kWarp, kRowsPerBlock);
    bias_grad_partial_kernel<<<grid, block, 0, stream>>>(partial, dev(dout), N, OC, chunk_rows);
    CUDA_CHECK(cudaGetLastError());
    bias_grad_final_kernel<<<(OC + kBlock - 1) / kBlock, kBlock, 0, stream>>>(dev(dbias), partial, num_chunks, OC);
    CUDA_CHECK(cudaGetLastError());
  }
};

CudaMatmul::CudaMatmul(void* stream) {
  auto impl = std::make_unique<Impl>();
  impl->stream = static_cast<cudaStream_t>(stream);
  CUBLAS_CHECK(cublasLtCreate(&impl->handle));
  impl->workspace = device_malloc(kWorkspaceBytes);  // counted in the device memory report
  impl_ = std::move(impl);
}

CudaMatmul::~CudaMatmul() = default;

void CudaMatmul::forward(float* out, const float* inp, const float* weight, const float* bias, int N, int C, int OC,
                         float* pre_gelu) {
  impl_->forward(out, inp, weight, bias, N, C, OC, pre_gelu);
}

void CudaMatmul::forward(Bf16* out, const Bf16* inp, const Bf16* weight, const Bf16* bias, int N, int C, int OC,
                         Bf16* pre_gelu) {
  impl_->forward(out, inp, weight, bias, N, C, OC, pre_gelu);
}

void CudaMatmul::backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                          const float* weight, int N, int C, int OC, bool accumulate_dinp) {
  impl_->backward(dinp, dweight, dbias, dout, inp, weight, N, C, OC, accumulate_dinp);
}

void CudaMatmul::backward(Bf16* dinp, Bf16* dweight, Bf16* dbias, const Bf16* dout, const Bf16* inp, const Bf16* weight,
                          int N, int C, int OC, bool accumulate_dinp) {
  impl_->backward(dinp, dweight, dbias, dout, inp, weight, N, C, OC, accumulate_dinp);
}

size_t CudaMatmul::workspace_bytes() const { return kWorkspaceBytes; }

}  // namespace meshtrain
