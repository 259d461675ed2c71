// GPT-2 with explicit forward and backward passes (no autograd). Parameters, gradients and
// activations each live in one allocation on the model's device; the forward pass keeps what
// backward needs, and the fused softmax + cross-entropy writes dlogits over the logits so no
// probabilities are stored. The kernels come from a Backend (model/backend.h): the CPU in fp32, or
// CUDA in fp32 or bf16.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"
#include "core/timer.h"
#include "model/backend.h"
#include "model/gpt_config.h"
#include "model/lora.h"
#include "model/params.h"

namespace meshtrain {

class Communicator;

/// Activation recomputation: what forward keeps for backward. none: everything; selective: all but
/// the attention probabilities and the GELU outputs (recomputed per block in backward); full: only
/// each block's input (the whole block runs again in backward).
enum class Recompute { none, selective, full };
/// Parses "none", "selective" or "full"; throws naming train.recompute otherwise.
Recompute parse_recompute(const std::string& name);

class Gpt {
 public:
  /// A model on the CPU (the CUDA backend adds a device). comm is the data-parallel group the
  /// gradients will be reduced over (size 1 in a single process); tp, when given, is the
  /// tensor-parallel group this rank shares its layers with (Megatron-style: attention split by
  /// heads, MLP by columns, embedding and LM head by vocabulary). pp_size and pp_stage make it one
  /// pipeline stage: its blocks, the embeddings on the first stage, the head on the last.
  /// backend: where and in which dtype the model runs (null: the CPU in fp32), on every layout.
  Gpt(const GptConfig& cfg, Communicator& comm, Communicator* tp = nullptr, int pp_size = 1, int pp_stage = 0,
      std::unique_ptr<Backend> backend = nullptr);
  ~Gpt();

  const GptConfig& config() const { return cfg_; }
  const ParameterTable& table() const { return table_; }
  Backend& backend() const { return *be_; }
  /// Flat parameter and gradient buffers (table().total() elements, then zero padding up to a
  /// multiple of the communicator's size), on the backend's device in its dtype.
  Tensor& params() { return params_; }
  Tensor& grads() { return grads_; }
  Communicator& tp() const { return *tp_; }
  /// View of one parameter (or its gradient) by global name.
  Tensor param(const std::string& name) const;
  Tensor grad(const std::string& name) const;

  /// Fills the parameters as GPT-2 does from (seed, name, element index).
  void initialize(uint64_t seed);
  /// Sets the parameters from table().total() host floats (rounded to bf16 on a bf16 model).
  void set_params(const float* host);
  /// Copies the parameters into table().total() host floats.
  void get_params(float* host) const;
  void zero_grad();

  /// Runs the model on tokens (B*T ids). With targets (B*T ids, negative = ignored) returns the mean
  /// loss over counted targets; with compute_grad the loss gradient scaled by dloss_scale is left in
  /// place of the logits for backward(). Without targets returns 0 and keeps logits.
  /// As a pipeline stage: the first stage reads tokens, later stages read stage_input(); only the
  /// last stage computes logits and the loss (others return 0).
  float forward(const int32_t* tokens, const int32_t* targets, int B, int T, bool compute_grad = false,
                float dloss_scale = 1.0f);
  /// Throws unless each of n token ids lies in [0, vocab_size).
  void check_tokens(const int32_t* tokens, int64_t n) const;
  /// Throws on a target id >= vocab_size, or when all n are ignored (negative); returns how many count.
  int64_t count_targets(const int32_t* targets, int64_t n) const;
  /// The device-side form of forward() for work that must not wait on the host (a captured CUDA
  /// graph): reads B*T tokens (and targets when has_targets) from input_tokens() / input_targets(),
  /// leaves per-position losses in losses(); nothing is validated and nothing waits for the device.
  void forward_queued(int B, int T, bool has_targets, bool compute_grad, float dloss);
  /// The current slot's token and target buffers (B*T int32 on the model's device) and the
  /// per-position losses of the last forward (fp32).
  Tensor input_tokens(int B, int T);
  Tensor input_targets(int B, int T);
  Tensor losses() const;

  /// Accumulates parameter gradients of the last forward(..., compute_grad = true) into grads().
  /// As a stage other than the last, the gradient of stage_output() must be in stage_output_grad().
  void backward();

