// Training-run checkpoints over parallel/checkpoint.h. Tensors are stored whole under their global
// names whatever the layout: tensor-parallel shards are gathered into whole tensors before the save
// and cut back out of them on load (so any tp size loads any checkpoint).
#include "launch/train_state.h"

#include <cstring>

#include "model/gpt.h"
#include "parallel/checkpoint.h"
#include "parallel/communicator.h"

namespace meshtrain {

namespace {

/// The whole tensor of one parameter (or moment) from every tp rank's shard; collective over tp.
Tensor gather_whole(const ParameterTable& table, const ParamSpec& s, const Tensor& shard, Communicator& tp) {
  Tensor whole = Tensor::empty(s.global_shape);
  if (s.shard == ShardKind::replicated) {
    whole.copy_from(shard);
    return whole;
  }
  Tensor all = Tensor::empty({s.numel * tp.size()});
  tp.all_gather(shard, all);
  for (int r = 0; r < tp.size(); ++r)
    for (int64_t i = 0, rows = ParameterTable::shard_rows(s); i < rows; ++i) {
      RowSlice slice = table.shard_row(s, r, i);
      std::memcpy(whole.f32() + slice.global_offset, all.f32() + r * s.numel + i * slice.len,
                  slice.len * sizeof(float));
    }
  return whole;
}

/// Copies this rank's shard out of a whole tensor.
void cut_shard(const ParameterTable& table, const ParamSpec& s, const Tensor& whole, Tensor& shard) {
  for (int64_t i = 0, rows = ParameterTable::shard_rows(s); i < rows; ++i) {
    RowSlice slice = table.shard_row(s, table.tp_rank(), i);
    std::memcpy(shard.f32() + i * slice.len, whole.f32() + slice.global_offset, slice.len * sizeof(float));
  }
}

}  // namespace

std::string save_run(const Config& cfg, const Gpt& model, const MomentBuffers& moments, const RunCounters& c,
                     bool write, Communicator* pp) {
  std::vector<CheckpointEntry> entries;
  const Tensor& params = const_cast<Gpt&>(model).params();
  const Tensor &m = moments.m, &v = moments.v;
  const ParameterTable& table = model.table();
  for (const auto& s : table.specs()) {
    if (!table.first_stage() && s.name == "wte") continue;  // the tied copy: stage 0 saves wte
    entries.push_back({"model/" + s.name, gather_whole(table, s, params.view(s.offset, s.shape), model.tp())});
    entries.push_back({"optim/m/" + s.name, gather_whole(table, s, m.view(s.offset, s.shape), model.tp())});
    entries.push_back({"optim/v/" + s.name, gather_whole(table, s, v.view(s.offset, s.shape), model.tp())});
  }
  if (pp && pp->size() > 1) {
    // Later stages send their whole tensors, in their table's order, to stage 0.
    if (pp->rank() > 0) {
      for (size_t i = 0; i < entries.size(); ++i) pp->send(entries[i].tensor, 0, static_cast<int>(i));
      entries.clear();
    } else {
      for (int stage = 1; stage < pp->size(); ++stage) {
        ParameterTable theirs(model.config(), table.tp_size(), table.tp_rank(), pp->size(), stage);
        int tag = 0;
        for (const auto& s : theirs.specs()) {
          if (s.name == "wte") continue;
          for (const char* group : {"model/", "optim/m/", "optim/v/"}) {
            Tensor t = Tensor::empty(s.global_shape);
            pp->recv(t, stage, tag++);
            entries.push_back({group + s.name, t});
          }
        }
      }
    }
  }
  std::string path = checkpoint_path(cfg.train.out_dir, c.step);
  if (!write) return path;
  CheckpointMeta meta;
  meta.ints["step"] = c.step;
  meta.ints["seed"] = cfg.train.seed;
  meta.ints["rng_counter"] = c.rng_counter;
  meta.ints["loader_epoch"] = static_cast<int64_t>(c.loader.epoch);
  meta.ints["loader_cursor"] = static_cast<int64_t>(c.loader.cursor);
  meta.ints["adam_steps"] = moments.adam_steps;
  meta.strings["config"] = config_to_toml(cfg);
  meta.strings["tokenizer"] = cfg.data.tokenizer;
  save_checkpoint(path, entries, meta);
  return path;
}

Config read_run_config(const std::string& path) {
  CheckpointReader r(path);
  return config_from_toml(r.get_string("config"), path + ":config");
}

RunCounters load_run(const std::string& path, Gpt& model, MomentBuffers* moments) {
  CheckpointReader r(path);
  const ParameterTable& table = model.table();
  auto load = [&](const std::string& dataset, const ParamSpec& s, Tensor shard) {
    Tensor whole = Tensor::empty(s.global_shape);
    r.read(dataset, whole);
    cut_shard(table, s, whole, shard);
  };
  for (const auto& s : table.specs()) {
    load("model/" + s.name, s, model.param(s.name));
    if (moments) {
      load("optim/m/" + s.name, s, moments->m.view(s.offset, s.shape));
      load("optim/v/" + s.name, s, moments->v.view(s.offset, s.shape));
    }
  }
  RunCounters c;
  c.step = r.get_int("step");
  c.rng_counter = r.get_int("rng_counter");
  c.loader.epoch = static_cast<uint64_t>(r.get_int("loader_epoch"));
  c.loader.cursor = static_cast<uint64_t>(r.get_int("loader_cursor"));
  if (moments) moments->adam_steps = r.get_int("adam_steps");
  return c;
}

}  // namespace meshtrain
