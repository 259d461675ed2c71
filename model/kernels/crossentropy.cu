// CUDA fused softmax + cross-entropy over a padded vocabulary (crossentropy.h);
// crossentropy_cpu.cpp is the specification.
//
// One thread block per row. A single pass over the V real logits keeps, per thread, a running max m
// and a sum s of exp(x - m) rescaled whenever m grows (the "online softmax"); the pairs are then
// merged across the warp by shuffles and across warps through shared memory. loss = m + log s -
// x[target]. With a gradient wanted, a second sweep writes (exp(x - m) / s - [j == target]) * dloss,
// and 0 into the padded columns. dlogits may alias logits: x[target] is read before the reduction's
// barrier, and afterwards every element is read and then written by the same thread. Rows with a
// negative target get loss 0 and an all-zero gradient row.
// The kernel is templated on the logits' element type (float or bf16); the loss and all the math are
// fp32, and a bf16 gradient is rounded once when stored.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "core/cuda_check.h"
#include "model/kernels/convert.cuh"
#include "model/kernels/crossentropy.h"

namespace meshtrain {
namespace {

constexpr int kBlock = 512;
constexpr int kWarp = 32;

struct MaxSum {
  float m;  // running max
  float s;  // sum of exp(x - m)
};

__device__ MaxSum merge(MaxSum a, MaxSum b) {
  // -inf means "nothing seen yet"; handling it explicitly avoids exp(-inf - -inf) = NaN.
  if (a.m == -INFINITY) return b;
  if (b.m == -INFINITY) return a;
  const float m = fmaxf(a.m, b.m);
  return {m, a.s * expf(a.m - m) + b.s * expf(b.m - m)};
}

__device__ MaxSum block_merge(MaxSum v) {
  __shared__ float m_sh[kBlock / kWarp];
  __shared__ float s_sh[kBlock / kWarp];
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    MaxSum other{__shfl_xor_sync(0xffffffffu, v.m, offset), __shfl_xor_sync(0xffffffffu, v.s, offset)};
    v = merge(v, other);
  }
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  if (lane == 0) {
    m_sh[warp] = v.m;
    s_sh[warp] = v.s;
  }
  __syncthreads();
  // Every thread merges the warp results in the same fixed order, so all agree bit for bit.
  MaxSum total{-INFINITY, 0.0f};
  for (int w = 0; w < kBlock / kWarp; ++w) total = merge(total, MaxSum{m_sh[w], s_sh[w]});
  return total;
}

template <class T>
__global__ void softmax_crossentropy_kernel(float* __restrict__ losses, T* dlogits, const T* logits,
                                            const int32_t* __restrict__ targets, int V, int Vp, float dloss) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * Vp;
  const T* x = logits + row;
  T* d = dlogits != nullptr ? dlogits + row : nullptr;
  const int target = targets[blockIdx.x];
  if (target < 0) {  // uniform across the block: no barrier is skipped by some threads only
    if (threadIdx.x == 0) losses[blockIdx.x] = 0.0f;
    if (d != nullptr) {
      for (int j = threadIdx.x; j < Vp; j += blockDim.x) d[j] = from_float<T>(0.0f);
    }
    return;
  }
  const float x_target = target < V ? to_float(x[target]) : NAN;  // read before any thread can overwrite it

  MaxSum acc{-INFINITY, 0.0f};
  for (int j = threadIdx.x; j < V; j += blockDim.x) {
    const float xj = to_float(x[j]);
    if (xj > acc.m) {
      acc.s = acc.s * expf(acc.m - xj) + 1.0f;  // expf(-inf) = 0 covers the first element
      acc.m = xj;
    } else {
      acc.s += expf(xj - acc.m);
    }
  }
  const MaxSum total = block_merge(acc);
  if (threadIdx.x == 0) losses[blockIdx.x] = total.m + logf(total.s) - x_target;

  if (d != nullptr) {
    const float scale = dloss / total.s;
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
      const float g = expf(to_float(x[j]) - total.m) * scale;
      d[j] = from_float<T>(j == target ? g - dloss : g);
    }
    for (int j = V + threadIdx.x; j < Vp; j += blockDim.x) d[j] = from_float<T>(0.0f);
  }
}

template <class T>
void launch(float* losses, T* dlogits, const T* logits, const int32_t* targets, int N, int V, int Vp, float dloss,
            void* stream) {
  MT_CHECK(N >= 0 && V >= 1 && Vp >= V, "[crossentropy_cuda] N={}, V={}, Vp={}: need N >= 0 and 1 <= V <= Vp", N, V,
           Vp);
  if (N == 0) return;
  softmax_crossentropy_kernel<<<N, kBlock, 0, static_cast<cudaStream_t>(stream)>>>(losses, dlogits, logits, targets, V,
                                                                                   Vp, dloss);
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace

void softmax_crossentropy_cuda(float* losses, float* dlogits, const float* logits, const int32_t* targets, int N, int V,
                               int Vp, float dloss, void* stream) {
  launch(losses, dlogits, logits, targets, N, V, Vp, dloss, stream);
}

void softmax_crossentropy_cuda(float* losses, Bf16* dlogits, const Bf16* logits, const int32_t* targets, int N, int V,
                               int Vp, float dloss, void* stream) {
  launch(losses, cuda_bf16(dlogits), cuda_bf16(logits), targets, N, V, Vp, dloss, stream);
}

}  // namespace meshtrain
