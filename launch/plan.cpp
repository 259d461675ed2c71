// Memory per rank for every layout of N ranks (launch/plan.h).
#include "launch/plan.h"

#include <fmt/format.h>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "model/backend.h"
#include "model/gpt.h"
#include "model/params.h"
#include "parallel/pipeline.h"

namespace meshtrain {

LayoutMemory predict_layout_memory(const Config& cfg, int dp, int tp, int pp, int zero) {
  LayoutMemory best;
  best.dp = dp;
  best.tp = tp;
  best.pp = pp;
  best.zero = zero;
  const GptConfig& m = cfg.model;
  const BatchSplit split = split_batch(cfg, dp);
  if (!split.error.empty()) {
    best.rejected = split.error;
    return best;
  }
  if (zero == 1 && dp == 1) {
    best.rejected = "ZeRO-1 shards over data-parallel ranks: needs dp > 1";
    return best;
  }
  const std::unique_ptr<Backend> be = make_cpu_backend();
  const Recompute mode = parse_recompute(cfg.train.recompute);
  const auto es = static_cast<int64_t>(dtype_size(be->dtype()));
  const int B = split.micro_rows, micro = split.micro_count;
  for (int stage = 0; stage < pp; ++stage) {
    LayoutMemory r = best;
    try {
      const ParameterTable table(m, tp, 0, pp, stage);
      const int64_t padded = (table.total() + dp - 1) / dp * dp;
      r.params = r.grads = padded * es;
      r.zero_shard = zero ? padded / dp * es : 0;
      r.optimizer = 2 * 4 * (zero ? padded / dp : table.total());
    } catch (const Error& e) {
      best.rejected = e.what();
      return best;
    }
    // Without a pipeline, micro-batches run one after another through one slot (launch/train/train.cpp).
    r.slots = pp == 1 ? 1 : Pipeline::activation_slots(parse_schedule(cfg.parallel.schedule), micro, pp, stage);
    r.micro_batch = B;
    r.stage = stage;
    r.activations = r.slots * Gpt::slot_bytes(Gpt::activation_shape(m, B, m.seq_len, tp, pp, stage, mode, *be));
    if (stage == 0 || r.total() > best.total()) best = r;
  }
  return best;
}

std::vector<LayoutMemory> plan_layouts(const Config& cfg, int ranks) {
  MT_CHECK(ranks >= 1, "[plan] --ranks must be at least 1 (got {})", ranks);
  std::vector<LayoutMemory> out;
  for (int tp = 1; tp <= ranks; ++tp) {
    if (ranks % tp) continue;
    for (int pp = 1; pp <= ranks / tp; ++pp) {
      if ((ranks / tp) % pp) continue;
      const int dp = ranks / tp / pp;
      for (int zero = 0; zero <= (dp > 1 ? 1 : 0); ++zero) out.push_back(predict_layout_memory(cfg, dp, tp, pp, zero));
    }
  }
  std::stable_sort(out.begin(), out.end(), [](const LayoutMemory& a, const LayoutMemory& b) {
    if (a.rejected.empty() != b.rejected.empty()) return a.rejected.empty();
    return a.total() < b.total();
  });
  return out;
}

namespace {
std::string mib(int64_t bytes) { return fmt::format("{:.1f}", static_cast<double>(bytes) / 1048576.0); }
}  // namespace

void run_plan(const PlanArgs& args) {
  const Config cfg = load_config(args.config_file, args.overrides);
  MT_CHECK(cfg.model.vocab_size > 0,
           "[plan] model.vocab_size = 0 means 'the tokenizer's': give the size with --set model.vocab_size=N");
  MT_CHECK(cfg.train.device != "cuda" && cfg.train.precision == "fp32",
           "[plan] predicts CPU (fp32) layouts for now; train.device = {} with train.precision = {} is not modelled",
           cfg.train.device, cfg.train.precision);
  const std::vector<LayoutMemory> plan = plan_layouts(cfg, args.ranks);
  if (args.json) {
    nlohmann::json j = nlohmann::json::array();
    for (const auto& r : plan) {
      nlohmann::json o = {{"dp", r.dp}, {"tp", r.tp}, {"pp", r.pp}, {"zero", r.zero}};
      if (!r.rejected.empty()) {
        o["rejected"] = r.rejected;
      } else {
        o.update({{"micro_batch", r.micro_batch}, {"slots", r.slots}, {"stage", r.stage}, {"params_bytes", r.params},
                  {"grads_bytes", r.grads}, {"zero_shard_bytes", r.zero_shard}, {"optimizer_bytes", r.optimizer},
                  {"activation_bytes", r.activations}, {"total_bytes", r.total()}});
      }
      j.push_back(o);
    }
    fmt::print("{}\n", j.dump(2));
    return;
  }
  fmt::print("[plan] {} ranks; model {} layers, {} heads, {} channels, context {}, vocabulary {}; {} x {} sequences "
             "per step, recompute {}, schedule {}\n",
             args.ranks, cfg.model.n_layer, cfg.model.n_head, cfg.model.n_embd, cfg.model.seq_len, cfg.model.vocab_size,
             cfg.train.batch_size, cfg.train.grad_accum, cfg.train.recompute, cfg.parallel.schedule);
  fmt::print("Memory per rank in MiB (the fullest pipeline stage), smallest first:\n");
  fmt::print("| dp | tp | pp | zero | micro-batch | slots | params | grads | ZeRO shard | optimizer | activations | "
             "total |\n|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  for (const auto& r : plan) {
    if (!r.rejected.empty()) continue;
    fmt::print("| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n", r.dp, r.tp, r.pp, r.zero,
               r.micro_batch, r.slots, mib(r.params), mib(r.grads), mib(r.zero_shard), mib(r.optimizer),
               mib(r.activations), mib(r.total()));
  }
  bool any = false;
  for (const auto& r : plan) {
    if (r.rejected.empty()) continue;
    if (!any) fmt::print("Layouts that cannot run:\n");
    any = true;
    fmt::print("  dp {} x tp {} x pp {} (zero {}): {}\n", r.dp, r.tp, r.pp, r.zero, r.rejected);
  }
  fmt::print("Not counted: the process itself (libraries, MPI, thread stacks), data buffers, and small optimizer "
             "scalars. Step time is not predicted yet.\n");
}

}  // namespace meshtrain
