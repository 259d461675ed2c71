// Vocabulary-parallel embedding and cross-entropy (Megatron-LM's scheme). Per row of logits the
// ranks agree on the maximum (all-reduce max), then on the sum of exponentials and the target's
// logit (one all-reduce sum of both), which is all a softmax cross-entropy needs.
#include "model/vocab_parallel.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/tensor.h"
#include "core/communicator.h"

namespace meshtrain {

void vocab_parallel_embedding_forward(float* out, const int32_t* tokens, const float* wte_local, const float* wpe,
                                      int B, int T, int C, int64_t v0, int64_t Vl, Communicator& tp) {
  const int64_t BT = static_cast<int64_t>(B) * T;
  Tensor rows = Tensor::zeros({BT, C});
  float* r = rows.f32();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < BT; ++i) {
    int64_t local = tokens[i] - v0;
    if (local >= 0 && local < Vl) std::memcpy(r + i * C, wte_local + local * C, C * sizeof(float));
  }
  tp.all_reduce(rows, ReduceOp::sum);  // exactly one rank contributed each row: the sum is exact
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < BT; ++i) {
    const float* p = wpe + (i % T) * C;
    for (int c = 0; c < C; ++c) out[i * C + c] = r[i * C + c] + p[c];
  }
}

void vocab_parallel_embedding_backward(float* dwte_local, float* dwpe, const float* dout, const int32_t* tokens,
                                       int B, int T, int C, int64_t v0, int64_t Vl) {
  const int64_t BT = static_cast<int64_t>(B) * T;
  // Parallel over channels, positions in order: deterministic whatever the thread count.
#pragma omp parallel for schedule(static)
  for (int c = 0; c < C; ++c) {
    for (int64_t i = 0; i < BT; ++i) {
      float g = dout[i * C + c];
      dwpe[(i % T) * C + c] += g;
      int64_t local = tokens[i] - v0;
      if (local >= 0 && local < Vl) dwte_local[local * C + c] += g;
    }
  }
}

void vocab_parallel_crossentropy(float* losses, float* dlogits, const float* logits, const int32_t* targets, int N,
                                 int64_t V, int64_t Vl, int64_t v0, float dloss, Communicator& tp) {
  const int64_t real = std::clamp<int64_t>(V - v0, 0, Vl);  // this rank's real (unpadded) columns
  Tensor maxes = Tensor::empty({N}), sums = Tensor::empty({2, N});
  float* mx = maxes.f32();
#pragma omp parallel for schedule(static)
  for (int i = 0; i < N; ++i) {
    const float* row = logits + static_cast<int64_t>(i) * Vl;
    float m = -INFINITY;
    for (int64_t j = 0; j < real; ++j) m = std::max(m, row[j]);
    mx[i] = m;
  }
  tp.all_reduce(maxes, ReduceOp::max);
  float* sumexp = sums.f32();
  float* target_logit = sums.f32() + N;
#pragma omp parallel for schedule(static)
  for (int i = 0; i < N; ++i) {
    const float* row = logits + static_cast<int64_t>(i) * Vl;
    double s = 0.0;
    for (int64_t j = 0; j < real; ++j) s += std::exp(row[j] - mx[i]);
    sumexp[i] = static_cast<float>(s);
    int64_t local = targets[i] - v0;
    target_logit[i] = (targets[i] >= 0 && local >= 0 && local < real) ? row[local] : 0.0f;
  }
  tp.all_reduce(sums, ReduceOp::sum);
#pragma omp parallel for schedule(static)
  for (int i = 0; i < N; ++i) {
    const bool counted = targets[i] >= 0;
    losses[i] = counted ? std::log(sumexp[i]) + mx[i] - target_logit[i] : 0.0f;
    if (!dlogits) continue;
    const float* row = logits + static_cast<int64_t>(i) * Vl;
    float* drow = dlogits + static_cast<int64_t>(i) * Vl;
    const float inv = 1.0f / sumexp[i];
    const int64_t local = targets[i] - v0;
    for (int64_t j = 0; j < Vl; ++j) {
      float p = j < real ? std::exp(row[j] - mx[i]) * inv : 0.0f;  // reads row[j] before writing drow[j]
      drow[j] = counted && j < real ? (p - (j == local ? 1.0f : 0.0f)) * dloss : 0.0f;
    }
  }
}

}  // namespace meshtrain
