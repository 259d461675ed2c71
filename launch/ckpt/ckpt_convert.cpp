// `meshtrain ckpt convert`: meshtrain checkpoints as a source and a target of conversion, and the
// dispatch between formats. A converted checkpoint is a step-0 run (zero AdamW moments, fresh
// counters) that `meshtrain generate` and `meshtrain train --resume` load like any other.
#include <algorithm>
#include <filesystem>

#include "launch/ckpt/ckpt_io.h"
#include "launch/ckpt/ckpt_tools.h"
#include "launch/train/train_state.h"
#include "model/params.h"
#include "parallel/checkpoint.h"

namespace fs = std::filesystem;

namespace meshtrain {

ModelWeights read_meshtrain_weights(const std::string& path) {
  CheckpointReader r(path);
  const GptConfig cfg = config_from_toml(r.get_string("config"), path + ":config").model;
  cfg.validate();
  ModelWeights w = ckpt::allocate_weights(cfg);
  for (auto& [name, t] : w.tensors) r.read("model/" + name, t);  // names the tensor and both shapes on mismatch
  return w;
}

void write_meshtrain_checkpoint(const std::string& path, const ModelWeights& w, Config run, const std::string& source) {
  check_model_weights(w, "meshtrain export");
  run.model = w.model;
  validate_config(run);
  ParameterTable table(w.model);
  int64_t largest = 0;
  for (const ParamSpec& s : table.specs()) largest = std::max(largest, s.numel);
  // One zero buffer viewed under every moment's shape: a GPT-2's moments are a gigabyte of zeros.
  const Tensor zeros = Tensor::zeros({largest});
  std::vector<CheckpointEntry> entries;
  for (const ParamSpec& s : table.specs()) {
    entries.push_back({"model/" + s.name, w.tensors.at(s.name)});
    entries.push_back({"optim/m/" + s.name, zeros.view(0, s.global_shape)});
    entries.push_back({"optim/v/" + s.name, zeros.view(0, s.global_shape)});
  }
  // Everything launch/train/train_state.cpp's load_run and read_run_config look for, as a fresh run has it.
  CheckpointMeta meta;
  meta.ints["step"] = 0;
  meta.ints["seed"] = run.train.seed;
  meta.ints["rng_counter"] = 0;
  meta.ints["loader_epoch"] = 0;
  meta.ints["loader_cursor"] = 0;
  meta.ints["adam_steps"] = 0;
  meta.strings["config"] = config_to_toml(run);
  meta.strings["tokenizer"] = run.data.tokenizer;
  meta.strings["layout"] = "single process";
  if (!source.empty()) meta.strings["converted_from"] = source;
  save_checkpoint(path, entries, meta);
}

std::string convert_checkpoint(const ConvertArgs& a) {
  const CkptFormat from = parse_ckpt_format(a.from), to = parse_ckpt_format(a.to);
  MT_CHECK(from != to, "[ckpt] --from and --to are both {}; nothing to convert", a.from);
  MT_CHECK(!a.input.empty() && !a.output.empty(), "[ckpt] convert needs --input and --output");
  MT_CHECK(a.config_file.empty() || to == CkptFormat::meshtrain,
           "[ckpt] --config only applies with --to meshtrain (it is the run configuration stored in the checkpoint)");
  MT_CHECK(a.n_head == 0 || from == CkptFormat::safetensors,
           "[ckpt] --n-head only applies with --from safetensors; the other formats record the head count");
  std::error_code ec;
  MT_CHECK(!fs::equivalent(a.input, a.output, ec), "[ckpt] --output '{}' is the input file; write somewhere else",
           a.output);
  MT_CHECK(!fs::is_directory(a.output, ec), "[ckpt] --output '{}' is a folder; give a file name", a.output);
  // Read the configuration before the (possibly large) input so a typo fails at once.
  const Config run = a.config_file.empty() ? default_config() : load_config(a.config_file, {});

  ModelWeights w;
  switch (from) {
    case CkptFormat::meshtrain:  // a run folder means its latest checkpoint, as everywhere else
      w = read_meshtrain_weights(resolve_checkpoint(a.input, "ckpt"));
      break;
    case CkptFormat::llmc:
      w = read_llmc_model(a.input);
      break;
    case CkptFormat::safetensors:
      w = read_safetensors(a.input, a.n_head);
      break;
  }
  switch (to) {
    case CkptFormat::meshtrain:
      write_meshtrain_checkpoint(a.output, w, run, fmt::format("{} '{}'", ckpt_format_name(from), a.input));
      break;
    case CkptFormat::llmc:
      write_llmc_model(a.output, w);
      break;
    case CkptFormat::safetensors:
      write_safetensors(a.output, w);
      break;
  }
  return fmt::format("wrote {} ({}) from {} ({}): {}", a.output, ckpt_format_name(to), a.input, ckpt_format_name(from),
                     ckpt::model_summary(w.model));
}

}  // namespace meshtrain