  // ---- LoRA fine-tuning (model/lora.h).
  /// Adds adapters to the linear layers lc names (zero B: the model is unchanged until they train).
  /// Whole models only (no pipeline stages).
  Lora& enable_lora(const LoraConfig& lc);
  /// The adapters, or null.
  Lora* lora() const { return lora_.get(); }
  /// Frozen: backward computes no gradients for the model's linear layers and embeddings, only the
  /// input gradients the adapters need (LayerNorm gradients are still written, and ignored).
  void set_frozen(bool frozen) { frozen_ = frozen; }

  /// Sets the recomputation mode (before the first forward of a batch shape; frees activations).
  void set_recompute(Recompute mode);

  /// Pipeline micro-batches in flight each keep their activations in a slot of their own; forward
  /// and backward work on the current slot (0 by default).
  void use_slot(int slot);
  /// This stage's input activations (B, T, C) in the current slot, to receive into before forward().
  Tensor stage_input(int B, int T);
  /// This stage's output activations of the current slot (after forward()).
  Tensor stage_output() const;
  /// Where the gradient of stage_output() goes before backward() (current slot).
  Tensor stage_output_grad() const;
  /// The gradient of stage_input() after backward() (current slot).
  Tensor stage_input_grad() const { return stage_output_grad(); }
  /// Logits of row r of the last forward (this rank's vocabulary columns under tensor
  /// parallelism), as host floats; valid without targets only.
  const float* logits_row(int64_t r) const;
  /// Logits (the whole padded vocabulary) of the last position only: runs the blocks on B=1,
  /// T tokens and the head on one row. Collective over the tp group.
  const float* forward_last_logits(const int32_t* tokens, int T);

  // ---- Generation with a key/value cache (model/kernels/kv_cache.h): one sequence, each block
  // keeps the keys and values of the positions seen so far, so a new token costs one row's work.
  /// Empties the cache (a new sequence, or new parameters).
  void reset_cache() { cached_ = 0; }
  /// Positions the cache holds.
  int cached_positions() const { return cached_; }
  /// Runs T new tokens at positions [cached_positions(), + T) and appends their keys and values:
  /// the first stage reads tokens, later stages stage_input(1, T). On the last stage logits_row(0)
  /// is then the last new position's logits (this rank's columns). Throws, changing nothing, when
  /// the cache would pass seq_len positions.
  void forward_cached(const int32_t* tokens, int T);
  /// A whole model's forward_cached, returning the last new position's whole-vocabulary logits
  /// (collective over the tp group).
  const float* forward_cached_logits(const int32_t* tokens, int T);

  /// Called during backward() each time a further tail of the gradient buffer is final for this
  /// micro-batch: every gradient at flat offset >= ready_from. Offsets only decrease, ending at 0.
  /// Data parallelism uses it to start bucket reductions while backward goes on.
  void set_grad_ready_hook(std::function<void(int64_t ready_from)> hook) { grad_ready_ = std::move(hook); }

  /// Per-region timings (encoder, layernorm, matmul, attention, gelu, residual, classifier,
  /// crossentropy, ...); set to null to disable.
  void set_profiler(Profiler* p) { prof_ = p; }
  /// Bytes held by the activation slots (on the model's device): each slot's activation buffer and
  /// its token, loss and row-statistic buffers.
  size_t activation_bytes() const;

