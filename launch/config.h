// Run configuration: [model], [data], [train], [parallel] and [lora] sections read from TOML, overridden by
// --set section.key=value, checked against one schema (unknown keys and bad values are errors
// naming the key and the expected form). The defaults are the built-in default run.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "model/backend.h"
#include "model/gpt_config.h"
#include "model/lora.h"

namespace meshtrain {

struct DataConfig {
  std::string train;      // shard paths or globs, comma-separated; "" = the built-in corpus
  std::string val;        // "" = the built-in corpus (or no validation when train is set)
  std::string tokenizer;  // directory with encoder.json + vocab.bpe; "" = the built-in corpus's
};

struct TrainConfig {
  int batch_size = 16;   // sequences per micro-batch
  int grad_accum = 1;    // micro-batches per step
  int steps = 1100;
  double lr = 2e-3;
  double min_lr = 2e-4;
  int warmup_steps = 40;
  double weight_decay = 0.1;
  double peak_tflops = 0.0;  // per device, for MFU in the step log; 0 = from the GPU's name
  double grad_clip = 1.0;
  int64_t seed = 1337;
  int eval_every = 100;     // 0 = never (a final evaluation still runs when there is val data)
  int eval_batches = 8;
  int sample_every = 200;   // 0 = only at the end
  int sample_tokens = 96;
  int checkpoint_every = 200;  // 0 = only at the end
  int keep_checkpoints = 0;    // keep the newest K checkpoints; 0 = all
  std::string out_dir = "runs/default";
  int threads = 0;          // 0 = the cores available to the process
  int log_every = 10;       // plain log lines every N steps (and the first and last)
  bool shuffle = true;
  std::string recompute = "none";  // activation recomputation: none, selective or full
  std::string device = "auto";     // auto (CUDA when a GPU is present), cpu or cuda
  std::string precision = "fp32";  // fp32 or bf16 (bf16 needs CUDA)
  bool cuda_graph = false;         // capture the whole step in a CUDA graph and replay it
  std::string attention = "flash"; // CUDA attention kernels: flash or materialised
  std::string resume_schedule = "continue";  // on resume with a changed schedule: continue or restart
  std::string stop_signal = "";    // a signal besides SIGINT/SIGTERM that checkpoints and stops (USR1, ...)
  std::string trace_steps = "";    // --trace window FIRST:LAST (1-based, inclusive); "" = every step
};

struct ParallelConfig {
  int dp = 0;               // data-parallel ranks; 0 = the ranks left after tp
  int tp = 1;               // tensor-parallel ranks
  int pp = 1;               // pipeline stages
  std::string schedule = "1f1b";  // pipeline schedule: gpipe or 1f1b
  int zero = 0;             // 1 = ZeRO-1: optimizer state sharded over the data-parallel ranks
  double bucket_mb = 4.0;   // gradient bucket size for the overlapped reduction
  int microbatches = 0;     // micro-batches per rank and step; 0 = train.grad_accum
  std::string comm = "auto";  // auto, mpi (GPU tensors staged through host memory) or nccl
  double timeout_s = 300.0;   // a rank blocked this long in communication ends the job; 0 = never
};

struct Config {
  GptConfig model;
  DataConfig data;
  TrainConfig train;
  ParallelConfig parallel;
  LoraConfig lora;  // `meshtrain finetune` only
};

/// The built-in defaults: the default run's model and schedule; model.vocab_size 0 = from the tokenizer.
Config default_config();
/// Reads an optional TOML file over the defaults, then applies "section.key=value" overrides.
Config load_config(const std::string& file, const std::vector<std::string>& overrides);
/// Parses TOML text (as stored in a checkpoint) over the defaults.
Config config_from_toml(const std::string& text, const std::string& origin);
/// Applies a TOML file's keys (only those it names) over cfg.
void apply_config_file(Config& cfg, const std::string& file);
/// The keys ("section.key") that a config file and --set overrides name, in order.
std::vector<std::string> keys_named(const std::string& file, const std::vector<std::string>& overrides);
/// One key's value as TOML text ("4", "\"runs/a\"").
std::string config_value(const Config& cfg, const std::string& key);
/// Applies one "section.key=value" override.
void apply_override(Config& cfg, const std::string& assignment);
/// Checks values that are independent of the data; throws naming the key.
void validate_config(const Config& cfg);
/// How a step's sequences split over data-parallel ranks and micro-batches: train.batch_size x
/// train.grad_accum sequences, parallel.microbatches (or train.grad_accum) micro-batches per rank.
struct BatchSplit {
  int global_rows = 0;  // sequences per step, all ranks
  int micro_count = 0;  // micro-batches per rank and step
  int rank_rows = 0;    // sequences per data-parallel rank
  int micro_rows = 0;   // sequences per micro-batch (B)
  std::string error;    // why the step does not split, or "" when it does
};
/// The split for dp data-parallel ranks; error is set (and the counts past it 0) when it does not divide.
BatchSplit split_batch(const Config& cfg, int dp);

/// The whole configuration as TOML (every key, so a run can be repeated from it).
std::string config_to_toml(const Config& cfg);
/// One line per key: name, type, default and meaning (for --help-config).
std::string config_reference();

/// What the run's backend does, from the config and whether it runs on a GPU (train.device resolved):
/// CUDA in train.precision with train.attention, or the CPU in fp32 (bf16 GEMMs through oneDNN when
/// train.precision = bf16). The plan sizes layouts with run_sizing; train and finetune build with
/// make_run_backend, so the two cannot disagree.
ActivationSizing run_sizing(const Config& cfg, bool on_gpu);
std::unique_ptr<Backend> make_run_backend(const Config& cfg, bool on_gpu);

}  // namespace meshtrain
