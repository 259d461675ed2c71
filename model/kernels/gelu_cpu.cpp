// CPU reference for GELU with the tanh approximation used by GPT-2 (gelu.h).
//
// With u = sqrt(2/pi) (x + 0.044715 x^3):
//   gelu(x)  = 0.5 x (1 + tanh u)
//   gelu'(x) = 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) sqrt(2/pi) (1 + 3 * 0.044715 x^2)
// Both are elementwise over a flat array: one parallel simd loop each, with tanhf from glibc's vector
// math library so a call covers eight elements (vector_math.h).
#include <cmath>
#include <cstdint>

#include "core/error.h"
#include "model/kernels/gelu.h"
#include "model/kernels/vector_math.h"

namespace meshtrain {
namespace {

constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kCubic = 0.044715f;

}  // namespace

void gelu_forward_cpu(float* out, const float* inp, int64_t N) {
  MT_CHECK(N >= 0, "[gelu_forward] N={}: the element count cannot be negative", N);
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < N; ++i) {
    const float x = inp[i];
    const float u = kSqrt2OverPi * (x + kCubic * x * x * x);
    out[i] = 0.5f * x * (1.0f + tanhf(u));
  }
}

void gelu_backward_cpu(float* dinp, const float* inp, const float* dout, int64_t N) {
  MT_CHECK(N >= 0, "[gelu_backward] N={}: the element count cannot be negative", N);
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < N; ++i) {
    const float x = inp[i];
    const float u = kSqrt2OverPi * (x + kCubic * x * x * x);
    const float th = tanhf(u);
    const float du_dx = kSqrt2OverPi * (1.0f + 3.0f * kCubic * x * x);
    const float grad = 0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * du_dx;
    dinp[i] += grad * dout[i];
  }
}

}  // namespace meshtrain
