// Stopping a run cleanly on a signal: SIGINT (Ctrl-C), SIGTERM (schedulers, `scancel`) and one
// configurable signal (Slurm's --signal=USR1@120) only set a flag; the training loop looks at it
// after each step, agrees on it over all ranks, writes a checkpoint and exits. A second SIGINT
// exits at once.
#pragma once

#include <signal.h>

#include <string>

namespace meshtrain {

/// The number of a signal named "USR1", "SIGUSR1", "TERM", ... (case-insensitive), or 0.
int signal_number(const std::string& name);
/// "SIGTERM" for SIGTERM, and so on.
std::string signal_name(int signo);

/// Installs the handlers for its lifetime and restores the previous ones after.
class StopSignals {
 public:
  /// extra: a signal name (train.stop_signal) or "".
  explicit StopSignals(const std::string& extra);
  ~StopSignals();
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

  /// The first stop signal received so far, or 0.
  int received() const;

 private:
  int signals_[3] = {0, 0, 0};
  struct sigaction saved_[3] = {};
};

}  // namespace meshtrain