  /// What one activation slot is laid out from: ensure_acts() allocates by it and `meshtrain plan`
  /// predicts memory by it, so the prediction cannot drift from the allocation.
  struct ActivationShape {
    int B = 1, T = 1;
    int64_t C = 0;   // channels
    int64_t Cl = 0;  // this rank's attention channels (C / tp)
    int64_t Fl = 0;  // this rank's MLP width (4C / tp)
    int64_t L = 0;   // this stage's blocks
    int64_t Vl = 0;  // this rank's vocabulary columns (0 off the last stage: no logits there)
    int64_t att_saved = 0, att_scratch = 0;  // floats attention keeps for backward / uses in it (the backend's)
    int64_t esize = 4;                       // bytes per activation element (the backend's dtype)
    int64_t align = 1;                       // every piece starts on this many bytes (256 on a GPU)
    Recompute recompute = Recompute::none;
    bool tp_rows = false;                    // vocabulary-parallel cross-entropy row statistics (tp > 1)
  };
  /// The shape of a slot for B x T on a model that need not exist: cfg split tp_size ways (every tp
  /// rank holds the same amount), stage pp_stage of pp_size, recomputation mode, on a backend that
  /// sizes as be does (Backend::sizing(); a backend need not exist either).
  static ActivationShape activation_shape(const GptConfig& cfg, int B, int T, int tp_size, int pp_size, int pp_stage,
                                          Recompute mode, const ActivationSizing& be);
  /// Bytes one slot of shape s allocates (what activation_bytes() counts per slot).
  static int64_t slot_bytes(const ActivationShape& s);
  /// Seconds the device spent in (waiting for) tensor-parallel all-reduces since the last call, then
  /// restarts from zero. Measured on the device's timeline: call it once the device has finished.
  double take_tp_comm_seconds() { return tp_timer_.take(); }
  /// Bytes the tensor-parallel all-reduces moved since the last call, as (payload, bus) where bus
  /// bytes weigh each all-reduce by 2(t - 1)/t as nccl-tests' bus bandwidth does; then restarts.
  std::pair<double, double> take_tp_bytes() { return std::exchange(tp_bytes_, {0.0, 0.0}); }
  /// The intervals behind take_tp_comm_seconds() (a step captured as a CUDA graph keeps them).
  DeviceTimer& tp_timer() { return tp_timer_; }

 private:
  struct Acts;
  /// Lays out one slot's activation buffer from base (0: only counts): returns its bytes and, with
  /// a, points a's activations into it.
  static int64_t lay_out(const ActivationShape& s, uintptr_t base, Acts* a);
  void ensure_acts(int B, int T);
  Acts& acts() const { return *slots_.at(slot_); }
  void forward_blocks(const int32_t* tokens, int B, int T);  // validates and uploads tokens, then run_blocks
  /// Encoder, blocks, final LayerNorm. cache_pos >= 0: B = 1 new rows at positions cache_pos..,
  /// attending through the key/value cache.
  void run_blocks(int B, int T, int cache_pos = -1);
  void head_forward(int B, int T, bool has_targets, bool compute_grad, float dloss);  // logits, loss
  void block_forward(int l, int B, int T, int cache_pos = -1);
  /// Logits of row T - 1 of the final LayerNorm's output into row 0 (last stage).
  void head_last_row(int T);
  /// logits_row(0) with every tp rank's columns: the whole vocabulary.
  const float* gathered_row0();
  /// The address elements activation elements past base.
  const void* act(const void* base, int64_t elements) const;

  GptConfig cfg_;
  std::unique_ptr<Communicator> own_tp_;  // a size-1 group when no tp group is given
  Communicator* tp_;
  ParameterTable table_;
  int Cl_, NHl_, Fl_;  // this rank's attention channels, heads and MLP width
  int64_t Vl_, v0_;    // this rank's vocabulary columns [v0_, v0_ + Vl_)
  std::unique_ptr<Backend> be_;
  size_t esize_;       // bytes per parameter/activation element
  Tensor full_logits_; // gathered last-position logits for sampling under tensor parallelism
  mutable std::vector<float> host_logits_;  // logits copied off the device for logits_row/forward_last_logits
  Tensor params_, grads_;
  ParamPointers p_, g_;
  std::vector<std::unique_ptr<Acts>> slots_;
  int slot_ = 0;
  int n_local_ = 0;            // blocks of this stage
  int64_t tied_ready_ = 0;     // where backward's last ready offset stops (after a tied wte, see backward)
  Profiler* prof_ = nullptr;
  std::function<void(int64_t)> grad_ready_;
  DeviceTimer tp_timer_;
  std::pair<double, double> tp_bytes_{0.0, 0.0};  // payload, bus bytes of tp all-reduces
  Recompute recompute_ = Recompute::none;
  Tensor rope_table_;  // cos/sin per (position, pair) on the model's device (RoPE models only)
  Tensor kv_cache_;    // per block: keys then values, seq_len x Cl_ each (allocated by the first forward_cached)
  int cached_ = 0;     // positions in kv_cache_
  std::unique_ptr<Lora> lora_;
  bool frozen_ = false;
};

}  // namespace meshtrain
