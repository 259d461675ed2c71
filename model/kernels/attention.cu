// CUDA materialised causal attention (attention.h); attention_cpu.cpp is the specification. The T x T
// probabilities of every (batch, head) live in global memory, as in the CPU twin; the fused kernels
// of flash_attention.cu avoid that and are the fast path. These stay simple and serve as the fallback
// for head sizes flash does not support and as its reference in tests and benchmarks.
//
// Every product is one launch of a batched SIMT GEMM on strided views (no head is copied out): a block
// computes a 64 x 64 tile of C = alpha A B (+ C) for one (batch, head), staging 16-deep slices of A and
// B in shared memory; each of its 256 threads owns a 4 x 4 grid of outputs and sums over k in order.
// Causality trims the work: the score products skip tiles above the diagonal (the softmax kernels
// write every element of a row, zeros above the diagonal included), and the products that read att
// or dS only visit the k range where those can be non-zero. The softmax and its backward run one warp
// per row with shuffle reductions. Every output element is computed by one thread in a fixed order
// and no atomics are used, so results are bit-identical run to run. Arithmetic is fp32; bf16 only
// appears in loads and stores of qkv, out, dout and dqkv (a += into bf16 rounds once).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "core/cuda_check.h"
#include "model/kernels/attention.h"
#include "model/kernels/convert.cuh"

