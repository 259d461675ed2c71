// `meshtrain plan`: which dp x tp x pp x ZeRO layouts of N ranks are valid for a configuration, and
// how much memory each rank of each would hold. The activation part comes from the model's own
// allocation plan (Gpt::activation_shape / Gpt::slot_bytes), so the prediction and the allocation
// cannot drift apart. With a hardware description, each layout's step time too (launch/plan_time.h).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "launch/config.h"
#include "model/backend.h"

namespace meshtrain {

/// One layout's prediction for its fullest rank (the pipeline stage that holds the most).
struct LayoutMemory {
  int dp = 1, tp = 1, pp = 1, zero = 0;
  std::string rejected;  // why the layout cannot run (empty: it can)
  int micro_batch = 0;   // sequences per micro-batch and rank
  int slots = 1;         // activation slots the schedule keeps (pipeline micro-batches in flight)
  int stage = 0;         // the pipeline stage these bytes are for
  int64_t params = 0, grads = 0;  // the flat buffers (padded to a multiple of dp)
  int64_t zero_shard = 0;         // ZeRO-1's reduced gradient chunk
  int64_t optimizer = 0;          // AdamW's first and second moments (fp32) over the rank's share
  int64_t activations = 0;        // every slot at the micro-batch's shape
  int64_t total() const { return params + grads + zero_shard + optimizer + activations; }
};

/// How cfg's model sizes its activations (device, precision, attention kernels), from the config alone.
ActivationSizing layout_sizing(const Config& cfg);
/// The prediction for one layout: every stage is sized and the fullest one returned.
LayoutMemory predict_layout_memory(const Config& cfg, int dp, int tp, int pp, int zero);
/// Every dp x tp x pp = ranks layout (ZeRO 0 and, where dp > 1, 1), valid ones first by total bytes.
std::vector<LayoutMemory> plan_layouts(const Config& cfg, int ranks);

struct PlanArgs {
  std::string config_file;
  std::vector<std::string> overrides;
  int ranks = 1;
  bool json = false;
  std::string hardware;  // a hardware TOML: adds the step-time prediction (launch/plan_time.h)
  int gpus_per_node = 0;  // ranks per node, in place of the description's gpus_per_node (0: keep it)
};

/// model.vocab_size = 0 means "the tokenizer's", as in `train`: data.tokenizer's size, or the built-in
/// corpus's (kBuiltinVocabSize) when data.train is not set. Sets it, and returns where it came from
/// ("" when the configuration gave it); data.train without data.tokenizer is an error saying so.
std::string resolve_vocab_size(Config& cfg);

/// Prints the table (or JSON) for args.
void run_plan(const PlanArgs& args);

}  // namespace meshtrain
