// CUDA rotary position embeddings (rope.h); rope_cpu.cpp is the specification. One thread per
// (row, head of q or k, pair): it reads the pair's cos and sin from the precomputed table, turns the
// two channels in fp32 and writes them back (rounded once in bf16). Elementwise and memory-bound.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "core/cuda_check.h"
#include "model/kernels/convert.cuh"
#include "model/kernels/rope.h"

namespace meshtrain {
namespace {

constexpr int kBlock = 256;

template <class T>
__global__ void rope_kernel(T* __restrict__ qkv, const float* __restrict__ table, int64_t BT, int T_, int C, int NH,
                            int pos0, float sign) {
  const int hs = C / NH, half = hs / 2;
  const int64_t per_row = static_cast<int64_t>(2) * NH * half;  // q's and k's heads, half pairs each
  const int64_t n = BT * per_row;
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < n;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t bt = k / per_row;
    const int h = static_cast<int>((k % per_row) / half), i = static_cast<int>(k % half);
    const float* cs = table + (static_cast<int64_t>(pos0 + bt % T_) * half + i) * 2;
    const float c = cs[0], s = sign * cs[1];
    T* x = qkv + bt * 3 * C + static_cast<int64_t>(h) * hs;
    const float x1 = to_float(x[i]), x2 = to_float(x[i + half]);
    x[i] = from_float<T>(x1 * c - x2 * s);
    x[i + half] = from_float<T>(x2 * c + x1 * s);
  }
}

template <class T>
void launch(T* qkv, const float* table, int B, int T_, int C, int NH, int pos0, bool inverse, void* stream) {
  MT_CHECK(B >= 1 && T_ >= 1 && NH >= 1 && C % NH == 0 && (C / NH) % 2 == 0 && pos0 >= 0,
           "[rope_cuda] B={}, T={}, C={}, NH={}, pos0={}: C / NH must be an even head size", B, T_, C, NH, pos0);
  const int64_t BT = static_cast<int64_t>(B) * T_, n = BT * C;  // C = 2 * NH * half threads per row
  const int grid = static_cast<int>(std::min<int64_t>((n + kBlock - 1) / kBlock, 65536));
  rope_kernel<<<grid, kBlock, 0, static_cast<cudaStream_t>(stream)>>>(qkv, table, BT, T_, C, NH, pos0,
                                                                      inverse ? -1.0f : 1.0f);
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace

void rope_cuda(float* qkv, const float* table, int B, int T, int C, int NH, int pos0, bool inverse, void* stream) {
  launch(qkv, table, B, T, C, NH, pos0, inverse, stream);
}
void rope_cuda(Bf16* qkv, const float* table, int B, int T, int C, int NH, int pos0, bool inverse, void* stream) {
  launch(cuda_bf16(qkv), table, B, T, C, NH, pos0, inverse, stream);
}

}  // namespace meshtrain
