// Streaming generation from a checkpoint.
#include "launch/generate.h"

#include <filesystem>
#include <optional>

#include "core/threads.h"
#include "launch/config.h"
#include "launch/train/train_state.h"
#include "model/gpt.h"
#include "model/sampler.h"
#include "model/tokenizer.h"
#include "parallel/checkpoint.h"
#include "core/communicator.h"
#include "parallel/mesh.h"
#include "parallel/pipeline.h"

namespace meshtrain {

std::vector<int32_t> prompt_tokens(const Tokenizer& tok, const std::string& prompt) {
  if (!prompt.empty()) return tok.encode(prompt, true);
  if (tok.eot_id() >= 0) return {tok.eot_id()};
  return tok.encode("\n", false);
}

std::vector<int32_t> stream_sample(Gpt& model, const Tokenizer& tok, std::vector<int32_t> context,
                                   const SampleOptions& opt, CounterRng& rng, std::FILE* out) {
  LogitsFn logits = [&](const int32_t* tokens, int T) { return model.forward_last_logits(tokens, T); };
  return stream_sample(logits, model.config(), tok, std::move(context), opt, rng, out);
}

std::vector<int32_t> stream_sample(const LogitsFn& last_logits, const GptConfig& cfg, const Tokenizer& tok,
                                   std::vector<int32_t> context, const SampleOptions& opt, CounterRng& rng,
                                   std::FILE* out) {
  MT_CHECK(!context.empty(), "[generate] empty context");
  const int T = cfg.seq_len, V = cfg.vocab_size;
  for (int32_t id : context)
    MT_CHECK(id >= 0 && id < V, "[generate] prompt token {} outside the model's vocabulary of {}", id, V);
  std::vector<int32_t> produced;
  for (int i = 0; i < opt.max_new_tokens; ++i) {
    int n = static_cast<int>(std::min<size_t>(context.size(), static_cast<size_t>(T)));
    const float* logits = last_logits(context.data() + context.size() - n, n);
    int32_t next = sample_token(logits, V, opt.temperature, opt.top_k, rng);
    context.push_back(next);
    produced.push_back(next);
    if (out) {
      const std::string& text = next == tok.eot_id() ? std::string("\n\n") : tok.token_bytes(next);
      std::fwrite(text.data(), 1, text.size(), out);
      std::fflush(out);
    }
  }
  return produced;
}

void run_generate(const GenerateArgs& args, Communicator& world) {
  const bool lead = world.rank() == 0;
  std::string path = args.checkpoint;
  if (std::filesystem::is_directory(path)) {
    std::string latest = find_latest_checkpoint(path);
    MT_CHECK(!latest.empty(), "[generate] no checkpoint (ckpt_NNNNNN.h5) in folder '{}'", path);
    path = latest;
  }
  MT_CHECK(std::filesystem::exists(path), "[generate] checkpoint '{}' does not exist", path);
  set_num_threads(args.threads > 0 ? args.threads : available_cores());
  const RunInfo info = read_run_info(path);  // configuration and tokenizer fingerprint in one read
  Config cfg = info.config;
  std::string tok_dir = args.tokenizer.empty() ? cfg.data.tokenizer : args.tokenizer;
  MT_CHECK(!tok_dir.empty(), "[generate] the checkpoint names no tokenizer; pass --tokenizer DIR");
  Tokenizer tok = Tokenizer::load(tok_dir);
  const std::string& made_with = info.counters.tokenizer_id;
  MT_CHECK(made_with.empty() || made_with == tok.fingerprint_hex(),
           "[generate] the model was trained with tokenizer {} ('{}'), but '{}' is tokenizer {}: its ids would "
           "decode to other text; pass --tokenizer with the run's tokenizer folder", made_with, cfg.data.tokenizer,
           tok_dir, tok.fingerprint_hex());
  MT_CHECK(tok.vocab_size() == cfg.model.vocab_size,
           "[generate] tokenizer '{}' has {} tokens but the model was trained with {}", tok_dir, tok.vocab_size(),
           cfg.model.vocab_size);
  // Under mpirun the model is laid out over tp x pp ranks (any layout loads any checkpoint); every
  // rank samples the same tokens from the same logits and rank 0 prints them.
  MT_CHECK(world.size() % (args.tp * args.pp) == 0, "[generate] --tp {} x --pp {} must divide the number of ranks ({})",
           args.tp, args.pp, world.size());
  Mesh mesh(world, MeshShape{world.size() / (args.tp * args.pp), args.tp, args.pp});
  Gpt model(cfg.model, mesh.dp(), &mesh.tp(), args.pp, mesh.pp_rank());
  if (world.size() == 1) load_run(path, model, nullptr);
  else load_run_sharded(path, model, nullptr, world, mesh.dp_rank());
  std::optional<Pipeline> pipe;
  if (args.pp > 1) pipe.emplace(model, mesh.pp(), PipelineSchedule::gpipe);
  LogitsFn logits = [&](const int32_t* tokens, int T) {
    return pipe ? pipe->last_logits(tokens, T) : model.forward_last_logits(tokens, T);
  };
  CounterRng rng(static_cast<uint64_t>(args.seed), 2);
  auto context = prompt_tokens(tok, args.prompt);
  std::FILE* out = lead ? stdout : nullptr;
  if (out) std::fwrite(args.prompt.data(), 1, args.prompt.size(), out);
  stream_sample(logits, cfg.model, tok, context, args.sample, rng, out);
  if (out) std::fputc('\n', out);
}

}  // namespace meshtrain
