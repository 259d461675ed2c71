// CPU reference for the linear layer (matmul.h): out[N,OC] = inp[N,C] @ weight[OC,C]^T + bias.
//
// All three products are single OpenBLAS sgemm calls on the row-major buffers (OpenBLAS threads them
// itself), with beta = 1 wherever the header asks for accumulation:
//   forward  out     = inp @ weight^T          (bias pre-broadcast into out, then beta = 1)
//   backward dinp   += dout @ weight           [N,OC] x [OC,C]
//            dweight += dout^T @ inp            [OC,N] x [N,C]
// The bias gradient is a column sum of dout; each thread owns whole blocks of columns and adds rows
// in order, so it is the same for any thread count and needs no partial buffers.
#include <cstdint>

#include "core/error.h"
#include "core/gemm.h"
#include "model/kernels/matmul.h"

namespace meshtrain {
namespace {

// Columns per work unit of the bias gradient (two cache lines).
constexpr int kColumnBlock = 32;

void matvec(float* out, const float* x, const float* weight, const float* bias, int C, int OC) {
#pragma omp parallel for schedule(static)
  for (int j = 0; j < OC; ++j) {
    const float* w = weight + static_cast<int64_t>(j) * C;
    float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
    for (int c = 0; c < C; ++c) acc += w[c] * x[c];
    out[j] = bias != nullptr ? bias[j] + acc : acc;
  }
}

}  // namespace

void matmul_forward_cpu(float* out, const float* inp, const float* weight, const float* bias, int N, int C, int OC) {
  MT_CHECK(N >= 1 && C >= 1 && OC >= 1, "[matmul_forward] N={}, C={}, OC={}: every dimension must be at least 1", N, C,
           OC);
  if (bias != nullptr) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; ++n) {
      float* o = out + static_cast<int64_t>(n) * OC;
#pragma omp simd
      for (int j = 0; j < OC; ++j) o[j] = bias[j];
    }
  }
  // With beta = 0 sgemm never reads out, so garbage (even NaN) in it does not leak into the result.
  // One row (generation, a token at a time) is a matrix-vector product bound by reading the weight:
  // sgemm would pack the whole matrix first, sgemv reads it once at about half the memory bandwidth,
  // and a dot product per output row split over the threads (eight partial sums, vectorised) reads
  // it at nearly all of it.
  if (N == 1) return matvec(out, inp, weight, bias, C, OC);
  gemm_cpu(false, true, N, OC, C, 1.0f, inp, C, weight, C, bias != nullptr ? 1.0f : 0.0f, out, OC);
}

void matmul_backward_cpu(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                         const float* weight, int N, int C, int OC) {
  MT_CHECK(N >= 1 && C >= 1 && OC >= 1, "[matmul_backward] N={}, C={}, OC={}: every dimension must be at least 1", N, C,
           OC);
  if (dinp != nullptr) gemm_cpu(false, false, N, C, OC, 1.0f, dout, OC, weight, C, 1.0f, dinp, C);
  if (dweight != nullptr) gemm_cpu(true, false, OC, C, N, 1.0f, dout, OC, inp, C, 1.0f, dweight, C);
  if (dbias == nullptr) return;
  const int num_blocks = (OC + kColumnBlock - 1) / kColumnBlock;
#pragma omp parallel for schedule(static)
  for (int blk = 0; blk < num_blocks; ++blk) {
    const int j0 = blk * kColumnBlock;
    const int width = OC - j0 < kColumnBlock ? OC - j0 : kColumnBlock;
    float acc[kColumnBlock] = {};
    for (int n = 0; n < N; ++n) {
      const float* d = dout + static_cast<int64_t>(n) * OC + j0;
#pragma omp simd
      for (int j = 0; j < width; ++j) acc[j] += d[j];
    }
    for (int j = 0; j < width; ++j) dbias[j0 + j] += acc[j];
  }
}

}  // namespace meshtrain
