// The parameter table: every GPT-2 parameter's global name, global shape, this rank's shard of it
// under tensor parallelism, its offset in the one flat parameter buffer, how it is initialised and
// whether weight decay applies. Gradients and optimizer moments use the same table and offsets, so
// one allocation each holds them all.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"
#include "model/gpt_config.h"

namespace meshtrain {

/// normal: N(0, 0.02); normal_residual: N(0, 0.02 / sqrt(2 n_layer)); normal_fan_in: N(0, 1 / sqrt(columns of
/// the whole tensor)) (LoRA's A); zeros; ones.
enum class ParamInit { normal, normal_residual, normal_fan_in, zeros, ones };

/// How a parameter is split over the tp ranks (Megatron-style).
enum class ShardKind {
  replicated,  // every rank holds the whole tensor (LayerNorms, wpe, row-parallel biases)
  rows,        // dim 0 split in tp equal blocks (vocab-parallel wte; column-parallel fc weight/bias)
  rows3,       // dim 0 is [q | k | v], each part split by heads (column-parallel c_attn)
  cols,        // dim 1 split in tp equal blocks (row-parallel projections)
};

struct ParamSpec {
  std::string name;     // global name, e.g. "h.3.attn.c_attn.weight"
  Shape global_shape;   // shape of the whole tensor (what checkpoints store)
  Shape shape;          // shape of this rank's shard (= global_shape when replicated or tp = 1)
  ShardKind shard = ShardKind::replicated;
  int64_t offset = 0;   // elements from the start of the flat buffer
  int64_t numel = 0;    // of the shard
  ParamInit init = ParamInit::zeros;
  bool decay = false;      // matrices get weight decay, vectors do not
  int64_t init_rows = -1;  // global rows that get random values (wte: the real vocabulary); -1 = all
};

/// Where a row of a shard lives in the whole tensor: elements [global_offset, global_offset + len)
/// of the row-major global tensor.
struct RowSlice {
  int64_t global_offset;
  int64_t len;
};

class ParameterTable {
 public:
  /// The table of tp rank tp_rank of tp_size in pipeline stage pp_stage of pp_size: the stage's
  /// blocks, plus the embeddings on the first stage and the final LayerNorm on the last; the last
  /// stage also holds the LM head's copy of the tied token embedding ("wte"). Throws when the model
  /// does not split that way.
  explicit ParameterTable(const GptConfig& cfg, int tp_size = 1, int tp_rank = 0, int pp_size = 1, int pp_stage = 0);
  /// A table of other parameters (LoRA adapters): each spec gives name, global_shape, shard, init
  /// and decay; this rank's shapes and the offsets are filled in as for GPT-2's.
  ParameterTable(const std::vector<ParamSpec>& specs, int tp_size, int tp_rank);
  const std::vector<ParamSpec>& specs() const { return specs_; }
  const ParamSpec& get(const std::string& name) const;
  /// The spec named name, or null when this rank does not hold it.
  const ParamSpec* find(const std::string& name) const;
  int64_t total() const { return total_; }
  int tp_size() const { return tp_size_; }
  int tp_rank() const { return tp_rank_; }
  int pp_size() const { return pp_size_; }
  int pp_stage() const { return pp_stage_; }
  /// Blocks [layer_begin(), layer_end()) belong to this stage.
  int layer_begin() const { return layer_begin_; }
  int layer_end() const { return layer_end_; }
  bool first_stage() const { return pp_stage_ == 0; }
  bool last_stage() const { return pp_stage_ == pp_size_ - 1; }
  /// Contiguous, balanced block ranges: stage s of p gets [begin, end) of n_layer blocks.
  static std::pair<int, int> stage_layers(int n_layer, int pp_size, int pp_stage);

  /// Rows of a shard: a 2-D shard [r, c] has r rows of c elements; a 1-D shard [n] has n rows of 1.
  static int64_t shard_rows(const ParamSpec& s);
  /// Where row i of rank r's shard of s lives in the global tensor.
  RowSlice shard_row(const ParamSpec& s, int rank, int64_t i) const;

  /// Fills params (total() floats) as GPT-2 does: normal(0, 0.02), residual projections scaled by
  /// 1/sqrt(2 n_layer), biases zero, LayerNorm gains one, padded vocabulary rows zero. Element i of a
  /// parameter depends only on (seed, name, global index i), so every shard gets the values of its
  /// slice of the whole tensor.
  void initialize(float* params, uint64_t seed) const;

 private:
  void add(std::string name, Shape shape, ShardKind shard, ParamInit init, bool decay, int64_t init_rows = -1);
  std::vector<ParamSpec> specs_;
  int64_t total_ = 0;
  int n_layer_ = 0;
  int tp_size_ = 1, tp_rank_ = 0;
  int pp_size_ = 1, pp_stage_ = 0;
  int layer_begin_ = 0, layer_end_ = 0;
};

/// The addresses of one layer's parameters (or gradients) inside a flat buffer (of fp32 or bf16
/// elements: the model's kernels take untyped pointers, see model/backend.h).
struct LayerParams {
  void *ln1_w, *ln1_b, *qkv_w, *qkv_b, *attproj_w, *attproj_b;
  void *ln2_w, *ln2_b, *fc_w, *fc_b, *fcproj_w, *fcproj_b;
};

/// Pointers to every parameter this rank holds inside a flat buffer laid out by a ParameterTable
/// (null for parameters of other pipeline stages); layers[i] is block layer_begin() + i.
struct ParamPointers {
  void* wte = nullptr;
  void* wpe = nullptr;
  std::vector<LayerParams> layers;
  void* lnf_w = nullptr;
  void* lnf_b = nullptr;
};

/// Addresses in a flat buffer at base whose elements are element_size bytes.
ParamPointers param_pointers(const ParameterTable& table, void* base, size_t element_size);

}  // namespace meshtrain
