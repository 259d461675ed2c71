// The training loop. A step consumes batch_size x grad_accum sequences: each micro-batch's loss
// gradient is scaled by 1/grad_accum so the accumulated gradient is that of the mean loss; then
// global-norm clipping, the scheduled learning rate and AdamW. Everything that decides the next
// step's numbers (weights, moments, data position, step) is in the checkpoint, so a resumed run
// repeats the uninterrupted one exactly.
#include "launch/train.h"

#include <filesystem>
#include <optional>

#include "core/threads.h"
#include "core/timer.h"
#include "launch/builtin_corpus.h"
#include "launch/config.h"
#include "launch/generate.h"
#include "launch/progress.h"
#include "launch/train_state.h"
#include "model/data.h"
#include "model/gpt.h"
#include "model/optimizer.h"
#include "model/tokenizer.h"
#include "parallel/checkpoint.h"
#include "parallel/communicator.h"

namespace fs = std::filesystem;

namespace meshtrain {

namespace {

constexpr int kBuiltinVocab = 4096;

std::string resolve_resume(const std::string& resume, const Config& cfg) {
  if (resume.empty()) return "";
  if (resume == "latest") {
    std::string p = find_latest_checkpoint(cfg.train.out_dir);
    MT_CHECK(!p.empty(), "[train] --resume latest: no checkpoint in '{}'", cfg.train.out_dir);
    return p;
  }
  MT_CHECK(fs::exists(resume), "[train] --resume: checkpoint '{}' does not exist", resume);
  return resume;
}

double evaluate(Gpt& model, const std::vector<std::string>& val_paths, const Config& cfg) {
  // Always the same first eval_batches windows, so values are comparable across steps and runs.
  const int B = cfg.train.batch_size, T = cfg.model.seq_len;
  DataLoader val(val_paths, T, false, 0);
  std::vector<int32_t> batch(static_cast<size_t>(B) * (T + 1)), inp(static_cast<size_t>(B) * T),
      tgt(static_cast<size_t>(B) * T);
  int n = static_cast<int>(std::min<int64_t>(cfg.train.eval_batches, std::max<int64_t>(1, val.num_windows() / B)));
  double sum = 0.0;
  for (int i = 0; i < n; ++i) {
    val.next_batch(B, 0, 1, batch.data());
    for (int b = 0; b < B; ++b)
      for (int t = 0; t < T; ++t) {
        inp[b * T + t] = batch[b * (T + 1) + t];
        tgt[b * T + t] = batch[b * (T + 1) + t + 1];
      }
    sum += model.forward(inp.data(), tgt.data(), B, T);
  }
  return sum / n;
}

}  // namespace

double run_train(const TrainArgs& args) {
  Config cfg;
  std::string resume_path;
  if (!args.resume.empty()) {
    MT_CHECK(args.config_file.empty(),
             "[train] --resume takes the configuration from the checkpoint; change keys with --set instead of --config");
    Config probe = default_config();
    for (const auto& o : args.overrides) apply_override(probe, o);  // validates the overrides early
    // out_dir may be overridden to find "latest".
    Config lookup = default_config();
    for (const auto& o : args.overrides)
      if (o.rfind("train.out_dir=", 0) == 0) apply_override(lookup, o);
    resume_path = resolve_resume(args.resume, lookup);
    cfg = read_run_config(resume_path);
    for (const auto& o : args.overrides) apply_override(cfg, o);
    validate_config(cfg);
  } else {
    cfg = load_config(args.config_file, args.overrides);
    std::string existing = find_latest_checkpoint(cfg.train.out_dir);
    MT_CHECK(existing.empty(),
             "[train] '{}' already holds checkpoints (latest: {}); continue with --resume latest, or start afresh "
             "with --set train.out_dir=OTHER (existing checkpoints are never overwritten)",
             cfg.train.out_dir, existing);
  }

  const int threads = cfg.train.threads > 0 ? cfg.train.threads : available_cores();
  set_num_threads(threads);

  if (cfg.data.train.empty()) {
    MT_CHECK(cfg.data.val.empty() && cfg.data.tokenizer.empty(),
             "[config] data.val / data.tokenizer were set without data.train; set data.train too, or none of them "
             "for the built-in corpus");
    BuiltinData d = prepare_builtin_corpus((fs::path(cfg.train.out_dir) / "data").string(), kBuiltinVocab);
    cfg.data.train = d.train;
    cfg.data.val = d.val;
    cfg.data.tokenizer = d.tokenizer;
  }
  std::optional<Tokenizer> tokenizer;
  if (!cfg.data.tokenizer.empty()) {
    cfg.data.tokenizer = fs::absolute(cfg.data.tokenizer).string();
    tokenizer = Tokenizer::load(cfg.data.tokenizer);
  }
  if (cfg.model.vocab_size == 0) {
    MT_CHECK(tokenizer, "[config] model.vocab_size = 0 means 'the tokenizer's', but data.tokenizer is not set");
    cfg.model.vocab_size = tokenizer->vocab_size();
  }
  cfg.model.validate();

  auto train_paths = expand_shard_paths(cfg.data.train);
  std::vector<std::string> val_paths;
  if (!cfg.data.val.empty()) val_paths = expand_shard_paths(cfg.data.val);
  const int B = cfg.train.batch_size, T = cfg.model.seq_len, accum = cfg.train.grad_accum;
  DataLoader loader(train_paths, T, cfg.train.shuffle, static_cast<uint64_t>(cfg.train.seed));

  LocalCommunicator comm;
  Gpt model(cfg.model, comm);
  AdamWConfig ocfg;
  ocfg.weight_decay = static_cast<float>(cfg.train.weight_decay);
  ocfg.grad_clip = static_cast<float>(cfg.train.grad_clip);
  AdamW opt(model.table(), ocfg);
  RunCounters counters;
  if (!resume_path.empty()) {
    counters = load_run(resume_path, model, &opt);
    loader.set_state(counters.loader);
    fmt::print("[train] resumed from {} at step {}\n", resume_path, counters.step);
  } else {
    model.initialize(static_cast<uint64_t>(cfg.train.seed));
  }
  CounterRng sample_rng(static_cast<uint64_t>(cfg.train.seed), 2, static_cast<uint64_t>(counters.rng_counter));

  const int64_t total = cfg.train.steps;
  MT_CHECK(counters.step < total, "[train] the run is already at step {} of train.steps = {}; raise it with --set "
                                  "train.steps=N to continue", counters.step, total);
  fmt::print("[train] model: {} layers, {} heads, {} channels, T={}, vocab {} (padded {}), {:.2f}M parameters\n",
             cfg.model.n_layer, cfg.model.n_head, cfg.model.n_embd, T, cfg.model.vocab_size,
             cfg.model.padded_vocab(), static_cast<double>(cfg.model.num_params()) / 1e6);
  fmt::print("[train] data: {} training windows of {} tokens; {} sequences per step ({} x {}); {} threads\n",
             loader.num_windows(), T + 1, B * accum, B, accum, threads);
  std::fflush(stdout);

  std::vector<int32_t> batch(static_cast<size_t>(B) * (T + 1)), inp(static_cast<size_t>(B) * T),
      tgt(static_cast<size_t>(B) * T);
  StepLog log(counters.step, total, cfg.train.log_every, args.metrics);
  SampleOptions sopt;
  sopt.max_new_tokens = cfg.train.sample_tokens;
  auto sample = [&](const char* title) {
    if (!tokenizer || args.quiet_samples) return;
    log.message(fmt::format("---- sample ({}) ----", title));
    log.clear_bar();
    stream_sample(model, *tokenizer, prompt_tokens(*tokenizer, ""), sopt, sample_rng, stdout);
    log.message("\n--------------------");
  };

  double last_loss = 0.0;
  for (int64_t step = counters.step; step < total; ++step) {
    double t0 = now_seconds();
    model.zero_grad();
    double loss = 0.0;
    for (int micro = 0; micro < accum; ++micro) {
      loader.next_batch(B, comm.rank(), comm.size(), batch.data());
      for (int b = 0; b < B; ++b)
        for (int t = 0; t < T; ++t) {
          inp[b * T + t] = batch[b * (T + 1) + t];
          tgt[b * T + t] = batch[b * (T + 1) + t + 1];
        }
      loss += model.forward(inp.data(), tgt.data(), B, T, true, 1.0f / static_cast<float>(accum));
      model.backward();
    }
    loss /= accum;
    model.reduce_gradients();
    float lr = lr_at(step, cfg.train.warmup_steps, total, static_cast<float>(cfg.train.lr),
                     static_cast<float>(cfg.train.min_lr));
    float norm = opt.step(model.params(), model.grads(), lr);
    double dt = now_seconds() - t0;

    StepRecord rec;
    rec.step = step + 1;
    rec.loss = loss;
    rec.lr = lr;
    rec.grad_norm = norm;
    rec.ms = dt * 1e3;
    rec.tokens_per_s = static_cast<double>(B) * accum * T / dt;
    bool last = step + 1 == total;
    if (!val_paths.empty() && ((cfg.train.eval_every > 0 && rec.step % cfg.train.eval_every == 0) || last))
      rec.val_loss = evaluate(model, val_paths, cfg);
    log.record(rec);
    last_loss = loss;

    if (cfg.train.sample_every > 0 && rec.step % cfg.train.sample_every == 0 && !last)
      sample(fmt::format("step {}", rec.step).c_str());
    if ((cfg.train.checkpoint_every > 0 && rec.step % cfg.train.checkpoint_every == 0) || last) {
      counters.step = rec.step;
      counters.loader = loader.state();
      counters.rng_counter = static_cast<int64_t>(sample_rng.counter());
      std::string path = save_run(cfg, model, opt, counters);
      log.message(fmt::format("[train] checkpoint {}", path));
    }
  }
  sample("final");
  return last_loss;
}

}  // namespace meshtrain
