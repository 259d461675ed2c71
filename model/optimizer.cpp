// AdamW step and learning-rate schedule.
#include "model/optimizer.h"

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

AdamW::AdamW(const ParameterTable& table, AdamWConfig cfg)
    : table_(table), cfg_(cfg), m_(Tensor::zeros({table.total()})), v_(Tensor::zeros({table.total()})) {}

float AdamW::step(Tensor& params, const Tensor& grads, float lr) {
  MT_CHECK(params.numel() == table_.total() && grads.numel() == table_.total(),
           "[adamw] parameter/gradient buffers of {} and {} elements for a table of {}", params.numel(),
           grads.numel(), table_.total());
  double norm = std::sqrt(sum_squares_cpu(grads.f32(), grads.numel()));
  float scale = 1.0f;
  if (cfg_.grad_clip > 0.0f && norm > cfg_.grad_clip) scale = cfg_.grad_clip / static_cast<float>(norm);
  ++t_;
  for (const auto& s : table_.specs()) {
    adamw_update_cpu(params.f32() + s.offset, grads.f32() + s.offset, m_.f32() + s.offset, v_.f32() + s.offset,
                     s.numel, lr, cfg_.beta1, cfg_.beta2, cfg_.eps, s.decay ? cfg_.weight_decay : 0.0f,
                     static_cast<int>(t_), scale);
  }
  return static_cast<float>(norm);
}

}  // namespace meshtrain
