// The training step on one GPU: a Gpt on the CUDA backend, AdamW moments (and, in bf16, the fp32
// master weights) in one device allocation each, the global gradient norm and clipping computed on
// the device, and — with cuda_graph — the whole step (uploads, every micro-batch's forward and
// backward, norm, clipping, AdamW, loss download) captured once in a CUDA graph and then replayed
// with one launch per step. The per-step values a replay needs (tokens, targets, learning rate,
// bias corrections) live in page-locked host buffers that the captured copies read at replay time.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "core/device.h"
#include "model/backend.h"
#include "model/gpt.h"
#include "model/optimizer.h"

namespace meshtrain {

class GpuTrainer {
 public:
  /// A model of cfg on backend (a CUDA backend), single process. cuda_graph: capture the step.
  GpuTrainer(const GptConfig& cfg, std::unique_ptr<Backend> backend, AdamWConfig adam, bool cuda_graph);
  ~GpuTrainer();

  Gpt& model() { return *model_; }
  /// Sets the master weights (and the model's parameters) from table().total() host floats.
  void set_params(const float* host);
  /// Copies the master weights (fp32) into host floats.
  void get_params(float* host) const;
  /// Sets / reads the AdamW moments (laid out like the parameters) and the step count.
  void set_moments(const float* m, const float* v, int64_t adam_steps);
  void get_moments(float* m, float* v) const;
  int64_t adam_steps() const { return adam_steps_; }
  /// Bytes of optimizer state on the device (moments, plus master weights in bf16).
  size_t state_bytes() const;

  struct StepResult {
    double loss;      // mean over the micro-batches of each one's mean loss
    float grad_norm;  // before clipping
    bool replayed;    // the step ran as a CUDA graph replay
  };
  /// One optimizer step: micro micro-batches of B x T tokens and targets each (host, micro*B*T ids,
  /// targets negative = ignored), loss gradients scaled by 1/micro, clipping, AdamW at lr.
  StepResult step(const int32_t* tokens, const int32_t* targets, int micro, int B, int T, float lr);

 private:
  void queue_step(int micro, int B, int T, const std::vector<float>& dloss);

  std::unique_ptr<Gpt> model_;
  AdamWConfig adam_;
  bool use_graph_;
  Tensor master_;  // fp32 master weights (bf16 models only; fp32 models update their parameters)
  Tensor m_, v_;
  Tensor scalars_;    // AdamWScalars on the device
  Tensor sumsq_;      // [0]: the sum of squares, then the partial sums
  int64_t adam_steps_ = 0;
  PinnedBuffer host_ids_, host_losses_, host_scalars_in_, host_scalars_out_;
  CudaGraph graph_;
  // What the captured graph was recorded for; any change records it again.
  struct GraphKey {
    int micro = 0, B = 0, T = 0;
    std::vector<float> dloss;
    void* acts = nullptr;
    bool operator==(const GraphKey&) const = default;
  } graph_key_;
  int eager_steps_ = 0;
};

}  // namespace meshtrain
