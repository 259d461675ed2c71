// CUDA token + position embedding (encoder.h); encoder_cpu.cpp is the specification.
//
// Every kernel is templated on the element type (float or bf16) with fp32 arithmetic inside.
// Forward: one thread per (position, pack of channels), channels fastest, so a warp reads consecutive
// elements of one wte row and one wpe row; a pack is 16 bytes (4 floats or 8 bf16) when C allows it
// and the pointers are 16-byte aligned, else one element.
// Backward must not use float atomics (their order, hence the rounding, varies run to run). dwpe is
// a plain reduction over the batch: one thread per (t, c) sums b = 0..B-1 in order. dwte is a
// scatter, made deterministic by a stable radix sort of (token, position) pairs (cub): positions that
// hold the same token become one contiguous run, in ascending position order. One thread block per
// sorted position; only the block at the head of a run works, and it walks its run in order,
// accumulating with channels across threads. In fp32 the sums run straight in the gradient: the same
// order of additions as the CPU twin, so the result is bit-identical run to run (and, without FMA in
// play, to the CPU). In bf16 each element's contributions are summed in fp32 from zero and added to
// the gradient once, so a bf16 gradient is rounded once per call rather than once per position.
// The sort's scratch comes from the stream-ordered allocator (cudaMallocAsync): it keeps the scratch
// off the host's critical path after the first call, never synchronises the host, and becomes
// memory nodes when a CUDA graph captures the stream.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cub/device/device_radix_sort.cuh>
#include <type_traits>

#include "core/cuda_check.h"
#include "model/kernels/convert.cuh"
#include "model/kernels/encoder.h"

namespace meshtrain {
namespace {

constexpr int kBlock = 256;

// One thread per (bt, W channels); W divides C.
template <int W, class Elem>
__global__ void encoder_forward_kernel(Elem* __restrict__ out, const int32_t* __restrict__ tokens,
                                       const Elem* __restrict__ wte, const Elem* __restrict__ wpe, int64_t BT, int T,
                                       int C) {
  const int64_t idx = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  const int packs_per_row = C / W;
  if (idx >= BT * packs_per_row) return;
  const int64_t bt = idx / packs_per_row;
  const int c = static_cast<int>(idx % packs_per_row) * W;
  const int t = static_cast<int>(bt % T);
  float x[W], y[W];
  load_floats<W>(x, wte + static_cast<int64_t>(tokens[bt]) * C + c);
  if (wpe) {
    load_floats<W>(y, wpe + static_cast<int64_t>(t) * C + c);
#pragma unroll
    for (int k = 0; k < W; ++k) x[k] += y[k];
  }
  store_floats<W>(out + bt * C + c, x);
}

// fp32 gradients accumulate in place (the CPU twin's order); bf16 ones take one fp32 sum, added once.
template <class Elem>
constexpr bool kAccumulateInPlace = std::is_same_v<Elem, float>;

// One thread per (t, c): dwpe[t, c] += dout[0, t, c] + dout[1, t, c] + ... in batch order.
template <class Elem>
__global__ void encoder_backward_wpe_kernel(Elem* __restrict__ dwpe, const Elem* __restrict__ dout, int B, int T,
                                            int C) {
  const int64_t idx = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  const int64_t TC = static_cast<int64_t>(T) * C;
  if (idx >= TC) return;
  float acc = kAccumulateInPlace<Elem> ? to_float(dwpe[idx]) : 0.0f;
  for (int b = 0; b < B; ++b) acc += to_float(dout[b * TC + idx]);
  dwpe[idx] = from_float<Elem>(kAccumulateInPlace<Elem> ? acc : to_float(dwpe[idx]) + acc);
}

// One block per sorted position; the head of each run of equal tokens adds the run's rows of dout
// into its dwte row, in ascending position order (the radix sort is stable). dwte holds the rows
// [v0, v0 + Vl) of the table (all of it: v0 = 0, Vl = V); runs of other tokens are skipped.
template <class Elem>
__global__ void encoder_backward_wte_kernel(Elem* __restrict__ dwte, const Elem* __restrict__ dout,
                                            const int32_t* __restrict__ sorted_tokens,
                                            const int32_t* __restrict__ sorted_positions, int64_t BT, int C, int64_t v0,
                                            int64_t Vl) {
  const int64_t i = blockIdx.x;
  const int32_t token = sorted_tokens[i];
  if (i > 0 && sorted_tokens[i - 1] == token) return;  // not the head of its run
  const int64_t local = token - v0;
  if (local < 0 || local >= Vl) return;  // another rank's row
  int64_t end = i + 1;
  while (end < BT && sorted_tokens[end] == token) ++end;
  Elem* row = dwte + local * C;
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    float acc = kAccumulateInPlace<Elem> ? to_float(row[c]) : 0.0f;
    for (int64_t j = i; j < end; ++j) acc += to_float(dout[static_cast<int64_t>(sorted_positions[j]) * C + c]);
    row[c] = from_float<Elem>(kAccumulateInPlace<Elem> ? acc : to_float(row[c]) + acc);
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

template <class Elem>
void encoder_forward(Elem* out, const int32_t* tokens, const Elem* wte, const Elem* wpe, int B, int T, int C,
                     void* stream) {
  check_shape("encoder_forward_cuda", B, T, C);
  auto s = static_cast<cudaStream_t>(stream);
  const int64_t BT = static_cast<int64_t>(B) * T;
  constexpr int W = kPack<Elem>;
  if (can_pack<Elem>(C, out, wte, wpe)) {
    encoder_forward_kernel<W><<<blocks_for(BT * C / W), kBlock, 0, s>>>(out, tokens, wte, wpe, BT, T, C);
  } else {
    encoder_forward_kernel<1><<<blocks_for(BT * C), kBlock, 0, s>>>(out, tokens, wte, wpe, BT, T, C);
  }
  CUDA_CHECK(cudaGetLastError());
}

template <class Elem>
void encoder_backward(Elem* dwte, Elem* dwpe, const Elem* dout, const int32_t* tokens, int B, int T, int C, int64_t v0,
                      int64_t Vl, void* stream) {
  check_shape("encoder_backward_cuda", B, T, C);
  auto s = static_cast<cudaStream_t>(stream);
  const int64_t BT = static_cast<int64_t>(B) * T;
  const int n = static_cast<int>(BT);

  if (dwpe) {
    encoder_backward_wpe_kernel<<<blocks_for(static_cast<int64_t>(T) * C), kBlock, 0, s>>>(dwpe, dout, B, T, C);
    CUDA_CHECK(cudaGetLastError());
  }

  // Scratch: positions, sorted tokens, sorted positions, then cub's temporary storage.
  size_t sort_bytes = 0;
  CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, sort_bytes, tokens, static_cast<int32_t*>(nullptr),
                                             static_cast<const int32_t*>(nullptr), static_cast<int32_t*>(nullptr), n, 0,
                                             32, s));
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
  encoder_backward_wte_kernel<<<static_cast<unsigned>(BT), kBlock, 0, s>>>(dwte, dout, sorted_tokens, sorted_positions,
                                                                           BT, C, v0, Vl);
  CUDA_CHECK(cudaGetLastError());
  CUDA_CHECK(cudaFreeAsync(scratch, s));
}

}  // namespace

