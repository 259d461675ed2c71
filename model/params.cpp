// GPT-2's parameter table and initialisation.
#include "model/params.h"

#include <cmath>
#include <cstring>

#include "core/rng.h"

namespace meshtrain {

ParameterTable::ParameterTable(const GptConfig& cfg) : n_layer_(cfg.n_layer) {
  const int64_t C = cfg.n_embd, V = cfg.padded_vocab();
  add("wte", {V, C}, ParamInit::normal, true, cfg.vocab_size);
  add("wpe", {cfg.seq_len, C}, ParamInit::normal, true);
  for (int l = 0; l < cfg.n_layer; ++l) {
    std::string p = "h." + std::to_string(l) + ".";
    add(p + "ln_1.weight", {C}, ParamInit::ones, false);
    add(p + "ln_1.bias", {C}, ParamInit::zeros, false);
    add(p + "attn.c_attn.weight", {3 * C, C}, ParamInit::normal, true);
    add(p + "attn.c_attn.bias", {3 * C}, ParamInit::zeros, false);
    add(p + "attn.c_proj.weight", {C, C}, ParamInit::normal_residual, true);
    add(p + "attn.c_proj.bias", {C}, ParamInit::zeros, false);
    add(p + "ln_2.weight", {C}, ParamInit::ones, false);
    add(p + "ln_2.bias", {C}, ParamInit::zeros, false);
    add(p + "mlp.c_fc.weight", {4 * C, C}, ParamInit::normal, true);
    add(p + "mlp.c_fc.bias", {4 * C}, ParamInit::zeros, false);
    add(p + "mlp.c_proj.weight", {C, 4 * C}, ParamInit::normal_residual, true);
    add(p + "mlp.c_proj.bias", {C}, ParamInit::zeros, false);
  }
  add("ln_f.weight", {C}, ParamInit::ones, false);
  add("ln_f.bias", {C}, ParamInit::zeros, false);
}

void ParameterTable::add(std::string name, Shape shape, ParamInit init, bool decay, int64_t init_rows) {
  ParamSpec s;
  s.name = std::move(name);
  s.numel = shape_numel(shape);
  s.shape = std::move(shape);
  s.offset = total_;
  s.init = init;
  s.decay = decay;
  s.init_rows = init_rows;
  total_ += s.numel;
  specs_.push_back(std::move(s));
}

const ParamSpec& ParameterTable::get(const std::string& name) const {
  for (const auto& s : specs_)
    if (s.name == name) return s;
  MT_FAIL("[params] no parameter named '{}'", name);
}

void ParameterTable::initialize(float* params, uint64_t seed) const {
  const float std_base = 0.02f;
  const float std_resid = 0.02f / std::sqrt(2.0f * static_cast<float>(n_layer_));
  for (const auto& s : specs_) {
    float* p = params + s.offset;
    switch (s.init) {
      case ParamInit::zeros: std::memset(p, 0, s.numel * sizeof(float)); break;
      case ParamInit::ones:
        for (int64_t i = 0; i < s.numel; ++i) p[i] = 1.0f;
        break;
      case ParamInit::normal:
      case ParamInit::normal_residual: {
        float sd = s.init == ParamInit::normal ? std_base : std_resid;
        int64_t row = s.shape.size() == 2 ? s.shape[1] : 1;
        int64_t n = s.init_rows >= 0 ? s.init_rows * row : s.numel;
        fill_normal(p, n, seed, s.name, 0, sd);
        std::memset(p + n, 0, (s.numel - n) * sizeof(float));
        break;
      }
    }
  }
}

ParamPointers param_pointers(const ParameterTable& table, const GptConfig& cfg, float* base) {
  const auto& specs = table.specs();
  ParamPointers pp;
  size_t i = 0;
  auto next = [&]() { return base + specs.at(i++).offset; };
  pp.wte = next();
  pp.wpe = next();
  pp.layers.resize(cfg.n_layer);
  for (auto& L : pp.layers) {
    L.ln1_w = next(); L.ln1_b = next();
    L.qkv_w = next(); L.qkv_b = next();
    L.attproj_w = next(); L.attproj_b = next();
    L.ln2_w = next(); L.ln2_b = next();
    L.fc_w = next(); L.fc_b = next();
    L.fcproj_w = next(); L.fcproj_b = next();
  }
  pp.lnf_w = next();
  pp.lnf_b = next();
  MT_CHECK(i == specs.size(), "[params] table and pointer layout disagree");
  return pp;
}

}  // namespace meshtrain
