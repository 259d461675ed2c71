// One training step, the same code for every device and layout: this rank's micro-batches run
// forward and backward through the model's Backend (CPU or CUDA), gradients are reduced over the
// data-parallel group by DataParallel's buckets (all-reduce, or ZeRO-1's reduce-scatter), the
// global norm is summed over the tensor- and pipeline-parallel groups, and AdamW runs on the
// device. With a pipeline the micro-batches go through its schedule (GPipe or 1F1B) instead.
//
// Without a pipeline the step is queued without host waits until the losses are read (tokens and
// targets uploaded from host buffers the device can read asynchronously, losses copied back the
// same way, norm -> clipping factor -> AdamW on device scalars), which is what lets a CUDA graph
// capture it: with cuda_graph, the second step records the whole step once and later steps replay
// it with one launch. On several ranks that needs every collective on the GPU's streams (NCCL):
// gradient buckets, ZeRO-1's reduce-scatter and all-gather, tensor-parallel all-reduces and the
// norm's partial sums are then recorded in the graph like the kernels. Kernel arguments are frozen at capture, so the batch shape,
// the per-micro-batch loss scales and the activation addresses are the key that triggers a new
// capture when they change; what changes every step (tokens, targets, lr, bias corrections) lives
// in the host buffers a replay reads.
#pragma once

#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "core/device.h"
#include "model/backend.h"

namespace meshtrain {

class Communicator;
class DataParallel;
class Gpt;
class Pipeline;

struct StepResult {
  double loss = 0.0;       // mean over the global batch (every rank gets the same value)
  float grad_norm = 0.0f;  // before clipping
  bool replayed = false;   // the step ran as a CUDA graph replay
};

class TrainStep {
 public:
  /// model: this rank's model (a pipeline stage when pipe is given); ddp: its data parallelism and
  /// optimizer; tied: the group of the first and last stage's copies of the tied embedding (or null);
  /// dp: the data-parallel group the loss is averaged over. cuda_graph: capture the step (a CUDA
  /// model whose dp and tp groups run on the GPU's streams, NCCL or size 1; no pipeline).
  TrainStep(Gpt& model, DataParallel& ddp, Pipeline* pipe, Communicator* tied, Communicator& dp, bool cuda_graph);
  ~TrainStep();

  /// One optimizer step on micro micro-batches of B x T tokens: inputs and targets hold micro * B * T
  /// ids each (host memory; targets < 0 are ignored). Loss gradients are scaled by 1/micro.
  StepResult run(const int32_t* inputs, const int32_t* targets, int micro, int B, int T, float lr);

 private:
  void queue(int micro, int B, int T, float lr, const std::vector<float>& dloss);

  Gpt& model_;
  DataParallel& ddp_;
  Pipeline* pipe_;
  Communicator* tied_;
  Communicator& dp_;
  bool use_graph_;
  std::shared_ptr<void> host_ids_, host_losses_;  // device-readable host memory (page-locked on a GPU)
  size_t ids_bytes_ = 0;
  CudaGraph graph_;
  struct GraphKey {
    int micro = 0, B = 0, T = 0;
    std::vector<float> dloss;
    void* acts = nullptr;
    bool operator==(const GraphKey&) const = default;
  } graph_key_;
  int eager_steps_ = 0;
  std::vector<std::pair<int64_t, int64_t>> tp_spans_, dp_spans_;  // timed intervals of the captured step
  std::vector<DeviceTrace::Span> device_spans_;  // its traced regions (DeviceTrace), if the capture was traced
};

}  // namespace meshtrain
