// CPU reference for the residual connection (residual.h): out = a + b, and the += its backward uses.
//
// Both are memory-bound elementwise loops over flat arrays; a static split across threads and a simd
// body is all they need.
#include <cstdint>

#include "core/error.h"
#include "model/kernels/residual.h"

namespace meshtrain {

void residual_forward_cpu(float* out, const float* a, const float* b, int64_t N) {
  MT_CHECK(N >= 0, "[residual_forward] N={}: the element count cannot be negative", N);
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < N; ++i) out[i] = a[i] + b[i];
}

void residual_accumulate_cpu(float* dst, const float* src, int64_t N, float scale) {
  MT_CHECK(N >= 0, "[residual_accumulate] N={}: the element count cannot be negative", N);
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < N; ++i) dst[i] += scale * src[i];
}

}  // namespace meshtrain
