// GPT-2 model shape. The vocabulary is padded to a multiple of 128 so the classifier GEMMs and a
// later vocab-parallel split stay aligned; padded ids are never produced or counted.
#pragma once

#include <cstdint>
#include <string>

namespace meshtrain {

/// How the model knows where a token is. learned: GPT-2's table wpe (seq_len x C) added to the token
/// embedding; rope: no table, q and k of every head are rotated by position (model/kernels/rope.h).
enum class PosEmbedding { learned, rope };

struct GptConfig {
  int n_layer = 4;
  int n_head = 4;
  int n_embd = 256;
  int seq_len = 256;      // maximum context (rows of wpe)
  int vocab_size = 50257; // real tokens
  std::string pos_embedding = "learned";  // "learned" (GPT-2) or "rope"
  double rope_theta = 10000.0;             // RoPE base: pair i turns by position * theta^(-2i / head_size)

  /// vocab_size rounded up to a multiple of 128.
  int padded_vocab() const { return (vocab_size + 127) / 128 * 128; }
  int head_size() const { return n_embd / n_head; }
  /// pos_embedding parsed (validate() has checked it).
  PosEmbedding positions() const { return pos_embedding == "rope" ? PosEmbedding::rope : PosEmbedding::learned; }
  bool rope() const { return positions() == PosEmbedding::rope; }
  /// Throws naming the field when the shape is not usable.
  void validate() const;
  /// The pos_embedding / rope_theta part of validate() (checked before vocab_size is known).
  void validate_positions() const;
  /// Number of parameters (the padded embedding rows included).
  int64_t num_params() const;
  /// Training FLOPs per token (forward + backward), counting matmuls and attention: 6N + 12 L T C.
  double flops_per_token(int T) const;
};

}  // namespace meshtrain
