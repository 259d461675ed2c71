// Sampling the next token from logits: temperature, top-k, and a counter-based RNG so a seed gives
// the same text every time. Padded vocabulary entries are never sampled.
#pragma once

#include <cstdint>

#include "core/rng.h"

namespace meshtrain {

/// Draws a token id in [0, vocab) from logits; temperature <= 0 means greedy (argmax);
/// top_k <= 0 means the whole vocabulary.
int32_t sample_token(const float* logits, int vocab, float temperature, int top_k, CounterRng& rng);

}  // namespace meshtrain
