// GpuTrainer (gpu_trainer.h). The step is queued on the backend's stream without a single host
// synchronisation until the losses are read back, which is what lets a CUDA graph capture it: the
// graph records the copies from page-locked buffers, every kernel with its arguments, and the
// copies back; replaying it reruns the same work on whatever the host has put in those buffers.
// Kernel arguments are frozen at capture, so everything that changes per step either lives in those
// buffers (tokens, targets, lr, bias corrections) or is recomputed on the device (norm, clip scale);
// what cannot (the batch shape, the per-micro-batch loss scale, activation addresses) is the key
// that triggers a new capture when it changes.
#include "model/gpu_trainer.h"

#include <cmath>
#include <cstring>

#include "model/kernels/adamw.h"
#include "model/kernels/convert.h"
#include "core/communicator.h"

namespace meshtrain {

GpuTrainer::GpuTrainer(const GptConfig& cfg, std::unique_ptr<Backend> backend, AdamWConfig adam, bool cuda_graph)
    : adam_(adam), use_graph_(cuda_graph) {
  MT_CHECK(backend && backend->device() == Device::cuda, "[gpu_trainer] needs a CUDA backend");
  LocalCommunicator one;
  model_ = std::make_unique<Gpt>(cfg, one, nullptr, 1, 0, std::move(backend));
  const int64_t n = model_->table().total();
  m_ = Tensor::zeros({n}, DType::f32, Device::cuda);
  v_ = Tensor::zeros({n}, DType::f32, Device::cuda);
  if (model_->backend().dtype() == DType::bf16) master_ = Tensor::zeros({n}, DType::f32, Device::cuda);
  scalars_ = Tensor::zeros({static_cast<int64_t>(sizeof(AdamWScalars))}, DType::u8, Device::cuda);
  sumsq_ = Tensor::zeros({(1 + sum_squares_partials(n)) * static_cast<int64_t>(sizeof(double))}, DType::u8,
                         Device::cuda);
  host_scalars_in_ = PinnedBuffer(sizeof(AdamWScalars));
  host_scalars_out_ = PinnedBuffer(sizeof(AdamWScalars));
}

GpuTrainer::~GpuTrainer() = default;

size_t GpuTrainer::state_bytes() const {
  return m_.nbytes() + v_.nbytes() + (master_.defined() ? master_.nbytes() : 0);
}

void GpuTrainer::set_params(const float* host) {
  Backend& be = model_->backend();
  if (!master_.defined()) return model_->set_params(host);
  be.upload(master_.raw(), host, master_.nbytes());
  convert_cuda(model_->params().data<Bf16>(), master_.f32(), master_.numel(), be.stream());
  be.synchronize();
  graph_.reset();
}

void GpuTrainer::get_params(float* host) const {
  if (!master_.defined()) return model_->get_params(host);
  model_->backend().download(host, master_.raw(), master_.nbytes());
}

void GpuTrainer::set_moments(const float* m, const float* v, int64_t adam_steps) {
  Backend& be = model_->backend();
  be.upload(m_.raw(), m, m_.nbytes());
  be.upload(v_.raw(), v, v_.nbytes());
  be.synchronize();
  adam_steps_ = adam_steps;
}

void GpuTrainer::get_moments(float* m, float* v) const {
  Backend& be = model_->backend();
  be.download(m, m_.raw(), m_.nbytes());
  be.download(v, v_.raw(), v_.nbytes());
}

void GpuTrainer::queue_step(int micro, int B, int T, const std::vector<float>& dloss) {
  Gpt& g = *model_;
  void* s = g.backend().stream();
  const int64_t BT = static_cast<int64_t>(B) * T;
  auto* ids = static_cast<int32_t*>(host_ids_.data());
  auto* losses = static_cast<float*>(host_losses_.data());
  g.zero_grad();
  for (int i = 0; i < micro; ++i) {
    device_copy_async(g.input_tokens(B, T).raw(), ids + 2 * BT * i, BT * sizeof(int32_t), s);
    device_copy_async(g.input_targets(B, T).raw(), ids + 2 * BT * i + BT, BT * sizeof(int32_t), s);
    g.forward_queued(B, T, true, true, dloss[static_cast<size_t>(i)]);
    g.backward();
    device_copy_async(losses + BT * i, g.losses().raw(), BT * sizeof(float), s);
  }
  // The optimizer: global norm -> clip scale -> AdamW, each reading the previous one's device output.
  auto* scalars = static_cast<AdamWScalars*>(scalars_.raw());
  auto* sumsq = static_cast<double*>(sumsq_.raw());
  device_copy_async(scalars, host_scalars_in_.data(), sizeof(AdamWScalars), s);
  const ParameterTable& table = g.table();
  const int64_t n = table.total();
  const bool bf16 = master_.defined();
  if (bf16) sum_squares_async_cuda(sumsq, sumsq + 1, g.grads().data<Bf16>(), n, s);
  else sum_squares_async_cuda(sumsq, sumsq + 1, g.grads().f32(), n, s);
  clip_scale_cuda(scalars, sumsq, adam_.grad_clip, s);
  for (const ParamSpec& p : table.specs()) {
    const float wd = p.decay ? adam_.weight_decay : 0.0f;
    const int64_t o = p.offset;
    if (bf16)
      adamw_update_cuda(g.params().data<Bf16>() + o, master_.f32() + o, g.grads().data<Bf16>() + o, m_.f32() + o,
                        v_.f32() + o, p.numel, scalars, adam_.beta1, adam_.beta2, adam_.eps, wd, s);
    else
      adamw_update_cuda(g.params().f32() + o, g.grads().f32() + o, m_.f32() + o, v_.f32() + o, p.numel, scalars,
                        adam_.beta1, adam_.beta2, adam_.eps, wd, s);
  }
  device_copy_async(host_scalars_out_.data(), scalars, sizeof(AdamWScalars), s);
}

GpuTrainer::StepResult GpuTrainer::step(const int32_t* tokens, const int32_t* targets, int micro, int B, int T,
                                        float lr) {
  MT_CHECK(micro >= 1, "[gpu_trainer] a step needs at least one micro-batch");
  const int64_t BT = static_cast<int64_t>(B) * T;
  // Checks the host can do before anything is queued (the device validates nothing).
  std::vector<float> dloss(static_cast<size_t>(micro));
  std::vector<int64_t> counted(static_cast<size_t>(micro), 0);
  for (int i = 0; i < micro; ++i) {
    model_->check_tokens(tokens + BT * i, BT);
    counted[static_cast<size_t>(i)] = model_->count_targets(targets + BT * i, BT);
    dloss[static_cast<size_t>(i)] = 1.0f / static_cast<float>(micro) / static_cast<float>(counted[static_cast<size_t>(i)]);
  }
  const size_t ids_bytes = static_cast<size_t>(2 * BT * micro) * sizeof(int32_t);
  if (host_ids_.nbytes() < ids_bytes) {
    graph_.reset();  // the graph copies from the old buffers
    host_ids_ = PinnedBuffer(ids_bytes);
    host_losses_ = PinnedBuffer(static_cast<size_t>(BT * micro) * sizeof(float));
  }
  auto* ids = static_cast<int32_t*>(host_ids_.data());
  for (int i = 0; i < micro; ++i) {
    std::memcpy(ids + 2 * BT * i, tokens + BT * i, BT * sizeof(int32_t));
    std::memcpy(ids + 2 * BT * i + BT, targets + BT * i, BT * sizeof(int32_t));
  }
  ++adam_steps_;
  AdamWScalars in{};
  in.lr = lr;
  in.bias_corr1 = adamw_bias_correction(adam_.beta1, adam_steps_);
  in.bias_corr2 = adamw_bias_correction(adam_.beta2, adam_steps_);
  std::memcpy(host_scalars_in_.data(), &in, sizeof in);

  Backend& be = model_->backend();
  GraphKey key{micro, B, T, dloss, model_->input_tokens(B, T).raw()};  // input_tokens plans the activations
  bool replayed = false;
  // The first step runs eagerly: it picks the GEMM algorithms, loads the kernels and sizes the
  // scratch pools, none of which may happen inside a capture.
  if (use_graph_ && eager_steps_ > 0) {
    if (!graph_.ready() || !(key == graph_key_)) {
      graph_.begin_capture(be.stream());
      try {
        queue_step(micro, B, T, dloss);
      } catch (...) {
        graph_.abort_capture(be.stream());
        throw;
      }
      graph_.end_capture(be.stream());
      graph_key_ = key;
    }
    graph_.replay(be.stream());
    replayed = true;
  } else {
    queue_step(micro, B, T, dloss);
    ++eager_steps_;
  }
  be.synchronize();

  StepResult r{};
  const auto* losses = static_cast<const float*>(host_losses_.data());
  for (int i = 0; i < micro; ++i) {
    double sum = 0.0;
    for (int64_t j = 0; j < BT; ++j) sum += losses[BT * i + j];
    r.loss += sum / static_cast<double>(counted[static_cast<size_t>(i)]);
  }
  r.loss /= micro;
  AdamWScalars out{};
  std::memcpy(&out, host_scalars_out_.data(), sizeof out);
  r.grad_norm = out.grad_norm;
  r.replayed = replayed;
  return r;
}

}  // namespace meshtrain
