// CPU reference for the vocabulary-parallel embedding and cross-entropy (vocab_parallel.h).
#include <algorithm>
#include <cmath>
#include <cstring>

#include "model/kernels/vocab_parallel.h"

namespace meshtrain {

void vocab_embedding_rows_cpu(float* out, const int32_t* tokens, const float* wte_local, int64_t BT, int C,
                              int64_t v0, int64_t Vl) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < BT; ++i) {
    const int64_t local = tokens[i] - v0;
    if (local >= 0 && local < Vl) std::memcpy(out + i * C, wte_local + local * C, C * sizeof(float));
    else std::memset(out + i * C, 0, C * sizeof(float));
  }
}

void add_positions_cpu(float* out, const float* wpe, int B, int T, int C) {
  const int64_t BT = static_cast<int64_t>(B) * T;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < BT; ++i) {
    const float* p = wpe + (i % T) * C;
    for (int c = 0; c < C; ++c) out[i * C + c] += p[c];
  }
}

void vocab_embedding_backward_cpu(float* dwte_local, float* dwpe, const float* dout, const int32_t* tokens, int B,
                                  int T, int C, int64_t v0, int64_t Vl) {
  const int64_t BT = static_cast<int64_t>(B) * T;
  // Parallel over channels, positions in order: deterministic whatever the thread count.
#pragma omp parallel for schedule(static)
  for (int c = 0; c < C; ++c) {
    for (int64_t i = 0; i < BT; ++i) {
      const float g = dout[i * C + c];
      if (dwpe) dwpe[(i % T) * C + c] += g;
      const int64_t local = tokens[i] - v0;
      if (local >= 0 && local < Vl) dwte_local[local * C + c] += g;
    }
  }
}

namespace {
/// This rank's real (unpadded) columns.
int64_t real_columns(int64_t V, int64_t v0, int64_t Vl) { return std::clamp<int64_t>(V - v0, 0, Vl); }
}  // namespace

void vocab_xent_max_cpu(float* mx, const float* logits, int N, int64_t Vl, int64_t V, int64_t v0) {
  const int64_t real = real_columns(V, v0, Vl);
#pragma omp parallel for schedule(static)
  for (int i = 0; i < N; ++i) {
    const float* row = logits + static_cast<int64_t>(i) * Vl;
    float m = -INFINITY;
    for (int64_t j = 0; j < real; ++j) m = std::max(m, row[j]);
    mx[i] = m;
  }
}

void vocab_xent_sums_cpu(float* sums, const float* logits, const int32_t* targets, const float* mx, int N, int64_t Vl,
                         int64_t V, int64_t v0) {
  const int64_t real = real_columns(V, v0, Vl);
#pragma omp parallel for schedule(static)
  for (int i = 0; i < N; ++i) {
    const float* row = logits + static_cast<int64_t>(i) * Vl;
    double s = 0.0;
    for (int64_t j = 0; j < real; ++j) s += std::exp(row[j] - mx[i]);
    sums[i] = static_cast<float>(s);
    const int64_t local = targets[i] - v0;
    sums[N + i] = (targets[i] >= 0 && local >= 0 && local < real) ? row[local] : 0.0f;
  }
}

void vocab_xent_finish_cpu(float* losses, float* dlogits, const float* logits, const int32_t* targets, const float* mx,
                           const float* sums, int N, int64_t Vl, int64_t V, int64_t v0, float dloss) {
  const int64_t real = real_columns(V, v0, Vl);
#pragma omp parallel for schedule(static)
  for (int i = 0; i < N; ++i) {
    const bool counted = targets[i] >= 0;
    losses[i] = counted ? std::log(sums[i]) + mx[i] - sums[N + i] : 0.0f;
    if (!dlogits) continue;
    const float* row = logits + static_cast<int64_t>(i) * Vl;
    float* drow = dlogits + static_cast<int64_t>(i) * Vl;
    const float inv = 1.0f / sums[i];
    const int64_t local = targets[i] - v0;
    for (int64_t j = 0; j < Vl; ++j) {
      const float p = j < real ? std::exp(row[j] - mx[i]) * inv : 0.0f;  // reads row[j] before writing drow[j]
      drow[j] = counted && j < real ? (p - (j == local ? 1.0f : 0.0f)) * dloss : 0.0f;
    }
  }
}

}  // namespace meshtrain
