// The parameter table: every GPT-2 parameter's global name, global shape, offset in the one flat
// parameter buffer, how it is initialised and whether weight decay applies. Gradients and optimizer
// moments use the same table and offsets, so one allocation each holds them all.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "model/gpt_config.h"

namespace meshtrain {

enum class ParamInit { normal, normal_residual, zeros, ones };

struct ParamSpec {
  std::string name;   // global name, e.g. "h.3.attn.c_attn.weight"
  Shape shape;        // global shape
  int64_t offset = 0; // elements from the start of the flat buffer
  int64_t numel = 0;
  ParamInit init = ParamInit::zeros;
  bool decay = false;      // matrices get weight decay, vectors do not
  int64_t init_rows = -1;  // rows that get random values (wte: the real vocabulary); -1 = all
};

class ParameterTable {
 public:
  explicit ParameterTable(const GptConfig& cfg);
  const std::vector<ParamSpec>& specs() const { return specs_; }
  const ParamSpec& get(const std::string& name) const;
  int64_t total() const { return total_; }

  /// Fills params (total() floats) as GPT-2 does: normal(0, 0.02), residual projections scaled by
  /// 1/sqrt(2 n_layer), biases zero, LayerNorm gains one, padded vocabulary rows zero. Element i of a
  /// parameter depends only on (seed, name, i).
  void initialize(float* params, uint64_t seed) const;

 private:
  void add(std::string name, Shape shape, ParamInit init, bool decay, int64_t init_rows = -1);
  std::vector<ParamSpec> specs_;
  int64_t total_ = 0;
  int n_layer_ = 0;
};

/// The views of one layer's parameters (or gradients) inside a flat buffer.
struct LayerParams {
  float *ln1_w, *ln1_b, *qkv_w, *qkv_b, *attproj_w, *attproj_b;
  float *ln2_w, *ln2_b, *fc_w, *fc_b, *fcproj_w, *fcproj_b;
};

/// Pointers to every parameter inside a flat buffer laid out by a ParameterTable.
struct ParamPointers {
  float* wte = nullptr;
  float* wpe = nullptr;
  std::vector<LayerParams> layers;
  float* lnf_w = nullptr;
  float* lnf_b = nullptr;
};

ParamPointers param_pointers(const ParameterTable& table, const GptConfig& cfg, float* base);

}  // namespace meshtrain
