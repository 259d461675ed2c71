// CUDA GELU, tanh approximation (gelu.h); gelu_cpu.cpp is the specification.
//
// Both directions are elementwise over a flat array and memory-bound. The kernels are templated on
// the element type (float or bf16; the math is fp32 either way, bf16 results are rounded once) and
// run in a grid-stride loop (so any N fits a bounded grid): one thread per 16-byte pack (4 floats or
// 8 bf16) when every pointer is 16-byte aligned and N is a multiple of the pack, one element per
// thread otherwise. tanhf comes from the CUDA math library (a couple of ulp from glibc's). The
// formula and its derivative are written exactly as in the CPU twin.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "core/cuda_check.h"
#include "model/kernels/convert.cuh"
#include "model/kernels/gelu.h"

namespace meshtrain {
namespace {

constexpr int kBlock = 256;
constexpr int64_t kMaxBlocks = 65536;  // grid-stride beyond this: more blocks only add scheduling cost
constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kCubic = 0.044715f;

__device__ __forceinline__ float gelu(float x) {
  const float u = kSqrt2OverPi * (x + kCubic * x * x * x);
  return 0.5f * x * (1.0f + tanhf(u));
}

__device__ __forceinline__ float gelu_grad(float x) {
  const float u = kSqrt2OverPi * (x + kCubic * x * x * x);
  const float th = tanhf(u);
  const float du_dx = kSqrt2OverPi * (1.0f + 3.0f * kCubic * x * x);
  return 0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * du_dx;
}

// W elements per thread and iteration; n_packs = N / W.
template <int W, class T>
__global__ void gelu_forward_kernel(T* __restrict__ out, const T* __restrict__ inp, int64_t n_packs) {
  for (int64_t p = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; p < n_packs; p += int64_t{gridDim.x} * blockDim.x) {
    float x[W];
    load_floats<W>(x, inp + p * W);
#pragma unroll
    for (int k = 0; k < W; ++k) x[k] = gelu(x[k]);
    store_floats<W>(out + p * W, x);
  }
}

template <int W, class T>
__global__ void gelu_backward_kernel(T* __restrict__ dinp, const T* __restrict__ inp, const T* __restrict__ dout,
                                     int64_t n_packs) {
  for (int64_t p = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; p < n_packs; p += int64_t{gridDim.x} * blockDim.x) {
    float x[W], d[W], acc[W];
    load_floats<W>(x, inp + p * W);
    load_floats<W>(d, dout + p * W);
    load_floats<W>(acc, dinp + p * W);
#pragma unroll
    for (int k = 0; k < W; ++k) acc[k] += gelu_grad(x[k]) * d[k];
    store_floats<W>(dinp + p * W, acc);
  }
}

int grid_for(int64_t N) { return static_cast<int>(std::min((N + kBlock - 1) / kBlock, kMaxBlocks)); }

template <class T>
void launch_forward(T* out, const T* inp, int64_t N, void* stream) {
  MT_CHECK(N >= 0, "[gelu_forward_cuda] N={}: the element count cannot be negative", N);
  if (N == 0) return;
  auto s = static_cast<cudaStream_t>(stream);
  constexpr int W = kPack<T>;
  if (can_pack<T>(N, out, inp)) {
    gelu_forward_kernel<W><<<grid_for(N / W), kBlock, 0, s>>>(out, inp, N / W);
  } else {
    gelu_forward_kernel<1><<<grid_for(N), kBlock, 0, s>>>(out, inp, N);
  }
  CUDA_CHECK(cudaGetLastError());
}

template <class T>
void launch_backward(T* dinp, const T* inp, const T* dout, int64_t N, void* stream) {
  MT_CHECK(N >= 0, "[gelu_backward_cuda] N={}: the element count cannot be negative", N);
  if (N == 0) return;
  auto s = static_cast<cudaStream_t>(stream);
  constexpr int W = kPack<T>;
  if (can_pack<T>(N, dinp, inp, dout)) {
    gelu_backward_kernel<W><<<grid_for(N / W), kBlock, 0, s>>>(dinp, inp, dout, N / W);
  } else {
    gelu_backward_kernel<1><<<grid_for(N), kBlock, 0, s>>>(dinp, inp, dout, N);
  }
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace

void gelu_forward_cuda(float* out, const float* inp, int64_t N, void* stream) { launch_forward(out, inp, N, stream); }

void gelu_backward_cuda(float* dinp, const float* inp, const float* dout, int64_t N, void* stream) {
  launch_backward(dinp, inp, dout, N, stream);
}

void gelu_forward_cuda(Bf16* out, const Bf16* inp, int64_t N, void* stream) {
  launch_forward(cuda_bf16(out), cuda_bf16(inp), N, stream);
}

void gelu_backward_cuda(Bf16* dinp, const Bf16* inp, const Bf16* dout, int64_t N, void* stream) {
  launch_backward(cuda_bf16(dinp), cuda_bf16(inp), cuda_bf16(dout), N, stream);
}

}  // namespace meshtrain
