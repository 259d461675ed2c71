// LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models"): the base weights stay
// frozen and each adapted linear layer W (OC x C_in) gains a trainable low-rank branch,
//   out = x W^T + b + (alpha / r) (x A^T) B^T,   A: r x C_in,  B: OC x r,
// with A drawn from N(0, 1/C_in) and B zero, so training starts from exactly the base model. The
// branch's backward, with s = alpha / r, h = s x A^T (kept from forward) and g = dout:
//   dB += g^T h;   dh = s g B;   dA += dh^T x;   dx += dh A.
// Targets are the four linear layers of a block: qkv (attn.c_attn), proj (attn.c_proj), fc
// (mlp.c_fc) and fc_proj (mlp.c_proj).
//
// Tensor parallelism splits each adapter the way its base layer is split. Column-parallel layers
// (qkv, fc: output rows split) split B by the same rows and keep A whole: h is the same on every
// rank, while dh is a partial sum all-reduced over the tp group, and dh A is added to the input
// gradient after the model's own all-reduce of it. Row-parallel layers (proj, fc_proj: input
// columns split) split A by the same columns and keep B whole: h is a partial sum all-reduced over
// the group, and the branch is added after the layer's own all-reduce. Adapters are parameters
// like the model's (a ParameterTable, flat buffers on the model's device, AdamW), so data
// parallelism and checkpoints treat them alike.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "model/gpt_config.h"
#include "model/params.h"

namespace meshtrain {

class Backend;
class Communicator;

struct LoraConfig {
  int rank = 8;
  double alpha = 16.0;
  std::string targets = "qkv,proj,fc,fc_proj";
};

enum class LoraTarget { qkv = 0, proj = 1, fc = 2, fc_proj = 3 };
inline constexpr int kLoraTargets = 4;
/// "qkv", "proj", "fc", "fc_proj".
const char* lora_target_name(LoraTarget t);
/// The base weight an adapter belongs to, e.g. "h.3.attn.c_attn.weight" for (3, qkv).
std::string lora_base_weight(int layer, LoraTarget t);
/// Which targets a comma-separated list names; throws naming lora.targets on an unknown or empty one.
std::array<bool, kLoraTargets> parse_lora_targets(const std::string& list);
/// Throws naming the key when rank, alpha or targets are unusable.
void validate_lora(const LoraConfig& lc);

/// The adapters' parameters for cfg: "h.<l>.attn.c_attn.lora_A" / "..lora_B" and so on, global
/// shapes, shard kinds matching the base layers, A initialised N(0, 1/C_in), B zero, no decay.
std::vector<ParamSpec> lora_specs(const GptConfig& cfg, const LoraConfig& lc);

/// Folds adapters into their base weights, W += (alpha / r) B A, on whole tensors: weights maps
/// parameter names to fp32 host tensors (a checkpoint's model/ tensors), adapters maps lora_specs
/// names to fp32 host tensors of their global shapes. Throws naming a missing or misshapen tensor.
void lora_merge(std::map<std::string, Tensor>& weights, const std::map<std::string, Tensor>& adapters,
                const GptConfig& cfg, const LoraConfig& lc);

/// The adapters of one model (all its blocks: LoRA runs without pipeline stages), their gradients
/// and the activations the branch keeps for backward. Made by Gpt::enable_lora.
class Lora {
 public:
  Lora(const GptConfig& cfg, const LoraConfig& lc, Communicator& tp, Backend& be);
  ~Lora();
  const LoraConfig& config() const { return lc_; }
  const ParameterTable& table() const { return table_; }
  Tensor& params() { return params_; }
  Tensor& grads() { return grads_; }
  float scale() const { return static_cast<float>(lc_.alpha / lc_.rank); }
  bool targets(LoraTarget t) const { return on_[static_cast<int>(t)]; }

  void initialize(uint64_t seed);
  /// Sets / copies table().total() host floats (rounded to bf16 on a bf16 model).
  void set_params(const float* host);
  void get_params(float* host) const;
  void zero_grad();

  /// out (N x OC, this rank's width) += the branch of block l's layer t on its input x; for a
  /// row-parallel layer out is the output after the layer's all-reduce. Collective over tp.
  void forward(int l, LoraTarget t, void* out, const void* x, int N);
  /// Accumulates the gradients of A and B and adds the branch's input gradient into dx (for a
  /// column-parallel layer dx is the input gradient after the model's all-reduce of it). dout is
  /// the gradient of the layer's output (this rank's width). Collective over tp.
  void backward(int l, LoraTarget t, void* dx, const void* dout, const void* x, int N);

 private:
  struct Shape {
    int c_in, oc;  // this rank's widths
    bool row_parallel;
  };
  Shape shape(LoraTarget t) const;
  void ensure(int N);
  /// The activation buffer holds one h (N x r) per (block, target), then two N x r scratch blocks,
  /// then N x widest_: block i starts i x N x r elements in.
  int64_t kept_blocks() const { return static_cast<int64_t>(cfg_.n_layer) * kLoraTargets; }
  void* block(int64_t i) const;
  void* at(const Tensor& flat, const std::string& name) const;
  void tp_sum(void* x, int64_t n);

  GptConfig cfg_;
  LoraConfig lc_;
  std::array<bool, kLoraTargets> on_{};
  Communicator& tp_;
  Backend& be_;
  ParameterTable table_;
  Tensor params_, grads_;
  size_t esize_;
  int rows_ = 0;        // N the activation buffer holds
  Tensor acts_;         // see block()
  int64_t widest_ = 0;  // max over targets of c_in and oc
};

}  // namespace meshtrain
