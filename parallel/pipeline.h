// Pipeline parallelism: a model cut into stages (contiguous blocks per rank of the pp group, the
// embeddings on the first stage, the head on the last) runs a step's micro-batches in one of two
// schedules. GPipe: every forward, then every backward. 1F1B: stage s runs min(p - s - 1, m)
// forwards to fill the pipeline, then alternates one forward and one backward, then drains the
// remaining backwards, so at most p - s micro-batches keep activations at once. Activations go
// forward and their gradients backward by point-to-point messages; sends are non-blocking so two
// neighbours sending to each other never wait on one another.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "core/tensor.h"
#include "core/communicator.h"

namespace meshtrain {

class Gpt;

enum class PipelineSchedule { gpipe, one_f_one_b };

/// Parses "gpipe" or "1f1b"; throws naming the key otherwise.
PipelineSchedule parse_schedule(const std::string& name);

class Pipeline {
 public:
  /// model is this rank's stage; pp the group of stages (rank = stage). backward, when given, is a
  /// second communicator over the same stages that carries the gradients (pp then carries only
  /// activations): over NCCL, where a communicator's transfers run in order on one stream, one
  /// direction per stream keeps a stage's receive from waiting behind its own unmatched send.
  Pipeline(Gpt& model, Communicator& pp, PipelineSchedule schedule, Communicator* backward = nullptr);
  ~Pipeline();

  /// Fills the tokens (B*T inputs and B*T targets) of micro-batch i.
  using FillFn = std::function<void(int micro, int32_t* inputs, int32_t* targets)>;
  /// Forward and backward of m micro-batches of B x T tokens, gradients accumulated into the model;
  /// before_last_backward runs just before the step's last backward on this stage. Returns the sum
  /// of the micro-batches' losses on every stage.
  double train(int m, int B, int T, const FillFn& fill, float dloss_scale,
               const std::function<void()>& before_last_backward);
  /// Mean loss of one batch without gradients, on every stage.
  double loss(const int32_t* inputs, const int32_t* targets, int B, int T);
  /// Whole-vocabulary logits of the last position of tokens (1 x T), identical on every stage.
  const float* last_logits(const int32_t* tokens, int T);
  /// The same with each stage's key/value cache (Gpt::forward_cached): T new tokens appended.
  const float* cached_logits(const int32_t* tokens, int T);
  /// Empties every stage's cache (each stage calls it).
  void reset_cache();

  /// Micro-batches whose activations a stage holds at once, so the activation slots it allocates:
  /// GPipe keeps all m (every forward runs before the first backward); 1F1B at most stages - stage
  /// (stage 0 runs stages - 1 warm-up forwards before its first backward).
  static int activation_slots(PipelineSchedule schedule, int m, int stages, int stage) {
    return schedule == PipelineSchedule::gpipe ? m : std::min(m, stages - stage);
  }
  /// Bubble of the schedule: idle fraction (p - 1) / (m + p - 1) of a step's pipeline time.
  static double bubble_fraction(int p, int m) { return p > 1 ? double(p - 1) / double(m + p - 1) : 0.0; }
  /// Seconds spent waiting for activations and gradients from neighbours in the last train().
  double wait_seconds() const { return wait_s_; }
  /// Bytes this stage sent (activations and gradients) in the last train(); point-to-point, so
  /// payload and bus bytes are the same.
  double sent_bytes() const { return sent_bytes_; }

 private:
  void forward(int micro, int slot, int B, int T, const int32_t* inp, const int32_t* tgt, bool grad, float scale,
               double& loss_sum);
  void backward(int micro, int slot);
  void wait_sends(int slot);
  /// The trace flow (core/trace.h) from a send to its receive.
  uint64_t flow_id(int micro, int from_stage, bool gradient) const;
  /// Row row of the last stage's logits, gathered over tp and broadcast to every stage.
  const float* share_logits(int64_t row);

  Gpt& model_;
  Communicator& pp_;
  Communicator& back_;  // gradients (pp_ unless a communicator of their own was given)
  PipelineSchedule schedule_;
  int stage_, stages_;
  std::vector<std::vector<std::unique_ptr<Work>>> sends_;  // in flight, per activation slot
  Tensor logits_;
  double wait_s_ = 0.0;
  double sent_bytes_ = 0.0;
};

}  // namespace meshtrain
