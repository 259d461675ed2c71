// Training-run checkpoints over parallel/checkpoint.h.
#include "launch/train_state.h"

#include "model/gpt.h"
#include "parallel/checkpoint.h"

namespace meshtrain {

std::string save_run(const Config& cfg, const Gpt& model, const MomentBuffers& moments, const RunCounters& c) {
  std::vector<CheckpointEntry> entries;
  const Tensor& params = const_cast<Gpt&>(model).params();
  const Tensor &m = moments.m, &v = moments.v;
  for (const auto& s : model.table().specs()) {
    entries.push_back({"model/" + s.name, params.view(s.offset, s.shape)});
    entries.push_back({"optim/m/" + s.name, m.view(s.offset, s.shape)});
    entries.push_back({"optim/v/" + s.name, v.view(s.offset, s.shape)});
  }
  CheckpointMeta meta;
  meta.ints["step"] = c.step;
  meta.ints["seed"] = cfg.train.seed;
  meta.ints["rng_counter"] = c.rng_counter;
  meta.ints["loader_epoch"] = static_cast<int64_t>(c.loader.epoch);
  meta.ints["loader_cursor"] = static_cast<int64_t>(c.loader.cursor);
  meta.ints["adam_steps"] = moments.adam_steps;
  meta.strings["config"] = config_to_toml(cfg);
  meta.strings["tokenizer"] = cfg.data.tokenizer;
  std::string path = checkpoint_path(cfg.train.out_dir, c.step);
  save_checkpoint(path, entries, meta);
  return path;
}

Config read_run_config(const std::string& path) {
  CheckpointReader r(path);
  return config_from_toml(r.get_string("config"), path + ":config");
}

RunCounters load_run(const std::string& path, Gpt& model, MomentBuffers* moments) {
  CheckpointReader r(path);
  for (const auto& s : model.table().specs()) {
    Tensor p = model.param(s.name);
    r.read("model/" + s.name, p);
    if (moments) {
      Tensor m = moments->m.view(s.offset, s.shape), v = moments->v.view(s.offset, s.shape);
      r.read("optim/m/" + s.name, m);
      r.read("optim/v/" + s.name, v);
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
