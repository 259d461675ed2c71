// LoRA adapters (lora.h): their parameter table, and the branch's forward and backward over the
// model's Backend, with the tensor-parallel all-reduces the split adapters need.
#include "model/lora.h"

#include <algorithm>
#include <cstddef>
#include <sstream>

#include <fmt/ranges.h>

#include "core/communicator.h"
#include "model/backend.h"

namespace meshtrain {

const char* lora_target_name(LoraTarget t) {
  switch (t) {
    case LoraTarget::qkv: return "qkv";
    case LoraTarget::proj: return "proj";
    case LoraTarget::fc: return "fc";
    case LoraTarget::fc_proj: return "fc_proj";
  }
  return "?";
}

namespace {
/// "h.3.attn.c_attn." for (3, qkv): the base layer's name without "weight".
std::string layer_prefix(int layer, LoraTarget t) {
  static const char* kLayer[kLoraTargets] = {"attn.c_attn.", "attn.c_proj.", "mlp.c_fc.", "mlp.c_proj."};
  return "h." + std::to_string(layer) + "." + kLayer[static_cast<int>(t)];
}
}  // namespace

std::string lora_base_weight(int layer, LoraTarget t) { return layer_prefix(layer, t) + "weight"; }

std::array<bool, kLoraTargets> parse_lora_targets(const std::string& list) {
  std::array<bool, kLoraTargets> on{};
  std::stringstream in(list);
  std::string item;
  int count = 0;
  while (std::getline(in, item, ',')) {
    item.erase(0, item.find_first_not_of(' '));
    item.erase(item.find_last_not_of(' ') + 1);
    bool known = false;
    for (int t = 0; t < kLoraTargets; ++t)
      if (item == lora_target_name(static_cast<LoraTarget>(t))) {
        on[t] = true;
        known = true;
      }
    MT_CHECK(known, "[config] lora.targets: unknown layer '{}'; choose from qkv, proj, fc, fc_proj (comma-separated)",
             item);
    ++count;
  }
  MT_CHECK(count > 0, "[config] lora.targets is empty; name at least one of qkv, proj, fc, fc_proj");
  return on;
}

void validate_lora(const LoraConfig& lc) {
  MT_CHECK(lc.rank >= 1 && lc.rank <= 4096, "[config] lora.rank must be in [1, 4096] (got {})", lc.rank);
  MT_CHECK(lc.alpha > 0.0, "[config] lora.alpha must be > 0 (got {})", lc.alpha);
  parse_lora_targets(lc.targets);
}

std::vector<ParamSpec> lora_specs(const GptConfig& cfg, const LoraConfig& lc) {
  validate_lora(lc);
  const auto on = parse_lora_targets(lc.targets);
  const int64_t C = cfg.n_embd, r = lc.rank;
  using K = ShardKind;
  std::vector<ParamSpec> specs;
  auto add = [&](const std::string& name, Shape shape, K shard, ParamInit init) {
    ParamSpec s;
    s.name = name;
    s.global_shape = std::move(shape);
    s.shard = shard;
    s.init = init;
    s.decay = false;
    specs.push_back(std::move(s));
  };
  for (int l = 0; l < cfg.n_layer; ++l)
    for (int ti = 0; ti < kLoraTargets; ++ti) {
      if (!on[ti]) continue;
      const auto t = static_cast<LoraTarget>(ti);
      const std::string p = layer_prefix(l, t);
      // Column-parallel layers split B's rows as the weight's; row-parallel ones A's columns.
      switch (t) {
        case LoraTarget::qkv:
          add(p + "lora_A", {r, C}, K::replicated, ParamInit::normal_fan_in);
          add(p + "lora_B", {3 * C, r}, K::rows3, ParamInit::zeros);
          break;
        case LoraTarget::proj:
          add(p + "lora_A", {r, C}, K::cols, ParamInit::normal_fan_in);
          add(p + "lora_B", {C, r}, K::replicated, ParamInit::zeros);
          break;
        case LoraTarget::fc:
          add(p + "lora_A", {r, C}, K::replicated, ParamInit::normal_fan_in);
          add(p + "lora_B", {4 * C, r}, K::rows, ParamInit::zeros);
          break;
        case LoraTarget::fc_proj:
          add(p + "lora_A", {r, 4 * C}, K::cols, ParamInit::normal_fan_in);
          add(p + "lora_B", {C, r}, K::replicated, ParamInit::zeros);
          break;
      }
    }
  return specs;
}

void lora_merge(std::map<std::string, Tensor>& weights, const std::map<std::string, Tensor>& adapters,
                const GptConfig& cfg, const LoraConfig& lc) {
  const auto on = parse_lora_targets(lc.targets);
  const int64_t r = lc.rank;
  const double s = lc.alpha / lc.rank;
  auto get = [](const auto& map, const std::string& name) -> const Tensor& {
    auto it = map.find(name);
    MT_CHECK(it != map.end(), "[lora] merge: no tensor '{}'", name);
    return it->second;
  };
  for (int l = 0; l < cfg.n_layer; ++l)
    for (int ti = 0; ti < kLoraTargets; ++ti) {
      if (!on[ti]) continue;
      const auto t = static_cast<LoraTarget>(ti);
      const std::string p = layer_prefix(l, t);
      const Tensor& A = get(adapters, p + "lora_A");
      const Tensor& B = get(adapters, p + "lora_B");
      Tensor& W = const_cast<Tensor&>(get(weights, p + "weight"));
      const int64_t OC = W.shape()[0], C_in = W.shape()[1];
      MT_CHECK(A.shape() == (Shape{r, C_in}) && B.shape() == (Shape{OC, r}),
               "[lora] merge: {} is {}x{}, but its adapters are A {} and B {} (rank {})", p + "weight", OC, C_in,
               fmt::join(A.shape(), "x"), fmt::join(B.shape(), "x"), r);
      float* w = W.f32();
      const float* a = A.f32();
      const float* b = B.f32();
#pragma omp parallel for schedule(static)
      for (int64_t o = 0; o < OC; ++o)
        for (int64_t c = 0; c < C_in; ++c) {
          double acc = 0.0;
          for (int64_t k = 0; k < r; ++k) acc += static_cast<double>(b[o * r + k]) * a[k * C_in + c];
          w[o * C_in + c] = static_cast<float>(w[o * C_in + c] + s * acc);
        }
    }
}

Lora::Lora(const GptConfig& cfg, const LoraConfig& lc, Communicator& tp, Backend& be)
    : cfg_(cfg),
      lc_(lc),
      on_(parse_lora_targets(lc.targets)),
      tp_(tp),
      be_(be),
      table_(lora_specs(cfg, lc), tp.size(), tp.rank()),
      esize_(dtype_size(be.dtype())) {
  params_ = Tensor::zeros({std::max<int64_t>(1, table_.total())}, be.dtype(), be.device());
  grads_ = Tensor::zeros({std::max<int64_t>(1, table_.total())}, be.dtype(), be.device());
  for (int t = 0; t < kLoraTargets; ++t) {
    const Shape s = shape(static_cast<LoraTarget>(t));
    widest_ = std::max<int64_t>({widest_, s.c_in, s.oc});
  }
}

Lora::~Lora() = default;

Lora::Shape Lora::shape(LoraTarget t) const {
  const int C = cfg_.n_embd, n = tp_.size();
  switch (t) {
    case LoraTarget::qkv: return {C, 3 * C / n, false};
    case LoraTarget::proj: return {C / n, C, true};
    case LoraTarget::fc: return {C, 4 * C / n, false};
    case LoraTarget::fc_proj: return {4 * C / n, C, true};
  }
  MT_FAIL("[lora] unknown target");
}

void* Lora::at(const Tensor& flat, const std::string& name) const {
  return static_cast<std::byte*>(flat.raw()) + table_.get(name).offset * static_cast<int64_t>(esize_);
}

void Lora::initialize(uint64_t seed) {
  std::vector<float> host(static_cast<size_t>(table_.total()));
  table_.initialize(host.data(), seed);
  set_params(host.data());
}

void Lora::set_params(const float* host) {
  const int64_t n = table_.total();
  if (be_.dtype() == DType::f32) {
    be_.upload(params_.raw(), host, static_cast<size_t>(n) * sizeof(float));
  } else {
    std::vector<Bf16> b(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) b[static_cast<size_t>(i)].bits = float_to_bf16(host[i]);
    be_.upload(params_.raw(), b.data(), b.size() * sizeof(Bf16));
  }
  be_.synchronize();
}

void Lora::get_params(float* host) const { be_.download_floats(host, params_.raw(), table_.total()); }

void Lora::zero_grad() { be_.zero(grads_.raw(), grads_.nbytes()); }

void Lora::ensure(int N) {
  if (N <= rows_) return;
  acts_ = Tensor::zeros({(kept_blocks() + 2) * N * lc_.rank + N * widest_}, be_.dtype(), be_.device());
  rows_ = N;
}

void* Lora::block(int64_t i) const {
  return static_cast<std::byte*>(acts_.raw()) + i * rows_ * lc_.rank * static_cast<int64_t>(esize_);
}

void Lora::tp_sum(void* x, int64_t n) {
  if (tp_.size() == 1) return;
  const int64_t offset = (static_cast<std::byte*>(x) - static_cast<std::byte*>(acts_.raw())) /
                         static_cast<int64_t>(esize_);
  Tensor view = acts_.view(offset, {n});
  tp_.all_reduce_async(view, ReduceOp::sum)->wait();
}

void Lora::forward(int l, LoraTarget t, void* out, const void* x, int N) {
  if (!targets(t)) return;
  ensure(N);
  const Shape s = shape(t);
  const int64_t r = lc_.rank, e = static_cast<int64_t>(esize_), scratch = kept_blocks();
  void* h = block(static_cast<int64_t>(l) * kLoraTargets + static_cast<int>(t));  // kept for backward
  void* xa = block(scratch);
  void* wide = block(scratch + 2);
  const std::string p = layer_prefix(l, t);
  be_.matmul_forward(xa, x, at(params_, p + "lora_A"), nullptr, N, s.c_in, lc_.rank);  // x A^T
  if (s.row_parallel) tp_sum(xa, N * r);  // each rank saw only its input columns
  be_.zero(h, static_cast<size_t>(N * r * e));
  be_.accumulate(h, xa, N * r, scale());
  be_.matmul_forward(wide, h, at(params_, p + "lora_B"), nullptr, N, lc_.rank, s.oc);
  be_.accumulate(out, wide, static_cast<int64_t>(N) * s.oc, 1.0f);
}

void Lora::backward(int l, LoraTarget t, void* dx, const void* dout, const void* x, int N) {
  if (!targets(t)) return;
  MT_CHECK(N <= rows_, "[lora] backward of {} rows without their forward", N);
  const Shape s = shape(t);
  const int64_t r = lc_.rank, e = static_cast<int64_t>(esize_), scratch = kept_blocks();
  const void* h = block(static_cast<int64_t>(l) * kLoraTargets + static_cast<int>(t));
  void* gb = block(scratch);  // dout B
  void* dh = block(scratch + 1);
  void* wide = block(scratch + 2);
  const std::string p = layer_prefix(l, t);
  // dB += dout^T h, and dout B; a column-parallel layer's is a partial sum over the output rows.
  be_.matmul_backward(gb, at(grads_, p + "lora_B"), nullptr, dout, h, at(params_, p + "lora_B"), N, lc_.rank, s.oc);
  if (!s.row_parallel) tp_sum(gb, N * r);
  be_.zero(dh, static_cast<size_t>(N * r * e));
  be_.accumulate(dh, gb, N * r, scale());
  // dA += dh^T x and dx += dh A.
  be_.matmul_backward(wide, at(grads_, p + "lora_A"), nullptr, dh, x, at(params_, p + "lora_A"), N, s.c_in,
                      lc_.rank);
  be_.accumulate(dx, wide, static_cast<int64_t>(N) * s.c_in, 1.0f);
}

}  // namespace meshtrain