void encoder_forward_cuda(float* out, const int32_t* tokens, const float* wte, const float* wpe, int B, int T, int C,
                          void* stream) {
  encoder_forward(out, tokens, wte, wpe, B, T, C, stream);
}

void encoder_backward_cuda(float* dwte, float* dwpe, const float* dout, const int32_t* tokens, int B, int T, int C,
                           void* stream) {
  encoder_backward(dwte, dwpe, dout, tokens, B, T, C, 0, INT64_MAX, stream);
}

void encoder_backward_rows_cuda(float* dwte_local, float* dwpe, const float* dout, const int32_t* tokens, int B, int T,
                                int C, int64_t v0, int64_t Vl, void* stream) {
  if (static_cast<int64_t>(B) * T * C == 0) return;  // as the CPU reference: nothing to add
  encoder_backward(dwte_local, dwpe, dout, tokens, B, T, C, v0, Vl, stream);
}

void encoder_forward_cuda(Bf16* out, const int32_t* tokens, const Bf16* wte, const Bf16* wpe, int B, int T, int C,
                          void* stream) {
  encoder_forward(cuda_bf16(out), tokens, cuda_bf16(wte), cuda_bf16(wpe), B, T, C, stream);
}

void encoder_backward_cuda(Bf16* dwte, Bf16* dwpe, const Bf16* dout, const int32_t* tokens, int B, int T, int C,
                           void* stream) {
  encoder_backward(cuda_bf16(dwte), cuda_bf16(dwpe), cuda_bf16(dout), tokens, B, T, C, 0, INT64_MAX, stream);
}

void encoder_backward_rows_cuda(Bf16* dwte_local, Bf16* dwpe, const Bf16* dout, const int32_t* tokens, int B, int T,
                                int C, int64_t v0, int64_t Vl, void* stream) {
  if (static_cast<int64_t>(B) * T * C == 0) return;  // as the CPU reference: nothing to add
  encoder_backward(cuda_bf16(dwte_local), cuda_bf16(dwpe), cuda_bf16(dout), tokens, B, T, C, v0, Vl, stream);
}

}  // namespace meshtrain
