// Temperature / top-k sampling.
#include "model/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "core/error.h"

namespace meshtrain {

int32_t sample_token(const float* logits, int vocab, float temperature, int top_k, CounterRng& rng) {
  MT_CHECK(vocab > 0, "[sample] empty vocabulary");
  if (temperature <= 0.0f) return static_cast<int32_t>(std::max_element(logits, logits + vocab) - logits);
  std::vector<int32_t> idx(vocab);
  std::iota(idx.begin(), idx.end(), 0);
  int k = (top_k > 0 && top_k < vocab) ? top_k : vocab;
  if (k < vocab) {
    std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](int32_t a, int32_t b) {
      return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
    });
    idx.resize(k);
  }
  float maxv = -INFINITY;
  for (int32_t i : idx) maxv = std::max(maxv, logits[i]);
  std::vector<double> probs(idx.size());
  double sum = 0.0;
  for (size_t j = 0; j < idx.size(); ++j) {
    probs[j] = std::exp(static_cast<double>((logits[idx[j]] - maxv) / temperature));
    sum += probs[j];
  }
  double u = static_cast<double>(rng.uniform()) * sum, acc = 0.0;
  for (size_t j = 0; j < idx.size(); ++j) {
    acc += probs[j];
    if (u < acc) return idx[j];
  }
  return idx.back();
}

}  // namespace meshtrain
