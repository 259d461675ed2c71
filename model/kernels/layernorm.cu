// CUDA LayerNorm over the last dimension (layernorm.h); layernorm_cpu.cpp is the specification.
//
// Forward: one warp per row (fp32 statistics). The warp sums the row for the mean, then sums the
// squared centred values (the two-pass variance of the CPU twin; the second read hits L1/L2), each
// with a shuffle reduction, then writes out = (x - mean) * rstd * weight + bias.
// Backward, input gradient: one warp per row computes mean(g) and mean(g * xhat), g = dout * weight,
// then adds rstd * (g - mean(g) - xhat * mean(g * xhat)) into dinp.
// Backward, dweight and dbias: sums over rows, deterministic without atomics in two kernels. The
// first gives each block 32 channels (one per lane, so rows are read coalesced) and a fixed chunk of
// rows; its 8 warps stride over the chunk's rows and the per-warp sums are combined in a fixed order
// in shared memory, giving one partial per (chunk, channel). The second sums the partials of each
// channel in chunk order and adds the total into dweight and dbias. The partials live in scratch from
// the stream-ordered allocator (cudaMallocAsync).
#include <cuda_runtime.h>

#include <cstdint>

#include "core/cuda_check.h"
#include "model/kernels/layernorm.h"

namespace meshtrain {
namespace {

constexpr float kEpsilon = 1e-5f;
constexpr int kWarp = 32;
constexpr int kRowsPerBlock = 8;  // warps per block in the one-warp-per-row kernels
constexpr int kChunkRows = 256;   // rows per partial sum of dweight/dbias

__device__ float warp_sum(float v) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

__global__ void layernorm_forward_kernel(float* __restrict__ out, float* __restrict__ mean, float* __restrict__ rstd,
                                         const float* __restrict__ inp, const float* __restrict__ weight,
                                         const float* __restrict__ bias, int N, int C) {
  const int n = blockIdx.x * kRowsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (n >= N) return;  // whole warps exit together, so the shuffles below stay full-warp
  const float* x = inp + static_cast<int64_t>(n) * C;
  float sum = 0.0f;
  for (int c = lane; c < C; c += kWarp) sum += x[c];
  const float m = warp_sum(sum) / static_cast<float>(C);
  float sq = 0.0f;
  for (int c = lane; c < C; c += kWarp) {
    const float d = x[c] - m;
    sq += d * d;
  }
  const float s = rsqrtf(warp_sum(sq) / static_cast<float>(C) + kEpsilon);
  float* o = out + static_cast<int64_t>(n) * C;
  for (int c = lane; c < C; c += kWarp) o[c] = (x[c] - m) * s * weight[c] + bias[c];
  if (lane == 0) {
    mean[n] = m;
    rstd[n] = s;
  }
}

__global__ void layernorm_backward_input_kernel(float* __restrict__ dinp, const float* __restrict__ dout,
                                                const float* __restrict__ inp, const float* __restrict__ weight,
                                                const float* __restrict__ mean, const float* __restrict__ rstd,
                                                int N, int C) {
  const int n = blockIdx.x * kRowsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (n >= N) return;
  const int64_t row = static_cast<int64_t>(n) * C;
  const float* x = inp + row;
  const float* d = dout + row;
  const float m = mean[n], s = rstd[n];
  float g_sum = 0.0f, gx_sum = 0.0f;
  for (int c = lane; c < C; c += kWarp) {
    const float g = d[c] * weight[c];
    g_sum += g;
    gx_sum += g * (x[c] - m) * s;
  }
  const float g_mean = warp_sum(g_sum) / static_cast<float>(C);
  const float gx_mean = warp_sum(gx_sum) / static_cast<float>(C);
  float* di = dinp + row;
  for (int c = lane; c < C; c += kWarp) {
    const float xhat = (x[c] - m) * s;
    di[c] += s * (d[c] * weight[c] - g_mean - xhat * gx_mean);
  }
}

// Grid (channel blocks of 32, row chunks); block 32 x kRowsPerBlock. Writes partial[chunk][c].
__global__ void layernorm_backward_param_partial_kernel(float* __restrict__ w_partial, float* __restrict__ b_partial,
                                                        const float* __restrict__ dout, const float* __restrict__ inp,
                                                        const float* __restrict__ mean,
                                                        const float* __restrict__ rstd, int N, int C) {
  __shared__ float w_sh[kRowsPerBlock][kWarp];
  __shared__ float b_sh[kRowsPerBlock][kWarp];
  const int c = blockIdx.x * kWarp + threadIdx.x;
  const int n_begin = blockIdx.y * kChunkRows;
  const int n_end = min(n_begin + kChunkRows, N);
  float w_acc = 0.0f, b_acc = 0.0f;
  if (c < C) {
    for (int n = n_begin + threadIdx.y; n < n_end; n += kRowsPerBlock) {
      const int64_t idx = static_cast<int64_t>(n) * C + c;
      w_acc += dout[idx] * (inp[idx] - mean[n]) * rstd[n];
      b_acc += dout[idx];
    }
  }
  w_sh[threadIdx.y][threadIdx.x] = w_acc;
  b_sh[threadIdx.y][threadIdx.x] = b_acc;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    float w = 0.0f, b = 0.0f;
    for (int k = 0; k < kRowsPerBlock; ++k) {
      w += w_sh[k][threadIdx.x];
      b += b_sh[k][threadIdx.x];
    }
    w_partial[static_cast<int64_t>(blockIdx.y) * C + c] = w;
    b_partial[static_cast<int64_t>(blockIdx.y) * C + c] = b;
  }
}

// One thread per channel: adds the chunk partials, in chunk order, into dweight and dbias.
__global__ void layernorm_backward_param_final_kernel(float* __restrict__ dweight, float* __restrict__ dbias,
                                                      const float* __restrict__ w_partial,
                                                      const float* __restrict__ b_partial, int num_chunks, int C) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  float w = 0.0f, b = 0.0f;
  for (int k = 0; k < num_chunks; ++k) {
    w += w_partial[static_cast<int64_t>(k) * C + c];
    b += b_partial[static_cast<int64_t>(k) * C + c];
  }
  dweight[c] += w;
  dbias[c] += b;
}

