// Learning-rate schedules and their re-planning on resume (see lr_schedule.h for the rule).
#include "launch/train/lr_schedule.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "launch/config.h"
#include "model/optimizer.h"

namespace meshtrain {

LrSchedule LrSchedule::from_config(const TrainConfig& t) {
  LrSchedule s;
  s.warmup_steps = t.warmup_steps;
  s.total_steps = t.steps;
  s.lr = t.lr;
  s.min_lr = t.min_lr;
  return s;
}

float LrSchedule::at(int64_t step) const {
  if (anchor_step < 0)
    return lr_at(step, warmup_steps, total_steps, static_cast<float>(lr), static_cast<float>(min_lr));
  const int64_t k = anchor_step;
  if (step < warmup_steps) {
    // Resumed during warm-up: a straight line from the anchor to the peak at the last warm-up step.
    if (warmup_steps - 1 <= k) return static_cast<float>(anchor_lr);
    return static_cast<float>(anchor_lr + (lr - anchor_lr) * static_cast<double>(step - k) /
                                              static_cast<double>(warmup_steps - 1 - k));
  }
  const int64_t start = std::max(k, warmup_steps);
  const double peak = k >= warmup_steps ? anchor_lr : lr;
  const int64_t span = total_steps - 1 - start;
  if (span <= 0) return static_cast<float>(peak);
  const double progress = std::clamp(static_cast<double>(step - start) / static_cast<double>(span), 0.0, 1.0);
  return static_cast<float>(min_lr + 0.5 * (1.0 + std::cos(M_PI * progress)) * (peak - min_lr));
}

bool LrSchedule::same_plan(const LrSchedule& o) const {
  return warmup_steps == o.warmup_steps && total_steps == o.total_steps && lr == o.lr && min_lr == o.min_lr;
}

std::string LrSchedule::describe() const {
  std::string s = fmt::format("steps {}, warm-up {}, lr {:g} to {:g}", total_steps, warmup_steps, lr, min_lr);
  if (anchor_step >= 0) s += fmt::format(", re-planned at step {} from {:.3e}", anchor_step, anchor_lr);
  return s;
}

LrSchedule schedule_on_resume(const LrSchedule& saved, const LrSchedule& wanted, int64_t step, const std::string& mode,
                              std::string* note) {
  if (note) note->clear();
  if (saved.same_plan(wanted)) return saved;
  LrSchedule next = wanted;
  const float was = saved.at(step), fresh = wanted.at(step);
  if (mode == "continue") {
    next.anchor_step = step;
    next.anchor_lr = was;
  }
  if (note)
    *note = fmt::format(
        "[train] the learning-rate schedule changed on resume at step {}:\n"
        "          the checkpoint's plan ({}) gives lr {:.3e} at this step\n"
        "          the plan now asked for ({}) gives lr {:.3e}\n"
        "          {}",
        step, saved.describe(), was, wanted.describe(), fresh,
        mode == "continue"
            ? fmt::format("continuing from {:.3e}, decaying to {:g} at step {} (train.resume_schedule = restart "
                          "would jump to the new plan instead)", was, wanted.min_lr, wanted.total_steps)
            : fmt::format("train.resume_schedule = restart: following the new plan from {:.3e}", fresh));
  return next;
}

}  // namespace meshtrain
