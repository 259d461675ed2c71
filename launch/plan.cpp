// Memory per rank for every layout of N ranks (launch/plan.h).
#include "launch/plan.h"
#include "launch/plan_time.h"

#include <fmt/format.h>

#include <algorithm>
#include <optional>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "launch/builtin_corpus.h"
#include "model/backend.h"
#include "model/gpt.h"
#include "model/params.h"
#include "model/text/tokenizer.h"
#include "parallel/pipeline.h"

namespace meshtrain {

ActivationSizing layout_sizing(const Config& cfg) { return run_sizing(cfg, cfg.train.device == "cuda"); }

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
  const ActivationSizing be = layout_sizing(cfg);
  const Recompute mode = parse_recompute(cfg.train.recompute);
  const auto es = static_cast<int64_t>(dtype_size(be.dtype));
  // AdamW's moments, and in bf16 the fp32 master weights, over the rank's share (model/optimizer.cpp).
  const int64_t state_arrays = be.dtype == DType::bf16 ? 3 : 2;
  const int B = split.micro_rows, micro = split.micro_count;
  for (int stage = 0; stage < pp; ++stage) {
    LayoutMemory r = best;
    try {
      const ParameterTable table(m, tp, 0, pp, stage);
      const int64_t padded = (table.total() + dp - 1) / dp * dp;
      r.params = r.grads = padded * es;
      r.zero_shard = zero ? padded / dp * es : 0;
      r.optimizer = state_arrays * 4 * (zero ? padded / dp : table.total());
    } catch (const Error& e) {
      best.rejected = e.message();
      return best;
    }
    // Without a pipeline, micro-batches run one after another through one slot (launch/train/train.cpp).
    r.slots = pp == 1 ? 1 : Pipeline::activation_slots(parse_schedule(cfg.parallel.schedule), micro, pp, stage);
    r.micro_batch = B;
    r.stage = stage;
    r.activations = r.slots * Gpt::slot_bytes(Gpt::activation_shape(m, B, m.seq_len, tp, pp, stage, mode, be));
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

std::string resolve_vocab_size(Config& cfg) {
  if (cfg.model.vocab_size > 0) return "";
  if (!cfg.data.tokenizer.empty()) {
    cfg.model.vocab_size = Tokenizer::load(cfg.data.tokenizer).vocab_size();
    return fmt::format("data.tokenizer's ({})", cfg.data.tokenizer);
  }
  MT_CHECK(cfg.data.train.empty(),
           "[plan] model.vocab_size = 0 means 'the tokenizer's', but data.train is set without data.tokenizer: set "
           "data.tokenizer, or give the size with --set model.vocab_size=N");
  cfg.model.vocab_size = kBuiltinVocabSize;
  return "the built-in corpus's tokenizer";
}

void run_plan(const PlanArgs& args) {
  Config cfg = load_config(args.config_file, args.overrides);
  const std::string vocab_from = resolve_vocab_size(cfg);
  std::optional<Hardware> hw;
  if (!args.hardware.empty()) hw = load_hardware(args.hardware);
  if (args.gpus_per_node > 0) {
    MT_CHECK(hw, "[plan] --gpus-per-node {} needs --hardware FILE.toml: ranks per node change the step time "
                 "(which links a group's collectives cross), not the memory per rank",
             args.gpus_per_node);
    hw->gpus_per_node = args.gpus_per_node;
  }
  // train.device = auto: the described hardware's device; without a description bf16 means a GPU.
  // (bf16 on the CPU multiplies in bf16 but keeps everything in fp32: its memory is fp32's.)
  if (cfg.train.device == "auto") cfg.train.device = hw ? hw->device : cfg.train.precision == "bf16" ? "cuda" : "cpu";
  if (hw) {
    MT_CHECK(hw->device == cfg.train.device,
             "[plan] the hardware description '{}' is of {} ranks, but train.device = {}: give a description of {} "
             "ranks (hardware/ has some; `meshtrain plan calibrate` measures this machine) or set train.device = {}",
             args.hardware, hw->device, cfg.train.device, cfg.train.device, hw->device);
    MT_CHECK(hw->precision == cfg.train.precision,
             "[plan] the hardware description '{}' gives {} compute rates, but train.precision = {}: set "
             "train.precision = {} or give a description for {}",
             args.hardware, hw->precision, cfg.train.precision, hw->precision, cfg.train.precision);
  }
  const std::vector<LayoutMemory> plan = plan_layouts(cfg, args.ranks);
  std::vector<LayoutTime> times(plan.size());
  std::vector<size_t> order(plan.size());
  for (size_t i = 0; i < plan.size(); ++i) {
    order[i] = i;
    if (hw && plan[i].rejected.empty())
      times[i] = predict_layout_time(cfg, *hw, plan[i].dp, plan[i].tp, plan[i].pp, plan[i].zero);
  }
  if (hw)  // fastest first; rejected layouts stay at the end
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
      if (plan[a].rejected.empty() != plan[b].rejected.empty()) return plan[a].rejected.empty();
      return times[a].step_ms < times[b].step_ms;
    });
  // A CPU description's memory is the node's, shared by the ranks on it (gpus_per_node of them, or
  // all); a GPU description's is each rank's own.
  const double process_bytes = hw ? hw->process_mib * 1048576.0 : 0.0;
  int sharing = 1;
  if (hw && hw->cores > 0) sharing = hw->gpus_per_node > 0 ? std::min(args.ranks, hw->gpus_per_node) : args.ranks;
  auto fits = [&](const LayoutMemory& r) {
    if (!hw || hw->memory_gib <= 0) return true;
    return (static_cast<double>(r.total()) + process_bytes) * sharing <= hw->memory_gib * 1073741824.0;
  };
  if (args.json) {
    nlohmann::json j = nlohmann::json::array();
    for (size_t i : order) {
      const LayoutMemory& r = plan[i];
      nlohmann::json o = {{"dp", r.dp}, {"tp", r.tp}, {"pp", r.pp}, {"zero", r.zero}};
      if (!r.rejected.empty()) {
        o["rejected"] = r.rejected;
      } else {
        o.update({{"micro_batch", r.micro_batch}, {"slots", r.slots}, {"stage", r.stage}, {"params_bytes", r.params},
                  {"grads_bytes", r.grads}, {"zero_shard_bytes", r.zero_shard}, {"optimizer_bytes", r.optimizer},
                  {"activation_bytes", r.activations}, {"total_bytes", r.total()}});
        if (hw) {
          const LayoutTime& t = times[i];
          o.update({{"step_ms", t.step_ms}, {"compute_ms", t.compute_ms}, {"tp_ms", t.tp_ms}, {"dp_ms", t.dp_ms},
                    {"dp_exposed_ms", t.dp_exposed_ms},
                    {"pp_ms", t.pp_ms}, {"bubble_ms", t.bubble_ms}, {"optimizer_ms", t.optimizer_ms},
                    {"tokens_per_s", t.tokens_per_s}, {"mfu", t.mfu}, {"oversubscribed", t.oversubscribed},
                    {"resident_bytes", static_cast<double>(r.total()) + process_bytes}, {"fits", fits(r)}});
        }
      }
      j.push_back(o);
    }
    fmt::print("{}\n", j.dump(2));
    return;
  }
  if (hw) {
    fmt::print("[plan] hardware: {} ({}){}\n", hw->name, hw->source,
               hw->gpus_per_node > 0 ? fmt::format("; {} ranks per node, {} node(s)", hw->gpus_per_node,
                                                   (args.ranks + hw->gpus_per_node - 1) / hw->gpus_per_node)
                                     : "");
    fmt::print("Predicted step time in ms, fastest first (compute and tp are the slowest stage's; pp is the bubble "
               "plus the tied embedding's sum; dp is the gradients' reduction and, after the slash, the part of it "
               "the step waits for; * = ranks outnumber the cores, which then bound the step):\n");
    fmt::print("| dp | tp | pp | zero | step | compute | tp | dp | pp | optimizer | tokens/s | MFU | MiB per rank | "
               "fits |\n|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
    for (size_t i : order) {
      const LayoutMemory& r = plan[i];
      if (!r.rejected.empty()) continue;
      const LayoutTime& t = times[i];
      const std::string dp_cell = t.dp_exposed_ms < t.dp_ms ? fmt::format("{:.1f} / {:.1f}", t.dp_ms, t.dp_exposed_ms)
                                                            : fmt::format("{:.1f}", t.dp_ms);
      fmt::print("| {} | {} | {} | {} | {:.1f}{} | {:.1f} | {:.1f} | {} | {:.1f} | {:.1f} | {:.0f} | {} | {:.0f} | {} |\n",
                 r.dp, r.tp, r.pp, r.zero, t.step_ms, t.oversubscribed ? "*" : "", t.compute_ms, t.tp_ms, dp_cell,
                 t.pp_ms, t.optimizer_ms, t.tokens_per_s, t.mfu > 0 ? fmt::format("{:.1f}%", t.mfu) : "-",
                 (static_cast<double>(r.total()) + process_bytes) / 1048576.0, fits(r) ? "yes" : "no");
    }
  }
  fmt::print("[plan] {} ranks ({} {}); model {} layers, {} heads, {} channels, context {}, vocabulary {}; {} x {} "
             "sequences per step, recompute {}, schedule {}\n",
             args.ranks, cfg.train.device, cfg.train.precision, cfg.model.n_layer, cfg.model.n_head, cfg.model.n_embd, cfg.model.seq_len, cfg.model.vocab_size,
             cfg.train.batch_size, cfg.train.grad_accum, cfg.train.recompute, cfg.parallel.schedule);
  if (!vocab_from.empty()) fmt::print("[plan] model.vocab_size = 0: the vocabulary is {}\n", vocab_from);
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
             "scalars{}.\n", hw ? "; MiB per rank above adds the description's process size (memory.process_mib)" : " (give --hardware FILE for the step time)");
}

}  // namespace meshtrain
