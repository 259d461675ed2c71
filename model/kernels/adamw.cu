// CUDA AdamW update and gradient sum of squares (adamw.h); adamw_cpu.cpp is the specification.
//
// The update is elementwise: one thread per parameter in a grid-stride loop, with the bias
// corrections computed once on the host in double exactly as the CPU twin does. The sum of squares
// feeds global-norm clipping, so it must not vary run to run: a fixed two-stage reduction in double.
// Stage one gives each block a fixed chunk of kSumChunk elements; threads accumulate in double and
// the block reduces in shared memory in a fixed tree order, writing one partial per chunk. Stage two,
// one block, sums the partials the same way. The launch shape depends only on n, so the order of
// additions (hence the result) is fixed. The total is copied back and the stream synchronised: the
// caller gets a host double, like the CPU twin.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "core/cuda_check.h"
#include "model/kernels/adamw.h"

namespace meshtrain {
namespace {

constexpr int kBlock = 256;
constexpr int64_t kMaxBlocks = 65536;
constexpr int64_t kSumChunk = int64_t{kBlock} * 16;  // elements per stage-one partial

__global__ void adamw_kernel(float* __restrict__ params, const float* __restrict__ grads, float* __restrict__ m,
                             float* __restrict__ v, int64_t n, float lr, float beta1, float beta2, float eps,
                             float weight_decay, float bias_corr1, float bias_corr2, float grad_scale) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    const float g = grads[i] * grad_scale;
    const float mi = beta1 * m[i] + (1.0f - beta1) * g;
    const float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    const float m_hat = mi / bias_corr1;
    const float v_hat = vi / bias_corr2;
    params[i] -= lr * (m_hat / (sqrtf(v_hat) + eps) + weight_decay * params[i]);
  }
}

// Sums the block's per-thread values in a fixed tree order; the result is valid in thread 0.
__device__ double block_sum(double v) {
  __shared__ double sh[kBlock];
  sh[threadIdx.x] = v;
  __syncthreads();
  for (int stride = kBlock / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) sh[threadIdx.x] += sh[threadIdx.x + stride];
    __syncthreads();
  }
  return sh[0];
}

__global__ void sum_squares_partial_kernel(double* __restrict__ partial, const float* __restrict__ x, int64_t n) {
  const int64_t begin = blockIdx.x * kSumChunk;
  const int64_t end = min(begin + kSumChunk, n);
  double acc = 0.0;
  for (int64_t i = begin + threadIdx.x; i < end; i += kBlock) acc += static_cast<double>(x[i]) * x[i];
  const double total = block_sum(acc);
  if (threadIdx.x == 0) partial[blockIdx.x] = total;
}

__global__ void sum_squares_final_kernel(double* __restrict__ out, const double* __restrict__ partial,
                                         int64_t num_partials) {
  double acc = 0.0;
  for (int64_t i = threadIdx.x; i < num_partials; i += kBlock) acc += partial[i];
  const double total = block_sum(acc);
  if (threadIdx.x == 0) *out = total;
}

}  // namespace

void adamw_update_cuda(float* params, const float* grads, float* m, float* v, int64_t n, float lr, float beta1,
                       float beta2, float eps, float weight_decay, int t, float grad_scale, void* stream) {
  MT_CHECK(n >= 0, "[adamw_cuda] n={}: the parameter count cannot be negative", n);
  MT_CHECK(t >= 1, "[adamw_cuda] step t={}: steps count from 1 (the bias correction divides by 1 - beta^t)", t);
  MT_CHECK(beta1 >= 0.0f && beta1 < 1.0f && beta2 >= 0.0f && beta2 < 1.0f,
           "[adamw_cuda] beta1={}, beta2={}: both must lie in [0, 1)", beta1, beta2);
  if (n == 0) return;
  const float bias_corr1 = static_cast<float>(1.0 - std::pow(static_cast<double>(beta1), t));
  const float bias_corr2 = static_cast<float>(1.0 - std::pow(static_cast<double>(beta2), t));
  const int grid = static_cast<int>(std::min((n + kBlock - 1) / kBlock, kMaxBlocks));
  adamw_kernel<<<grid, kBlock, 0, static_cast<cudaStream_t>(stream)>>>(params, grads, m, v, n, lr, beta1, beta2, eps,
                                                                       weight_decay, bias_corr1, bias_corr2,
                                                                       grad_scale);
  CUDA_CHECK(cudaGetLastError());
}

double sum_squares_cuda(const float* x, int64_t n, void* stream) {
  MT_CHECK(n >= 0, "[sum_squares_cuda] n={}: the element count cannot be negative", n);
  if (n == 0) return 0.0;
  auto s = static_cast<cudaStream_t>(stream);
  const int64_t num_partials = (n + kSumChunk - 1) / kSumChunk;
  MT_CHECK(num_partials <= INT32_MAX, "[sum_squares_cuda] n={}: too many elements for one call", n);
  double* scratch = nullptr;  // [0]: the total, [1..]: the stage-one partials
  CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&scratch), (num_partials + 1) * sizeof(double), s));
  sum_squares_partial_kernel<<<static_cast<unsigned>(num_partials), kBlock, 0, s>>>(scratch + 1, x, n);
  CUDA_CHECK(cudaGetLastError());
  sum_squares_final_kernel<<<1, kBlock, 0, s>>>(scratch, scratch + 1, num_partials);
  CUDA_CHECK(cudaGetLastError());
  double total = 0.0;
  CUDA_CHECK(cudaMemcpyAsync(&total, scratch, sizeof(double), cudaMemcpyDeviceToHost, s));
  CUDA_CHECK(cudaFreeAsync(scratch, s));
  CUDA_CHECK(cudaStreamSynchronize(s));
  return total;
}

}  // namespace meshtrain
