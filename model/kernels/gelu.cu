// CUDA GELU, tanh approximation (gelu.h); gelu_cpu.cpp is the specification.
//
// Both directions are elementwise over a flat array and memory-bound: one thread per element in a
// grid-stride loop (so any N fits a bounded grid), with tanhf from the CUDA math library (a couple of
// ulp from glibc's). The formula and its derivative are written exactly as in the CPU twin.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "core/cuda_check.h"
#include "model/kernels/gelu.h"

namespace meshtrain {
namespace {

constexpr int kBlock = 256;
constexpr int64_t kMaxBlocks = 65536;  // grid-stride beyond this: more blocks only add scheduling cost
constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kCubic = 0.044715f;

__global__ void gelu_forward_kernel(float* __restrict__ out, const float* __restrict__ inp, int64_t N) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < N; i += int64_t{gridDim.x} * blockDim.x) {
    const float x = inp[i];
    const float u = kSqrt2OverPi * (x + kCubic * x * x * x);
    out[i] = 0.5f * x * (1.0f + tanhf(u));
  }
}

__global__ void gelu_backward_kernel(float* __restrict__ dinp, const float* __restrict__ inp,
                                     const float* __restrict__ dout, int64_t N) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < N; i += int64_t{gridDim.x} * blockDim.x) {
    const float x = inp[i];
    const float u = kSqrt2OverPi * (x + kCubic * x * x * x);
    const float th = tanhf(u);
    const float du_dx = kSqrt2OverPi * (1.0f + 3.0f * kCubic * x * x);
    const float grad = 0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * du_dx;
    dinp[i] += grad * dout[i];
  }
}

int grid_for(int64_t N) { return static_cast<int>(std::min((N + kBlock - 1) / kBlock, kMaxBlocks)); }

}  // namespace

void gelu_forward_cuda(float* out, const float* inp, int64_t N, void* stream) {
  MT_CHECK(N >= 0, "[gelu_forward_cuda] N={}: the element count cannot be negative", N);
  if (N == 0) return;
  gelu_forward_kernel<<<grid_for(N), kBlock, 0, static_cast<cudaStream_t>(stream)>>>(out, inp, N);
  CUDA_CHECK(cudaGetLastError());
}

void gelu_backward_cuda(float* dinp, const float* inp, const float* dout, int64_t N, void* stream) {
  MT_CHECK(N >= 0, "[gelu_backward_cuda] N={}: the element count cannot be negative", N);
  if (N == 0) return;
  gelu_backward_kernel<<<grid_for(N), kBlock, 0, static_cast<cudaStream_t>(stream)>>>(dinp, inp, dout, N);
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace meshtrain
