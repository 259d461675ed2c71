// CUDA residual connection (residual.h): out = a + b, and the dst += src its backward uses;
// residual_cpu.cpp is the specification.
//
// Both are memory-bound elementwise loops, templated on the element type (float or bf16, summed in
// fp32 and rounded once): one thread per 16-byte pack (4 floats or 8 bf16) in a grid-stride loop when
// every pointer is 16-byte aligned and N is a multiple of the pack, one element per thread otherwise.
// No aliasing is promised between the arrays except that out may equal a or b (each element is read
// before it is written by the same thread), so only src/dst of the accumulate are marked __restrict__.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "core/cuda_check.h"
#include "model/kernels/convert.cuh"
#include "model/kernels/residual.h"

namespace meshtrain {
namespace {

constexpr int kBlock = 256;
constexpr int64_t kMaxBlocks = 65536;

// W elements per thread and iteration; n_packs = N / W.
template <int W, class T>
__global__ void residual_forward_kernel(T* out, const T* a, const T* b, int64_t n_packs) {
  for (int64_t p = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; p < n_packs; p += int64_t{gridDim.x} * blockDim.x) {
    float x[W], y[W];
    load_floats<W>(x, a + p * W);
    load_floats<W>(y, b + p * W);
#pragma unroll
    for (int k = 0; k < W; ++k) x[k] += y[k];
    store_floats<W>(out + p * W, x);
  }
}

template <int W, class T>
__global__ void residual_accumulate_kernel(T* __restrict__ dst, const T* __restrict__ src, int64_t n_packs,
                                           float scale) {
  for (int64_t p = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; p < n_packs; p += int64_t{gridDim.x} * blockDim.x) {
    float x[W], y[W];
    load_floats<W>(x, dst + p * W);
    load_floats<W>(y, src + p * W);
#pragma unroll
    for (int k = 0; k < W; ++k) x[k] += scale * y[k];
    store_floats<W>(dst + p * W, x);
  }
}

int grid_for(int64_t N) { return static_cast<int>(std::min((N + kBlock - 1) / kBlock, kMaxBlocks)); }

template <class T>
void launch_forward(T* out, const T* a, const T* b, int64_t N, void* stream) {
  MT_CHECK(N >= 0, "[residual_forward_cuda] N={}: the element count cannot be negative", N);
  if (N == 0) return;
  auto s = static_cast<cudaStream_t>(stream);
  constexpr int W = kPack<T>;
  if (can_pack<T>(N, out, a, b)) {
    residual_forward_kernel<W><<<grid_for(N / W), kBlock, 0, s>>>(out, a, b, N / W);
  } else {
    residual_forward_kernel<1><<<grid_for(N), kBlock, 0, s>>>(out, a, b, N);
  }
  CUDA_CHECK(cudaGetLastError());
}

template <class T>
void launch_accumulate(T* dst, const T* src, int64_t N, void* stream, float scale) {
  MT_CHECK(N >= 0, "[residual_accumulate_cuda] N={}: the element count cannot be negative", N);
  if (N == 0) return;
  auto s = static_cast<cudaStream_t>(stream);
  constexpr int W = kPack<T>;
  if (can_pack<T>(N, dst, src)) {
    residual_accumulate_kernel<W><<<grid_for(N / W), kBlock, 0, s>>>(dst, src, N / W, scale);
  } else {
    residual_accumulate_kernel<1><<<grid_for(N), kBlock, 0, s>>>(dst, src, N, scale);
  }
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace

void residual_forward_cuda(float* out, const float* a, const float* b, int64_t N, void* stream) {
  launch_forward(out, a, b, N, stream);
}

void residual_accumulate_cuda(float* dst, const float* src, int64_t N, void* stream, float scale) {
  launch_accumulate(dst, src, N, stream, scale);
}

void residual_forward_cuda(Bf16* out, const Bf16* a, const Bf16* b, int64_t N, void* stream) {
  launch_forward(cuda_bf16(out), cuda_bf16(a), cuda_bf16(b), N, stream);
}

void residual_accumulate_cuda(Bf16* dst, const Bf16* src, int64_t N, void* stream, float scale) {
  launch_accumulate(cuda_bf16(dst), cuda_bf16(src), N, stream, scale);
}

}  // namespace meshtrain
