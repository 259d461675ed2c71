// Streaming generation from a checkpoint, with or without a key/value cache.
#include "launch/generate.h"

#include <algorithm>
#include <filesystem>
#include <memory>
#include <optional>

#include "core/communicator.h"
#include "core/device.h"
#include "core/threads.h"
#include "core/timer.h"
#include "launch/config.h"
#include "launch/finetune.h"
#include "launch/train/train_state.h"
#include "model/gpt.h"
#include "model/text/tokenizer.h"
#include "parallel/checkpoint.h"
#include "parallel/mesh.h"
#include "parallel/pipeline.h"

namespace meshtrain {

std::vector<int32_t> prompt_tokens(const Tokenizer& tok, const std::string& prompt) {
  if (!prompt.empty()) return tok.encode(prompt, true);
  if (tok.eot_id() >= 0) return {tok.eot_id()};
  return tok.encode("\n", false);
}

NextLogits recompute_logits(LogitsFn last_logits, int seq_len) {
  return [last_logits = std::move(last_logits), seq_len](const std::vector<int32_t>& context) {
    MT_CHECK(!context.empty(), "[generate] empty context");
    const size_t n = std::min(context.size(), static_cast<size_t>(seq_len));
    return last_logits(context.data() + context.size() - n, static_cast<int>(n));
  };
}

NextLogits cached_logits(std::function<void()> reset, LogitsFn append, int seq_len) {
  struct Window {
    bool begun = false;
    size_t start = 0;   // context index of cache position 0
    size_t cached = 0;  // tokens of the context in the cache, from start
  };
  auto w = std::make_shared<Window>();
  const size_t S = static_cast<size_t>(seq_len);
  return [w, S, reset = std::move(reset), append = std::move(append)](const std::vector<int32_t>& context) {
    MT_CHECK(!context.empty(), "[generate] empty context");
    MT_CHECK(!w->begun || context.size() > w->start + w->cached,
             "[generate] a cached source follows one growing context; make a new one for a new sequence");
    if (!w->begun || context.size() - w->start > S) {
      // First call: the last seq_len tokens. Window full: the newest half, prefilled again.
      const size_t keep = w->begun ? std::max<size_t>(1, S / 2) : std::min(context.size(), S);
      w->begun = true;
      w->start = context.size() - keep;
      w->cached = 0;
      reset();
    }
    const size_t from = w->start + w->cached;
    const float* logits = append(context.data() + from, static_cast<int>(context.size() - from));
    w->cached = context.size() - w->start;
    return logits;
  };
}

NextLogits model_logits(Gpt& model, Pipeline* pipe, bool kv_cache) {
  const int T = model.config().seq_len;
  if (!kv_cache) {
    if (pipe) return recompute_logits([pipe](const int32_t* t, int n) { return pipe->last_logits(t, n); }, T);
    return recompute_logits([&model](const int32_t* t, int n) { return model.forward_last_logits(t, n); }, T);
  }
  if (pipe)
    return cached_logits([pipe] { pipe->reset_cache(); },
                         [pipe](const int32_t* t, int n) { return pipe->cached_logits(t, n); }, T);
  return cached_logits([&model] { model.reset_cache(); },
                       [&model](const int32_t* t, int n) { return model.forward_cached_logits(t, n); }, T);
}

TextSink file_sink(std::FILE* out) {
  if (!out) return nullptr;
  return [out](std::string_view s) {
    std::fwrite(s.data(), 1, s.size(), out);
    std::fflush(out);
  };
}

namespace {
/// Bytes at the end of text that could begin one of the stop strings (held back from the sink).
size_t possible_stop_prefix(std::string_view text, const std::vector<std::string>& stops) {
  size_t hold = 0;
  for (const auto& s : stops)
    for (size_t n = std::min(s.size() - 1, text.size()); n > hold; --n)
      if (text.substr(text.size() - n) == std::string_view(s).substr(0, n)) {
        hold = n;
        break;
      }
  return hold;
}
}  // namespace

Generation stream_sample(const NextLogits& next_logits, const GptConfig& cfg, const Tokenizer& tok,
                         std::vector<int32_t> context, const SampleOptions& opt, CounterRng& rng,
                         const TextSink& sink) {
  MT_CHECK(!context.empty(), "[generate] empty context");
  check_sampling(opt.sampling);
  for (const auto& s : opt.stop) MT_CHECK(!s.empty(), "[generate] a stop string is empty");
  const int V = cfg.vocab_size;
  for (int32_t id : context)
    MT_CHECK(id >= 0 && id < V, "[generate] prompt token {} outside the model's vocabulary of {}", id, V);
  Generation g;
  g.finish = "length";
  std::string pending;  // produced text not yet emitted
  size_t emitted = 0;   // bytes of g.text already given to the sink
  auto emit_upto = [&](size_t end) {
    if (sink && end > emitted) sink(std::string_view(g.text).substr(emitted, end - emitted));
    emitted = std::max(emitted, end);
  };
  for (int i = 0; i < opt.max_new_tokens; ++i) {
    const float* logits = next_logits(context);
    const int32_t next = sample_token(logits, V, opt.sampling, context, rng);
    context.push_back(next);
    g.tokens.push_back(next);
    if (next == tok.eot_id() && opt.stop_at_eot) {
      g.finish = "eot";
      break;
    }
    const size_t before = g.text.size();
    g.text += next == tok.eot_id() ? std::string("\n\n") : tok.token_bytes(next);
    // A stop string ends the text where it starts (it may straddle tokens: search from before it).
    size_t cut = std::string::npos;
    for (const auto& s : opt.stop) {
      const size_t from = before >= s.size() ? before - s.size() + 1 : 0;
      const size_t at = g.text.find(s, from);
      if (at != std::string::npos) cut = std::min(cut, at);
    }
    if (cut != std::string::npos) {
      g.text.resize(cut);
      g.finish = "stop";
      break;
    }
    emit_upto(g.text.size() - possible_stop_prefix(g.text, opt.stop));
  }
  emit_upto(g.text.size());
  return g;
}

std::unique_ptr<InferenceModel> load_inference_model(const GenerateArgs& args, Communicator& world) {
  const std::string path = resolve_checkpoint(args.checkpoint, "generate");
  MT_CHECK(args.device == "auto" || args.device == "cpu" || args.device == "cuda",
           "[generate] --device must be auto, cpu or cuda (got '{}')", args.device);
  MT_CHECK(args.precision == "fp32" || args.precision == "bf16", "[generate] --precision must be fp32 or bf16 (got '{}')",
           args.precision);
  const bool use_cuda = args.device == "cuda" || (args.device == "auto" && cuda_device_count() > 0);
  MT_CHECK(use_cuda || args.precision == "fp32", "[generate] --precision bf16 runs on a GPU; add --device cuda");
  if (use_cuda) {
    require_cuda("generate --device cuda");
    use_cuda_device(args.local_rank % cuda_device_count());  // ranks may share a GPU: tensors move over MPI
  }
  set_num_threads(args.threads > 0 ? args.threads : available_cores());
  const RunInfo info = read_run_info(path);  // configuration and tokenizer fingerprint in one read
  auto m = std::make_unique<InferenceModel>();
  m->checkpoint = path;
  m->config = info.config;
  const Config& cfg = m->config;
  std::string tok_dir = args.tokenizer.empty() ? cfg.data.tokenizer : args.tokenizer;
  MT_CHECK(!tok_dir.empty(), "[generate] the checkpoint names no tokenizer; pass --tokenizer DIR");
  m->tokenizer.emplace(Tokenizer::load(tok_dir));
  const Tokenizer& tok = *m->tokenizer;
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
  m->mesh = std::make_unique<Mesh>(world, MeshShape{world.size() / (args.tp * args.pp), args.tp, args.pp});
  Mesh& mesh = *m->mesh;
  std::unique_ptr<Backend> backend;
  if (use_cuda) backend = make_cuda_backend(args.precision == "bf16" ? DType::bf16 : DType::f32);
  m->model = std::make_unique<Gpt>(cfg.model, mesh.dp(), &mesh.tp(), args.pp, mesh.pp_rank(), std::move(backend));
  Gpt& model = *m->model;
  if (world.size() == 1) load_run(path, model, nullptr);
  else load_run_sharded(path, model, nullptr, world, mesh.dp_rank());
  if (!args.adapter.empty()) {
    MT_CHECK(args.pp == 1, "[generate] --adapter runs without pipeline stages; use --tp only");
    load_adapter(args.adapter, path, model);
  }
  if (args.pp > 1) m->pipeline = std::make_unique<Pipeline>(model, mesh.pp(), PipelineSchedule::gpipe);
  return m;
}

InferenceModel::~InferenceModel() = default;

NextLogits InferenceModel::logits(bool kv_cache) { return model_logits(*model, pipeline.get(), kv_cache); }

void run_generate(const GenerateArgs& args, Communicator& world) {
  const bool lead = world.rank() == 0;
  auto im = load_inference_model(args, world);
  const Tokenizer& tok = *im->tokenizer;
  Gpt& model = *im->model;
  const Config& cfg = im->config;
  CounterRng rng(static_cast<uint64_t>(args.seed), 2);
  auto context = prompt_tokens(tok, args.prompt);
  std::FILE* out = lead ? stdout : nullptr;
  if (out) std::fwrite(args.prompt.data(), 1, args.prompt.size(), out);
  const double t0 = now_seconds();
  Generation g = stream_sample(im->logits(args.sample.kv_cache), cfg.model, tok, context, args.sample, rng,
                               file_sink(out));
  const double seconds = now_seconds() - t0;
  if (out) {
    std::fputc('\n', out);
    std::fflush(out);  // the text's last line before the timing line (stderr), when both go to one place
  }
  if (lead && args.timing)
    fmt::print(stderr, "[generate] {} tokens in {:.3f} s: {:.1f} tokens/s ({}, {}; finished by {})\n",
               g.tokens.size(), seconds, static_cast<double>(g.tokens.size()) / seconds,
               args.sample.kv_cache ? "key/value cache" : "no cache", model.backend().describe(), g.finish);
}

}  // namespace meshtrain
