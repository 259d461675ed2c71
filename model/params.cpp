// GPT-2's parameter table, its tensor-parallel shards, and initialisation.
#include "model/params.h"

#include <algorithm>
#include <cstddef>
#include <cmath>
#include <cstring>
#include <tuple>

#include "core/rng.h"

namespace meshtrain {

ParameterTable::ParameterTable(const GptConfig& cfg, int tp_size, int tp_rank, int pp_size, int pp_stage)
    : n_layer_(cfg.n_layer), tp_size_(tp_size), tp_rank_(tp_rank), pp_size_(pp_size), pp_stage_(pp_stage) {
  MT_CHECK(tp_size >= 1 && tp_rank >= 0 && tp_rank < tp_size, "[params] tp rank {} of {}", tp_rank, tp_size);
  MT_CHECK(pp_size >= 1 && pp_stage >= 0 && pp_stage < pp_size, "[params] pipeline stage {} of {}", pp_stage,
           pp_size);
  MT_CHECK(cfg.n_head % tp_size == 0, "[params] model.n_head = {} must divide by parallel.tp = {}", cfg.n_head,
           tp_size);
  MT_CHECK(cfg.padded_vocab() % tp_size == 0,
           "[params] the padded vocabulary ({} = model.vocab_size {} rounded up to a multiple of 128) must divide by "
           "parallel.tp = {}", cfg.padded_vocab(), cfg.vocab_size, tp_size);
  MT_CHECK(pp_size <= cfg.n_layer, "[params] parallel.pp = {} stages need at least as many blocks (model.n_layer = {})",
           pp_size, cfg.n_layer);
  std::tie(layer_begin_, layer_end_) = stage_layers(cfg.n_layer, pp_size, pp_stage);
  const int64_t C = cfg.n_embd, V = cfg.padded_vocab();
  using K = ShardKind;
  // First stage: the embeddings; last stage: the head's copy of the tied embedding (same name, same
  // initial values, gradients summed between the two stages).
  if (first_stage() || last_stage()) add("wte", {V, C}, K::rows, ParamInit::normal, true, cfg.vocab_size);
  if (first_stage() && !cfg.rope()) add("wpe", {cfg.seq_len, C}, K::replicated, ParamInit::normal, true);
  for (int l = layer_begin_; l < layer_end_; ++l) {
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
  if (last_stage()) {
    add("ln_f.weight", {C}, K::replicated, ParamInit::ones, false);
    add("ln_f.bias", {C}, K::replicated, ParamInit::zeros, false);
  }
}

ParameterTable::ParameterTable(const std::vector<ParamSpec>& specs, int tp_size, int tp_rank)
    : tp_size_(tp_size), tp_rank_(tp_rank) {
  MT_CHECK(tp_size >= 1 && tp_rank >= 0 && tp_rank < tp_size, "[params] tp rank {} of {}", tp_rank, tp_size);
  for (const ParamSpec& s : specs) {
    const bool splits_rows = s.shard == ShardKind::rows || s.shard == ShardKind::rows3;
    MT_CHECK(!splits_rows || s.global_shape[0] % (tp_size * (s.shard == ShardKind::rows3 ? 3 : 1)) == 0,
             "[params] {} has {} rows, which do not split over parallel.tp = {}", s.name, s.global_shape[0], tp_size);
    MT_CHECK(s.shard != ShardKind::cols || s.global_shape[1] % tp_size == 0,
             "[params] {} has {} columns, which do not split over parallel.tp = {}", s.name, s.global_shape[1], tp_size);
    add(s.name, s.global_shape, s.shard, s.init, s.decay, s.init_rows);
  }
}

std::pair<int, int> ParameterTable::stage_layers(int n_layer, int pp_size, int pp_stage) {
  const int base = n_layer / pp_size, extra = n_layer % pp_size;
  const int begin = pp_stage * base + std::min(pp_stage, extra);
  return {begin, begin + base + (pp_stage < extra ? 1 : 0)};
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

const ParamSpec* ParameterTable::find(const std::string& name) const {
  for (const auto& s : specs_)
    if (s.name == name) return &s;
  return nullptr;
}

const ParamSpec& ParameterTable::get(const std::string& name) const {
  const ParamSpec* s = find(name);
  MT_CHECK(s, "[params] no parameter named '{}' on this rank", name);
  return *s;
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
      case ParamInit::normal_residual:
      case ParamInit::normal_fan_in: {
        // Row by row, each from its global position; rows past init_rows (padded vocabulary) are zero.
        const int64_t global_cols = s.global_shape.size() == 2 ? s.global_shape[1] : 1;
        const float sd = s.init == ParamInit::normal            ? std_base
                         : s.init == ParamInit::normal_residual ? std_resid
                                                                : 1.0f / std::sqrt(static_cast<float>(global_cols));
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

ParamPointers param_pointers(const ParameterTable& table, void* base, size_t element_size) {
  auto at = [&](const std::string& name) -> void* {
    const ParamSpec* s = table.find(name);
    return s ? static_cast<std::byte*>(base) + s->offset * static_cast<int64_t>(element_size) : nullptr;
  };
  auto need = [&](const std::string& name) {
    void* p = at(name);
    MT_CHECK(p, "[params] block parameter '{}' missing from the table", name);
    return p;
  };
  ParamPointers pp;
  pp.wte = at("wte");
  pp.wpe = at("wpe");
  for (int l = table.layer_begin(); l < table.layer_end(); ++l) {
    std::string h = "h." + std::to_string(l) + ".";
    LayerParams L;
    L.ln1_w = need(h + "ln_1.weight"); L.ln1_b = need(h + "ln_1.bias");
    L.qkv_w = need(h + "attn.c_attn.weight"); L.qkv_b = need(h + "attn.c_attn.bias");
    L.attproj_w = need(h + "attn.c_proj.weight"); L.attproj_b = need(h + "attn.c_proj.bias");
    L.ln2_w = need(h + "ln_2.weight"); L.ln2_b = need(h + "ln_2.bias");
    L.fc_w = need(h + "mlp.c_fc.weight"); L.fc_b = need(h + "mlp.c_fc.bias");
    L.fcproj_w = need(h + "mlp.c_proj.weight"); L.fcproj_b = need(h + "mlp.c_proj.bias");
    pp.layers.push_back(L);
  }
  pp.lnf_w = at("ln_f.weight");
  pp.lnf_b = at("ln_f.bias");
  return pp;
}

}  // namespace meshtrain
