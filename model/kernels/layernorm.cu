// CUDA LayerNorm over the last dimension (layernorm.h); layernorm_cpu.cpp is the specification.
//
// Every kernel is templated on the element type (float or bf16); statistics and math are fp32, and a
// bf16 result is rounded once when stored.
// Forward: one warp per row (fp32 statistics). The warp sums the row for the mean, then sums the
// squared centred values (the two-pass variance of the CPU twin; the second read hits L1/L2), each
// with a shuffle reduction, then writes out = (x - mean) * rstd * weight + bias. A lane takes W
// consecutive channels per step: W = 1 in fp32 (the summation order the fp32 results were validated
// with), W = 8 (one 16-byte load) in bf16 when C % 8 == 0 and the buffers are 16-byte aligned.
// The fused residual variant computes residual = a + b in the first pass, stores it, and sums the
// stored value (in bf16: the rounded one); the later passes read the residual back (L1/L2). So it is
// the unfused pair, residual_forward then layernorm_forward, without the extra round trip to memory.
// Backward, input gradient: one warp per row computes mean(g) and mean(g * xhat), g = dout * weight,
// then adds rstd * (g - mean(g) - xhat * mean(g * xhat)) into dinp.
// Backward, dweight and dbias: sums over rows, deterministic without atomics in two kernels. The
// first gives each block 32 channels (one per lane, so rows are read coalesced) and a fixed chunk of
// rows; its 8 warps stride over the chunk's rows and the per-warp sums are combined in a fixed order
// in shared memory, giving one fp32 partial per (chunk, channel). The second sums the partials of
// each channel in chunk order and adds the total into dweight and dbias (once, so a bf16 gradient is
// rounded once). The partials live in scratch from the stream-ordered allocator (cudaMallocAsync:
// no host synchronisation; memory nodes under CUDA graph capture).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "core/cuda_check.h"
#include "model/kernels/convert.cuh"
#include "model/kernels/layernorm.h"

