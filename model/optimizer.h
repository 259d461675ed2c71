// The optimizer step: global-norm gradient clipping, the learning-rate schedule (linear warm-up,
// then cosine decay to min_lr) and AdamW with decoupled weight decay on matrices only. Moments live
// in one allocation each, laid out like the parameters.
#pragma once

#include <cstdint>

#include "core/tensor.h"
#include "model/params.h"

namespace meshtrain {

struct AdamWConfig {
  float beta1 = 0.9f;
  float beta2 = 0.95f;
  float eps = 1e-8f;
  float weight_decay = 0.1f;
  float grad_clip = 1.0f;  // <= 0 disables clipping
};

/// Learning rate at step (0-based) of total: linear warm-up over warmup steps to lr, then cosine
/// decay to min_lr at the last step.
float lr_at(int64_t step, int64_t warmup, int64_t total, float lr, float min_lr);

class AdamW {
 public:
  AdamW(const ParameterTable& table, AdamWConfig cfg);
  /// Clips grads by global norm, then updates params. Returns the gradient norm before clipping.
  float step(Tensor& params, const Tensor& grads, float lr);
  Tensor& m() { return m_; }
  Tensor& v() { return v_; }
  /// Number of updates applied so far (the bias-correction step count).
  int64_t steps() const { return t_; }
  void set_steps(int64_t t) { t_ = t; }

 private:
  const ParameterTable& table_;
  AdamWConfig cfg_;
  Tensor m_, v_;
  int64_t t_ = 0;
};

}  // namespace meshtrain
