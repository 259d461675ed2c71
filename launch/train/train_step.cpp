// TrainStep (train_step.h).
#include "launch/train/train_step.h"

#include <cstring>

#include "core/communicator.h"
#include "core/error.h"
#include "core/trace.h"
#include "model/backend.h"
#include "model/gpt.h"
#include "model/optimizer.h"
#include "parallel/data_parallel.h"
#include "parallel/pipeline.h"

namespace meshtrain {

TrainStep::TrainStep(Gpt& model, DataParallel& ddp, Pipeline* pipe, Communicator* tied, Communicator& dp,
                     bool cuda_graph)
    : model_(model), ddp_(ddp), pipe_(pipe), tied_(tied), dp_(dp), use_graph_(cuda_graph) {
  // A captured step may hold no host wait: every collective in it must run on the GPU's streams.
  auto on_gpu = [](const Communicator& c) { return c.size() == 1 || c.on_device_streams(); };
  MT_CHECK(!cuda_graph || model.backend().device() == Device::cuda,
           "[train] train.cuda_graph captures the step of a CUDA model; set train.device = cuda");
  MT_CHECK(!cuda_graph || (on_gpu(dp) && on_gpu(model.tp())),
           "[train] train.cuda_graph needs every collective of the step on the GPU: use parallel.comm = nccl (a GPU "
           "per rank), or train.cuda_graph = false with parallel.comm = mpi");
  MT_CHECK(!cuda_graph || (!pipe && !tied),
           "[train] train.cuda_graph captures data- and tensor-parallel steps; a pipeline's schedule waits on its "
           "neighbours from the host (parallel.pp > 1): set train.cuda_graph = false");
}

TrainStep::~TrainStep() = default;

void TrainStep::queue(int micro, int B, int T, float lr, const std::vector<float>& dloss) {
  Gpt& g = model_;
  Backend& be = g.backend();
  const int64_t BT = static_cast<int64_t>(B) * T;
  auto* ids = static_cast<int32_t*>(host_ids_.get());
  auto* losses = static_cast<float*>(host_losses_.get());
  g.zero_grad();
  for (int i = 0; i < micro; ++i) {
    be.upload(g.input_tokens(B, T).raw(), ids + 2 * BT * i, BT * sizeof(int32_t));
    be.upload(g.input_targets(B, T).raw(), ids + 2 * BT * i + BT, BT * sizeof(int32_t));
    if (i == micro - 1) ddp_.arm();  // gradients become final during this backward
    g.forward_queued(B, T, true, true, dloss[static_cast<size_t>(i)]);
    g.backward();
    be.download_async(losses + BT * i, g.losses().raw(), BT * sizeof(float));
  }
  ddp_.finish();
  TraceScope trace("optimizer", "optimizer (norm, clip, AdamW)");
  DeviceScope on_device("optimizer", [] { return "optimizer (norm, clip, AdamW)"; });
  ddp_.queue_step(lr);
}

StepResult TrainStep::run(const int32_t* inputs, const int32_t* targets, int micro, int B, int T, float lr) {
  MT_CHECK(micro >= 1, "[train] a step needs at least one micro-batch");
  const int64_t BT = static_cast<int64_t>(B) * T;
  Backend& be = model_.backend();
  be.reset_marks();  // the step's timing points reuse the same events (a replay records them again)
  DeviceTrace& on_device = DeviceTrace::get();
  on_device.begin_step(be);  // the GPU's own timeline, when this step is traced
  StepResult r;
  if (pipe_) {
    model_.zero_grad();
    auto fill = [&](int i, int32_t* in, int32_t* tg) {
      std::memcpy(in, inputs + BT * i, BT * sizeof(int32_t));
      std::memcpy(tg, targets + BT * i, BT * sizeof(int32_t));
    };
    r.loss = pipe_->train(micro, B, T, fill, 1.0f / static_cast<float>(micro), [&] { ddp_.arm(); });
    if (tied_) {
      Tensor g = model_.grad("wte");
      tied_->all_reduce(g, ReduceOp::sum);
    }
    ddp_.finish();
    TraceScope trace("optimizer", "optimizer (norm, clip, AdamW)");
    DeviceScope optimizer_on_device("optimizer", [] { return "optimizer (norm, clip, AdamW)"; });
    r.grad_norm = ddp_.step(lr);
  } else {
    // What the host can check before anything is queued (the device validates nothing).
    std::vector<float> dloss(static_cast<size_t>(micro));
    std::vector<int64_t> counted(static_cast<size_t>(micro));
    for (int i = 0; i < micro; ++i) {
      model_.check_tokens(inputs + BT * i, BT);
      counted[static_cast<size_t>(i)] = model_.count_targets(targets + BT * i, BT);
      dloss[static_cast<size_t>(i)] = 1.0f / static_cast<float>(micro) / static_cast<float>(counted[static_cast<size_t>(i)]);
    }
    const size_t ids_bytes = static_cast<size_t>(2 * BT * micro) * sizeof(int32_t);
    if (ids_bytes_ < ids_bytes) {
      graph_.reset();  // a captured graph copies from the old buffers
      host_ids_ = be.host_buffer(ids_bytes);
      host_losses_ = be.host_buffer(static_cast<size_t>(BT * micro) * sizeof(float));
      ids_bytes_ = ids_bytes;
    }
    auto* ids = static_cast<int32_t*>(host_ids_.get());
    for (int i = 0; i < micro; ++i) {
      std::memcpy(ids + 2 * BT * i, inputs + BT * i, BT * sizeof(int32_t));
      std::memcpy(ids + 2 * BT * i + BT, targets + BT * i, BT * sizeof(int32_t));
    }
    // The first step runs eagerly: it picks the GEMM algorithms, loads the kernels and sizes the
    // scratch pools, none of which may happen inside a capture.
    if (use_graph_ && eager_steps_ > 0) {
      GraphKey key{micro, B, T, dloss, model_.input_tokens(B, T).raw()};  // input_tokens plans the activations
      if (!graph_.ready() || !(key == graph_key_)) {
        graph_.begin_capture(be.stream());
        try {
          queue(micro, B, T, lr, dloss);
        } catch (...) {
          graph_.abort_capture(be.stream());
          throw;
        }
        graph_.end_capture(be.stream());
        graph_key_ = key;
        // The intervals the captured step timed: every replay records their events again.
        tp_spans_ = model_.tp_timer().spans();
        dp_spans_ = ddp_.timer().spans();
        device_spans_ = on_device.spans();  // empty when the capture was not recorded
      } else {
        ddp_.optimizer().set_step_scalars(lr, 1.0f);  // what queue() does on the host, for the replay to read
      }
      graph_.replay(be.stream());
      model_.tp_timer().set_spans(tp_spans_);
      ddp_.timer().set_spans(dp_spans_);
      if (on_device.recording()) on_device.set_spans(device_spans_);
      r.replayed = true;
    } else {
      queue(micro, B, T, lr, dloss);
      ++eager_steps_;
    }
    be.synchronize();
    const auto* losses = static_cast<const float*>(host_losses_.get());
    for (int i = 0; i < micro; ++i) {
      double sum = 0.0;
      for (int64_t j = 0; j < BT; ++j) sum += losses[BT * i + j];
      r.loss += sum / static_cast<double>(counted[static_cast<size_t>(i)]);
    }
    r.grad_norm = ddp_.optimizer().last_norm();
  }
  if (on_device.recording()) {
    be.synchronize();  // the device has passed every mark of the step
    on_device.flush();
  }
  r.loss /= micro;
  if (dp_.size() > 1) {
    Tensor loss = Tensor::empty({1});
    loss.f32()[0] = static_cast<float>(r.loss);
    dp_.all_reduce(loss, ReduceOp::avg);
    r.loss = loss.f32()[0];
  }
  return r;
}

}  // namespace meshtrain
