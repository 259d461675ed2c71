// LoRA fine-tuning (`meshtrain finetune`), adapter files and `meshtrain lora merge`.
//
// The loop is the plain synchronous one: each rank runs its micro-batches through the frozen model
// with adapters, the adapters' gradients are summed over the data-parallel ranks (they are small:
// one all-reduce per step), the global norm is taken over the tensor-parallel shards (replicated
// adapters counted once), and AdamW updates the adapters only. Losses are the same as one process
// on the whole batch, on any dp x tp layout.
#include "launch/finetune.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <optional>

#include "core/communicator.h"
#include "core/device.h"
#include "core/rng.h"
#include "core/threads.h"
#include "core/timer.h"
#include "launch/ckpt/ckpt_tools.h"
#include "launch/train/progress.h"
#include "launch/train/train.h"
#include "launch/train/train_state.h"
#include "model/text/data.h"
#include "model/gpt.h"
#include "model/lora.h"
#include "model/optimizer.h"
#include "model/text/tokenizer.h"
#include "parallel/checkpoint.h"
#include "parallel/mesh.h"

namespace fs = std::filesystem;

namespace meshtrain {

namespace {
constexpr const char* kAdapterContents = "lora-adapter";
}  // namespace

std::string weights_fingerprint(const std::string& checkpoint) {
  CheckpointReader r(checkpoint);
  std::string text;
  for (const std::string& name : r.list())
    if (name.rfind("model/", 0) == 0) text += name + ":" + std::to_string(r.stored_crc(name)) + ";";
  MT_CHECK(!text.empty(), "[lora] '{}' holds no model/ tensors", checkpoint);
  return fmt::format("{:016x}", fnv1a64(text));
}

namespace {

/// Whole tensors of the adapters, assembled from every tp rank's shards (on every rank).
std::map<std::string, Tensor> gather_adapters(Lora& lora, Communicator& tp) {
  const ParameterTable& t = lora.table();
  Tensor local = Tensor::empty({t.total()});
  lora.get_params(local.f32());
  Tensor all = local;
  if (tp.size() > 1) {
    all = Tensor::empty({t.total() * tp.size()});
    tp.all_gather(local, all);  // rank-major
  }
  std::map<std::string, Tensor> out;
  for (const ParamSpec& s : t.specs()) {
    Tensor g = Tensor::zeros(s.global_shape);
    for (int q = 0; q < tp.size(); ++q) {
      const float* shard = all.f32() + static_cast<int64_t>(q) * t.total() + s.offset;
      for (int64_t i = 0, rows = ParameterTable::shard_rows(s); i < rows; ++i) {
        const RowSlice rs = t.shard_row(s, q, i);
        std::memcpy(g.f32() + rs.global_offset, shard + i * rs.len, static_cast<size_t>(rs.len) * sizeof(float));
      }
    }
    out.emplace(s.name, std::move(g));
  }
  return out;
}

/// This rank's shards of whole adapter tensors, into the model's adapters.
void scatter_adapters(Lora& lora, const std::map<std::string, Tensor>& whole, int tp_rank) {
  const ParameterTable& t = lora.table();
  std::vector<float> host(static_cast<size_t>(t.total()));
  for (const ParamSpec& s : t.specs()) {
    const Tensor& g = whole.at(s.name);
    for (int64_t i = 0, rows = ParameterTable::shard_rows(s); i < rows; ++i) {
      const RowSlice rs = t.shard_row(s, tp_rank, i);
      std::memcpy(host.data() + s.offset + i * rs.len, g.f32() + rs.global_offset,
                  static_cast<size_t>(rs.len) * sizeof(float));
    }
  }
  lora.set_params(host.data());
}

void save_adapter(const std::string& path, const std::map<std::string, Tensor>& adapters, const Config& run,
                  const std::string& base, const std::string& base_fingerprint, int64_t step) {
  std::vector<CheckpointEntry> entries;
  for (const auto& [name, t] : adapters) entries.push_back({"lora/" + name, t});
  CheckpointMeta meta;
  meta.strings["contents"] = kAdapterContents;
  meta.strings["config"] = config_to_toml(run);
  meta.strings["base_checkpoint"] = base;
  meta.strings["base_fingerprint"] = base_fingerprint;
  meta.strings["lora_targets"] = run.lora.targets;
  meta.strings["tokenizer"] = run.data.tokenizer;
  meta.ints["lora_rank"] = run.lora.rank;
  meta.ints["step"] = step;
  save_checkpoint(path, entries, meta);
}

std::map<std::string, Tensor> read_adapter_tensors(const std::string& path, const GptConfig& model,
                                                   const LoraConfig& lc) {
  CheckpointReader r(path);
  std::map<std::string, Tensor> out;
  for (const ParamSpec& s : lora_specs(model, lc)) {
    Tensor t = Tensor::empty(s.global_shape);
    r.read("lora/" + s.name, t);  // names the tensor and both shapes on a mismatch; checks the CRC
    out.emplace(s.name, std::move(t));
  }
  return out;
}

float sum_over(Communicator& comm, float x) {
  if (comm.size() == 1) return x;
  Tensor t = Tensor::empty({1});
  t.f32()[0] = x;
  comm.all_reduce(t, ReduceOp::sum);
  return t.f32()[0];
}

}  // namespace

AdapterInfo read_adapter_info(const std::string& path) {
  MT_CHECK(fs::exists(path), "[lora] adapter file '{}' does not exist", path);
  MT_CHECK(!fs::is_directory(path), "[lora] '{}' is a folder; name the adapter file `meshtrain finetune` wrote", path);
  CheckpointReader r(path);
  auto it = r.meta().strings.find("contents");
  MT_CHECK(it != r.meta().strings.end() && it->second == kAdapterContents,
           "[lora] '{}' is not a LoRA adapter file (it is a {}); adapters come from `meshtrain finetune`", path,
           it == r.meta().strings.end() ? "training checkpoint" : "'" + it->second + "' file");
  AdapterInfo info;
  info.run = config_from_toml(r.get_string("config"), path + ":config");
  info.lora = info.run.lora;
  validate_lora(info.lora);
  info.base_checkpoint = r.get_string("base_checkpoint");
  info.base_fingerprint = r.get_string("base_fingerprint");
  info.step = r.get_int("step");
  return info;
}

namespace {
void check_same_base(const AdapterInfo& info, const std::string& adapter, const std::string& base) {
  const std::string fp = weights_fingerprint(base);
  MT_CHECK(fp == info.base_fingerprint,
           "[lora] adapter '{}' was trained on the weights of '{}' (fingerprint {}), but '{}' has other weights "
           "(fingerprint {}); use the checkpoint it was trained on", adapter, info.base_checkpoint,
           info.base_fingerprint, base, fp);
}
}  // namespace

void load_adapter(const std::string& path, const std::string& base_checkpoint, Gpt& model) {
  const AdapterInfo info = read_adapter_info(path);
  check_same_base(info, path, base_checkpoint);
  const GptConfig& m = model.config();
  MT_CHECK(info.run.model.n_layer == m.n_layer && info.run.model.n_embd == m.n_embd,
           "[lora] adapter '{}' is for a {}-layer, {}-channel model, not this {}-layer, {}-channel one", path,
           info.run.model.n_layer, info.run.model.n_embd, m.n_layer, m.n_embd);
  Lora& lora = model.enable_lora(info.lora);
  scatter_adapters(lora, read_adapter_tensors(path, m, info.lora), model.tp().rank());
}

std::string run_lora_merge(const MergeArgs& a) {
  MT_CHECK(!a.output.empty(), "[lora] merge needs --output");
  const std::string base = resolve_checkpoint(a.base, "lora");
  const AdapterInfo info = read_adapter_info(a.adapter);
  check_same_base(info, a.adapter, base);
  std::error_code ec;
  MT_CHECK(!fs::exists(a.output, ec), "[lora] --output '{}' exists; merge never overwrites a file, name a new one",
           a.output);
  const Config run = read_run_config(base);
  ModelWeights w = read_meshtrain_weights(base);
  lora_merge(w.tensors, read_adapter_tensors(a.adapter, w.model, info.lora), w.model, info.lora);
  write_meshtrain_checkpoint(a.output, w, run, fmt::format("lora merge of '{}' into '{}'", a.adapter, base));
  return fmt::format("wrote {}: '{}' with adapter '{}' (rank {}, alpha {}, {}) folded in", a.output, base, a.adapter,
                     info.lora.rank, info.lora.alpha, info.lora.targets);
}

FinetuneResult run_finetune(const FinetuneArgs& args, Communicator& world) {
  const bool lead = world.rank() == 0;
  const std::string base = fs::absolute(resolve_checkpoint(args.checkpoint, "finetune")).string();
  const RunInfo info = read_run_info(base);
  // The base run's configuration with fine-tuning defaults, then the file and --set on top.
  Config cfg = info.config;
  cfg.train.steps = 100;
  cfg.train.lr = 1e-3;
  cfg.train.min_lr = 1e-4;
  cfg.train.warmup_steps = 10;
  cfg.train.weight_decay = 0.0;
  cfg.train.eval_every = 25;
  cfg.train.log_every = 10;
  cfg.data.train = args.data;
  cfg.data.val = args.val;
  cfg.parallel = ParallelConfig{};
  if (!args.config_file.empty()) apply_config_file(cfg, args.config_file);
  for (const auto& o : args.overrides) apply_override(cfg, o);
  validate_config(cfg);
  for (const char* key : {"model.n_layer", "model.n_head", "model.n_embd", "model.seq_len", "model.vocab_size",
                          "model.pos_embedding", "model.rope_theta"})
    MT_CHECK(config_value(cfg, key) == config_value(info.config, key),
             "[finetune] {} comes from the base checkpoint ({}); it cannot be set when fine-tuning", key,
             config_value(info.config, key));
  MT_CHECK(!cfg.data.train.empty(), "[finetune] no training data: pass --data SHARDS (token shards from `meshtrain "
                                    "tokenize` with the base model's tokenizer)");
  MT_CHECK(cfg.parallel.pp == 1, "[finetune] parallel.pp must be 1: adapters train without pipeline stages");
  MT_CHECK(args.tp >= 1 && world.size() % args.tp == 0, "[finetune] --tp {} must divide the number of ranks ({})",
           args.tp, world.size());
  const int dp_size = world.size() / args.tp;
  const int B_global = cfg.train.batch_size, T = cfg.model.seq_len;
  MT_CHECK(B_global % dp_size == 0, "[finetune] train.batch_size {} must divide by the {} data-parallel ranks",
           B_global, dp_size);
  std::error_code ec;
  MT_CHECK(args.overwrite || !fs::exists(args.output, ec),
           "[finetune] --output '{}' exists; pass --overwrite to replace it, or name another file", args.output);
  MT_CHECK(!fs::is_directory(args.output, ec), "[finetune] --output '{}' is a folder; give a file name", args.output);

  // Device and threads, as `train` picks them.
  const bool use_cuda = cfg.train.device == "cuda" || (cfg.train.device == "auto" && cuda_device_count() > 0);
  if (use_cuda) {
    require_cuda("train.device = cuda");
    use_cuda_device(args.local_rank % cuda_device_count());
  }
  set_num_threads(cfg.train.threads > 0 ? cfg.train.threads
                                        : (args.default_threads > 0 ? args.default_threads : available_cores()));

  // The base tokenizer must be the shards'.
  MT_CHECK(!cfg.data.tokenizer.empty(), "[finetune] the base checkpoint names no tokenizer; set data.tokenizer");
  Tokenizer tok = Tokenizer::load(cfg.data.tokenizer);
  const auto train_paths = expand_shard_paths(cfg.data.train);
  std::vector<std::string> val_paths;
  if (!cfg.data.val.empty()) val_paths = expand_shard_paths(cfg.data.val);
  check_shard_tokenizer(train_paths, tok.fingerprint(), cfg.data.tokenizer);
  check_shard_tokenizer(val_paths, tok.fingerprint(), cfg.data.tokenizer);
  check_shard_vocab(train_paths, cfg.model.vocab_size);
  check_shard_vocab(val_paths, cfg.model.vocab_size);

  Mesh mesh(world, MeshShape{dp_size, args.tp, 1});
  Communicator& dp = mesh.dp();
  Communicator& tp = mesh.tp();
  std::unique_ptr<Backend> backend = make_run_backend(cfg, use_cuda);
  Gpt model(cfg.model, dp, &tp, 1, 0, std::move(backend));
  model.set_recompute(parse_recompute(cfg.train.recompute));
  if (world.size() == 1) load_run(base, model, nullptr);
  else load_run_sharded(base, model, nullptr, world, mesh.dp_rank());
  model.set_frozen(true);
  Lora& lora = model.enable_lora(cfg.lora);
  lora.initialize(static_cast<uint64_t>(cfg.train.seed));
  AdamWConfig oc;
  oc.weight_decay = static_cast<float>(cfg.train.weight_decay);
  oc.grad_clip = static_cast<float>(cfg.train.grad_clip);
  AdamW opt(lora.table(), oc, {}, &model.backend());
  const std::string fingerprint = weights_fingerprint(base);

  if (lead) {
    AdamW full(ParameterTable(cfg.model), oc);  // what full fine-tuning would keep (moments only)
    fmt::print("[finetune] base {} ({}), {}\n", base, fingerprint, model.backend().describe());
    fmt::print("[finetune] LoRA rank {} alpha {} on {}: {} adapter parameters ({:.3f}% of the model's {})\n",
               cfg.lora.rank, cfg.lora.alpha, cfg.lora.targets, lora.table().total(),
               100.0 * static_cast<double>(lora.table().total()) / static_cast<double>(cfg.model.num_params()),
               cfg.model.num_params());
    fmt::print("[finetune] optimizer state: {} bytes; full fine-tuning would keep {} bytes ({:.0f}x more)\n",
               opt.state_bytes(), full.state_bytes(),
               static_cast<double>(full.state_bytes()) / static_cast<double>(opt.state_bytes()));
    fmt::print("[finetune] layout dp {} x tp {}; {} steps of {} sequences x {} micro-batches\n", dp_size, args.tp,
               cfg.train.steps, B_global, cfg.train.grad_accum);
    std::fflush(stdout);
  }

  const int B = B_global / dp_size, micro = cfg.train.grad_accum;
  DataLoader loader(train_paths, T, cfg.train.shuffle, static_cast<uint64_t>(cfg.train.seed));
  std::vector<int32_t> rows(static_cast<size_t>(B) * micro * (T + 1)), inp(static_cast<size_t>(B) * T),
      tgt(inp.size());
  auto evaluate_val = [&] {
    return evaluate([&](const int32_t* in, const int32_t* tg, int b, int t) { return model.forward(in, tg, b, t); },
                    val_paths, cfg);
  };
  // Replicated adapters count once in the norm: on tp rank 0.
  const int tp_rank = tp.rank();
  auto counted = [tp_rank](const ParamSpec& s) { return s.shard != ShardKind::replicated || tp_rank == 0; };

  FinetuneResult result;
  std::optional<StepLog> log;
  if (lead) log.emplace(0, cfg.train.steps, cfg.train.log_every, args.metrics, world.size() == 1);
  if (!val_paths.empty()) {
    result.first_val = result.last_val = evaluate_val();
    if (lead) log->message(fmt::format("[finetune] validation loss before fine-tuning: {:.4f}", result.first_val));
  }
  const float dloss_scale = 1.0f / static_cast<float>(micro * dp_size);
  for (int64_t step = 0; step < cfg.train.steps; ++step) {
    const double t0 = now_seconds();
    const float lr = lr_at(step, cfg.train.warmup_steps, cfg.train.steps, static_cast<float>(cfg.train.lr),
                           static_cast<float>(cfg.train.min_lr));
    loader.next_batch(B_global * micro, dp.rank(), dp_size, rows.data());
    lora.zero_grad();
    double loss = 0.0;
    for (int m = 0; m < micro; ++m) {
      split_windows(rows.data() + static_cast<size_t>(m) * B * (T + 1), B, T, inp.data(), tgt.data());
      loss += model.forward(inp.data(), tgt.data(), B, T, true, dloss_scale);
      model.backward();
    }
    if (dp_size > 1) dp.all_reduce(lora.grads(), ReduceOp::sum);
    const double norm = std::sqrt(static_cast<double>(sum_over(tp, static_cast<float>(
                                                                        opt.sum_squares(lora.grads(), counted)))));
    opt.update(lora.params(), lora.grads(), lr, opt.clip_scale(norm));
    const double mean_loss = sum_over(dp, static_cast<float>(loss / micro)) / dp_size;
    if (step == 0) result.first_loss = mean_loss;
    result.last_loss = mean_loss;
    StepRecord rec;
    rec.step = step + 1;
    rec.loss = mean_loss;
    rec.lr = lr;
    rec.grad_norm = norm;
    rec.ms = (now_seconds() - t0) * 1e3;
    rec.tokens_per_s = static_cast<double>(B_global) * micro * T / (rec.ms * 1e-3);
    const bool last = step + 1 == cfg.train.steps;
    if (!val_paths.empty() && ((cfg.train.eval_every > 0 && (step + 1) % cfg.train.eval_every == 0) || last))
      rec.val_loss = result.last_val = evaluate_val();
    if (lead) log->record(rec);
  }
  // Every rank gathers (a collective); rank 0 writes.
  const auto whole = gather_adapters(lora, tp);
  if (lead) {
    fs::path out = args.output;
    if (out.has_parent_path()) fs::create_directories(out.parent_path());
    if (args.overwrite) fs::remove(out, ec);
    save_adapter(args.output, whole, cfg, base, fingerprint, cfg.train.steps);
    log->message(fmt::format("[finetune] wrote {} ({} bytes); use it with `meshtrain generate --checkpoint {} "
                             "--adapter {}` or fold it in with `meshtrain lora merge`",
                             args.output, fs::file_size(args.output), base, args.output));
  }
  world.barrier();
  result.adapter = args.output;
  return result;
}

}  // namespace meshtrain
