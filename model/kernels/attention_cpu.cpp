// CPU reference for causal multi-head self-attention (attention.h), materialised: the full T x T
// probability matrix of every (batch, head) is kept in att for backward.
//
// For one (b, h), with Q, K, V the T x hs slices of qkv (row stride 3C) and s = 1/sqrt(hs):
//   forward   S = s Q K^T;  att = causal row softmax of S (t2 <= t, zeros above);  out = att V
//   backward  dV += att^T dout;  datt = dout V^T;  dS = att * (datt - rowsum(att * datt));
//             dQ += s dS K;  dK += s dS^T Q
// Every product is one sgemm on strided views of qkv / out, so no head is ever copied out. The GEMMs
// compute the whole T x T square, twice the causal work; the softmax overwrites the upper triangle,
// and zeros there make the following products exact. The (b, h) pairs are independent (they write
// disjoint columns of out and dqkv), so they are split across OpenMP threads and each GEMM runs on one
// thread, which keeps a head's att and scratch rows in that core's cache between its GEMMs and softmax.
#include <cmath>
#include <cstdint>

#include "core/error.h"
#include "core/gemm.h"
#include "core/threads.h"
#include "model/kernels/attention.h"
#include "model/kernels/vector_math.h"

namespace meshtrain {
namespace {

void check_shape(const char* op, int B, int T, int C, int NH) {
  MT_CHECK(B >= 1 && T >= 1 && C >= 1 && NH >= 1, "[{}] B={}, T={}, C={}, NH={}: every dimension must be at least 1",
           op, B, T, C, NH);
  MT_CHECK(C % NH == 0, "[{}] C={} is not divisible by NH={}; the head size must be C / NH", op, C, NH);
}

// Softmax of row[0, n) in place and zeros in row[n, T): the causal mask of query row n - 1.
void causal_softmax_row(float* row, int n, int T) {
  float mx = row[0];
#pragma omp simd reduction(max : mx)
  for (int i = 0; i < n; ++i) mx = row[i] > mx ? row[i] : mx;
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int i = 0; i < n; ++i) {
    row[i] = expf(row[i] - mx);
    sum += row[i];
  }
  const float inv = 1.0f / sum;
#pragma omp simd
  for (int i = 0; i < n; ++i) row[i] *= inv;
  for (int i = n; i < T; ++i) row[i] = 0.0f;
}

}  // namespace

void attention_forward_cpu(float* out, float* att, const float* qkv, int B, int T, int C, int NH) {
  check_shape("attention_forward", B, T, C, NH);
  const int hs = C / NH;
  const int C3 = 3 * C;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hs));
  const int BNH = B * NH;
  BlasSingleThreadScope single_threaded_blas;
#pragma omp parallel for schedule(static)
  for (int bh = 0; bh < BNH; ++bh) {
    const int b = bh / NH, h = bh % NH;
    const float* q = qkv + static_cast<int64_t>(b) * T * C3 + h * hs;
    const float* k = q + C;
    const float* v = q + 2 * C;
    float* a = att + static_cast<int64_t>(bh) * T * T;
    gemm_cpu(false, true, T, T, hs, scale, q, C3, k, C3, 0.0f, a, T);
    for (int t = 0; t < T; ++t) causal_softmax_row(a + static_cast<int64_t>(t) * T, t + 1, T);
    gemm_cpu(false, false, T, hs, T, 1.0f, a, T, v, C3, 0.0f, out + static_cast<int64_t>(b) * T * C + h * hs, C);
  }
}

void attention_backward_cpu(float* dqkv, float* scratch, const float* dout, const float* qkv, const float* att, int B,
                            int T, int C, int NH) {
  check_shape("attention_backward", B, T, C, NH);
  const int hs = C / NH;
  const int C3 = 3 * C;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hs));
  const int BNH = B * NH;
  BlasSingleThreadScope single_threaded_blas;
#pragma omp parallel for schedule(static)
  for (int bh = 0; bh < BNH; ++bh) {
    const int b = bh / NH, h = bh % NH;
    const int64_t qkv_off = static_cast<int64_t>(b) * T * C3 + h * hs;
    const float* q = qkv + qkv_off;
    const float* k = q + C;
    const float* v = q + 2 * C;
    float* dq = dqkv + qkv_off;
    float* dk = dq + C;
    float* dv = dq + 2 * C;
    const float* dy = dout + static_cast<int64_t>(b) * T * C + h * hs;
    const float* a = att + static_cast<int64_t>(bh) * T * T;
    float* ds = scratch + static_cast<int64_t>(bh) * T * T;

    gemm_cpu(true, false, T, hs, T, 1.0f, a, T, dy, C, 1.0f, dv, C3);
    gemm_cpu(false, true, T, T, hs, 1.0f, dy, C, v, C3, 0.0f, ds, T);
    // Softmax backward, row by row, turning datt into dS in place.
    for (int t = 0; t < T; ++t) {
      const float* ar = a + static_cast<int64_t>(t) * T;
      float* dr = ds + static_cast<int64_t>(t) * T;
      float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
      for (int i = 0; i <= t; ++i) dot += ar[i] * dr[i];
#pragma omp simd
      for (int i = 0; i <= t; ++i) dr[i] = ar[i] * (dr[i] - dot);
      for (int i = t + 1; i < T; ++i) dr[i] = 0.0f;
    }
    gemm_cpu(false, false, T, hs, T, scale, ds, T, k, C3, 1.0f, dq, C3);
    gemm_cpu(true, false, T, hs, T, scale, ds, T, q, C3, 1.0f, dk, C3);
  }
}

}  // namespace meshtrain
