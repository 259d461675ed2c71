// The optimizer step: global-norm gradient clipping, the learning-rate schedule (linear warm-up,
// then cosine decay to min_lr) and AdamW with decoupled weight decay on matrices only. An AdamW owns
// moments for a set of ranges of the flat parameter buffer: the whole buffer in a single process or
// plain data parallelism, this rank's shards under ZeRO-1. Moments of its ranges are stored back to
// back in one allocation each.
#pragma once

#include <cstdint>
#include <functional>
#include <utility>
#include <vector>

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

/// [begin, end) element ranges of the flat parameter buffer.
using FlatRanges = std::vector<std::pair<int64_t, int64_t>>;

class AdamW {
 public:
  /// Moments for ranges (default: every parameter, [0, table.total())).
  AdamW(const ParameterTable& table, AdamWConfig cfg, FlatRanges ranges = {});
  /// Single-process step: norm over all of grads, clipping, update. Returns the norm before clipping.
  float step(Tensor& params, const Tensor& grads, float lr);
  /// Sum of squared gradients over this optimizer's ranges (in double, thread-count independent),
  /// of the parameters counted() accepts (all by default): a sum over tp and pp groups counts
  /// replicated and tied parameters once when only one rank counts them.
  double sum_squares(const Tensor& grads, const std::function<bool(const ParamSpec&)>& counted = {}) const;
  /// Clipping factor for a global gradient norm.
  float clip_scale(double norm) const;
  /// AdamW on this optimizer's ranges with gradients multiplied by grad_scale.
  void update(Tensor& params, const Tensor& grads, float lr, float grad_scale);

  Tensor& m() { return m_; }
  Tensor& v() { return v_; }
  const Tensor& m() const { return m_; }
  const Tensor& v() const { return v_; }
  const FlatRanges& ranges() const { return ranges_; }
  /// Number of updates applied so far (the bias-correction step count).
  int64_t steps() const { return t_; }
  void set_steps(int64_t t) { t_ = t; }
  /// Bytes of optimizer state (both moments) this object holds.
  size_t state_bytes() const { return m_.nbytes() + v_.nbytes(); }

 private:
  const ParameterTable& table_;
  AdamWConfig cfg_;
  FlatRanges ranges_;
  Tensor m_, v_;
  int64_t t_ = 0;
};

}  // namespace meshtrain