namespace meshtrain {
namespace {

constexpr int kWarp = 32;
constexpr int kTile = 64;            // output tile edge of the GEMM kernel
constexpr int kTileK = 16;           // depth of one shared-memory stage
constexpr int kSide = 16;            // the GEMM block is kSide x kSide threads ...
constexpr int kPer = kTile / kSide;  // ... each owning kPer x kPer outputs, kSide apart
constexpr int kGemmThreads = kSide * kSide;
constexpr int kRowsPerBlock = 8;  // warps per block in the one-warp-per-row kernels

// A strided matrix view per (batch, head): element (r, c) of head (b, h) is at
// ptr[b * batch + h * head + r * row + c * col].
template <class T>
struct View {
  T* ptr;
  int64_t batch, head, row, col;
};

// Which k of the sum can contribute for the rows [m0, m0 + kTile) of a tile.
enum class KRange {
  all,         // every k
  up_to_rows,  // A(m, k) = 0 for k > m (A is att or dS): k < m0 + kTile
  from_rows,   // A(m, k) = 0 for k < m (A is att^T or dS^T): k >= m0
};

// C = alpha * A B (+ C when accumulate) for M x N outputs over K, one (batch, head) per blockIdx.z.
// skip_upper leaves the tiles strictly above the diagonal (n0 > m0) unwritten.
template <class TC, class TA, class TB>
__global__ void __launch_bounds__(kGemmThreads)
    attention_gemm_kernel(View<TC> c, View<const TA> a, View<const TB> b, int M, int N, int K, int NH, float alpha,
                          bool accumulate, KRange k_range, bool skip_upper) {
  __shared__ float a_s[kTileK][kTile + 4];
  __shared__ float b_s[kTileK][kTile + 4];
  const int m0 = blockIdx.y * kTile, n0 = blockIdx.x * kTile;
  if (skip_upper && n0 > m0) return;  // uniform per block, before any barrier
  const int bi = blockIdx.z / NH, h = blockIdx.z % NH;
  const TA* pa = a.ptr + bi * a.batch + h * a.head;
  const TB* pb = b.ptr + bi * b.batch + h * b.head;
  TC* pc = c.ptr + bi * c.batch + h * c.head;
  const int k_begin = k_range == KRange::from_rows ? m0 : 0;
  const int k_end = k_range == KRange::up_to_rows ? min(K, m0 + kTile) : K;
  const int tx = threadIdx.x % kSide, ty = threadIdx.x / kSide;

  float acc[kPer][kPer] = {};
  for (int k0 = k_begin; k0 < k_end; k0 += kTileK) {
    // Stage A(m0.., k0..) as a_s[k][m] and B(k0.., n0..) as b_s[k][n]; consecutive threads walk the
    // operand's contiguous dimension so global reads coalesce.
    for (int e = threadIdx.x; e < kTile * kTileK; e += kGemmThreads) {
      const bool k_fast = a.col == 1;
      const int m = k_fast ? e / kTileK : e % kTile, k = k_fast ? e % kTileK : e / kTile;
      const int gm = m0 + m, gk = k0 + k;
      a_s[k][m] = gm < M && gk < k_end ? to_float(pa[gm * a.row + gk * a.col]) : 0.0f;
    }
    for (int e = threadIdx.x; e < kTile * kTileK; e += kGemmThreads) {
      const bool n_fast = b.col == 1;
      const int n = n_fast ? e % kTile : e / kTileK, k = n_fast ? e / kTile : e % kTileK;
      const int gn = n0 + n, gk = k0 + k;
      b_s[k][n] = gn < N && gk < k_end ? to_float(pb[gk * b.row + gn * b.col]) : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < kTileK; ++k) {
      float av[kPer], bv[kPer];
#pragma unroll
      for (int i = 0; i < kPer; ++i) av[i] = a_s[k][ty + kSide * i];
#pragma unroll
      for (int j = 0; j < kPer; ++j) bv[j] = b_s[k][tx + kSide * j];
#pragma unroll
      for (int i = 0; i < kPer; ++i)
#pragma unroll
        for (int j = 0; j < kPer; ++j) acc[i][j] += av[i] * bv[j];
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int gm = m0 + ty + kSide * i;
#pragma unroll
    for (int j = 0; j < kPer; ++j) {
      const int gn = n0 + tx + kSide * j;
      if (gm >= M || gn >= N) continue;
      TC* dst = pc + gm * c.row + gn * c.col;
      float v = alpha * acc[i][j];
      if (accumulate) v += to_float(*dst);
      *dst = from_float<TC>(v);
    }
  }
}

__device__ float warp_sum(float v) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

__device__ float warp_max(float v) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// One warp per row of att (rows = B*NH*T): the scaled scores in [0, t] become probabilities, as the
// CPU twin computes them (exp(x - max), then times 1 / sum); the rest of the row becomes 0.
__global__ void attention_softmax_kernel(float* __restrict__ att, int T, int64_t rows) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (row >= rows) return;  // whole warps exit together
  float* r = att + row * T;
  const int n = static_cast<int>(row % T) + 1;
  float mx = -INFINITY;
  for (int i = lane; i < n; i += kWarp) mx = fmaxf(mx, r[i]);
  mx = warp_max(mx);
  float sum = 0.0f;
  for (int i = lane; i < n; i += kWarp) {
    const float e = expf(r[i] - mx);
    r[i] = e;
    sum += e;
  }
  const float inv = 1.0f / warp_sum(sum);
  for (int i = lane; i < n; i += kWarp) r[i] *= inv;
  for (int i = n + lane; i < T; i += kWarp) r[i] = 0.0f;
}

// One warp per row: datt (in ds) becomes dS = att * (datt - sum(att * datt)) in [0, t], 0 beyond.
__global__ void attention_softmax_backward_kernel(float* __restrict__ ds, const float* __restrict__ att, int T,
                                                  int64_t rows) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (row >= rows) return;
  const float* a = att + row * T;
  float* d = ds + row * T;
  const int n = static_cast<int>(row % T) + 1;
  float dot = 0.0f;
  for (int i = lane; i < n; i += kWarp) dot += a[i] * d[i];
  dot = warp_sum(dot);
  for (int i = lane; i < n; i += kWarp) d[i] = a[i] * (d[i] - dot);
  for (int i = n + lane; i < T; i += kWarp) d[i] = 0.0f;
}

void check_shape(const char* op, int B, int T, int C, int NH) {
  MT_CHECK(B >= 1 && T >= 1 && C >= 1 && NH >= 1, "[{}] B={}, T={}, C={}, NH={}: every dimension must be at least 1",
           op, B, T, C, NH);
  MT_CHECK(C % NH == 0, "[{}] C={} is not divisible by NH={}; the head size must be C / NH", op, C, NH);
  MT_CHECK(int64_t{B} * NH <= 65535, "[{}] B*NH={} (batch times heads) exceeds the 65535 the grid allows", op,
           int64_t{B} * NH);
}

unsigned tiles(int n) { return static_cast<unsigned>((n + kTile - 1) / kTile); }

template <class TC, class TA, class TB>
void gemm(View<TC> c, View<const TA> a, View<const TB> b, int M, int N, int K, int B, int NH, float alpha,
          bool accumulate, KRange k_range, bool skip_upper, cudaStream_t s) {
  const dim3 grid(tiles(N), tiles(M), static_cast<unsigned>(B * NH));
  attention_gemm_kernel<TC, TA, TB>
      <<<grid, kGemmThreads, 0, s>>>(c, a, b, M, N, K, NH, alpha, accumulate, k_range, skip_upper);
  CUDA_CHECK(cudaGetLastError());
}

unsigned row_blocks(int64_t rows) { return static_cast<unsigned>((rows + kRowsPerBlock - 1) / kRowsPerBlock); }

// Views of one head's q, k, v (T x hs, row stride 3C), of out / dout (row stride C) and of its T x T
// block of att / scratch; the *_t views are transposed (rows and columns swapped).
template <class T>
View<T> qkv_view(T* qkv, int part, int T_, int C, int hs) {
  return {qkv + int64_t{part} * C, int64_t{T_} * 3 * C, hs, 3 * C, 1};
}
template <class T>
View<T> qkv_view_t(T* qkv, int part, int T_, int C, int hs) {
  return {qkv + int64_t{part} * C, int64_t{T_} * 3 * C, hs, 1, 3 * C};
}
template <class T>
View<T> out_view(T* out, int T_, int C, int hs) {
  return {out, int64_t{T_} * C, hs, C, 1};
}
template <class T>
View<T> square_view(T* att, int T_, int NH) {
  return {att, int64_t{NH} * T_ * T_, int64_t{T_} * T_, T_, 1};
}
template <class T>
View<T> square_view_t(T* att, int T_, int NH) {
  return {att, int64_t{NH} * T_ * T_, int64_t{T_} * T_, 1, T_};
}

template <class T>
void forward(T* out, float* att, const T* qkv, int B, int T_, int C, int NH, void* stream) {
  check_shape("attention_forward_cuda", B, T_, C, NH);
  auto s = static_cast<cudaStream_t>(stream);
  const int hs = C / NH;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hs));
  const int64_t rows = int64_t{B} * NH * T_;
  // S = scale Q K^T (the tiles that reach the diagonal), then the row softmax in place, then out = att V.
  gemm(square_view(att, T_, NH), qkv_view(qkv, 0, T_, C, hs), qkv_view_t(qkv, 1, T_, C, hs), T_, T_, hs, B, NH, scale,
       false, KRange::all, true, s);
  attention_softmax_kernel<<<row_blocks(rows), kRowsPerBlock * kWarp, 0, s>>>(att, T_, rows);
  CUDA_CHECK(cudaGetLastError());
  gemm(out_view(out, T_, C, hs), square_view<const float>(att, T_, NH), qkv_view(qkv, 2, T_, C, hs), T_, hs, T_, B, NH,
       1.0f, false, KRange::up_to_rows, false, s);
}

