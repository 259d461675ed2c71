// Repetition penalty / temperature / top-k / top-p sampling.
#include "model/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.h"

namespace meshtrain {

void check_sampling(const SamplingParams& p) {
  MT_CHECK(std::isfinite(p.temperature) && p.temperature >= 0.0f,
           "[sample] temperature must be >= 0 (0 = greedy; got {})", p.temperature);
  MT_CHECK(p.top_k >= 0, "[sample] top-k must be >= 0 (0 = the whole vocabulary; got {})", p.top_k);
  MT_CHECK(p.top_p > 0.0f && p.top_p <= 1.0f, "[sample] top-p must be in (0, 1] (1 = off; got {})", p.top_p);
  MT_CHECK(std::isfinite(p.repetition_penalty) && p.repetition_penalty > 0.0f,
           "[sample] repetition penalty must be > 0 (1 = off; got {})", p.repetition_penalty);
}

int32_t sample_token(const float* logits, int vocab, const SamplingParams& p, const std::vector<int32_t>& seen,
                     CounterRng& rng) {
  MT_CHECK(vocab > 0, "[sample] empty vocabulary");
  std::vector<float> penalised;
  if (p.repetition_penalty != 1.0f && !seen.empty()) {
    penalised.assign(logits, logits + vocab);
    std::vector<bool> done(static_cast<size_t>(vocab), false);
    for (int32_t id : seen) {
      if (id < 0 || id >= vocab || done[id]) continue;
      done[id] = true;
      float& x = penalised[id];
      x = x > 0.0f ? x / p.repetition_penalty : x * p.repetition_penalty;
    }
    logits = penalised.data();
  }
  if (p.temperature <= 0.0f) return static_cast<int32_t>(std::max_element(logits, logits + vocab) - logits);
  std::vector<int32_t> idx(vocab);
  std::iota(idx.begin(), idx.end(), 0);
  auto likelier = [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
  const int k = (p.top_k > 0 && p.top_k < vocab) ? p.top_k : vocab;
  if (k < vocab) {
    std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), likelier);
    idx.resize(k);
  } else if (p.top_p < 1.0f) {
    std::sort(idx.begin(), idx.end(), likelier);
  }
  float maxv = -INFINITY;
  for (int32_t i : idx) maxv = std::max(maxv, logits[i]);
  std::vector<double> probs(idx.size());
  double sum = 0.0;
  for (size_t j = 0; j < idx.size(); ++j) {
    probs[j] = std::exp(static_cast<double>((logits[idx[j]] - maxv) / p.temperature));
    sum += probs[j];
  }
  if (p.top_p < 1.0f) {
    // idx is sorted likeliest first: keep the shortest prefix whose mass reaches top_p (at least one).
    double mass = 0.0;
    size_t keep = 0;
    while (keep < idx.size() && (keep == 0 || mass < p.top_p * sum)) mass += probs[keep++];
    idx.resize(keep);
    probs.resize(keep);
    sum = mass;
  }
  double u = static_cast<double>(rng.uniform()) * sum, acc = 0.0;
  for (size_t j = 0; j < idx.size(); ++j) {
    acc += probs[j];
    if (u < acc) return idx[j];
  }
  return idx.back();
}

int32_t sample_token(const float* logits, int vocab, float temperature, int top_k, CounterRng& rng) {
  SamplingParams p;
  p.temperature = temperature;
  p.top_k = top_k;
  return sample_token(logits, vocab, p, {}, rng);
}

}  // namespace meshtrain
