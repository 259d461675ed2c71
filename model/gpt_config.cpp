// GptConfig checks and counts.
#include "model/gpt_config.h"

#include "core/error.h"

namespace meshtrain {

void GptConfig::validate() const {
  MT_CHECK(n_layer >= 1, "[config] model.n_layer must be >= 1 (got {})", n_layer);
  MT_CHECK(n_head >= 1, "[config] model.n_head must be >= 1 (got {})", n_head);
  MT_CHECK(n_embd >= 1 && n_embd % n_head == 0,
           "[config] model.n_embd must be a positive multiple of model.n_head (got n_embd={}, n_head={})", n_embd,
           n_head);
  MT_CHECK(seq_len >= 1, "[config] model.seq_len must be >= 1 (got {})", seq_len);
  MT_CHECK(vocab_size >= 2 && vocab_size <= (1 << 24), "[config] model.vocab_size must be in [2, 16777216] (got {})",
           vocab_size);
  validate_positions();
}

void GptConfig::validate_positions() const {
  MT_CHECK(pos_embedding == "learned" || pos_embedding == "rope",
           "[config] model.pos_embedding must be learned or rope (got '{}')", pos_embedding);
  if (rope()) {
    MT_CHECK(head_size() % 2 == 0,
             "[config] model.pos_embedding = rope turns channel pairs, so the head size n_embd / n_head must be even "
             "(got {} / {} = {})", n_embd, n_head, head_size());
    MT_CHECK(rope_theta > 1.0, "[config] model.rope_theta must be > 1 (got {})", rope_theta);
  }
}

int64_t GptConfig::num_params() const {
  int64_t C = n_embd, L = n_layer, V = padded_vocab(), T = seq_len;
  int64_t per_layer = 2 * C + (3 * C * C + 3 * C) + (C * C + C) + 2 * C + (4 * C * C + 4 * C) + (4 * C * C + C);
  const int64_t positions = rope() ? 0 : T * C;  // wpe
  return V * C + positions + L * per_layer + 2 * C;
}

double GptConfig::flops_per_token(int T) const {
  double N = static_cast<double>(num_params()) - (rope() ? 0.0 : static_cast<double>(seq_len) * n_embd);  // wpe is a lookup
  return 6.0 * N + 12.0 * n_layer * static_cast<double>(T) * n_embd;
}

}  // namespace meshtrain
