// Chapter 3: causal self-attention, twice. First the materialised way (model/kernels/attention_cpu.cpp):
// a T x T matrix of probabilities per head, zero above the diagonal. Then the flash way, written out
// here in plain loops: keys are visited in blocks, and each query row keeps only a running maximum m
// and a running sum l of exp(score - m), rescaling what it has when m grows. The result is the same,
// and log(l) + m, the row's log-sum-exp, is all backward needs to rebuild any probability.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>

#include "core/rng.h"
#include "model/kernels/attention.h"

using namespace meshtrain;

int main() {
  const int B = 1, T = 6, C = 8, NH = 2, hs = C / NH;
  CounterRng rng(7, 0);
  std::vector<float> qkv(B * T * 3 * C), out(B * T * C), att(B * NH * T * T);
  for (auto& x : qkv) x = 2.0f * (rng.uniform() - 0.5f);
  attention_forward_cpu(out.data(), att.data(), qkv.data(), B, T, C, NH);

  std::printf("head 0: probabilities (row t = query position, column = key position)\n");
  for (int t = 0; t < T; ++t) {
    for (int u = 0; u < T; ++u) std::printf(" %6.3f", att[t * T + u]);
    std::printf("\n");
  }

  // Causality: change the key and value at position 3; rows 0..2 of the output cannot notice.
  std::vector<float> qkv2 = qkv, out2(out.size()), att2(att.size());
  for (int c = C; c < 3 * C; ++c) qkv2[3 * 3 * C + c] += 1.0f;  // k and v of position 3
  attention_forward_cpu(out2.data(), att2.data(), qkv2.data(), B, T, C, NH);
  std::printf("\nchange k and v at position 3; largest change of the output at position:");
  bool causal = true;
  for (int t = 0; t < T; ++t) {
    float d = 0.0f;
    for (int c = 0; c < C; ++c) d = std::max(d, std::fabs(out2[t * C + c] - out[t * C + c]));
    std::printf(" %d: %.3f", t, d);
    causal = causal && (t < 3 ? d == 0.0f : d > 0.0f);
  }
  std::printf("\n");

  // Flash, for head 0: keys in blocks of 2, running max m, running sum l, running output acc.
  const float scale = 1.0f / std::sqrt(float(hs));
  const int block = 2;
  double worst_out = 0.0, worst_p = 0.0;
  std::printf("\nflash (head 0, key blocks of %d): per row, the log-sum-exp kept for backward\n", block);
  for (int t = 0; t < T; ++t) {
    const float* q = &qkv[t * 3 * C];
    float m = -INFINITY, l = 0.0f, acc[hs] = {};
    for (int u0 = 0; u0 <= t; u0 += block) {         // only blocks at or before t: the causal mask
      const int u1 = std::min(u0 + block, t + 1);
      float s[block], m_new = m;
      for (int u = u0; u < u1; ++u) {                  // this block's scores, and the new running max
        s[u - u0] = 0.0f;
        for (int c = 0; c < hs; ++c) s[u - u0] += q[c] * qkv[u * 3 * C + C + c];
        s[u - u0] *= scale;
        m_new = std::max(m_new, s[u - u0]);
      }
      const float rescale = std::exp(m - m_new);       // re-base what was summed under the old max
      l *= rescale;
      for (int c = 0; c < hs; ++c) acc[c] *= rescale;
      for (int u = u0; u < u1; ++u) {
        const float p = std::exp(s[u - u0] - m_new);
        l += p;
        for (int c = 0; c < hs; ++c) acc[c] += p * qkv[u * 3 * C + 2 * C + c];
      }
      m = m_new;
    }
    const float lse = m + std::log(l);
    for (int c = 0; c < hs; ++c) worst_out = std::max(worst_out, double(std::fabs(acc[c] / l - out[t * C + c])));
    // Backward's view: any probability is exp(score - lse), no T x T matrix needed.
    for (int u = 0; u <= t; ++u) {
      float s = 0.0f;
      for (int c = 0; c < hs; ++c) s += q[c] * qkv[u * 3 * C + C + c];
      worst_p = std::max(worst_p, double(std::fabs(std::exp(s * scale - lse) - att[t * T + u])));
    }
    std::printf("  row %d: lse %.4f\n", t, lse);
  }
  std::printf("flash output vs materialised: largest difference %.1e\n", worst_out);
  std::printf("exp(score - lse) vs the stored probabilities: largest difference %.1e\n", worst_p);
  const bool ok = causal && worst_out < 1e-5 && worst_p < 1e-5;
  std::printf("%s\n", ok ? "causal, and flash agrees with the materialised attention" : "MISMATCH");
  return ok ? 0 : 1;
}
