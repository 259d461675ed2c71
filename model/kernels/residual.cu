// CUDA residual connection (residual.h): out = a + b, and the dst += src its backward uses;
// residual_cpu.cpp is the specification.
//
// Both are memory-bound elementwise loops: one thread per element in a grid-stride loop. No aliasing
// is promised between the arrays except that out may equal a or b (each element is read before it is
// written by the same thread), so only src/dst of the accumulate are marked __restrict__.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "core/cuda_check.h"
#include "model/kernels/residual.h"

namespace meshtrain {
namespace {

constexpr int kBlock = 256;
constexpr int64_t kMaxBlocks = 65536;

__global__ void residual_forward_kernel(float* out, const float* a, const float* b, int64_t N) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < N; i += int64_t{gridDim.x} * blockDim.x) {
    out[i] = a[i] + b[i];
  }
}

__global__ void residual_accumulate_kernel(float* __restrict__ dst, const float* __restrict__ src, int64_t N) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < N; i += int64_t{gridDim.x} * blockDim.x) {
    dst[i] += src[i];
  }
}

int grid_for(int64_t N) { return static_cast<int>(std::min((N + kBlock - 1) / kBlock, kMaxBlocks)); }

}  // namespace

void residual_forward_cuda(float* out, const float* a, const float* b, int64_t N, void* stream) {
  MT_CHECK(N >= 0, "[residual_forward_cuda] N={}: the element count cannot be negative", N);
  if (N == 0) return;
  residual_forward_kernel<<<grid_for(N), kBlock, 0, static_cast<cudaStream_t>(stream)>>>(out, a, b, N);
  CUDA_CHECK(cudaGetLastError());
}

void residual_accumulate_cuda(float* dst, const float* src, int64_t N, void* stream) {
  MT_CHECK(N >= 0, "[residual_accumulate_cuda] N={}: the element count cannot be negative", N);
  if (N == 0) return;
  residual_accumulate_kernel<<<grid_for(N), kBlock, 0, static_cast<cudaStream_t>(stream)>>>(dst, src, N);
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace meshtrain
