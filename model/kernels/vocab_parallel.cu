// CUDA twins of the vocabulary-parallel embedding and cross-entropy (vocab_parallel.h);
// vocab_parallel_cpu.cpp is the specification. The model runs its tensor-parallel all-reduces
// between these kernels, so each one is a plain pass over device memory on the caller's stream.
//
// Row statistics use one thread block per row: each thread reduces a strided slice of the row
// (sums in double, as the CPU does), then the block combines the slices in a fixed tree order, so
// the results do not change run to run. The embedding backward is the encoder's over this rank's
// rows (encoder_backward_rows_cuda: positions sorted by token, a block per run of equal tokens,
// each row's contributions added in position order, as the CPU reference adds them).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "core/cuda_check.h"
#include "model/kernels/convert.cuh"
#include "model/kernels/encoder.h"
#include "model/kernels/vocab_parallel.h"

namespace meshtrain {
namespace {

constexpr int kBlock = 256;

template <class T>
__global__ void embedding_rows_kernel(T* __restrict__ out, const int32_t* __restrict__ tokens,
                                      const T* __restrict__ wte_local, int64_t BT, int C, int64_t v0, int64_t Vl) {
  const int64_t n = BT * C;
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < n;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = k / C, c = k % C, local = tokens[i] - v0;
    out[k] = local >= 0 && local < Vl ? wte_local[local * C + c] : from_float<T>(0.0f);
  }
}

template <class T>
__global__ void add_positions_kernel(T* __restrict__ out, const T* __restrict__ wpe, int64_t BT, int T_, int C) {
  const int64_t n = BT * C;
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < n;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = k / C, c = k % C;
    out[k] = from_float<T>(to_float(out[k]) + to_float(wpe[(i % T_) * C + c]));
  }
}

/// The block's values combined in a fixed tree order; every thread gets the result.
template <class V, class Op>
__device__ V block_reduce(V x, Op op) {
  __shared__ V sh[kBlock];
  sh[threadIdx.x] = x;
  __syncthreads();
  for (unsigned stride = kBlock / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) sh[threadIdx.x] = op(sh[threadIdx.x], sh[threadIdx.x + stride]);
    __syncthreads();
  }
  const V r = sh[0];
  __syncthreads();  // sh is reused by the next call
  return r;
}

template <class T>
__global__ void xent_max_kernel(float* __restrict__ mx, const T* __restrict__ logits, int64_t Vl, int64_t real) {
  const T* row = logits + blockIdx.x * Vl;
  float m = -INFINITY;
  for (int64_t j = threadIdx.x; j < real; j += kBlock) m = fmaxf(m, to_float(row[j]));
  m = block_reduce(m, [](float a, float b) { return fmaxf(a, b); });
  if (threadIdx.x == 0) mx[blockIdx.x] = m;
}

template <class T>
__global__ void xent_sums_kernel(float* __restrict__ sums, const T* __restrict__ logits,
                                 const int32_t* __restrict__ targets, const float* __restrict__ mx, int N, int64_t Vl,
                                 int64_t real, int64_t v0) {
  const int i = blockIdx.x;
  const T* row = logits + i * Vl;
  double s = 0.0;
  for (int64_t j = threadIdx.x; j < real; j += kBlock) s += exp(static_cast<double>(to_float(row[j]) - mx[i]));
  s = block_reduce(s, [](double a, double b) { return a + b; });
  if (threadIdx.x == 0) {
    sums[i] = static_cast<float>(s);
    const int64_t local = targets[i] - v0;
    sums[N + i] = targets[i] >= 0 && local >= 0 && local < real ? to_float(row[local]) : 0.0f;
  }
}

// dlogits may alias logits: each element is read, then written, by the same thread.
template <class T>
__global__ void xent_finish_kernel(float* __restrict__ losses, T* dlogits, const T* logits,
                                   const int32_t* __restrict__ targets, const float* __restrict__ mx,
                                   const float* __restrict__ sums, int N, int64_t Vl, int64_t real, int64_t v0,
                                   float dloss) {
  const int i = blockIdx.x;
  const bool counted = targets[i] >= 0;
  if (threadIdx.x == 0) losses[i] = counted ? logf(sums[i]) + mx[i] - sums[N + i] : 0.0f;
  if (dlogits == nullptr) return;
  const T* row = logits + i * Vl;
  T* drow = dlogits + i * Vl;
  const float inv = 1.0f / sums[i];
  const int64_t local = targets[i] - v0;
  for (int64_t j = threadIdx.x; j < Vl; j += kBlock) {
    const float p = j < real ? expf(to_float(row[j]) - mx[i]) * inv : 0.0f;
    drow[j] = from_float<T>(counted && j < real ? (p - (j == local ? 1.0f : 0.0f)) * dloss : 0.0f);
  }
}

int grid_for(int64_t n) { return static_cast<int>(std::min<int64_t>((n + kBlock - 1) / kBlock, 4096)); }
cudaStream_t st(void* s) { return static_cast<cudaStream_t>(s); }