template <class T>
void backward(T* dqkv, float* scratch, const T* dout, const T* qkv, const float* att, int B, int T_, int C, int NH,
              void* stream) {
  check_shape("attention_backward_cuda", B, T_, C, NH);
  auto s = static_cast<cudaStream_t>(stream);
  const int hs = C / NH;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hs));
  const int64_t rows = int64_t{B} * NH * T_;
  // dV += att^T dout;  datt = dout V^T (into scratch);  dS = softmax backward (in place);
  // dQ += scale dS K;  dK += scale dS^T Q.
  gemm(qkv_view(dqkv, 2, T_, C, hs), square_view_t(att, T_, NH), out_view(dout, T_, C, hs), T_, hs, T_, B, NH, 1.0f,
       true, KRange::from_rows, false, s);
  gemm(square_view(scratch, T_, NH), out_view(dout, T_, C, hs), qkv_view_t(qkv, 2, T_, C, hs), T_, T_, hs, B, NH, 1.0f,
       false, KRange::all, true, s);
  attention_softmax_backward_kernel<<<row_blocks(rows), kRowsPerBlock * kWarp, 0, s>>>(scratch, att, T_, rows);
  CUDA_CHECK(cudaGetLastError());
  gemm(qkv_view(dqkv, 0, T_, C, hs), square_view<const float>(scratch, T_, NH), qkv_view(qkv, 1, T_, C, hs), T_, hs, T_,
       B, NH, scale, true, KRange::up_to_rows, false, s);
  gemm(qkv_view(dqkv, 1, T_, C, hs), square_view_t<const float>(scratch, T_, NH), qkv_view(qkv, 0, T_, C, hs), T_, hs,
       T_, B, NH, scale, true, KRange::from_rows, false, s);
}

}  // namespace

void attention_forward_cuda(float* out, float* att, const float* qkv, int B, int T, int C, int NH, void* stream) {
  forward(out, att, qkv, B, T, C, NH, stream);
}

void attention_forward_cuda(Bf16* out, float* att, const Bf16* qkv, int B, int T, int C, int NH, void* stream) {
  forward(cuda_bf16(out), att, cuda_bf16(qkv), B, T, C, NH, stream);
}

void attention_backward_cuda(float* dqkv, float* scratch, const float* dout, const float* qkv, const float* att, int B,
                             int T, int C, int NH, void* stream) {
  backward(dqkv, scratch, dout, qkv, att, B, T, C, NH, stream);
}

void attention_backward_cuda(Bf16* dqkv, float* scratch, const Bf16* dout, const Bf16* qkv, const float* att, int B,
                             int T, int C, int NH, void* stream) {
  backward(cuda_bf16(dqkv), scratch, cuda_bf16(dout), cuda_bf16(qkv), att, B, T, C, NH, stream);
}

}  // namespace meshtrain
