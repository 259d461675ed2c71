// The meshtrain command line (CLI11). Each subcommand fills an argument struct and calls into the
// launch library; this file is the one place that catches errors and turns them into a message on
// stderr and exit code 1.
#include "launch/cli.h"

#include <unistd.h>

#include <csignal>

#include <CLI/CLI.hpp>
#include <filesystem>

#include "core/error.h"
#include "core/threads.h"
#include "core/timer.h"
#include "launch/ckpt/ckpt_tools.h"
#include "launch/config.h"
#include "launch/finetune.h"
#include "launch/generate.h"
#include "launch/plan.h"
#include "launch/plan_time.h"
#include "launch/serve/serve.h"
#include "launch/train/train.h"
#include "model/text/data.h"
#include "model/text/tokenizer.h"
#include "core/communicator.h"
#include "parallel/mpi_runtime.h"

namespace meshtrain {

namespace {

std::string host_name() {
  char buf[256] = {0};
  if (::gethostname(buf, sizeof(buf) - 1) != 0) return "?";
  return buf;
}

void run_tokenize(const std::string& tok_dir, const std::vector<std::string>& inputs, const std::string& out_dir,
                  double val_fraction) {
  MT_CHECK(val_fraction >= 0.0 && val_fraction < 1.0, "[tokenize] --val-fraction must be in [0, 1) (got {})",
           val_fraction);
  double t0 = now_seconds();
  Tokenizer tok = Tokenizer::load(tok_dir);
  auto r = tokenize_files(tok, inputs, out_dir, val_fraction);
  fmt::print("wrote {} train and {} val tokens to {} in {:.1f} s\n", r.train_tokens, r.val_tokens, out_dir,
             now_seconds() - t0);
}

void run_tokenizer_train(const std::vector<std::string>& inputs, int vocab_size, const std::string& out_dir,
                         bool overwrite) {
  // Checkpoints and token shards name their tokenizer's folder: silently replacing its files would
  // make them decode to other text.
  std::error_code ec;
  const bool occupied = std::filesystem::exists(out_dir, ec) &&
                        (!std::filesystem::is_directory(out_dir, ec) || !std::filesystem::is_empty(out_dir, ec));
  MT_CHECK(!occupied || overwrite,
           "[tokenizer] '{}' is not empty; models and token shards made with a tokenizer there would no longer "
           "match it. Choose a new --output folder, or pass --overwrite to replace its files", out_dir);
  double t0 = now_seconds();
  bool tty = ::isatty(STDOUT_FILENO);
  train_bpe(inputs, vocab_size, out_dir, [&](int done, int wanted) {
    if (tty) {
      double el = now_seconds() - t0;
      double eta = done > 0 ? el / done * (wanted - done) : 0.0;
      fmt::print("\r\033[2Kmerges {}/{} | {:.1f} s | ETA {:.1f} s", done, wanted, el, eta);
      std::fflush(stdout);
    }
  });
  if (tty) fmt::print("\r\033[2K");
  fmt::print("wrote {}/encoder.json and {}/vocab.bpe ({} tokens) in {:.1f} s\n", out_dir, out_dir, vocab_size,
             now_seconds() - t0);
}

}  // namespace

int run_cli(int argc, char** argv) {
  // A file-size limit (ulimit -f) must turn a too-large write into an error the code reports (EFBIG),
  // not kill the process mid-save with SIGXFSZ.
  std::signal(SIGXFSZ, SIG_IGN);
  CLI::App app{"meshtrain: train GPT-style language models from scratch, on CPUs or GPUs, over a data x tensor x "
               "pipeline mesh of ranks under mpirun or srun"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "meshtrain 0.1.0");

  TrainArgs targs;
  auto* train = app.add_subcommand("train", "train a GPT model (no arguments: the built-in default run)");
  train->add_option("--config", targs.config_file, "TOML file with [model], [data], [train] and [parallel] sections")
      ->check(CLI::ExistingFile);
  train->add_option("--set", targs.overrides, "override one key: section.key=value (repeatable)");
  train->add_option("--resume", targs.resume,
                    "continue from a checkpoint file, a run folder (its latest checkpoint), or 'latest' in "
                    "train.out_dir; writes beside the checkpoint unless train.out_dir is set");
  train->add_flag("--branch", targs.branch,
                  "with --resume: allow continuing in a folder that holds later checkpoints, moving them into "
                  "a superseded_after_* subfolder (nothing is deleted)");
  train->add_option("--trace", targs.trace,
                    "write a Chrome Trace Event JSON file of every rank's regions (forward/backward per block, "
                    "collectives, pipeline transfers, optimizer, data, checkpoints) for train.trace_steps; view it "
                    "in ui.perfetto.dev or chrome://tracing");
  train->add_option("--metrics", targs.metrics,
                    "append one JSON object per step to this file (JSON Lines; its folder is created)");
  bool print_config = false, print_reference = false;
  train->add_flag("--print-config", print_config, "print the resolved configuration as TOML and exit");
  train->add_flag("--help-config", print_reference, "list every configuration key with its default and exit");
  train->footer("Configuration keys: run `meshtrain train --help-config`.");

  GenerateArgs gargs;
  auto* gen = app.add_subcommand("generate", "generate text from a checkpoint, streaming it as it is produced");
  gen->add_option("--checkpoint", gargs.checkpoint, "checkpoint file (or a folder: its latest checkpoint)")
      ->required();
  gen->add_option("--prompt", gargs.prompt, "text to continue (default: start of a document)");
  gen->add_option("--max-new-tokens", gargs.sample.max_new_tokens, "tokens to generate")
      ->check(CLI::Range(1, 1 << 20))->capture_default_str();
  gen->add_option("--temperature", gargs.sample.sampling.temperature, "sampling temperature; 0 = greedy")
      ->check(CLI::Range(0.0, 100.0))->capture_default_str();
  gen->add_option("--top-k", gargs.sample.sampling.top_k, "sample among the k likeliest tokens; 0 = all")
      ->check(CLI::Range(0, 1 << 24))->capture_default_str();
  gen->add_option("--top-p", gargs.sample.sampling.top_p,
                  "sample among the likeliest tokens that make up this much probability (nucleus); 1 = all")
      ->check(CLI::Range(0.000001, 1.0))->capture_default_str();
  gen->add_option("--repetition-penalty", gargs.sample.sampling.repetition_penalty,
                  "divide the (positive) logits of tokens already in the context by this; 1 = off")
      ->check(CLI::Range(0.01, 100.0))->capture_default_str();
  gen->add_option("--stop", gargs.sample.stop, "stop when the text holds this string (repeatable; not printed)");
  gen->add_flag("--ignore-eos{false}", gargs.sample.stop_at_eot,
                "go on past <|endoftext|> (printed as a blank line) instead of stopping there");
  gen->add_flag("--no-kv-cache{false}", gargs.sample.kv_cache,
                "recompute the whole context for every token instead of keeping a key/value cache");
  gen->add_option("--device", gargs.device, "auto (CUDA when a GPU is visible), cpu or cuda")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}))->capture_default_str();
  gen->add_option("--precision", gargs.precision, "fp32, or bf16 on a GPU")
      ->check(CLI::IsMember({"fp32", "bf16"}))->capture_default_str();
  gen->add_flag("--timing", gargs.timing, "print tokens per second to stderr at the end");
  gen->add_option("--seed", gargs.seed, "sampling seed")->capture_default_str();
  gen->add_option("--tokenizer", gargs.tokenizer, "tokenizer folder (default: the one the run used)");
  gen->add_option("--threads", gargs.threads, "CPU threads (0 = all available)")->capture_default_str();
  gen->add_option("--tp", gargs.tp, "tensor-parallel ranks when run under mpirun")->check(CLI::Range(1, 4096))
      ->capture_default_str();
  gen->add_option("--pp", gargs.pp, "pipeline stages when run under mpirun")->check(CLI::Range(1, 4096))
      ->capture_default_str();

  gen->add_option("--adapter", gargs.adapter,
                  "LoRA adapter file from `meshtrain finetune` (trained on --checkpoint's weights)");

  FinetuneArgs fargs;
  auto* ft = app.add_subcommand("finetune", "fine-tune LoRA adapters on a checkpoint (its weights stay frozen)");
  ft->add_option("--checkpoint", fargs.checkpoint, "base checkpoint file (or a folder: its latest checkpoint)")
      ->required();
  ft->add_option("--data", fargs.data,
                 "training token shards (paths or globs, comma-separated), from `meshtrain tokenize` with the base's "
                 "tokenizer");
  ft->add_option("--val", fargs.val, "validation token shards (optional)");
  ft->add_option("--output", fargs.output, "adapter file to write")->capture_default_str();
  ft->add_flag("--overwrite", fargs.overwrite, "replace --output when it exists");
  ft->add_option("--config", fargs.config_file, "TOML file with [train], [data] and [lora] keys")
      ->check(CLI::ExistingFile);
  ft->add_option("--set", fargs.overrides,
                 "override one key (repeatable): lora.rank, lora.alpha, lora.targets, train.* (steps, lr, ...)");
  ft->add_option("--metrics", fargs.metrics, "append one JSON object per step to this file");
  ft->add_option("--tp", fargs.tp, "tensor-parallel ranks under mpirun (the others are data-parallel)")
      ->check(CLI::Range(1, 4096))->capture_default_str();
  ft->footer("Defaults over the base run's configuration: train.steps=100, train.lr=1e-3, train.min_lr=1e-4, "
             "train.warmup_steps=10, train.weight_decay=0, train.eval_every=25; lora.rank=8, lora.alpha=16, "
             "lora.targets=qkv,proj,fc,fc_proj.");

  ServeArgs sargs;
  auto* serve = app.add_subcommand("serve", "serve a model over HTTP: a chat page at / and OpenAI-shaped "
                                            "POST /v1/completions (streaming with server-sent events)");
  serve->add_option("--checkpoint", sargs.model.checkpoint, "checkpoint file (or a folder: its latest checkpoint)")
      ->required();
  serve->add_option("--adapter", sargs.model.adapter, "LoRA adapter file trained on --checkpoint");
  serve->add_option("--tokenizer", sargs.model.tokenizer, "tokenizer folder (default: the one the run used)");
  serve->add_option("--host", sargs.host, "address to listen on (127.0.0.1: this machine only)")
      ->capture_default_str();
  serve->add_option("--port", sargs.port, "port (0 = any free one, printed)")->check(CLI::Range(0, 65535))
      ->capture_default_str();
  serve->add_option("--max-body", sargs.max_body, "largest request body accepted, in bytes")
      ->check(CLI::Range(64, 1 << 30))->capture_default_str();
  serve->add_option("--device", sargs.model.device, "auto (CUDA when a GPU is visible), cpu or cuda")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}))->capture_default_str();
  serve->add_option("--precision", sargs.model.precision, "fp32, or bf16 on a GPU")
      ->check(CLI::IsMember({"fp32", "bf16"}))->capture_default_str();
  serve->add_option("--threads", sargs.model.threads, "CPU threads (0 = all available)")->capture_default_str();

  GenerateArgs cargs;
  cargs.sample.max_new_tokens = 100;
  auto* chat = app.add_subcommand("chat", "continue each line typed on stdin with the model, streaming the text");
  chat->add_option("--checkpoint", cargs.checkpoint, "checkpoint file (or a folder: its latest checkpoint)")
      ->required();
  chat->add_option("--adapter", cargs.adapter, "LoRA adapter file trained on --checkpoint");
  chat->add_option("--tokenizer", cargs.tokenizer, "tokenizer folder (default: the one the run used)");
  chat->add_option("--max-new-tokens", cargs.sample.max_new_tokens, "tokens per answer")
      ->check(CLI::Range(1, 1 << 20))->capture_default_str();
  chat->add_option("--temperature", cargs.sample.sampling.temperature, "sampling temperature; 0 = greedy")
      ->check(CLI::Range(0.0, 100.0))->capture_default_str();
  chat->add_option("--top-k", cargs.sample.sampling.top_k, "sample among the k likeliest tokens; 0 = all")
      ->check(CLI::Range(0, 1 << 24))->capture_default_str();
  chat->add_option("--top-p", cargs.sample.sampling.top_p, "nucleus sampling mass; 1 = all")
      ->check(CLI::Range(0.000001, 1.0))->capture_default_str();
  chat->add_option("--repetition-penalty", cargs.sample.sampling.repetition_penalty, "1 = off")
      ->check(CLI::Range(0.01, 100.0))->capture_default_str();
  chat->add_option("--stop", cargs.sample.stop, "end an answer at this string (repeatable)");
  chat->add_option("--seed", cargs.seed, "sampling seed")->capture_default_str();
  chat->add_option("--device", cargs.device, "auto, cpu or cuda")->check(CLI::IsMember({"auto", "cpu", "cuda"}))
      ->capture_default_str();
  chat->add_option("--threads", cargs.threads, "CPU threads (0 = all available)")->capture_default_str();

  auto* lora_cmd = app.add_subcommand("lora", "LoRA adapter tools");
  lora_cmd->require_subcommand(1);
  MergeArgs margs;
  auto* merge = lora_cmd->add_subcommand("merge", "fold an adapter into its base weights: a full checkpoint");
  merge->add_option("--base", margs.base, "the checkpoint the adapter was trained on (file or folder)")->required();
  merge->add_option("--adapter", margs.adapter, "adapter file from `meshtrain finetune`")->required();
  merge->add_option("--output", margs.output, "checkpoint file to write (must not exist)")->required();

  std::string tok_dir, out_dir;
  std::vector<std::string> inputs;
  double val_fraction = 0.1;
  auto* tokenize = app.add_subcommand("tokenize", "encode text files into llm.c-format token shards");
  tokenize->add_option("--tokenizer", tok_dir, "folder with encoder.json and vocab.bpe")->required();
  tokenize->add_option("--input", inputs, "text files (repeatable, or several after one --input)")->required();
  tokenize->add_option("--output", out_dir, "folder for train_NNNNNN.bin and val_NNNNNN.bin")->required();
  tokenize->add_option("--val-fraction", val_fraction, "share of the text, from its end, kept for validation")
      ->capture_default_str();

  auto* tokenizer = app.add_subcommand("tokenizer", "tokenizer tools");
  tokenizer->require_subcommand(1);
  int vocab_size = 0;
  std::vector<std::string> bpe_inputs;
  std::string bpe_out;
  auto* bpe = tokenizer->add_subcommand("train", "learn a byte-level BPE vocabulary (GPT-2 format files)");
  bpe->add_option("--vocab-size", vocab_size, "ids in the vocabulary, 256 bytes and <|endoftext|> included")
      ->required();
  bpe->add_option("--input", bpe_inputs, "text files")->required();
  bpe->add_option("--output", bpe_out, "folder for encoder.json and vocab.bpe (new or empty)")->required();
  bool bpe_overwrite = false;
  bpe->add_flag("--overwrite", bpe_overwrite, "replace the files of a non-empty --output folder");

  PlanArgs pargs;
  auto* plan = app.add_subcommand("plan", "list the dp x tp x pp x ZeRO layouts of N ranks for a configuration: "
                                          "which can run, and the memory each rank would hold");
  plan->add_option("--config", pargs.config_file, "TOML file, as for train")->check(CLI::ExistingFile);
  plan->add_option("--set", pargs.overrides, "override one key: section.key=value (repeatable)");
  auto* ranks_opt = plan->add_option("--ranks", pargs.ranks, "ranks of the job (processes: GPUs or CPU ranks)")
      ->check(CLI::Range(1, 1 << 20));
  plan->add_flag("--json", pargs.json, "print JSON (one object per layout) instead of the table");
  plan->add_option("--hardware", pargs.hardware,
                   "hardware description (TOML: hardware/*.toml, or what `plan calibrate` wrote): adds each "
                   "layout's predicted step time, tokens/s and MFU, fastest first")
      ->check(CLI::ExistingFile);
  plan->add_option("--gpus-per-node", pargs.gpus_per_node,
                   "ranks per node (GPUs, or CPU ranks sharing a node's cores and memory), in place of the "
                   "--hardware description's gpus_per_node: groups that span nodes reduce over net.gbs")
      ->check(CLI::Range(1, 1 << 20));
  CalibrateArgs cal;
  auto* calibrate = plan->add_subcommand("calibrate", "measure this machine for --hardware: GEMMs at the model's "
                                                      "shapes, attention, element-wise bandwidth, AdamW; under "
                                                      "mpiexec -n 2 (or srun) also all-reduce bandwidth and latency");
  calibrate->add_option("--config", cal.config_file, "TOML file: the model whose shapes are measured")
      ->check(CLI::ExistingFile);
  calibrate->add_option("--set", cal.overrides, "override one key: section.key=value (repeatable)");
  calibrate->add_option("--ranks", cal.ranks, "measure the GEMM shapes of every layout of this many ranks "
                                              "(default: the launch's ranks, at least 8)")->check(CLI::Range(1, 1 << 20));
  calibrate->add_option("--out", cal.out, "TOML file to write (default: print it)");
  calibrate->add_option("--name", cal.name, "what the description is called (default: the CPU model)");
  calibrate->add_flag("--overwrite", cal.overwrite, "replace an existing --out file");
  plan->require_subcommand(0, 1);
  plan->fallthrough(false);

  std::function<void()> ckpt_action;
  add_ckpt_commands(app, ckpt_action);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }

  // Under mpirun or srun the job runs on every rank; a plain process is a world of one.
  std::unique_ptr<MpiRuntime> runtime;
  std::unique_ptr<Communicator> world;
  try {
    if (*train || *gen || *ft || *calibrate) {
      runtime = MpiRuntime::init_if_launched(&argc, &argv);
      world = world_communicator(runtime.get());
      if (runtime) fargs.default_threads = runtime->threads_per_rank();
      if (runtime) fargs.local_rank = runtime->local_rank();
      if (runtime) targs.default_threads = runtime->threads_per_rank();
      if (runtime) targs.ranks_on_host = runtime->local_size();
      if (runtime) targs.local_rank = runtime->local_rank();
      if (runtime) gargs.local_rank = runtime->local_rank();
      if (runtime && gargs.threads == 0) gargs.threads = runtime->threads_per_rank();
    }
    if (*train) {
      if (print_reference) {
        fmt::print("Configuration keys (TOML sections [model], [data], [train], [parallel]; or --set section.key=value):\n{}",
                   config_reference());
        return 0;
      }
      if (print_config) {
        fmt::print("{}", config_to_toml(load_config(targs.config_file, targs.overrides)));
        return 0;
      }
      const TrainResult r = run_train(targs, *world);
      if (r.stop_signal) return 128 + r.stop_signal;  // the shell's convention for "ended by a signal"
    } else if (*gen) {
      run_generate(gargs, *world);
    } else if (*ft) {
      run_finetune(fargs, *world);
    } else if (*serve) {
      run_serve(sargs);
    } else if (*chat) {
      run_chat(cargs);
    } else if (*merge) {
      fmt::print("{}\n", run_lora_merge(margs));
    } else if (*calibrate) {
      run_plan_calibrate(cal, *world);
    } else if (*plan) {
      if (!*ranks_opt) {
        fmt::print(stderr, "meshtrain plan: --ranks N is required (or `plan calibrate`); see meshtrain plan --help\n");
        return 2;
      }
      run_plan(pargs);
    } else if (*tokenize) {
      run_tokenize(tok_dir, inputs, out_dir, val_fraction);
    } else if (*bpe) {
      run_tokenizer_train(bpe_inputs, vocab_size, bpe_out, bpe_overwrite);
    } else if (ckpt_action) {
      ckpt_action();
    }
  } catch (const std::exception& e) {
    std::fflush(stdout);
    int rank = world ? world->rank() : 0;
    fmt::print(stderr, "\nmeshtrain: error (rank {} on {}): {}\n", rank, host_name(), e.what());
    std::fflush(stderr);
    // The other ranks may be waiting in a collective for this one: bring the whole job down.
    if (world && world->size() > 1) world->abort(1);
    return 1;
  }
  return 0;
}

}  // namespace meshtrain
