// CPU reference for the fused softmax + cross-entropy over a padded vocabulary (crossentropy.h).
//
// Each row of logits (V real columns, Vp - V padding) is handled by one thread in three sweeps over
// the real columns; the first streams the row from memory and the other two find it in cache (a
// GPT-2 row is 200 KB):
//   1. m = max of the row (so exp never overflows)
//   2. e_j = exp(x_j - m) and their sum S; with a gradient wanted, e_j is parked in dlogits
//   3. dlogits_j = (e_j / S - [j == target]) * dloss, padded columns set to 0
// loss = m + log S - x_target, read before sweep 2 because dlogits may alias logits. No probability
// matrix is kept, which is what lets the gradient overwrite the logits in place. Padded columns are
// never read, so whatever they hold cannot enter the softmax. Rows are independent: one parallel loop.
#include <cmath>
#include <cstdint>

#include "core/error.h"
#include "model/kernels/crossentropy.h"
#include "model/kernels/vector_math.h"

namespace meshtrain {

namespace {

void check_arguments(const int32_t* targets, int N, int V, int Vp) {
  MT_CHECK(N >= 0 && V >= 1 && Vp >= V, "[crossentropy] N={}, V={}, Vp={}: need N >= 0 and 1 <= V <= Vp", N, V, Vp);
  for (int i = 0; i < N; ++i) {
    MT_CHECK(targets[i] < V,
             "[crossentropy] target {} in row {} is not a real token (vocabulary size {}); "
             "use a negative target to ignore a row",
             targets[i], i, V);
  }
}

// Sweep 1: the largest of a row's V real logits.
inline float row_max(const float* x, int V) {
  float mx = x[0];
#pragma omp simd reduction(max : mx)
  for (int j = 0; j < V; ++j) mx = x[j] > mx ? x[j] : mx;
  return mx;
}

// Sweep 2: e_j = exp(x_j - mx) into e (which may be x itself) and their sum.
inline float exp_and_sum(float* e, const float* x, int V, float mx) {
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int j = 0; j < V; ++j) {
    e[j] = expf(x[j] - mx);
    sum += e[j];
  }
  return sum;
}

}  // namespace

void softmax_crossentropy_cpu(float* losses, float* dlogits, const float* logits, const int32_t* targets, int N, int V,
                              int Vp, float dloss) {
  check_arguments(targets, N, V, Vp);
#pragma omp parallel for schedule(static)
  for (int i = 0; i < N; ++i) {
    const int64_t row = static_cast<int64_t>(i) * Vp;
    const float* x = logits + row;
    float* d = dlogits != nullptr ? dlogits + row : nullptr;
    const int target = targets[i];
    if (target < 0) {
      losses[i] = 0.0f;
      if (d != nullptr) {
        for (int j = 0; j < Vp; ++j) d[j] = 0.0f;
      }
      continue;
    }

    const float mx = row_max(x, V);
    const float x_target = x[target];

    float sum = 0.0f;
    if (d != nullptr) {
      sum = exp_and_sum(d, x, V, mx);
    } else {
#pragma omp simd reduction(+ : sum)
      for (int j = 0; j < V; ++j) sum += expf(x[j] - mx);
    }
    losses[i] = mx + std::log(sum) - x_target;

    if (d != nullptr) {
      const float scale = dloss / sum;
#pragma omp simd
      for (int j = 0; j < V; ++j) d[j] *= scale;
      d[target] -= dloss;
      for (int j = V; j < Vp; ++j) d[j] = 0.0f;
    }
  }
}

// The three sweeps above, with the exponentials parked in the logits row (scratch here) and sweep 3
// writing bf16: the same float operations in the same order, then one rounding per value.
void softmax_crossentropy_bf16_grad_cpu(float* losses, uint16_t* dlogits16, float* logits, const int32_t* targets,
                                        int N, int V, int Vp, float dloss) {
  check_arguments(targets, N, V, Vp);
#pragma omp parallel for schedule(static)
  for (int i = 0; i < N; ++i) {
    const int64_t row = static_cast<int64_t>(i) * Vp;
    float* x = logits + row;
    uint16_t* d = dlogits16 + row;
    const int target = targets[i];
    if (target < 0) {
      losses[i] = 0.0f;
      for (int j = 0; j < Vp; ++j) d[j] = 0;
      continue;
    }
    const float mx = row_max(x, V);
    const float x_target = x[target];
    const float sum = exp_and_sum(x, x, V, mx);
    losses[i] = mx + std::log(sum) - x_target;
    const float scale = dloss / sum;
#pragma omp simd
    for (int j = 0; j < V; ++j) d[j] = float_to_bf16(x[j] * scale);
    // Rounded to float before the subtraction, as softmax_crossentropy_cpu does through memory: a
    // fused multiply-add here would change the last bit.
    volatile float target_prob = x[target] * scale;
    d[target] = float_to_bf16(target_prob - dloss);
    for (int j = V; j < Vp; ++j) d[j] = 0;
  }
}

}  // namespace meshtrain
