// CUDA AdamW update and gradient sum of squares (adamw.h); adamw_cpu.cpp is the specification.
//
// The update is elementwise: one thread per parameter in a grid-stride loop, every variant through
// the same per-element function written as the CPU twin. The classic launcher takes the step's
// scalars by value, with the bias corrections computed once on the host in double exactly as the CPU
// twin does. The graph-capturable launchers read them from an AdamWScalars in device memory instead,
// so a captured step replays with each step's learning rate, bias corrections and clipping factor.
// In mixed precision the fp32 master weights are what AdamW updates; the bf16 parameters only receive
// the rounded master, so no bf16 rounding ever accumulates into the weights.
// The sum of squares feeds global-norm clipping, so it must not vary run to run: a fixed two-stage
// reduction in double. Stage one gives each block a fixed chunk of kSumSquaresChunk elements; threads
// accumulate in double and the block reduces in shared memory in a fixed tree order, writing one
// partial per chunk. Stage two, one block, sums the partials the same way. The launch shape depends
// only on n, so the order of additions (hence the result) is fixed. sum_squares_async_cuda leaves the
// total in device memory (the caller owns the partials, so nothing is allocated and nothing waits);
// clip_scale_cuda turns it into the norm and the clipping factor on the device. sum_squares_cuda is
// the same reduction with its own scratch, copied back after a stream synchronisation: the caller
// gets a host double, like the CPU twin (so that one is not for captured steps).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "core/cuda_check.h"
#include "model/kernels/adamw.h"
#include "model/kernels/convert.cuh"

namespace meshtrain {
namespace {

constexpr int kBlock = 256;
constexpr int64_t kMaxBlocks = 65536;

// One element of the update, as adamw_update_cpu writes it; updates m and v, returns the new parameter.
__device__ __forceinline__ float adamw_step(float p, float grad, float& m, float& v, float lr, float beta1, float beta2,
                                            float eps, float weight_decay, float bias_corr1, float bias_corr2,
                                            float grad_scale) {
  const float g = grad * grad_scale;
  const float mi = beta1 * m + (1.0f - beta1) * g;
  const float vi = beta2 * v + (1.0f - beta2) * g * g;
  m = mi;
  v = vi;
  const float m_hat = mi / bias_corr1;
  const float v_hat = vi / bias_corr2;
  return p - lr * (m_hat / (sqrtf(v_hat) + eps) + weight_decay * p);
}

__global__ void adamw_kernel(float* __restrict__ params, const float* __restrict__ grads, float* __restrict__ m,
                             float* __restrict__ v, int64_t n, float lr, float beta1, float beta2, float eps,
                             float weight_decay, float bias_corr1, float bias_corr2, float grad_scale) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    params[i] = adamw_step(params[i], grads[i], m[i], v[i], lr, beta1, beta2, eps, weight_decay, bias_corr1, bias_corr2,
                           grad_scale);
  }
}

// Scalars from device memory. master (fp32) is updated in place; copy, when not null (the bf16
// parameters of mixed precision), receives the rounded new master.
template <class T>
__global__ void adamw_device_scalars_kernel(float* __restrict__ master, T* __restrict__ copy,
                                            const T* __restrict__ grads, float* __restrict__ m, float* __restrict__ v,
                                            int64_t n, const AdamWScalars* __restrict__ scalars, float beta1,
                                            float beta2, float eps, float weight_decay) {
  const AdamWScalars sc = *scalars;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    const float p = adamw_step(master[i], to_float(grads[i]), m[i], v[i], sc.lr, beta1, beta2, eps, weight_decay,
                               sc.bias_corr1, sc.bias_corr2, sc.grad_scale);
    master[i] = p;
    if (copy != nullptr) copy[i] = from_float<T>(p);
  }
}

// Sums the block's per-thread values in a fixed tree order; the result is valid in thread 0.
__device__ double block_sum(double v) {
  __shared__ double sh[kBlock];
  sh[threadIdx.x] = v;
  __syncthreads();
  for (unsigned stride = kBlock / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) sh[threadIdx.x] += sh[threadIdx.x + stride];
    __syncthreads();
  }
  return sh[0];
}

