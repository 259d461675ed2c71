// Sampling the next token from logits: repetition penalty, temperature, top-k, top-p (nucleus),
// and a counter-based RNG so a seed gives the same text every time. Padded vocabulary entries are
// never sampled.
#pragma once

#include <cstdint>
#include <vector>

#include "core/rng.h"

namespace meshtrain {

struct SamplingParams {
  float temperature = 0.8f;         // <= 0: greedy (argmax)
  int top_k = 40;                   // <= 0: the whole vocabulary
  float top_p = 1.0f;               // keep the smallest set of likeliest tokens whose probability reaches top_p
  float repetition_penalty = 1.0f;  // > 1 makes tokens already in the context less likely (CTRL's rule)
};

/// Throws naming the option when a value is outside its range.
void check_sampling(const SamplingParams& p);

/// Draws a token id in [0, vocab) from logits. Order: the repetition penalty on every distinct id of
/// seen (a positive logit divided by it, a negative one multiplied, as CTRL and Hugging Face do),
/// then greedy, or temperature, top-k and top-p before one uniform draw. logits are not modified.
int32_t sample_token(const float* logits, int vocab, const SamplingParams& p, const std::vector<int32_t>& seen,
                     CounterRng& rng);
/// Temperature and top-k only, no penalty.
int32_t sample_token(const float* logits, int vocab, float temperature, int top_k, CounterRng& rng);

}  // namespace meshtrain
