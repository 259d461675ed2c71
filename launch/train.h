// The `train` command: builds the model and data from a Config, runs the optimizer loop with
// logging, evaluation, samples and checkpoints, and resumes from a checkpoint bit-identically.
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
};

/// Runs training; returns the final training loss.
double run_train(const TrainArgs& args);

}  // namespace meshtrain