template <class T>
__global__ void sum_squares_partial_kernel(double* __restrict__ partial, const T* __restrict__ x, int64_t n) {
  const int64_t begin = blockIdx.x * kSumSquaresChunk;
  const int64_t end = min(begin + kSumSquaresChunk, n);
  double acc = 0.0;
  for (int64_t i = begin + threadIdx.x; i < end; i += kBlock) {
    const float xi = to_float(x[i]);
    acc += static_cast<double>(xi) * xi;
  }
  const double total = block_sum(acc);
  if (threadIdx.x == 0) partial[blockIdx.x] = total;
}

// num_partials may be 0 (n = 0): the total is then 0.
__global__ void sum_squares_final_kernel(double* __restrict__ out, const double* __restrict__ partial,
                                         int64_t num_partials) {
  double acc = 0.0;
  for (int64_t i = threadIdx.x; i < num_partials; i += kBlock) acc += partial[i];
  const double total = block_sum(acc);
  if (threadIdx.x == 0) *out = total;
}

// AdamW::clip_scale (model/optimizer.cpp) on the device, with the norm it is given there.
__global__ void sum_to_float_kernel(float* __restrict__ out, const double* __restrict__ pieces, int count) {
  double sum = 0.0;
  for (int i = 0; i < count; ++i) sum += pieces[i];
  *out = static_cast<float>(sum);
}

__global__ void float_to_sum_kernel(double* __restrict__ sum, const float* __restrict__ in) { *sum = *in; }

// The pieces (sums of squares of separate ranges) are added in order first.
__global__ void clip_scale_kernel(AdamWScalars* __restrict__ scalars, const double* __restrict__ pieces, int count,
                                  float grad_clip) {
  double sumsq = 0.0;
  for (int i = 0; i < count; ++i) sumsq += pieces[i];
  const double norm = sqrt(sumsq);
  scalars->grad_norm = static_cast<float>(norm);
  scalars->grad_scale = grad_clip > 0.0f && norm > grad_clip ? grad_clip / static_cast<float>(norm) : 1.0f;
}

int grid_for(int64_t n) { return static_cast<int>(std::min((n + kBlock - 1) / kBlock, kMaxBlocks)); }

void check_betas(float beta1, float beta2) {
  MT_CHECK(beta1 >= 0.0f && beta1 < 1.0f && beta2 >= 0.0f && beta2 < 1.0f,
           "[adamw_cuda] beta1={}, beta2={}: both must lie in [0, 1)", beta1, beta2);
}

template <class T>
void sum_squares_async(double* out, double* partials, const T* x, int64_t n, void* stream) {
  MT_CHECK(n >= 0, "[sum_squares_async_cuda] n={}: the element count cannot be negative", n);
  const int64_t num_partials = sum_squares_partials(n);
  MT_CHECK(num_partials <= INT32_MAX, "[sum_squares_async_cuda] n={}: too many elements for one call", n);
  MT_CHECK(out != nullptr && (num_partials == 0 || partials != nullptr),
           "[sum_squares_async_cuda] out and ({} doubles of) partials must be device buffers", num_partials);
  auto s = static_cast<cudaStream_t>(stream);
  if (num_partials > 0) {
    sum_squares_partial_kernel<<<static_cast<unsigned>(num_partials), kBlock, 0, s>>>(partials, x, n);
    CUDA_CHECK(cudaGetLastError());
  }
  sum_squares_final_kernel<<<1, kBlock, 0, s>>>(out, partials, num_partials);
  CUDA_CHECK(cudaGetLastError());
}

