// LoRA fine-tuning from a checkpoint (`meshtrain finetune`), the adapter file, and folding adapters
// into a full checkpoint (`meshtrain lora merge`).
//
// An adapter file is a small HDF5 checkpoint of its own: the adapters' whole tensors under lora/
// (float32, CRC-32 per dataset like every checkpoint) and, as attributes, format
// "meshtrain-checkpoint" with contents "lora-adapter", the LoRA and run configuration, the step, the base checkpoint's path and a
// fingerprint of its weights (FNV-1a over the names and stored CRC-32s of its model/ tensors), so
// an adapter is never applied to another model by mistake.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "launch/config.h"

namespace meshtrain {

class Communicator;
class Gpt;

struct FinetuneArgs {
  std::string checkpoint;  // base checkpoint file, or a run folder (its latest checkpoint)
  std::string data;        // training shards (paths or globs); "" = data.train from --set/--config
  std::string val;         // validation shards; "" = none
  std::string output = "runs/finetune/adapter.h5";
  bool overwrite = false;
  std::string config_file;
  std::vector<std::string> overrides;
  std::string metrics;     // JSON Lines file, or ""
  int tp = 1;              // tensor-parallel ranks under mpirun (the rest are data-parallel)
  int default_threads = 0;
  int local_rank = 0;
};

struct FinetuneResult {
  double first_loss = 0.0, last_loss = 0.0;
  double first_val = -1.0, last_val = -1.0;  // -1: no validation data
  std::string adapter;                        // the file written
};

/// Fine-tunes LoRA adapters on the ranks of world and writes them to args.output.
FinetuneResult run_finetune(const FinetuneArgs& args, Communicator& world);

/// A short fingerprint of a checkpoint's weights (16 hex digits), from its stored checksums.
std::string weights_fingerprint(const std::string& checkpoint);

struct AdapterInfo {
  LoraConfig lora;
  Config run;                    // the fine-tuning run's configuration (model = the base's)
  std::string base_checkpoint;   // as given when training
  std::string base_fingerprint;
  int64_t step = 0;
};
/// Reads an adapter file's attributes; a clear error when it is not one.
AdapterInfo read_adapter_info(const std::string& path);
/// Enables LoRA on model (loaded with the base weights named by base_checkpoint) and loads the
/// adapters of path into it, after checking they were trained on those weights. Every rank calls it.
void load_adapter(const std::string& path, const std::string& base_checkpoint, Gpt& model);

struct MergeArgs {
  std::string base, adapter, output;
};
/// Writes base + adapters as a full checkpoint (a step-0 run, as `ckpt convert` writes); returns a
/// summary line.
std::string run_lora_merge(const MergeArgs& args);

}  // namespace meshtrain
