// GPT-2's parameter table, its tensor-parallel shards, and initialisation.
#include "model/params.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/rng.h"

namespace meshtrain {

ParameterTable::ParameterTable(const GptConfig& cfg, int tp_size, int tp_rank)
    : n_layer_(cfg.n_layer), tp_size_(tp_size), tp_rank_(tp_rank) {
  MT_CHECK(tp_size >= 1 && tp_rank >= 0 && tp_rank < tp_size, "[params] tp rank {} of {}", tp_rank, tp_size);
  MT_CHECK(cfg.n_head % tp_size == 0, "[params] model.n_head = {} must divide by parallel.tp = {}", cfg.n_head,
           tp_size);
  MT_CHECK(cfg.padded_vocab() % tp_size == 0,
           "[params] the padded vocabulary ({} = model.vocab_size {} rounded up to a multiple of 128) must divide by "
           "parallel.tp = {}", cfg.padded_vocab(), cfg.vocab_size, tp_size);
  const int64_t C = cfg.n_embd, V = cfg.padded_vocab();
  using K = ShardKind;
  add("wte", {V, C}, K::rows, ParamInit::normal, true, cfg.vocab_size);
  add("wpe", {cfg.seq_len, C}, K::replicated, ParamInit::normal, true);
  for (int l = 0; l < cfg.n_layer; ++l) {
    std::string p = "h." + std::to_string(l) + ".";
    add(p + "ln_1.weight", {C}, K::replicated, ParamInit::ones, false);
    add(p + "ln_1.bias", {C}, K::replicated, ParamInit::zeros, false);
    add(p + "attn.c_attn.weight", {3 * C, C}, K::rows3, ParamInit::normal, true);
    add(p + "attn.c_attn.bias", {3 * C}, K::rows3, ParamInit::zeros, false);
    add(p + "attn.c_proj.weight", {C, C}, K::cols, ParamInit::normal_residual, true);
    add(p + "attn.c_proj.bias", {C}, K::replicated, ParamInit::zeros, false);
    add(p + "ln_2.weight", {C}, K::replicated, ParamInit::ones, false);
    add(p + "ln_2.bias", {C}, K::replicated, ParamInit::zeros, false);
    add(p + "mlp.c_fc.weight", {4 * C, C}, K::rows, ParamInit::normal, true);
    add(p + "mlp.c_fc.bias", {4 * C}, K::rows, ParamInit::zeros, false);
    add(p + "mlp.c_proj.weight", {C, 4 * C}, K::cols, ParamInit::normal_residual, true);
    add(p + "mlp.c_proj.bias", {C}, K::replicated, ParamInit::zeros, false);
  }
  add("ln_f.weight", {C}, K::replicated, ParamInit::ones, false);
  add("ln_f.bias", {C}, K::replicated, ParamInit::zeros, false);
}

void ParameterTable::add(std::string name, Shape shape, ShardKind shard, ParamInit init, bool decay,
                         int64_t init_rows) {
  ParamSpec s;
  s.name = std::move(name);
  s.global_shape = shape;
  if (tp_size_ == 1) shard = ShardKind::replicated;
  s.shard = shard;
  if (shard == ShardKind::rows || shard == ShardKind::rows3) shape[0] /= tp_size_;
  if (shard == ShardKind::cols) shape[1] /= tp_size_;
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

int64_t ParameterTable::shard_rows(const ParamSpec& s) { return s.shape[0]; }

RowSlice ParameterTable::shard_row(const ParamSpec& s, int rank, int64_t i) const {
  const int64_t cols = s.shape.size() == 2 ? s.shape[1] : 1;
  const int64_t global_cols = s.global_shape.size() == 2 ? s.global_shape[1] : 1;
  switch (s.shard) {
    case ShardKind::replicated: return {i * cols, cols};
    case ShardKind::rows: return {(rank * s.shape[0] + i) * cols, cols};
    case ShardKind::rows3: {
      const int64_t part_rows = s.shape[0] / 3, global_part = s.global_shape[0] / 3;
      const int64_t part = i / part_rows, j = i % part_rows;
      return {(part * global_part + rank * part_rows + j) * cols, cols};
    }
    case ShardKind::cols: return {i * global_cols + rank * cols, cols};
  }
  MT_FAIL("[params] unknown shard kind");
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
        // Row by row, each from its global position; rows past init_rows (padded vocabulary) are zero.
        const float sd = s.init == ParamInit::normal ? std_base : std_resid;
        const int64_t global_cols = s.global_shape.size() == 2 ? s.global_shape[1] : 1;
        const int64_t limit = s.init_rows >= 0 ? s.init_rows * global_cols : shape_numel(s.global_shape);
        for (int64_t i = 0, rows = shard_rows(s); i < rows; ++i) {
          RowSlice r = shard_row(s, tp_rank_, i);
          float* dst = p + i * r.len;
          int64_t n = std::max<int64_t>(0, std::min(r.len, limit - r.global_offset));
          if (n > 0) fill_normal(dst, n, seed, s.name, r.global_offset, sd);
          std::memset(dst + n, 0, (r.len - n) * sizeof(float));
        }
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