unsigned row_blocks(int N) { return static_cast<unsigned>((N + kRowsPerBlock - 1) / kRowsPerBlock); }

}  // namespace

void layernorm_forward_cuda(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                            const float* bias, int N, int C, void* stream) {
  MT_CHECK(N >= 0 && C >= 1, "[layernorm_forward_cuda] N={}, C={}: need N >= 0 rows of C >= 1 channels", N, C);
  if (N == 0) return;
  layernorm_forward_kernel<<<row_blocks(N), kRowsPerBlock * kWarp, 0, static_cast<cudaStream_t>(stream)>>>(
      out, mean, rstd, inp, weight, bias, N, C);
  CUDA_CHECK(cudaGetLastError());
}

void layernorm_backward_cuda(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                             const float* weight, const float* mean, const float* rstd, int N, int C, void* stream) {
  MT_CHECK(N >= 0 && C >= 1, "[layernorm_backward_cuda] N={}, C={}: need N >= 0 rows of C >= 1 channels", N, C);
  if (N == 0) return;
  auto s = static_cast<cudaStream_t>(stream);
  layernorm_backward_input_kernel<<<row_blocks(N), kRowsPerBlock * kWarp, 0, s>>>(dinp, dout, inp, weight, mean,
                                                                                  rstd, N, C);
  CUDA_CHECK(cudaGetLastError());

  const int num_chunks = (N + kChunkRows - 1) / kChunkRows;
  MT_CHECK(num_chunks <= 65535, "[layernorm_backward_cuda] N={} rows: at most {} are supported", N,
           65535 * kChunkRows);
  const size_t partial_floats = static_cast<size_t>(num_chunks) * C;
  float* partial = nullptr;
  CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&partial), 2 * partial_floats * sizeof(float), s));
  const dim3 grid((C + kWarp - 1) / kWarp, num_chunks);
  const dim3 block(kWarp, kRowsPerBlock);
  layernorm_backward_param_partial_kernel<<<grid, block, 0, s>>>(partial, partial + partial_floats, dout, inp, mean,
                                                                  rstd, N, C);
  CUDA_CHECK(cudaGetLastError());
  layernorm_backward_param_final_kernel<<<(C + 255) / 256, 256, 0, s>>>(dweight, dbias, partial,
                                                                        partial + partial_floats, num_chunks, C);
  CUDA_CHECK(cudaGetLastError());
  CUDA_CHECK(cudaFreeAsync(partial, s));
}

}  // namespace meshtrain
