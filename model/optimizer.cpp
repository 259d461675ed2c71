// AdamW step and learning-rate schedule.
#include "model/optimizer.h"

#include <algorithm>
#include <cmath>

#include "model/kernels/adamw.h"

namespace meshtrain {

float lr_at(int64_t step, int64_t warmup, int64_t total, float lr, float min_lr) {
  if (warmup > 0 && step < warmup) return lr * static_cast<float>(step + 1) / static_cast<float>(warmup);
  int64_t decay_steps = total - warmup;
  if (decay_steps <= 1) return lr;
  double progress = static_cast<double>(step - warmup) / static_cast<double>(decay_steps - 1);
  if (progress > 1.0) progress = 1.0;
  double coeff = 0.5 * (1.0 + std::cos(M_PI * progress));
  return static_cast<float>(min_lr + coeff * (lr - min_lr));
}

namespace {
int64_t ranges_numel(const FlatRanges& r) {
  int64_t n = 0;
  for (auto [b, e] : r) n += e - b;
  return n;
}
}  // namespace

AdamW::AdamW(const ParameterTable& table, AdamWConfig cfg, FlatRanges ranges)
    : table_(table), cfg_(cfg), ranges_(ranges.empty() ? FlatRanges{{0, table.total()}} : std::move(ranges)) {
  for (auto [b, e] : ranges_) MT_CHECK(0 <= b && b <= e, "[adamw] bad range [{}, {})", b, e);
  m_ = Tensor::zeros({ranges_numel(ranges_)});
  v_ = Tensor::zeros({ranges_numel(ranges_)});
}

double AdamW::sum_squares(const Tensor& grads, const std::function<bool(const ParamSpec&)>& counted) const {
  double sum = 0.0;
  for (auto [b, e] : ranges_)
    for (const auto& s : table_.specs()) {
      int64_t lo = std::max(b, s.offset), hi = std::min(e, s.offset + s.numel);
      if (lo >= hi || (counted && !counted(s))) continue;
      sum += sum_squares_cpu(grads.f32() + lo, hi - lo);
    }
  return sum;
}

float AdamW::clip_scale(double norm) const {
  if (cfg_.grad_clip > 0.0f && norm > cfg_.grad_clip) return cfg_.grad_clip / static_cast<float>(norm);
  return 1.0f;
}

void AdamW::update(Tensor& params, const Tensor& grads, float lr, float grad_scale) {
  MT_CHECK(params.numel() >= table_.total() && grads.numel() >= table_.total(),
           "[adamw] parameter/gradient buffers of {} and {} elements for a table of {}", params.numel(),
           grads.numel(), table_.total());
  ++t_;
  int64_t state = 0;  // position of the current range's moments in m_ / v_
  for (auto [b, e] : ranges_) {
    // Parameters overlapping [b, e): each piece gets its own decay; padding past the table is skipped.
    for (const auto& s : table_.specs()) {
      int64_t lo = std::max(b, s.offset), hi = std::min(e, s.offset + s.numel);
      if (lo >= hi) continue;
      int64_t at = state + (lo - b);
      adamw_update_cpu(params.f32() + lo, grads.f32() + lo, m_.f32() + at, v_.f32() + at, hi - lo, lr, cfg_.beta1,
                       cfg_.beta2, cfg_.eps, s.decay ? cfg_.weight_decay : 0.0f, static_cast<int>(t_), grad_scale);
    }
    state += e - b;
  }
}

float AdamW::step(Tensor& params, const Tensor& grads, float lr) {
  double norm = std::sqrt(sum_squares(grads));
  update(params, grads, lr, clip_scale(norm));
  return static_cast<float>(norm);
}

}  // namespace meshtrain
