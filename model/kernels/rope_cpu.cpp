// CPU reference for rotary position embeddings (rope.h).
#include <cmath>
#include <cstdint>

#include "core/error.h"
#include "model/kernels/rope.h"

namespace meshtrain {

std::vector<float> rope_table(int T, int hs, double theta) {
  MT_CHECK(T >= 1 && hs >= 2 && hs % 2 == 0 && theta > 1.0,
           "[rope] table for T={} positions, head size {}, theta {}: need T >= 1, an even head size, theta > 1", T, hs,
           theta);
  const int half = hs / 2;
  std::vector<float> table(static_cast<size_t>(T) * half * 2);
  for (int t = 0; t < T; ++t)
    for (int i = 0; i < half; ++i) {
      const double angle = t * std::pow(theta, -2.0 * i / hs);
      const size_t at = (static_cast<size_t>(t) * half + i) * 2;
      table[at] = static_cast<float>(std::cos(angle));
      table[at + 1] = static_cast<float>(std::sin(angle));
    }
  return table;
}

void rope_cpu(float* qkv, const float* table, int B, int T, int C, int NH, int pos0, bool inverse) {
  MT_CHECK(B >= 1 && T >= 1 && NH >= 1 && C % NH == 0 && (C / NH) % 2 == 0 && pos0 >= 0,
           "[rope] B={}, T={}, C={}, NH={}, pos0={}: C / NH must be an even head size", B, T, C, NH, pos0);
  const int hs = C / NH, half = hs / 2;
  const float sign = inverse ? -1.0f : 1.0f;
  const int64_t BT = static_cast<int64_t>(B) * T;
#pragma omp parallel for schedule(static)
  for (int64_t bt = 0; bt < BT; ++bt) {
    const float* cs = table + static_cast<int64_t>(pos0 + bt % T) * half * 2;
    float* row = qkv + bt * 3 * C;
    for (int h = 0; h < 2 * NH; ++h) {  // q's heads then k's: both parts are contiguous
      float* x = row + static_cast<int64_t>(h) * hs;
      for (int i = 0; i < half; ++i) {
        const float c = cs[2 * i], s = sign * cs[2 * i + 1];
        const float x1 = x[i], x2 = x[i + half];
        x[i] = x1 * c - x2 * s;
        x[i + half] = x2 * c + x1 * s;
      }
    }
  }
}

}  // namespace meshtrain
