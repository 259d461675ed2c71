// Text generation: the `generate` command and the sampling used during training.
#pragma once

#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "core/rng.h"
#include "model/gpt_config.h"

namespace meshtrain {

class Gpt;
class Tokenizer;

struct SampleOptions {
  int max_new_tokens = 200;
  float temperature = 0.8f;
  int top_k = 40;
};

/// Whole-vocabulary logits of the last position of (tokens, T): a whole model's
/// forward_last_logits, or a pipeline's last_logits.
using LogitsFn = std::function<const float*(const int32_t* tokens, int T)>;

/// Extends context by up to max_new_tokens sampled tokens, writing each token's text to out (when
/// not null) as it is produced (<|endoftext|> is written as a blank line). The context window
/// slides once it is longer than the model's seq_len. Returns the new tokens.
std::vector<int32_t> stream_sample(const LogitsFn& logits, const GptConfig& cfg, const Tokenizer& tok,
                                   std::vector<int32_t> context, const SampleOptions& opt, CounterRng& rng,
                                   std::FILE* out);
/// The same over a whole model.
std::vector<int32_t> stream_sample(Gpt& model, const Tokenizer& tok, std::vector<int32_t> context,
                                   const SampleOptions& opt, CounterRng& rng, std::FILE* out);

/// The prompt's tokens, or <|endoftext|> (or a newline) when the prompt is empty.
std::vector<int32_t> prompt_tokens(const Tokenizer& tok, const std::string& prompt);

struct GenerateArgs {
  std::string checkpoint;
  std::string tokenizer;  // "" = the one recorded in the checkpoint
  std::string prompt;
  SampleOptions sample;
  int64_t seed = 1337;
  int threads = 0;
  int tp = 1;  // tensor-parallel ranks (under mpirun)
  int pp = 1;  // pipeline stages (under mpirun)
};

class Communicator;

/// The `generate` command, on the ranks of world laid out as (world / (tp x pp), tp, pp).
void run_generate(const GenerateArgs& args, Communicator& world);

}  // namespace meshtrain