template <class T>
void rows(T* out, const int32_t* tokens, const T* wte, int64_t BT, int C, int64_t v0, int64_t Vl, void* s) {
  if (BT * C == 0) return;
  embedding_rows_kernel<<<grid_for(BT * C), kBlock, 0, st(s)>>>(out, tokens, wte, BT, C, v0, Vl);
  CUDA_CHECK(cudaGetLastError());
}
template <class T>
void positions(T* out, const T* wpe, int B, int T_, int C, void* s) {
  const int64_t BT = static_cast<int64_t>(B) * T_;
  if (BT * C == 0) return;
  add_positions_kernel<<<grid_for(BT * C), kBlock, 0, st(s)>>>(out, wpe, BT, T_, C);
  CUDA_CHECK(cudaGetLastError());
}
template <class T>
void xent_max(float* mx, const T* logits, int N, int64_t Vl, int64_t V, int64_t v0, void* s) {
  if (N == 0) return;
  xent_max_kernel<<<N, kBlock, 0, st(s)>>>(mx, logits, Vl, std::clamp<int64_t>(V - v0, 0, Vl));
  CUDA_CHECK(cudaGetLastError());
}
template <class T>
void xent_sums(float* sums, const T* logits, const int32_t* targets, const float* mx, int N, int64_t Vl, int64_t V,
               int64_t v0, void* s) {
  if (N == 0) return;
  xent_sums_kernel<<<N, kBlock, 0, st(s)>>>(sums, logits, targets, mx, N, Vl, std::clamp<int64_t>(V - v0, 0, Vl), v0);
  CUDA_CHECK(cudaGetLastError());
}
template <class T>
void xent_finish(float* losses, T* dlogits, const T* logits, const int32_t* targets, const float* mx,
                 const float* sums, int N, int64_t Vl, int64_t V, int64_t v0, float dloss, void* s) {
  if (N == 0) return;
  xent_finish_kernel<<<N, kBlock, 0, st(s)>>>(losses, dlogits, logits, targets, mx, sums, N, Vl,
                                              std::clamp<int64_t>(V - v0, 0, Vl), v0, dloss);
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace

void vocab_embedding_rows_cuda(float* out, const int32_t* tokens, const float* wte_local, int64_t BT, int C, int64_t v0,
                               int64_t Vl, void* stream) {
  rows(out, tokens, wte_local, BT, C, v0, Vl, stream);
}
void vocab_embedding_rows_cuda(Bf16* out, const int32_t* tokens, const Bf16* wte_local, int64_t BT, int C, int64_t v0,
                               int64_t Vl, void* stream) {
  rows(cuda_bf16(out), tokens, cuda_bf16(wte_local), BT, C, v0, Vl, stream);
}
void add_positions_cuda(float* out, const float* wpe, int B, int T, int C, void* stream) {
  positions(out, wpe, B, T, C, stream);
}
void add_positions_cuda(Bf16* out, const Bf16* wpe, int B, int T, int C, void* stream) {
  positions(cuda_bf16(out), cuda_bf16(wpe), B, T, C, stream);
}
void vocab_embedding_backward_cuda(float* dwte_local, float* dwpe, const float* dout, const int32_t* tokens, int B,
                                   int T, int C, int64_t v0, int64_t Vl, void* stream) {
  encoder_backward_rows_cuda(dwte_local, dwpe, dout, tokens, B, T, C, v0, Vl, stream);
}
void vocab_embedding_backward_cuda(Bf16* dwte_local, Bf16* dwpe, const Bf16* dout, const int32_t* tokens, int B, int T,
                                   int C, int64_t v0, int64_t Vl, void* stream) {
  encoder_backward_rows_cuda(dwte_local, dwpe, dout, tokens, B, T, C, v0, Vl, stream);
}
void vocab_xent_max_cuda(float* mx, const float* logits, int N, int64_t Vl, int64_t V, int64_t v0, void* stream) {
  xent_max(mx, logits, N, Vl, V, v0, stream);
}
void vocab_xent_max_cuda(float* mx, const Bf16* logits, int N, int64_t Vl, int64_t V, int64_t v0, void* stream) {
  xent_max(mx, cuda_bf16(logits), N, Vl, V, v0, stream);
}
void vocab_xent_sums_cuda(float* sums, const float* logits, const int32_t* targets, const float* mx, int N, int64_t Vl,
                          int64_t V, int64_t v0, void* stream) {
  xent_sums(sums, logits, targets, mx, N, Vl, V, v0, stream);
}
void vocab_xent_sums_cuda(float* sums, const Bf16* logits, const int32_t* targets, const float* mx, int N, int64_t Vl,
                          int64_t V, int64_t v0, void* stream) {
  xent_sums(sums, cuda_bf16(logits), targets, mx, N, Vl, V, v0, stream);
}
void vocab_xent_finish_cuda(float* losses, float* dlogits, const float* logits, const int32_t* targets, const float* mx,
                            const float* sums, int N, int64_t Vl, int64_t V, int64_t v0, float dloss, void* stream) {
  xent_finish(losses, dlogits, logits, targets, mx, sums, N, Vl, V, v0, dloss, stream);
}
void vocab_xent_finish_cuda(float* losses, Bf16* dlogits, const Bf16* logits, const int32_t* targets, const float* mx,
                            const float* sums, int N, int64_t Vl, int64_t V, int64_t v0, float dloss, void* stream) {
  xent_finish(losses, cuda_bf16(dlogits), cuda_bf16(logits), targets, mx, sums, N, Vl, V, v0, dloss, stream);
}

}  // namespace meshtrain
