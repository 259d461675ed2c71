// The learning-rate schedule of a run (linear warm-up, cosine decay to min_lr) and what happens to
// it when a resumed run changes train.steps, warm-up, lr or min_lr: by default the decay continues
// from the value the checkpoint's schedule had reached (an "anchor"), so the rate never jumps.
#pragma once

#include <cstdint>
#include <string>

namespace meshtrain {

struct TrainConfig;

struct LrSchedule {
  int64_t warmup_steps = 0;
  int64_t total_steps = 1;
  double lr = 0.0;
  double min_lr = 0.0;
  /// When >= 0, the schedule was re-planned on a resume at this step: from here it starts at
  /// anchor_lr, finishes any warm-up towards lr, then decays (cosine) to min_lr at the last step.
  int64_t anchor_step = -1;
  double anchor_lr = 0.0;

  /// The schedule a configuration asks for, without an anchor.
  static LrSchedule from_config(const TrainConfig& t);
  /// The learning rate of 0-based step `step`.
  float at(int64_t step) const;
  /// Whether steps, warm-up, lr or min_lr differ from other's.
  bool same_plan(const LrSchedule& other) const;
  /// "steps 50, warm-up 10, lr 0.002 -> 0.0002" (and the anchor, when there is one).
  std::string describe() const;
};

/// The schedule a resumed run follows from `step` on. `saved` is the checkpoint's (anchor
/// included), `wanted` what the configuration now asks for. Unchanged plans keep the saved one;
/// otherwise with mode "continue" the decay goes on from saved.at(step), with "restart" the new
/// plan applies as if it had always been in force. `note` receives a line for the log when the
/// plan changed (empty otherwise).
LrSchedule schedule_on_resume(const LrSchedule& saved, const LrSchedule& wanted, int64_t step, const std::string& mode,
                              std::string* note);

}  // namespace meshtrain
