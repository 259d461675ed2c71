// CUDA attention over a key/value cache (kv_cache.h); kv_cache_cpu.cpp is the specification.
//
// Two kernels on the caller's stream: the first copies the new rows' k and v into the caches (one
// thread per element), the second runs one thread block per (new row, head): its threads compute
// the scores of strided cached positions into shared memory, the block agrees on their maximum and
// the sum of exponentials (a fixed tree order, so results do not change run to run), then each
// thread produces output channels as the probability-weighted sum of the cached values. Decoding
// is memory-bound (every cached k and v is read once per new token); this is simple rather than
// split-K fast.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "core/cuda_check.h"
#include "model/kernels/convert.cuh"
#include "model/kernels/kv_cache.h"

namespace meshtrain {
namespace {

constexpr int kBlock = 128;

template <class T>
__global__ void append_kernel(T* __restrict__ kcache, T* __restrict__ vcache, const T* __restrict__ qkv, int T_,
                              int pos0, int C) {
  const int64_t n = static_cast<int64_t>(T_) * C;
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < n;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = k / C, c = k % C, row = (pos0 + t) * C + c;
    kcache[row] = qkv[t * 3 * C + C + c];
    vcache[row] = qkv[t * 3 * C + 2 * C + c];
  }
}

/// The block's values combined in a fixed tree order (kBlock threads); every thread gets the result.
template <bool Max>
__device__ float block_combine(float x, float* sh) {
  sh[threadIdx.x] = x;
  __syncthreads();
  for (int stride = kBlock / 2; stride > 0; stride /= 2) {
    if (static_cast<int>(threadIdx.x) < stride) {
      const float a = sh[threadIdx.x], b = sh[threadIdx.x + stride];
      sh[threadIdx.x] = Max ? fmaxf(a, b) : a + b;
    }
    __syncthreads();
  }
  const float r = sh[0];
  __syncthreads();
  return r;
}

template <class T>
__global__ void attend_kernel(T* __restrict__ out, const T* __restrict__ kcache, const T* __restrict__ vcache,
                              const T* __restrict__ qkv, int pos0, int C, int NH) {
  extern __shared__ float scores[];  // pos0 + t + 1 scores, then kBlock floats for the reductions
  const int t = blockIdx.x, h = blockIdx.y, hs = C / NH, n = pos0 + t + 1;
  float* red = scores + n;
  const T* q = qkv + static_cast<int64_t>(t) * 3 * C + h * hs;
  const float scale = rsqrtf(static_cast<float>(hs));
  float mx = -INFINITY;
  for (int j = threadIdx.x; j < n; j += blockDim.x) {
    const T* k = kcache + static_cast<int64_t>(j) * C + h * hs;
    float dot = 0.0f;
    for (int d = 0; d < hs; ++d) dot += to_float(q[d]) * to_float(k[d]);
    scores[j] = scale * dot;
    mx = fmaxf(mx, scores[j]);
  }
  mx = block_combine<true>(mx, red);
  float sum = 0.0f;
  for (int j = threadIdx.x; j < n; j += blockDim.x) {
    scores[j] = expf(scores[j] - mx);
    sum += scores[j];
  }
  const float inv = 1.0f / block_combine<false>(sum, red);  // also orders the scores' writes before the reads below
  for (int d = threadIdx.x; d < hs; d += blockDim.x) {
    float acc = 0.0f;
    for (int j = 0; j < n; ++j) acc += scores[j] * inv * to_float(vcache[static_cast<int64_t>(j) * C + h * hs + d]);
    out[static_cast<int64_t>(t) * C + h * hs + d] = from_float<T>(acc);
  }
}

template <class T>
void launch(T* out, T* kcache, T* vcache, const T* qkv, int T_, int pos0, int C, int NH, void* stream) {
  MT_CHECK(T_ >= 1 && pos0 >= 0 && NH >= 1 && C % NH == 0, "[attention_cached_cuda] T={}, pos0={}, C={}, NH={}", T_,
           pos0, C, NH);
  MT_CHECK(pos0 + T_ <= kMaxCachedPositions, "[attention_cached_cuda] {} cached positions: at most {} are supported",
           pos0 + T_, kMaxCachedPositions);
  auto s = static_cast<cudaStream_t>(stream);
  const int64_t n = static_cast<int64_t>(T_) * C;
  append_kernel<<<static_cast<unsigned>((n + 255) / 256), 256, 0, s>>>(kcache, vcache, qkv, T_, pos0, C);
  CUDA_CHECK(cudaGetLastError());
  const size_t shared = (static_cast<size_t>(pos0 + T_) + kBlock) * sizeof(float);
  attend_kernel<<<dim3(T_, NH), kBlock, shared, s>>>(out, kcache, vcache, qkv, pos0, C, NH);
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace

void attention_cached_cuda(float* out, float* kcache, float* vcache, const float* qkv, int T, int pos0, int C, int NH,
                           void* stream) {
  launch(out, kcache, vcache, qkv, T, pos0, C, NH, stream);
}
void attention_cached_cuda(Bf16* out, Bf16* kcache, Bf16* vcache, const Bf16* qkv, int T, int pos0, int C, int NH,
                           void* stream) {
  launch(cuda_bf16(out), cuda_bf16(kcache), cuda_bf16(vcache), cuda_bf16(qkv), T, pos0, C, NH, stream);
}

}  // namespace meshtrain
