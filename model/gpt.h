// GPT-2 with explicit forward and backward passes (no autograd). Parameters, gradients and
// activations each live in one allocation; the forward pass keeps what backward needs, and the
// fused softmax + cross-entropy writes dlogits over the logits so no probabilities are stored.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "core/tensor.h"
#include "core/timer.h"
#include "model/gpt_config.h"
#include "model/params.h"

namespace meshtrain {

class Communicator;

class Gpt {
 public:
  /// A model on the CPU (the CUDA backend adds a device). comm is the data-parallel group the
  /// gradients will be reduced over (size 1 in a single process); tp, when given, is the
  /// tensor-parallel group this rank shares its layers with (Megatron-style: attention split by
  /// heads, MLP by columns, embedding and LM head by vocabulary).
  Gpt(const GptConfig& cfg, Communicator& comm, Communicator* tp = nullptr);
  ~Gpt();

  const GptConfig& config() const { return cfg_; }
  const ParameterTable& table() const { return table_; }
  /// Flat parameter and gradient buffers (table().total() elements, then zero padding up to a
  /// multiple of the communicator's size).
  Tensor& params() { return params_; }
  Tensor& grads() { return grads_; }
  Communicator& comm() const { return comm_; }
  Communicator& tp() const { return *tp_; }
  /// View of one parameter (or its gradient) by global name.
  Tensor param(const std::string& name) const;
  Tensor grad(const std::string& name) const;

  /// Fills the parameters as GPT-2 does from (seed, name, element index).
  void initialize(uint64_t seed);
  void zero_grad();

  /// Runs the model on tokens (B*T ids). With targets (B*T ids, negative = ignored) returns the mean
  /// loss over counted targets; with compute_grad the loss gradient scaled by dloss_scale is left in
  /// place of the logits for backward(). Without targets returns 0 and keeps logits.
  float forward(const int32_t* tokens, const int32_t* targets, int B, int T, bool compute_grad = false,
                float dloss_scale = 1.0f);
  /// Accumulates parameter gradients of the last forward(..., compute_grad = true) into grads().
  void backward();
  /// Logits of row r of the last forward (this rank's vocabulary columns under tensor
  /// parallelism); valid without targets only.
  const float* logits_row(int64_t r) const;
  /// Logits (the whole padded vocabulary) of the last position only: runs the blocks on B=1,
  /// T tokens and the head on one row. Collective over the tp group.
  const float* forward_last_logits(const int32_t* tokens, int T);

  /// Called during backward() each time a further tail of the gradient buffer is final for this
  /// micro-batch: every gradient at flat offset >= ready_from. Offsets only decrease, ending at 0.
  /// Data parallelism uses it to start bucket reductions while backward goes on.
  void set_grad_ready_hook(std::function<void(int64_t ready_from)> hook) { grad_ready_ = std::move(hook); }

  /// Per-region timings (encoder, layernorm, matmul, attention, gelu, residual, classifier,
  /// crossentropy, ...); set to null to disable.
  void set_profiler(Profiler* p) { prof_ = p; }
  /// Bytes held by the activation buffers.
  size_t activation_bytes() const;

 private:
  struct Acts;
  void ensure_acts(int B, int T);
  void forward_blocks(const int32_t* tokens, int B, int T);

  GptConfig cfg_;
  Communicator& comm_;
  std::unique_ptr<Communicator> own_tp_;  // a size-1 group when no tp group is given
  Communicator* tp_;
  ParameterTable table_;
  int Cl_, NHl_, Fl_;  // this rank's attention channels, heads and MLP width
  int64_t Vl_, v0_;    // this rank's vocabulary columns [v0_, v0_ + Vl_)
  Tensor full_logits_; // gathered last-position logits for sampling under tensor parallelism
  Tensor params_, grads_;
  ParamPointers p_, g_;
  std::unique_ptr<Acts> acts_;
  const int32_t* last_tokens_ = nullptr;
  int last_B_ = 0, last_T_ = 0;
  bool have_dlogits_ = false;
  Profiler* prof_ = nullptr;
  std::function<void(int64_t)> grad_ready_;
};

}  // namespace meshtrain
