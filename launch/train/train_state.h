// Saving and restoring a training run through the HDF5 checkpoint: model weights under
// model/<name>, AdamW moments under optim/m/<name> and optim/v/<name>, and the counters that make a
// resumed run continue bit-identically.
#pragma once

#include <cstdint>
#include <string>

#include "core/tensor.h"
#include "launch/config.h"
#include "model/text/data.h"

namespace meshtrain {

class Gpt;
class AdamW;
class Communicator;

struct RunCounters {
  int64_t step = 0;          // optimizer steps completed
  int64_t rng_counter = 0;   // sampling RNG position
  LoaderState loader;        // training data position
  int64_t lr_anchor_step = -1;  // where a resume re-planned the schedule (LrSchedule), or -1
  double lr_anchor = 0.0;       // the learning rate it continued from
  std::string tokenizer_id;     // Tokenizer::fingerprint_hex of the run's tokenizer; "" = unknown
};

/// What a resume needs to know of a checkpoint before building the model.
struct RunInfo {
  Config config;
  std::string layout;  // "single process" or "dp=2 tp=2 pp=2 zero=0"
  RunCounters counters;
};

/// AdamW state laid out like the flat parameter buffer (whole, on every rank).
struct MomentBuffers {
  Tensor m, v;
  int64_t adam_steps = 0;
};

/// Writes out_dir/ckpt_<step>.h5 atomically and returns its path (one process, whole model).
std::string save_run(const Config& cfg, const Gpt& model, const MomentBuffers& moments, const RunCounters& counters);
/// The same on several ranks, collective over world: each rank writes its own blocks of every
/// tensor through parallel HDF5 (ranks with dp_rank > 0 write no weights); layout is recorded.
/// With zero_shards (a ZeRO-1 optimizer) each rank writes the AdamW moments it owns and moments
/// is not used for them; otherwise data-parallel rank 0 writes them from moments.
std::string save_run_sharded(const Config& cfg, const Gpt& model, const MomentBuffers& moments,
                             const RunCounters& counters, Communicator& world, int dp_rank, const std::string& layout,
                             const AdamW* zero_shards = nullptr);
/// Reads the run's configuration from a checkpoint (to rebuild the model before load_run).
Config read_run_config(const std::string& path);
/// Reads the configuration, layout and counters of a checkpoint (no tensors).
RunInfo read_run_info(const std::string& path);
/// The checkpoint a file-or-folder argument names (a folder: its latest checkpoint); who (the
/// command) prefixes the error when there is none.
std::string resolve_checkpoint(const std::string& path, const char* who);
/// Loads weights (and, when moments is non-null, the AdamW state into buffers shaped like the
/// parameters) and counters into a whole model; checks every tensor's shape and checksum.
RunCounters load_run(const std::string& path, Gpt& model, MomentBuffers* moments);
/// The same on several ranks, collective over world: each rank reads only its window of every
/// tensor, and the windows' checksums, combined over the ranks, are checked against the stored ones.
RunCounters load_run_sharded(const std::string& path, Gpt& model, MomentBuffers* moments, Communicator& world,
                             int dp_rank);

}  // namespace meshtrain