template <class T>
void adamw_device_scalars(float* master, T* copy, const T* grads, float* m, float* v, int64_t n,
                          const AdamWScalars* scalars, float beta1, float beta2, float eps, float weight_decay,
                          void* stream) {
  MT_CHECK(n >= 0, "[adamw_cuda] n={}: the parameter count cannot be negative", n);
  check_betas(beta1, beta2);
  MT_CHECK(scalars != nullptr, "[adamw_cuda] scalars is null: the step's lr and corrections live in device memory");
  if (n == 0) return;
  adamw_device_scalars_kernel<<<grid_for(n), kBlock, 0, static_cast<cudaStream_t>(stream)>>>(
      master, copy, grads, m, v, n, scalars, beta1, beta2, eps, weight_decay);
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace

void adamw_update_cuda(float* params, const float* grads, float* m, float* v, int64_t n, float lr, float beta1,
                       float beta2, float eps, float weight_decay, int t, float grad_scale, void* stream) {
  MT_CHECK(n >= 0, "[adamw_cuda] n={}: the parameter count cannot be negative", n);
  MT_CHECK(t >= 1, "[adamw_cuda] step t={}: steps count from 1 (the bias correction divides by 1 - beta^t)", t);
  check_betas(beta1, beta2);
  if (n == 0) return;
  const float bias_corr1 = adamw_bias_correction(beta1, t);
  const float bias_corr2 = adamw_bias_correction(beta2, t);
  adamw_kernel<<<grid_for(n), kBlock, 0, static_cast<cudaStream_t>(stream)>>>(
      params, grads, m, v, n, lr, beta1, beta2, eps, weight_decay, bias_corr1, bias_corr2, grad_scale);
  CUDA_CHECK(cudaGetLastError());
}

void adamw_update_cuda(float* params, const float* grads, float* m, float* v, int64_t n, const AdamWScalars* scalars,
                       float beta1, float beta2, float eps, float weight_decay, void* stream) {
  adamw_device_scalars(params, static_cast<float*>(nullptr), grads, m, v, n, scalars, beta1, beta2, eps, weight_decay,
                       stream);
}

void adamw_update_cuda(Bf16* params, float* master, const Bf16* grads, float* m, float* v, int64_t n,
                       const AdamWScalars* scalars, float beta1, float beta2, float eps, float weight_decay,
                       void* stream) {
  adamw_device_scalars(master, cuda_bf16(params), cuda_bf16(grads), m, v, n, scalars, beta1, beta2, eps, weight_decay,
                       stream);
}

void sum_squares_async_cuda(double* out, double* partials, const float* x, int64_t n, void* stream) {
  sum_squares_async(out, partials, x, n, stream);
}

void sum_squares_async_cuda(double* out, double* partials, const Bf16* x, int64_t n, void* stream) {
  sum_squares_async(out, partials, cuda_bf16(x), n, stream);
}

void sum_to_float_cuda(float* out, const double* pieces, int count, void* stream) {
  MT_CHECK(out != nullptr && pieces != nullptr && count >= 1, "[sum_to_float_cuda] {} pieces", count);
  sum_to_float_kernel<<<1, 1, 0, static_cast<cudaStream_t>(stream)>>>(out, pieces, count);
  CUDA_CHECK(cudaGetLastError());
}

void float_to_sum_cuda(double* sum, const float* in, void* stream) {
  MT_CHECK(sum != nullptr && in != nullptr, "[float_to_sum_cuda] device pointers needed");
  float_to_sum_kernel<<<1, 1, 0, static_cast<cudaStream_t>(stream)>>>(sum, in);
  CUDA_CHECK(cudaGetLastError());
}

void clip_scale_cuda(AdamWScalars* scalars, const double* sumsq, float grad_clip, void* stream) {
  clip_scale_cuda(scalars, sumsq, 1, grad_clip, stream);
}

void clip_scale_cuda(AdamWScalars* scalars, const double* pieces, int count, float grad_clip, void* stream) {
  MT_CHECK(scalars != nullptr && pieces != nullptr && count >= 1,
           "[clip_scale_cuda] scalars and {} sums of squares must be device buffers", count);
  clip_scale_kernel<<<1, 1, 0, static_cast<cudaStream_t>(stream)>>>(scalars, pieces, count, grad_clip);
  CUDA_CHECK(cudaGetLastError());
}

double sum_squares_cuda(const float* x, int64_t n, void* stream) {
  MT_CHECK(n >= 0, "[sum_squares_cuda] n={}: the element count cannot be negative", n);
  if (n == 0) return 0.0;
  MT_CHECK(sum_squares_partials(n) <= INT32_MAX, "[sum_squares_cuda] n={}: too many elements for one call", n);
  auto s = static_cast<cudaStream_t>(stream);
  double* scratch = nullptr;  // [0]: the total, [1..]: the stage-one partials
  CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&scratch), (sum_squares_partials(n) + 1) * sizeof(double), s));
  sum_squares_async_cuda(scratch, scratch + 1, x, n, stream);
  double total = 0.0;
  CUDA_CHECK(cudaMemcpyAsync(&total, scratch, sizeof(double), cudaMemcpyDeviceToHost, s));
  CUDA_CHECK(cudaFreeAsync(scratch, s));
  CUDA_CHECK(cudaStreamSynchronize(s));
  return total;
}

}  // namespace meshtrain