namespace meshtrain {
namespace {

constexpr float kEpsilon = 1e-5f;
constexpr int kWarp = 32;
constexpr int kRowsPerBlock = 8;  // warps per block in the one-warp-per-row kernels
constexpr int kChunkRows = 256;   // rows per partial sum of dweight/dbias

// Channels per lane and step of the row kernels when the buffers allow 16-byte loads: 1 in fp32,
// which keeps the order of the per-lane sums (hence the fp32 results) exactly as validated.
template <class T>
constexpr int kRowPack = std::is_same_v<T, float> ? 1 : kPack<T>;

template <class T, class... P>
bool use_row_pack(int C, const P*... ptrs) {
  return kRowPack<T> > 1 && can_pack<T>(C, ptrs...);
}

__device__ float warp_sum(float v) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// kFused: the row is residual = a + b (a = inp, b = inp2), stored into residual on the first pass.
// Otherwise the row is inp and residual/inp2 are unused. residual may alias inp or inp2: each
// element is read, then written, by the same lane.
template <int W, bool kFused, class T>
__global__ void layernorm_forward_kernel(T* __restrict__ out, float* __restrict__ mean, float* __restrict__ rstd,
                                         T* residual, const T* inp, const T* inp2, const T* __restrict__ weight,
                                         const T* __restrict__ bias, int N, int C) {
  const int n = blockIdx.x * kRowsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (n >= N) return;  // whole warps exit together, so the shuffles below stay full-warp
  const int64_t row = static_cast<int64_t>(n) * C;
  const T* x = kFused ? residual + row : inp + row;
  float sum = 0.0f;
  for (int c = lane * W; c < C; c += kWarp * W) {
    float v[W];
    load_floats<W>(v, inp + row + c);
    if constexpr (kFused) {
      float u[W];
      load_floats<W>(u, inp2 + row + c);
#pragma unroll
      for (int k = 0; k < W; ++k) v[k] = to_float(from_float<T>(v[k] + u[k]));  // the value stored
      store_floats<W>(residual + row + c, v);
    }
#pragma unroll
    for (int k = 0; k < W; ++k) sum += v[k];
  }
  const float m = warp_sum(sum) / static_cast<float>(C);
  float sq = 0.0f;
  for (int c = lane * W; c < C; c += kWarp * W) {
    float v[W];
    load_floats<W>(v, x + c);
#pragma unroll
    for (int k = 0; k < W; ++k) {
      const float d = v[k] - m;
      sq += d * d;
    }
  }
  const float s = rsqrtf(warp_sum(sq) / static_cast<float>(C) + kEpsilon);
  for (int c = lane * W; c < C; c += kWarp * W) {
    float v[W], w[W], b[W];
    load_floats<W>(v, x + c);
    load_floats<W>(w, weight + c);
    load_floats<W>(b, bias + c);
#pragma unroll
    for (int k = 0; k < W; ++k) v[k] = (v[k] - m) * s * w[k] + b[k];
    store_floats<W>(out + row + c, v);
  }
  if (lane == 0) {
    mean[n] = m;
    rstd[n] = s;
  }
}

template <int W, class T>
__global__ void layernorm_backward_input_kernel(T* __restrict__ dinp, const T* __restrict__ dout,
                                                const T* __restrict__ inp, const T* __restrict__ weight,
                                                const float* __restrict__ mean, const float* __restrict__ rstd, int N,
                                                int C) {
  const int n = blockIdx.x * kRowsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (n >= N) return;
  const int64_t row = static_cast<int64_t>(n) * C;
  const T* x = inp + row;
  const T* d = dout + row;
  const float m = mean[n], s = rstd[n];
  float g_sum = 0.0f, gx_sum = 0.0f;
  for (int c = lane * W; c < C; c += kWarp * W) {
    float xv[W], dv[W], wv[W];
    load_floats<W>(xv, x + c);
    load_floats<W>(dv, d + c);
    load_floats<W>(wv, weight + c);
#pragma unroll
    for (int k = 0; k < W; ++k) {
      const float g = dv[k] * wv[k];
      g_sum += g;
      gx_sum += g * (xv[k] - m) * s;
    }
  }
  const float g_mean = warp_sum(g_sum) / static_cast<float>(C);
  const float gx_mean = warp_sum(gx_sum) / static_cast<float>(C);
  T* di = dinp + row;
  for (int c = lane * W; c < C; c += kWarp * W) {
    float xv[W], dv[W], wv[W], acc[W];
    load_floats<W>(xv, x + c);
    load_floats<W>(dv, d + c);
    load_floats<W>(wv, weight + c);
    load_floats<W>(acc, di + c);
#pragma unroll
    for (int k = 0; k < W; ++k) {
      const float xhat = (xv[k] - m) * s;
      acc[k] += s * (dv[k] * wv[k] - g_mean - xhat * gx_mean);
    }
    store_floats<W>(di + c, acc);
  }
}

// Grid (channel blocks of 32, row chunks); block 32 x kRowsPerBlock. Writes partial[chunk][c].
template <class T>
__global__ void layernorm_backward_param_partial_kernel(float* __restrict__ w_partial, float* __restrict__ b_partial,
                                                        const T* __restrict__ dout, const T* __restrict__ inp,
                                                        const float* __restrict__ mean, const float* __restrict__ rstd,
                                                        int N, int C) {
  __shared__ float w_sh[kRowsPerBlock][kWarp];
  __shared__ float b_sh[kRowsPerBlock][kWarp];
  const int c = blockIdx.x * kWarp + threadIdx.x;
  const int n_begin = blockIdx.y * kChunkRows;
  const int n_end = min(n_begin + kChunkRows, N);
  float w_acc = 0.0f, b_acc = 0.0f;
  if (c < C) {
    for (int n = n_begin + threadIdx.y; n < n_end; n += kRowsPerBlock) {
      const int64_t idx = static_cast<int64_t>(n) * C + c;
      const float d = to_float(dout[idx]);
      w_acc += d * (to_float(inp[idx]) - mean[n]) * rstd[n];
      b_acc += d;
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
template <class T>
__global__ void layernorm_backward_param_final_kernel(T* __restrict__ dweight, T* __restrict__ dbias,
                                                      const float* __restrict__ w_partial,
                                                      const float* __restrict__ b_partial, int num_chunks, int C) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  float w = 0.0f, b = 0.0f;
  for (int k = 0; k < num_chunks; ++k) {
    w += w_partial[static_cast<int64_t>(k) * C + c];
    b += b_partial[static_cast<int64_t>(k) * C + c];
  }
  dweight[c] = from_float<T>(to_float(dweight[c]) + w);
  dbias[c] = from_float<T>(to_float(dbias[c]) + b);
}

unsigned row_blocks(int N) { return static_cast<unsigned>((N + kRowsPerBlock - 1) / kRowsPerBlock); }

void check_shape(const char* op, int N, int C) {
  MT_CHECK(N >= 0 && C >= 1, "[{}] N={}, C={}: need N >= 0 rows of C >= 1 channels", op, N, C);
}

// residual == nullptr: plain LayerNorm of a; otherwise the fused residual = a + b first.
template <class T>
void forward(T* residual, T* out, float* mean, float* rstd, const T* a, const T* b, const T* weight, const T* bias,
             int N, int C, void* stream) {
  if (N == 0) return;
  auto s = static_cast<cudaStream_t>(stream);
  const unsigned grid = row_blocks(N);
  const int threads = kRowsPerBlock * kWarp;
  constexpr int P = kRowPack<T>;
  if (residual == nullptr) {
    if (use_row_pack<T>(C, out, a, weight, bias)) {
      layernorm_forward_kernel<P, false><<<grid, threads, 0, s>>>(out, mean, rstd, residual, a, b, weight, bias, N, C);
    } else {
      layernorm_forward_kernel<1, false><<<grid, threads, 0, s>>>(out, mean, rstd, residual, a, b, weight, bias, N, C);
    }
  } else {
    if (use_row_pack<T>(C, residual, out, a, b, weight, bias)) {
      layernorm_forward_kernel<P, true><<<grid, threads, 0, s>>>(out, mean, rstd, residual, a, b, weight, bias, N, C);
    } else {
      layernorm_forward_kernel<1, true><<<grid, threads, 0, s>>>(out, mean, rstd, residual, a, b, weight, bias, N, C);
    }
  }
  CUDA_CHECK(cudaGetLastError());
}

template <class T>
void backward(T* dinp, T* dweight, T* dbias, const T* dout, const T* inp, const T* weight, const float* mean,
              const float* rstd, int N, int C, void* stream) {
  check_shape("layernorm_backward_cuda", N, C);
  if (N == 0) return;
  auto s = static_cast<cudaStream_t>(stream);
  constexpr int P = kRowPack<T>;
  if (use_row_pack<T>(C, dinp, dout, inp, weight)) {
    layernorm_backward_input_kernel<P>
        <<<row_blocks(N), kRowsPerBlock * kWarp, 0, s>>>(dinp, dout, inp, weight, mean, rstd, N, C);
  } else {
    layernorm_backward_input_kernel<1>
        <<<row_blocks(N), kRowsPerBlock * kWarp, 0, s>>>(dinp, dout, inp, weight, mean, rstd, N, C);
  }
  CUDA_CHECK(cudaGetLastError());

  const int num_chunks = (N + kChunkRows - 1) / kChunkRows;
  MT_CHECK(num_chunks <= 65535, "[layernorm_backward_cuda] N={} rows: at most {} are supported", N, 65535 * kChunkRows);
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

}  // namespace

void layernorm_forward_cuda(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                            const float* bias, int N, int C, void* stream) {
  check_shape("layernorm_forward_cuda", N, C);
  forward<float>(nullptr, out, mean, rstd, inp, nullptr, weight, bias, N, C, stream);
}

void layernorm_backward_cuda(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                             const float* weight, const float* mean, const float* rstd, int N, int C, void* stream) {
  backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, N, C, stream);
}

void residual_layernorm_forward_cuda(float* residual, float* out, float* mean, float* rstd, const float* a,
                                     const float* b, const float* weight, const float* bias, int N, int C,
                                     void* stream) {
  check_shape("residual_layernorm_forward_cuda", N, C);
  MT_CHECK(N == 0 || residual != nullptr, "[residual_layernorm_forward_cuda] residual is null");
  forward(residual, out, mean, rstd, a, b, weight, bias, N, C, stream);
}

void layernorm_forward_cuda(Bf16* out, float* mean, float* rstd, const Bf16* inp, const Bf16* weight, const Bf16* bias,
                            int N, int C, void* stream) {
  check_shape("layernorm_forward_cuda", N, C);
  forward<__nv_bfloat16>(nullptr, cuda_bf16(out), mean, rstd, cuda_bf16(inp), nullptr, cuda_bf16(weight),
                         cuda_bf16(bias), N, C, stream);
}

void layernorm_backward_cuda(Bf16* dinp, Bf16* dweight, Bf16* dbias, const Bf16* dout, const Bf16* inp,
                             const Bf16* weight, const float* mean, const float* rstd, int N, int C, void* stream) {
  backward(cuda_bf16(dinp), cuda_bf16(dweight), cuda_bf16(dbias), cuda_bf16(dout), cuda_bf16(inp), cuda_bf16(weight),
           mean, rstd, N, C, stream);
}

void residual_layernorm_forward_cuda(Bf16* residual, Bf16* out, float* mean, float* rstd, const Bf16* a, const Bf16* b,
                                     const Bf16* weight, const Bf16* bias, int N, int C, void* stream) {
  check_shape("residual_layernorm_forward_cuda", N, C);
  MT_CHECK(N == 0 || residual != nullptr, "[residual_layernorm_forward_cuda] residual is null");
  forward(cuda_bf16(residual), cuda_bf16(out), mean, rstd, cuda_bf16(a), cuda_bf16(b), cuda_bf16(weight),
          cuda_bf16(bias), N, C, stream);
}

}  // namespace meshtrain
