// CPU reference for LayerNorm over the last dimension (layernorm.h).
//
// Forward, per row: mean, then the variance of the centred values (two passes over a row that sits
// in L1, instead of E[x^2] - E[x]^2, which cancels catastrophically in fp32 when |mean| >> std),
// then out = (x - mean) * rstd * weight + bias. The sums are vectorised reductions (several partial
// sums per row), which also keeps fp32 rounding error low. Rows are independent: one parallel loop.
//
// Backward, with xhat = (x - mean) * rstd and g = dout * weight:
//   dinp    += rstd * (g - mean(g) - xhat * mean(g * xhat))      (per row: parallel over rows)
//   dweight += sum over rows of dout * xhat,  dbias += sum over rows of dout
// The parameter gradients are reductions over rows. Rather than per-thread partial copies, a second
// loop gives each thread whole blocks of channels and sums rows in order, so the result does not
// depend on the thread count and no extra memory is needed.
//
// The fused residual + LayerNorm is, on the CPU, exactly the two unfused calls: it is the
// specification of the GPU's one-pass kernel, and reproducing the vectorised row sums inside a fused
// loop would tie its bit-exactness to the compiler's choices.
#include <cmath>
#include <cstdint>

#include "core/error.h"
#include "model/kernels/layernorm.h"
#include "model/kernels/residual.h"

namespace meshtrain {
namespace {

constexpr float kEpsilon = 1e-5f;
// Channels per work unit of the weight/bias gradient loop (two cache lines).
constexpr int kChannelBlock = 32;

}  // namespace

void layernorm_forward_cpu(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                           const float* bias, int N, int C) {
  MT_CHECK(N >= 0 && C >= 1, "[layernorm_forward] N={}, C={}: need N >= 0 rows of C >= 1 channels", N, C);
  const float inv_c = 1.0f / static_cast<float>(C);
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; ++n) {
    const float* x = inp + static_cast<int64_t>(n) * C;
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int c = 0; c < C; ++c) sum += x[c];
    const float m = sum * inv_c;
    float sq = 0.0f;
#pragma omp simd reduction(+ : sq)
    for (int c = 0; c < C; ++c) {
      const float d = x[c] - m;
      sq += d * d;
    }
    const float s = 1.0f / std::sqrt(sq * inv_c + kEpsilon);
    float* o = out + static_cast<int64_t>(n) * C;
#pragma omp simd
    for (int c = 0; c < C; ++c) o[c] = (x[c] - m) * s * weight[c] + bias[c];
    mean[n] = m;
    rstd[n] = s;
  }
}

void layernorm_backward_cpu(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                            const float* weight, const float* mean, const float* rstd, int N, int C) {
  MT_CHECK(N >= 0 && C >= 1, "[layernorm_backward] N={}, C={}: need N >= 0 rows of C >= 1 channels", N, C);
  const float inv_c = 1.0f / static_cast<float>(C);

  // Input gradient: each row needs two row means of the upstream gradient, then one update pass.
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; ++n) {
    const int64_t row = static_cast<int64_t>(n) * C;
    const float* x = inp + row;
    const float* d = dout + row;
    const float m = mean[n], s = rstd[n];
    float g_sum = 0.0f, gx_sum = 0.0f;
#pragma omp simd reduction(+ : g_sum, gx_sum)
    for (int c = 0; c < C; ++c) {
      const float g = d[c] * weight[c];
      g_sum += g;
      gx_sum += g * (x[c] - m) * s;
    }
    const float g_mean = g_sum * inv_c, gx_mean = gx_sum * inv_c;
    float* di = dinp + row;
#pragma omp simd
    for (int c = 0; c < C; ++c) {
      const float xhat = (x[c] - m) * s;
      di[c] += s * (d[c] * weight[c] - g_mean - xhat * gx_mean);
    }
  }

  // Weight and bias gradients: sums over rows, one block of channels per work unit.
  const int num_blocks = (C + kChannelBlock - 1) / kChannelBlock;
#pragma omp parallel for schedule(static)
  for (int blk = 0; blk < num_blocks; ++blk) {
    const int c0 = blk * kChannelBlock;
    const int width = C - c0 < kChannelBlock ? C - c0 : kChannelBlock;
    float w_acc[kChannelBlock] = {};
    float b_acc[kChannelBlock] = {};
    for (int n = 0; n < N; ++n) {
      const int64_t row = static_cast<int64_t>(n) * C + c0;
      const float m = mean[n], s = rstd[n];
#pragma omp simd
      for (int c = 0; c < width; ++c) {
        w_acc[c] += dout[row + c] * (inp[row + c] - m) * s;
        b_acc[c] += dout[row + c];
      }
    }
    for (int c = 0; c < width; ++c) {
      dweight[c0 + c] += w_acc[c];
      dbias[c0 + c] += b_acc[c];
    }
  }
}

void residual_layernorm_forward_cpu(float* residual, float* out, float* mean, float* rstd, const float* a,
                                    const float* b, const float* weight, const float* bias, int N, int C) {
  MT_CHECK(N >= 0 && C >= 1, "[residual_layernorm_forward] N={}, C={}: need N >= 0 rows of C >= 1 channels", N, C);
  residual_forward_cpu(residual, a, b, static_cast<int64_t>(N) * C);
  layernorm_forward_cpu(out, mean, rstd, residual, weight, bias, N, C);
}

}  // namespace meshtrain
