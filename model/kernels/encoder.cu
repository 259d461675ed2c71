// CUDA token + position embedding (encoder.h); encoder_cpu.cpp is the specification.
//
// Forward: one thread per (position, channel), channels fastest, so a warp reads consecutive floats
// of one wte row and one wpe row.
// Backward must not use float atomics (their order, hence the rounding, varies run to run). dwpe is
// a plain reduction over the batch: one thread per (t, c) sums b = 0..B-1 in order. dwte is a
// scatter, made deterministic by a stable radix sort of (token, position) pairs (cub): positions that
// hold the same token become one contiguous run, in ascending position order. One thread block per
// sorted position; only the block at the head of a run works, and it walks its run in order,
// accumulating straight into dwte with channels across threads. That is the same order of additions
// as the CPU twin, so the result is bit-identical run to run (and, without FMA in play, to the CPU).
// The sort's scratch comes from the stream-ordered allocator (cudaMallocAsync), which keeps it off the
// host's critical path after the first call.
#include <cub/device/device_radix_sort.cuh>
#include <cuda_runtime.h>

#include <cstdint>

#include "core/cuda_check.h"
#include "model/kernels/encoder.h"

namespace meshtrain {
namespace {

constexpr int kBlock = 256;

__global__ void encoder_forward_kernel(float* __restrict__ out, const int32_t* __restrict__ tokens,
                                       const float* __restrict__ wte, const float* __restrict__ wpe, int64_t BT,
                                       int T, int C) {
  const int64_t idx = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (idx >= BT * C) return;
  const int64_t bt = idx / C;
  const int c = static_cast<int>(idx % C);
  const int t = static_cast<int>(bt % T);
  out[idx] = wte[static_cast<int64_t>(tokens[bt]) * C + c] + wpe[static_cast<int64_t>(t) * C + c];
}

// One thread per (t, c): dwpe[t, c] += dout[0, t, c] + dout[1, t, c] + ... in batch order.
__global__ void encoder_backward_wpe_kernel(float* __restrict__ dwpe, const float* __restrict__ dout, int B, int T,
                                            int C) {
  const int64_t idx = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  const int64_t TC = static_cast<int64_t>(T) * C;
  if (idx >= TC) return;
  float acc = dwpe[idx];
  for (int b = 0; b < B; ++b) acc += dout[b * TC + idx];
  dwpe[idx] = acc;
}

// One block per sorted position; the head of each run of equal tokens adds the run's rows of dout
// into its dwte row, in ascending position order.
__global__ void encoder_backward_wte_kernel(float* __restrict__ dwte, const float* __restrict__ dout,
                                            const int32_t* __restrict__ sorted_tokens,
                                            const int32_t* __restrict__ sorted_positions, int64_t BT, int C) {
  const int64_t i = blockIdx.x;
  const int32_t token = sorted_tokens[i];
  if (i > 0 && sorted_tokens[i - 1] == token) return;  // not the head of its run
  int64_t end = i + 1;
  while (end < BT && sorted_tokens[end] == token) ++end;
  float* row = dwte + static_cast<int64_t>(token) * C;
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    float acc = row[c];
    for (int64_t j = i; j < end; ++j) acc += dout[static_cast<int64_t>(sorted_positions[j]) * C + c];
    row[c] = acc;
  }
}

__global__ void iota_kernel(int32_t* __restrict__ out, int64_t n) {
  const int64_t idx = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (idx < n) out[idx] = static_cast<int32_t>(idx);
}

void check_shape(const char* op, int B, int T, int C) {
  MT_CHECK(B >= 1 && T >= 1 && C >= 1, "[{}] B={}, T={}, C={}: every dimension must be at least 1", op, B, T, C);
  MT_CHECK(static_cast<int64_t>(B) * T <= INT32_MAX, "[{}] B*T={} positions: at most 2^31-1 are supported", op,
           static_cast<int64_t>(B) * T);
}

unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kBlock - 1) / kBlock); }

}  // namespace

void encoder_forward_cuda(float* out, const int32_t* tokens, const float* wte, const float* wpe, int B, int T, int C,
                          void* stream) {
  check_shape("encoder_forward_cuda", B, T, C);
  const int64_t BT = static_cast<int64_t>(B) * T;
  encoder_forward_kernel<<<blocks_for(BT * C), kBlock, 0, static_cast<cudaStream_t>(stream)>>>(out, tokens, wte, wpe,
                                                                                               BT, T, C);
  CUDA_CHECK(cudaGetLastError());
}

void encoder_backward_cuda(float* dwte, float* dwpe, const float* dout, const int32_t* tokens, int B, int T, int C,
                           void* stream) {
  check_shape("encoder_backward_cuda", B, T, C);
  auto s = static_cast<cudaStream_t>(stream);
  const int64_t BT = static_cast<int64_t>(B) * T;
  const int n = static_cast<int>(BT);

  encoder_backward_wpe_kernel<<<blocks_for(static_cast<int64_t>(T) * C), kBlock, 0, s>>>(dwpe, dout, B, T, C);
  CUDA_CHECK(cudaGetLastError());

  // Scratch: positions, sorted tokens, sorted positions, then cub's temporary storage.
  size_t sort_bytes = 0;
  CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, sort_bytes, tokens, static_cast<int32_t*>(nullptr),
                                             static_cast<const int32_t*>(nullptr), static_cast<int32_t*>(nullptr),
                                             n, 0, 32, s));
  const size_t ids_bytes = static_cast<size_t>(BT) * sizeof(int32_t);
  char* scratch = nullptr;
  CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&scratch), 3 * ids_bytes + sort_bytes, s));
  auto* positions = reinterpret_cast<int32_t*>(scratch);
  auto* sorted_tokens = reinterpret_cast<int32_t*>(scratch + ids_bytes);
  auto* sorted_positions = reinterpret_cast<int32_t*>(scratch + 2 * ids_bytes);
  void* sort_tmp = scratch + 3 * ids_bytes;

  iota_kernel<<<blocks_for(BT), kBlock, 0, s>>>(positions, BT);
  CUDA_CHECK(cudaGetLastError());
  CUDA_CHECK(cub::DeviceRadixSort::SortPairs(sort_tmp, sort_bytes, tokens, sorted_tokens, positions, sorted_positions,
                                             n, 0, 32, s));
  encoder_backward_wte_kernel<<<static_cast<unsigned>(BT), kBlock, 0, s>>>(dwte, dout, sorted_tokens,
                                                                          sorted_positions, BT, C);
  CUDA_CHECK(cudaGetLastError());
  CUDA_CHECK(cudaFreeAsync(scratch, s));
}

}  // namespace meshtrain
