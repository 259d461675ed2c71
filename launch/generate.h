// Text generation: the `generate` command and the sampling used during training.
//
// Next-token logits come from a NextLogits source. With the key/value cache (the default) the
// prompt runs once (prefill) and each new token costs one position's work; without it every token
// re-runs the whole context. Both see the same window of the context, so greedy text is the same
// token for token until the context outgrows model.seq_len. Past that the recompute slides its
// window one token at a time, while the cache (whose positions cannot move) keeps the newest half
// of the window and prefills it again: text past seq_len differs between the two, by design.
#pragma once

#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include <memory>
#include <optional>

#include "core/rng.h"
#include "launch/config.h"
#include "model/gpt_config.h"
#include "model/sampler.h"
#include "model/text/tokenizer.h"

namespace meshtrain {

class Gpt;
class Pipeline;
class Tokenizer;

struct SampleOptions {
  int max_new_tokens = 200;
  SamplingParams sampling;
  std::vector<std::string> stop;  // stop once the text holds one of these (it is not emitted)
  bool stop_at_eot = true;        // stop at <|endoftext|>; else it is emitted as a blank line
  bool kv_cache = true;
};

/// Whole-vocabulary logits of the last position of (tokens, T).
using LogitsFn = std::function<const float*(const int32_t* tokens, int T)>;
/// Logits of the last position of a context that only grows at its end (one source per sequence).
using NextLogits = std::function<const float*(const std::vector<int32_t>& context)>;
/// No cache: last_logits on the last seq_len tokens every time.
NextLogits recompute_logits(LogitsFn last_logits, int seq_len);
/// With a key/value cache: reset empties it, append runs new tokens through it and returns the last
/// one's logits. The window is the context's last seq_len tokens at the start; once full, the newest
/// half (at least one token) is prefilled again.
NextLogits cached_logits(std::function<void()> reset, LogitsFn append, int seq_len);
/// The source for a whole model, or (pipe not null) for this rank's stage of a pipeline.
NextLogits model_logits(Gpt& model, Pipeline* pipe, bool kv_cache);

/// Where generated text goes, piece by piece (nullptr: nowhere).
using TextSink = std::function<void(std::string_view)>;
/// Writes to a FILE and flushes (null file: nowhere).
TextSink file_sink(std::FILE* out);

struct Generation {
  std::vector<int32_t> tokens;  // every token sampled (a stop string's tokens included)
  std::string text;             // what was emitted
  std::string finish;           // "length", "eot" or "stop"
};

/// Extends context by up to max_new_tokens sampled tokens, emitting each token's text as it is
/// produced; text that may be the start of a stop string is held back until it is known not to be.
Generation stream_sample(const NextLogits& logits, const GptConfig& cfg, const Tokenizer& tok,
                         std::vector<int32_t> context, const SampleOptions& opt, CounterRng& rng,
                         const TextSink& sink);

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
  std::string device = "auto";     // auto (CUDA when a GPU is visible), cpu or cuda
  std::string precision = "fp32";  // fp32 or bf16 (CUDA)
  int local_rank = 0;              // picks the GPU under mpirun
  bool timing = false;             // print tokens/s to stderr at the end
  std::string adapter;             // LoRA adapter file, or ""
};

class Communicator;
class Mesh;

/// A checkpoint loaded for generation (and the server): its configuration and tokenizer, the model
/// laid out over the ranks' mesh, and its pipeline when there are stages.
struct InferenceModel {
  ~InferenceModel();
  std::string checkpoint;  // the file loaded
  Config config;
  std::optional<Tokenizer> tokenizer;
  std::unique_ptr<Mesh> mesh;
  std::unique_ptr<Gpt> model;
  std::unique_ptr<Pipeline> pipeline;
  /// A next-token source for one sequence (a fresh key/value cache when kv_cache).
  NextLogits logits(bool kv_cache);
};
/// Loads args.checkpoint (and args.adapter) on the ranks of world laid out as (world / (tp x pp), tp, pp),
/// on the device args ask for; checks the tokenizer against the one the model was trained with.
std::unique_ptr<InferenceModel> load_inference_model(const GenerateArgs& args, Communicator& world);

/// The `generate` command, on the ranks of world laid out as (world / (tp x pp), tp, pp).
void run_generate(const GenerateArgs& args, Communicator& world);

}  // namespace meshtrain
