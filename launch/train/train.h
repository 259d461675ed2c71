// The `train` command: builds the model and data from a Config, runs the optimizer loop with
// logging, evaluation, samples and checkpoints, and resumes from a checkpoint bit-identically;
// over several ranks it trains data-parallel (optionally with ZeRO-1) the same model as one process.
#pragma once

#include <string>
#include <vector>

namespace meshtrain {

struct TrainArgs {
  std::string config_file;
  std::vector<std::string> overrides;
  std::string resume;   // checkpoint path, "latest", or ""
  std::string metrics;  // JSON Lines file, or ""
  bool quiet_samples = false;
  int default_threads = 0;  // threads when train.threads = 0; 0 = the cores available to the process
};

class Communicator;

/// Runs training on the ranks of world (a LocalCommunicator for one process); returns the final
/// training loss. Every rank calls it; rank 0 prints, writes metrics and checkpoints.
double run_train(const TrainArgs& args, Communicator& world);

}  // namespace meshtrain
