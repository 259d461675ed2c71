// CPU reference for the AdamW update and the gradient sum of squares (adamw.h).
//
// The update is elementwise over a flat range of parameters: one parallel simd loop. The bias
// corrections 1 - beta^t depend only on the step, so they are computed once (in double: beta2^t for
// beta2 = 0.999 loses digits in float over many steps). The sum of squares feeds global-norm clipping
// and is compared across ranks and runs, so it must not depend on the thread count: the range is cut
// into fixed blocks, each block's sum is taken in double, and the block sums are added in order.
#include <cmath>
#include <cstdint>
#include <vector>

#include "core/error.h"
#include "model/kernels/adamw.h"

namespace meshtrain {
namespace {

// Elements per partial sum of sum_squares_cpu; fixed so the summation order is too.
constexpr int64_t kSumBlock = int64_t{1} << 15;

}  // namespace

void adamw_update_cpu(float* params, const float* grads, float* m, float* v, int64_t n, float lr, float beta1,
                      float beta2, float eps, float weight_decay, int t, float grad_scale) {
  MT_CHECK(n >= 0, "[adamw] n={}: the parameter count cannot be negative", n);
  MT_CHECK(t >= 1, "[adamw] step t={}: steps count from 1 (the bias correction divides by 1 - beta^t)", t);
  MT_CHECK(beta1 >= 0.0f && beta1 < 1.0f && beta2 >= 0.0f && beta2 < 1.0f,
           "[adamw] beta1={}, beta2={}: both must lie in [0, 1)", beta1, beta2);
  AdamWScalars sc{};
  sc.lr = lr;
  sc.bias_corr1 = adamw_bias_correction(beta1, t);
  sc.bias_corr2 = adamw_bias_correction(beta2, t);
  sc.grad_scale = grad_scale;
  adamw_update_cpu(params, grads, m, v, n, sc, beta1, beta2, eps, weight_decay);
}

void sum_to_float_cpu(float* out, const double* pieces, int count) {
  double sum = 0.0;
  for (int i = 0; i < count; ++i) sum += pieces[i];
  *out = static_cast<float>(sum);
}

void clip_scale_cpu(AdamWScalars* scalars, const double* pieces, int count, float grad_clip) {
  double sumsq = 0.0;
  for (int i = 0; i < count; ++i) sumsq += pieces[i];
  const double norm = std::sqrt(sumsq);
  scalars->grad_norm = static_cast<float>(norm);
  scalars->grad_scale = grad_clip > 0.0f && norm > grad_clip ? grad_clip / static_cast<float>(norm) : 1.0f;
}

void adamw_update_cpu(float* params, const float* grads, float* m, float* v, int64_t n, const AdamWScalars& sc,
                      float beta1, float beta2, float eps, float weight_decay) {
  const float lr = sc.lr, bias_corr1 = sc.bias_corr1, bias_corr2 = sc.bias_corr2, grad_scale = sc.grad_scale;
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float g = grads[i] * grad_scale;
    const float mi = beta1 * m[i] + (1.0f - beta1) * g;
    const float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    const float m_hat = mi / bias_corr1;
    const float v_hat = vi / bias_corr2;
    params[i] -= lr * (m_hat / (std::sqrt(v_hat) + eps) + weight_decay * params[i]);
  }
}

double sum_squares_cpu(const float* x, int64_t n) {
  MT_CHECK(n >= 0, "[sum_squares] n={}: the element count cannot be negative", n);
  const int64_t num_blocks = (n + kSumBlock - 1) / kSumBlock;
  std::vector<double> partial(static_cast<size_t>(num_blocks));
#pragma omp parallel for schedule(static)
  for (int64_t blk = 0; blk < num_blocks; ++blk) {
    const int64_t begin = blk * kSumBlock;
    const int64_t end = begin + kSumBlock < n ? begin + kSumBlock : n;
    double s = 0.0;
#pragma omp simd reduction(+ : s)
    for (int64_t i = begin; i < end; ++i) s += static_cast<double>(x[i]) * x[i];
    partial[static_cast<size_t>(blk)] = s;
  }
  double total = 0.0;
  for (double p : partial) total += p;
  return total;
}

}  // namespace meshtrain
