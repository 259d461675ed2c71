// The `train` command: builds the model and data from a Config, runs the optimizer loop with
// logging, evaluation, samples and checkpoints, and resumes from a checkpoint bit-identically;
// over several ranks it trains data-parallel (optionally with ZeRO-1) the same model as one process.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace meshtrain {

struct Config;

struct TrainArgs {
  std::string config_file;
  std::vector<std::string> overrides;
  std::string resume;   // checkpoint file, run folder, "latest", or ""
  bool branch = false;  // resume into a folder holding later checkpoints, moving them aside
  std::string metrics;  // JSON Lines file, or ""
  std::string trace;    // Chrome Trace Event JSON file (steps train.trace_steps), or ""
  bool quiet_samples = false;
  int default_threads = 0;  // threads when train.threads = 0; 0 = the cores available to the process
  int ranks_on_host = 1;    // ranks of this job on this rank's host
  int local_rank = 0;       // this rank's index among them (picks its GPU)
};

struct TrainResult {
  double last_loss = 0.0;
  int stop_signal = 0;  // the signal that stopped the run early (after a checkpoint), or 0
};

class Communicator;

/// Runs training on the ranks of world (a LocalCommunicator for one process); returns the final
/// training loss, and the signal when one stopped it. Every rank calls it; rank 0 prints, writes
/// metrics and checkpoints.
TrainResult run_train(const TrainArgs& args, Communicator& world);

/// Rows of T + 1 tokens -> inputs (the first T) and targets (the last T).
void split_windows(const int32_t* rows, int B, int T, int32_t* inp, int32_t* tgt);

using LossFn = std::function<double(const int32_t* inputs, const int32_t* targets, int B, int T)>;
/// Mean of loss over the first train.eval_batches validation batches of train.batch_size sequences
/// (always the same ones, so values compare across steps and runs).
double evaluate(const LossFn& loss, const std::vector<std::string>& val_paths, const Config& cfg);

}  // namespace meshtrain
