// The optimizer step: global-norm gradient clipping, the learning-rate schedule (linear warm-up,
// then cosine decay to min_lr) and AdamW with decoupled weight decay on matrices only. An AdamW owns
// moments for a set of ranges of the flat parameter buffer: the whole buffer in a single process or
// plain data parallelism, this rank's shards under ZeRO-1. Moments of its ranges are stored back to
// back in one allocation each.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
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

class Backend;

/// AdamW over the flat buffers on the device of a Backend (the CPU when none is given). The moments
/// (and, for a bf16 model, fp32 master weights) of its ranges live on that device; the norm, the
/// clipping factor and the update run there too, reading the step's scalars (lr, bias corrections,
/// clip factor) from device memory, so a whole step can be queued without waiting on the host
/// (queue_* below) and captured as a CUDA graph. The blocking methods are the same steps plus a wait.
class AdamW {
 public:
  /// Moments for ranges (default: every parameter, [0, table.total())). backend: where the buffers
  /// live and in which dtype (null: the CPU in fp32); it must outlive this object.
  AdamW(const ParameterTable& table, AdamWConfig cfg, FlatRanges ranges = {}, Backend* backend = nullptr);
  ~AdamW();
  /// Single-process step: norm over all of grads, clipping, update. Returns the norm before clipping.
  float step(Tensor& params, const Tensor& grads, float lr);
  /// Sum of squared gradients over this optimizer's ranges (in double, thread-count independent),
  /// of the parameters counted() accepts (all by default): a sum over tp and pp groups counts
  /// replicated and tied parameters once when only one rank counts them. Waits for the device.
  double sum_squares(const Tensor& grads, const std::function<bool(const ParamSpec&)>& counted = {});
  /// Clipping factor for a global gradient norm.
  float clip_scale(double norm) const;
  /// AdamW on this optimizer's ranges with gradients multiplied by grad_scale. Waits for the device.
  void update(Tensor& params, const Tensor& grads, float lr, float grad_scale);

  // ---- The same step queued on the device, no host waits (what a captured CUDA graph records).
  /// Queues the sum of squares of the counted gradients (see sum_squares) into device memory.
  void queue_sum_squares(const Tensor& grads, const std::function<bool(const ParamSpec&)>& counted = {});
  /// Waits for and returns the queued sum of squares.
  double read_sum_squares();
  /// The queued sum of squares as one float on the optimizer's device (queued, no host wait), for
  /// a sum over ranks that stays on the device; use_partial() then takes the summed value back.
  Tensor& queue_partial();
  void use_partial();
  /// Queues norm -> clipping factor -> AdamW at lr on the queued sum of squares, and the copy of the
  /// norm back to the host (last_norm(), after the device has finished).
  void queue_update(Tensor& params, const Tensor& grads, float lr);
  /// The gradient norm (before clipping) of the last queued update; valid once the device is done.
  float last_norm() const;
  /// The host half of queue_update: counts the step and writes lr, the bias corrections and
  /// grad_scale into the host buffer its queued copy reads (a CUDA graph replay reads it again).
  void set_step_scalars(float lr, float grad_scale);

  /// fp32 master weights of a bf16 model: set from / copied into table().total() host floats (only
  /// this optimizer's ranges are touched). Without master weights they do nothing.
  bool has_master() const { return master_.defined(); }
  void set_master(const float* host);
  void get_master(float* host) const;
  Tensor& master() { return master_; }

  /// Moments on the optimizer's device, laid out range after range.
  Tensor& m() { return m_; }
  Tensor& v() { return v_; }
  const Tensor& m() const { return m_; }
  const Tensor& v() const { return v_; }
  const FlatRanges& ranges() const { return ranges_; }
  /// Number of updates applied so far (the bias-correction step count).
  int64_t steps() const { return t_; }
  void set_steps(int64_t t) { t_ = t; }
  /// Bytes of optimizer state this object holds (moments, and master weights in bf16).
  size_t state_bytes() const { return m_.nbytes() + v_.nbytes() + (master_.defined() ? master_.nbytes() : 0); }

 private:
  struct Piece {
    int64_t begin, end;  // flat element range
    int64_t state;       // where it starts in m_ / v_ / master_
    float decay;
  };
  /// This optimizer's ranges cut at parameter boundaries (padding dropped), each with its decay.
  std::vector<Piece> pieces() const;
  void queue_adamw(Tensor& params, const Tensor& grads);

  const ParameterTable& table_;
  AdamWConfig cfg_;
  FlatRanges ranges_;
  std::unique_ptr<Backend> own_backend_;
  Backend* be_;
  Tensor m_, v_, master_;
  Tensor sums_;        // device doubles: one sum of squares per run, then the scratch
  int64_t sum_slots_ = 0;  // doubles of sums_ before its scratch: at most one per run of gradients
  int sum_count_ = 1;      // runs in sums_ that the clipping adds up
  Tensor scalars_;     // AdamWScalars on the device
  Tensor partial_;     // one float: the sum of squares as it crosses ranks
  std::shared_ptr<void> host_in_, host_out_;  // AdamWScalars the host writes / reads
  int64_t t_ = 0;
};

}  // namespace meshtrain
