// Training-run checkpoints over parallel/checkpoint.h. Tensors are stored whole under their global
// names whatever the layout: on several ranks each rank writes its own blocks of them (tp shards of
// its pipeline stage; data-parallel replicas write nothing), and on load each rank cuts its shard
// out of the whole tensors, so any layout loads any checkpoint.
#include "launch/train/train_state.h"

#include <algorithm>
#include <cstring>
#include <filesystem>

#include "model/gpt.h"
#include "model/optimizer.h"
#include "parallel/checkpoint.h"
#include "core/communicator.h"
#include "parallel/sharded_checkpoint.h"

namespace meshtrain {

namespace {

/// This rank's blocks of a parameter in the global tensor, in the order of its shard's elements.
std::vector<TensorBlock> shard_blocks(const ParamSpec& s, int tp_rank) {
  const Shape& g = s.global_shape;
  const bool matrix = g.size() == 2;
  auto box = [&](int64_t row, int64_t col, int64_t rows, int64_t cols) {
    return matrix ? TensorBlock{{row, col}, {rows, cols}} : TensorBlock{{row}, {rows}};
  };
  const int64_t cols = matrix ? g[1] : 1, rows = s.shape[0];
  switch (s.shard) {
    case ShardKind::replicated: return {box(0, 0, g[0], cols)};
    case ShardKind::rows: return {box(tp_rank * rows, 0, rows, cols)};
    case ShardKind::rows3: {
      std::vector<TensorBlock> out;
      for (int part = 0; part < 3; ++part) out.push_back(box(part * g[0] / 3 + tp_rank * rows / 3, 0, rows / 3, cols));
      return out;
    }
    case ShardKind::cols: return {box(0, tp_rank * s.shape[1], g[0], s.shape[1])};
  }
  return {};
}

/// The parts of parameter s's moment that lie in a ZeRO-1 optimizer's ranges: their blocks in the
/// global tensor (in row-major order, consecutive rows merged) and their values, in the same order.
void zero_pieces(const ParameterTable& table, const ParamSpec& s, const AdamW& opt, const Tensor& state,
                 std::vector<TensorBlock>& blocks, std::vector<float>& values) {
  const bool matrix = s.global_shape.size() == 2;
  const int64_t cols = matrix ? s.shape[1] : 1, global_cols = matrix ? s.global_shape[1] : 1;
  int64_t state_at = 0;  // where the current range's moments start in the optimizer's compact state
  for (auto [b, e] : opt.ranges()) {
    const int64_t lo = std::max(b, s.offset), hi = std::min(e, s.offset + s.numel);
    if (lo < hi) {
      const float* src = state.f32() + state_at + (lo - b);
      values.insert(values.end(), src, src + (hi - lo));
      for (int64_t i = lo - s.offset, end = hi - s.offset; i < end;) {
        const int64_t row = i / cols, c0 = i % cols, len = std::min(cols - c0, end - i);
        const int64_t g = table.shard_row(s, table.tp_rank(), row).global_offset + c0;
        TensorBlock next = matrix ? TensorBlock{{g / global_cols, g % global_cols}, {1, len}} : TensorBlock{{g}, {len}};
        TensorBlock* prev = blocks.empty() ? nullptr : &blocks.back();
        if (prev && matrix && prev->offset[1] == next.offset[1] && prev->count[1] == len &&
            prev->offset[0] + prev->count[0] == next.offset[0])
          prev->count[0] += 1;  // the next row of the same columns: grow the block
        else if (prev && !matrix && prev->offset[0] + prev->count[0] == g)
          prev->count[0] += len;
        else
          blocks.push_back(std::move(next));
        i += len;
      }
    }
    state_at += e - b;
  }
}

/// The counters a run resumes from (and AdamW's step count, when moments are loaded).
RunCounters read_counters(const CheckpointReader& r, MomentBuffers* moments) {
  RunCounters c;
  c.step = r.get_int("step");
  c.rng_counter = r.get_int("rng_counter");
  c.loader.epoch = static_cast<uint64_t>(r.get_int("loader_epoch"));
  c.loader.cursor = static_cast<uint64_t>(r.get_int("loader_cursor"));
  // Written since schedules can be re-planned on resume and tokenizers are fingerprinted; older
  // checkpoints have neither and keep their plain schedule.
  const auto& m = r.meta();
  if (auto it = m.ints.find("lr_anchor_step"); it != m.ints.end()) c.lr_anchor_step = it->second;
  if (auto it = m.strings.find("lr_anchor"); it != m.strings.end()) c.lr_anchor = std::stod(it->second);
  if (auto it = m.strings.find("tokenizer_id"); it != m.strings.end()) c.tokenizer_id = it->second;
  if (moments) moments->adam_steps = r.get_int("adam_steps");
  return c;
}

CheckpointMeta run_meta(const Config& cfg, const MomentBuffers& moments, const RunCounters& c) {
  CheckpointMeta meta;
  meta.ints["step"] = c.step;
  meta.ints["seed"] = cfg.train.seed;
  meta.ints["rng_counter"] = c.rng_counter;
  meta.ints["loader_epoch"] = static_cast<int64_t>(c.loader.epoch);
  meta.ints["loader_cursor"] = static_cast<int64_t>(c.loader.cursor);
  meta.ints["adam_steps"] = moments.adam_steps;
  meta.strings["config"] = config_to_toml(cfg);
  meta.strings["tokenizer"] = cfg.data.tokenizer;
  meta.strings["tokenizer_id"] = c.tokenizer_id;
  meta.ints["lr_anchor_step"] = c.lr_anchor_step;
  meta.strings["lr_anchor"] = fmt::format("{:.17g}", c.lr_anchor);
  return meta;
}

}  // namespace

std::string save_run(const Config& cfg, const Gpt& model, const MomentBuffers& moments, const RunCounters& c) {
  const ParameterTable& table = model.table();
  MT_CHECK(table.tp_size() == 1 && table.pp_size() == 1,
           "[checkpoint] a sharded model saves with save_run_sharded");
  std::vector<CheckpointEntry> entries;
  const Tensor& params = const_cast<Gpt&>(model).params();
  for (const auto& s : table.specs()) {
    entries.push_back({"model/" + s.name, params.view(s.offset, s.shape)});
    entries.push_back({"optim/m/" + s.name, moments.m.view(s.offset, s.shape)});
    entries.push_back({"optim/v/" + s.name, moments.v.view(s.offset, s.shape)});
  }
  std::string path = checkpoint_path(cfg.train.out_dir, c.step);
  CheckpointMeta meta = run_meta(cfg, moments, c);
  meta.strings["layout"] = "single process";
  save_checkpoint(path, entries, meta);
  return path;
}

std::string save_run_sharded(const Config& cfg, const Gpt& model, const MomentBuffers& moments, const RunCounters& c,
                             Communicator& world, int dp_rank, const std::string& layout, const AdamW* zero_shards) {
  const ParameterTable& mine = model.table();
  const ParameterTable whole(model.config());  // every global name and shape, in the canonical order
  const Tensor& params = const_cast<Gpt&>(model).params();
  std::vector<ShardedEntry> entries;
  // ZeRO-1 moments may live on a GPU: one host copy of each, read piece by piece below.
  Tensor m_host, v_host;
  if (zero_shards) {
    m_host = zero_shards->m().on(Device::cpu);
    v_host = zero_shards->v().on(Device::cpu);
  }
  for (const auto& g : whole.specs()) {
    const ParamSpec* s = mine.find(g.name);
    // Data-parallel replicas write nothing; of the tp ranks, one writes what all hold; the last
    // stage's copy of the tied embedding is stage 0's.
    const bool writes = s && dp_rank == 0 && (s->shard != ShardKind::replicated || mine.tp_rank() == 0) &&
                        (g.name != "wte" || mine.first_stage());
    const Tensor* sources[] = {&params, &moments.m, &moments.v};
    const char* groups[] = {"model/", "optim/m/", "optim/v/"};
    for (int k = 0; k < 3; ++k) {
      ShardedEntry e{groups[k] + g.name, g.global_shape, {}, Tensor()};
      if (k > 0 && zero_shards) {
        // ZeRO-1: every data-parallel rank writes the moments it owns, and only those.
        const bool owner = s && (s->shard != ShardKind::replicated || mine.tp_rank() == 0) &&
                           (g.name != "wte" || mine.first_stage());
        std::vector<float> values;
        if (owner) zero_pieces(mine, *s, *zero_shards, k == 1 ? m_host : v_host, e.blocks, values);
        if (!values.empty()) {
          e.data = Tensor::empty({static_cast<int64_t>(values.size())});
          std::copy(values.begin(), values.end(), e.data.f32());
        }
      } else if (writes) {
        e.blocks = shard_blocks(*s, mine.tp_rank());
        e.data = sources[k]->view(s->offset, {s->numel});
      }
      entries.push_back(std::move(e));
    }
  }
  std::string path = checkpoint_path(cfg.train.out_dir, c.step);
  CheckpointMeta meta = run_meta(cfg, moments, c);
  meta.strings["layout"] = layout;
  save_checkpoint_sharded(path, entries, meta, world);
  return path;
}

RunCounters load_run_sharded(const std::string& path, Gpt& model, MomentBuffers* moments, Communicator& world,
                             int dp_rank) {
  CheckpointReader r(path);
  const ParameterTable& mine = model.table();
  const ParameterTable whole(model.config());
  const Tensor* sources[] = {&model.params(), moments ? &moments->m : nullptr, moments ? &moments->v : nullptr};
  const char* groups[] = {"model/", "optim/m/", "optim/v/"};
  std::vector<ShardedEntry> check;  // the pieces this rank vouches for, as in a save
  for (const auto& g : whole.specs()) {
    const ParamSpec* s = mine.find(g.name);
    const bool writer = s && dp_rank == 0 && (s->shard != ShardKind::replicated || mine.tp_rank() == 0) &&
                        (g.name != "wte" || mine.first_stage());
    for (int k = 0; k < (moments ? 3 : 1); ++k) {
      const std::string dataset = groups[k] + g.name;
      MT_CHECK(r.has(dataset), "[checkpoint] '{}' has no dataset '{}'", path, dataset);
      const Shape stored = r.shape(dataset);
      MT_CHECK(stored == g.global_shape, "[checkpoint] dataset '{}' in '{}' has shape {}, but this model needs {}",
               dataset, path, shape_str(stored), shape_str(g.global_shape));
      ShardedEntry e{dataset, g.global_shape, {}, Tensor()};
      if (s) {
        std::vector<TensorBlock> blocks = shard_blocks(*s, mine.tp_rank());
        std::vector<std::vector<int64_t>> offsets, counts;
        for (const auto& b : blocks) {
          offsets.push_back(b.offset);
          counts.push_back(b.count);
        }
        Tensor dst = sources[k]->view(s->offset, {s->numel});
        r.read_blocks(dataset, offsets, counts, dst);  // only this rank's window of the tensor
        if (writer) {
          e.blocks = std::move(blocks);
          e.data = dst;
        }
      }
      check.push_back(std::move(e));
    }
  }
  // The windows the ranks read add up to every tensor once: their combined CRC must be the stored one.
  const std::vector<int64_t> crcs = combined_crcs(check, world);
  for (size_t i = 0; i < check.size(); ++i) {
    int64_t stored = r.stored_crc(check[i].path);
    MT_CHECK(stored < 0 || stored == crcs[i],
             "[checkpoint] dataset '{}' in '{}' fails its checksum (stored crc32 {:08x}, data {:08x}): the file is "
             "corrupt", check[i].path, path, stored, crcs[i]);
  }
  return read_counters(r, moments);
}

namespace {
/// Adapter files (launch/finetune.h) share the checkpoint container but hold no model.
void check_not_adapter(const CheckpointReader& r, const std::string& path) {
  auto contents = r.meta().strings.find("contents");
  MT_CHECK(contents == r.meta().strings.end() || contents->second != "lora-adapter",
           "[checkpoint] '{}' is a LoRA adapter, not a model: pass the checkpoint it was trained on as the model and "
           "this file as --adapter (or fold it in with `meshtrain lora merge`)", path);
}
}  // namespace

Config read_run_config(const std::string& path) {
  CheckpointReader r(path);
  check_not_adapter(r, path);
  return config_from_toml(r.get_string("config"), path + ":config");
}

RunInfo read_run_info(const std::string& path) {
  CheckpointReader r(path);
  check_not_adapter(r, path);
  RunInfo info;
  info.config = config_from_toml(r.get_string("config"), path + ":config");
  auto it = r.meta().strings.find("layout");
  info.layout = it == r.meta().strings.end() ? "unknown" : it->second;
  info.counters = read_counters(r, nullptr);
  return info;
}

RunCounters load_run(const std::string& path, Gpt& model, MomentBuffers* moments) {
  const ParameterTable& table = model.table();
  MT_CHECK(table.tp_size() == 1 && table.pp_size() == 1, "[checkpoint] a sharded model loads with load_run_sharded");
  CheckpointReader r(path);  // whole tensors, each checked against its stored CRC-32
  for (const auto& s : table.specs()) {
    Tensor p = model.param(s.name);
    r.read("model/" + s.name, p);
    if (moments) {
      Tensor m = moments->m.view(s.offset, s.shape), v = moments->v.view(s.offset, s.shape);
      r.read("optim/m/" + s.name, m);
      r.read("optim/v/" + s.name, v);
    }
  }
  return read_counters(r, moments);
}

std::string resolve_checkpoint(const std::string& path, const char* who) {
  MT_CHECK(!path.empty(), "[{}] no checkpoint given", who);
  if (std::filesystem::is_directory(path)) {
    const std::string latest = find_latest_checkpoint(path);
    MT_CHECK(!latest.empty(), "[{}] no checkpoint (ckpt_NNNNNN.h5) in folder '{}'", who, path);
    return latest;
  }
  MT_CHECK(std::filesystem::exists(path), "[{}] checkpoint '{}' does not exist", who, path);
  return path;
}

}  // namespace meshtrain
