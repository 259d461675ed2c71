// CPU reference for attention over a key/value cache (kv_cache.h).
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "core/error.h"
#include "model/kernels/kv_cache.h"

namespace meshtrain {

void attention_cached_cpu(float* out, float* kcache, float* vcache, const float* qkv, int T, int pos0, int C, int NH) {
  MT_CHECK(T >= 1 && pos0 >= 0 && NH >= 1 && C % NH == 0, "[attention_cached] T={}, pos0={}, C={}, NH={}", T, pos0, C,
           NH);
  const int hs = C / NH, C3 = 3 * C;
  for (int t = 0; t < T; ++t) {
    std::memcpy(kcache + static_cast<int64_t>(pos0 + t) * C, qkv + static_cast<int64_t>(t) * C3 + C, C * sizeof(float));
    std::memcpy(vcache + static_cast<int64_t>(pos0 + t) * C, qkv + static_cast<int64_t>(t) * C3 + 2 * C,
                C * sizeof(float));
  }
  const float scale = 1.0f / std::sqrt(static_cast<float>(hs));
  const int TH = T * NH;
#pragma omp parallel for schedule(static)
  for (int th = 0; th < TH; ++th) {
    const int t = th / NH, h = th % NH, n = pos0 + t + 1;
    const float* q = qkv + static_cast<int64_t>(t) * C3 + h * hs;
    std::vector<float> p(static_cast<size_t>(n));
    float mx = -INFINITY;
    for (int j = 0; j < n; ++j) {
      const float* k = kcache + static_cast<int64_t>(j) * C + h * hs;
      float dot = 0.0f;
      for (int d = 0; d < hs; ++d) dot += q[d] * k[d];
      p[j] = scale * dot;
      mx = p[j] > mx ? p[j] : mx;
    }
    float sum = 0.0f;
    for (int j = 0; j < n; ++j) {
      p[j] = expf(p[j] - mx);
      sum += p[j];
    }
    const float inv = 1.0f / sum;
    float* o = out + static_cast<int64_t>(t) * C + h * hs;
    for (int d = 0; d < hs; ++d) o[d] = 0.0f;
    for (int j = 0; j < n; ++j) {
      const float w = p[j] * inv;
      const float* v = vcache + static_cast<int64_t>(j) * C + h * hs;
      for (int d = 0; d < hs; ++d) o[d] += w * v[d];
    }
  }
}

}  // namespace meshtrain
