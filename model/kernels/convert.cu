// CUDA fp32 <-> bf16 conversion (convert.h); float_to_bf16 / bf16_to_float in core/bf16.h are the
// specification (round to nearest even; widening is exact).
//
// Memory-bound and elementwise: one thread per pack of 16 bytes of bf16 (8 elements) in a grid-stride
// loop when the pointers are 16-byte aligned and n is a multiple of 8, one element per thread otherwise.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "core/cuda_check.h"
#include "model/kernels/convert.cuh"
#include "model/kernels/convert.h"

namespace meshtrain {
namespace {

constexpr int kBlock = 256;
constexpr int64_t kMaxBlocks = 65536;

// W elements per thread and iteration; n_packs = n / W.
template <int W, class Out, class In>
__global__ void convert_kernel(Out* __restrict__ dst, const In* __restrict__ src, int64_t n_packs) {
  for (int64_t p = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; p < n_packs; p += int64_t{gridDim.x} * blockDim.x) {
    float x[W];
    load_floats<W>(x, src + p * W);
    store_floats<W>(dst + p * W, x);
  }
}

int grid_for(int64_t n) { return static_cast<int>(std::min((n + kBlock - 1) / kBlock, kMaxBlocks)); }

template <class Out, class In>
void launch_convert(Out* dst, const In* src, int64_t n, cudaStream_t s) {
  constexpr int W = kPack<__nv_bfloat16>;
  if (can_pack<__nv_bfloat16>(n, dst, src)) {
    convert_kernel<W><<<grid_for(n / W), kBlock, 0, s>>>(dst, src, n / W);
  } else {
    convert_kernel<1><<<grid_for(n), kBlock, 0, s>>>(dst, src, n);
  }
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace

void convert_cuda(Bf16* dst, const float* src, int64_t n, void* stream) {
  MT_CHECK(n >= 0, "[convert_cuda] n={}: the element count cannot be negative", n);
  if (n == 0) return;
  launch_convert(cuda_bf16(dst), src, n, static_cast<cudaStream_t>(stream));
}

void convert_cuda(float* dst, const Bf16* src, int64_t n, void* stream) {
  MT_CHECK(n >= 0, "[convert_cuda] n={}: the element count cannot be negative", n);
  if (n == 0) return;
  launch_convert(dst, cuda_bf16(src), n, static_cast<cudaStream_t>(stream));
}

}  // namespace meshtrain
