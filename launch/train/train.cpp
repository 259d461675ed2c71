// The training loop. A step consumes batch_size x grad_accum sequences whatever the layout: each
// data-parallel rank takes its equal slice of that global batch and cuts it into micro-batches whose
// loss gradients are scaled by 1/micro-batches, so after the data-parallel average the gradient is
// that of the global mean loss; then global-norm clipping, the scheduled learning rate and AdamW.
// Everything that decides the next step's numbers (weights, moments, data position, step) is in the
// checkpoint, so a resumed run repeats the uninterrupted one exactly.
#include "launch/train/train.h"

#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <thread>
#include <algorithm>
#include <functional>
#include <optional>
#include <sstream>

#include "core/communicator.h"
#include "core/device.h"
#include "core/fault.h"
#include "core/threads.h"
#include "core/timer.h"
#include "core/trace.h"
#include "core/watchdog.h"
#include "launch/builtin_corpus.h"
#include "launch/config.h"
#include "launch/generate.h"
#include "launch/train/progress.h"
#include "launch/train/lr_schedule.h"
#include "launch/train/stop_signals.h"
#include "launch/train/train_state.h"
#include "launch/train/train_step.h"
#include "model/text/data.h"
#include "model/gpt.h"
#include "model/optimizer.h"
#include "model/text/tokenizer.h"
#include "parallel/checkpoint.h"
#include "parallel/data_parallel.h"
#include "parallel/mesh.h"
#include "parallel/nccl_communicator.h"
#include "parallel/pipeline.h"
#include "parallel/trace_writer.h"

namespace fs = std::filesystem;

namespace meshtrain {

namespace {

/// --resume takes a checkpoint file, a run folder (its latest checkpoint) or "latest" (in out_dir).
std::string resolve_resume(const std::string& resume, const std::string& out_dir) {
  if (resume == "latest") {
    std::string p = find_latest_checkpoint(out_dir);
    MT_CHECK(!p.empty(),
             "[train] --resume latest: no checkpoint in '{}' (train.out_dir); set train.out_dir to the run's folder, "
             "or name the folder or file itself: --resume runs/NAME", out_dir);
    return p;
  }
  std::error_code ec;
  if (fs::is_directory(resume, ec)) {
    std::string p = find_latest_checkpoint(resume);
    MT_CHECK(!p.empty(), "[train] --resume {}: the folder holds no checkpoint (ckpt_NNNNNN.h5)", resume);
    return p;
  }
  MT_CHECK(fs::is_regular_file(resume, ec),
           "[train] --resume: '{}' does not exist; give a checkpoint file, a run folder or 'latest'", resume);
  return resume;
}

/// The keys a resumed run may not change, with one message naming the key and both values.
void check_unchanged(const Config& saved, const Config& now) {
  for (const char* key : {"model.n_layer", "model.n_head", "model.n_embd", "model.seq_len", "model.vocab_size",
                          "model.pos_embedding", "model.rope_theta"}) {
    const std::string was = config_value(saved, key), is = config_value(now, key);
    if (std::string(key) == "model.vocab_size" && now.model.vocab_size == 0) continue;  // resolved later
    MT_CHECK(was == is,
             "[train] {} cannot change on resume: the checkpoint has {}, this run asks for {}; drop the key to keep "
             "the checkpoint's value, or start a new run (another train.out_dir) to train a different model",
             key, was, is);
  }
}

/// Which layout a resumed run trains at when no parallel.dp/tp/pp key is given: the saved one when
/// it fits the world, otherwise plain data parallelism over every rank. Returns the log line.
std::string choose_resume_layout(Config& cfg, const Config& saved, const std::string& saved_layout, int world,
                                 bool microbatches_named) {
  const ParallelConfig& p = saved.parallel;
  const bool fits = world % (p.tp * p.pp) == 0 && (p.dp == 0 || p.dp * p.tp * p.pp == world);
  if (fits && world == 1 && p.tp * p.pp == 1) return "";  // one process then and now: nothing to say
  if (fits)
    return fmt::format("[train] layout: the checkpoint's ({}) on {} rank{}, as saved", saved_layout, world,
                       world == 1 ? "" : "s");
  cfg.parallel.dp = 0;
  cfg.parallel.tp = 1;
  cfg.parallel.pp = 1;
  if (!microbatches_named) cfg.parallel.microbatches = 0;
  return fmt::format("[train] layout: the checkpoint was saved at {} (tp {} x pp {}), which does not fit {} rank{}; "
                     "training data-parallel over all of them (dp {}); set parallel.dp/tp/pp to choose",
                     saved_layout, p.tp, p.pp, world, world == 1 ? "" : "s", world);
}

/// train.trace_steps "A:B" (1-based, inclusive) as (A, B); "" = every step of the run.
std::pair<int64_t, int64_t> parse_trace_steps(const std::string& text, int64_t total) {
  if (text.empty()) return {1, total};
  const auto colon = text.find(':');
  int64_t a = 0, b = 0;
  try {
    MT_CHECK(colon != std::string::npos, "");
    size_t used = 0;
    a = std::stoll(text.substr(0, colon), &used);
    MT_CHECK(used == colon, "");
    b = std::stoll(text.substr(colon + 1), &used);
    MT_CHECK(used == text.size() - colon - 1, "");
  } catch (const std::exception&) {
    MT_FAIL("[config] train.trace_steps must be FIRST:LAST, two step numbers (got '{}'), e.g. 3:6", text);
  }
  MT_CHECK(a >= 1 && b >= a, "[config] train.trace_steps = {}: need 1 <= FIRST <= LAST", text);
  return {a, b};
}

/// Every rank must run the same configuration: rank 0's is broadcast and compared line by line.
void check_same_config(const Config& cfg, Communicator& world) {
  if (world.size() == 1) return;
  std::string mine = config_to_toml(cfg);
  Tensor len = Tensor::empty({1}, DType::i32);
  len.data<int32_t>()[0] = static_cast<int32_t>(mine.size());
  world.broadcast(len, 0);
  Tensor text = Tensor::zeros({len.data<int32_t>()[0]}, DType::u8);
  if (world.rank() == 0) std::copy(mine.begin(), mine.end(), text.data<uint8_t>());
  world.broadcast(text, 0);
  std::string root(reinterpret_cast<const char*>(text.data<uint8_t>()), text.numel());
  Tensor bad = Tensor::zeros({1}, DType::i32);
  std::string first_difference;
  if (root != mine) {
    bad.data<int32_t>()[0] = 1;
    std::istringstream a(root), b(mine);
    std::string la, lb, section;
    while (std::getline(a, la) && std::getline(b, lb)) {
      if (!la.empty() && la[0] == '[') section = la.substr(1, la.size() - 2);
      if (la != lb) {
        first_difference = section + "." + la.substr(0, la.find(" ="));
        break;
      }
    }
  }
  world.all_reduce(bad, ReduceOp::max);
  MT_CHECK(first_difference.empty(),
           "[train] rank {} was started with a different configuration from rank 0: {} differs; every rank must "
           "get the same --config and --set arguments", world.rank(), first_difference);
  MT_CHECK(bad.data<int32_t>()[0] == 0, "[train] another rank was started with a different configuration (see its "
                                        "message)");
}

}  // namespace

TrainResult run_train(const TrainArgs& args, Communicator& world) {
  const bool lead = world.rank() == 0;
  const std::vector<std::string> named = keys_named(args.config_file, args.overrides);
  auto is_named = [&](const std::string& key) { return std::find(named.begin(), named.end(), key) != named.end(); };
  Config cfg;
  std::string resume_path, layout_note;
  std::optional<RunInfo> saved;
  if (!args.resume.empty()) {
    // The checkpoint's configuration, then the file's keys, then --set; "latest" is looked for in
    // the train.out_dir those name (or the default).
    Config lookup = default_config();
    if (!args.config_file.empty()) apply_config_file(lookup, args.config_file);
    for (const auto& o : args.overrides) apply_override(lookup, o);
    resume_path = resolve_resume(args.resume, lookup.train.out_dir);
    if (lead) {  // `latest` lags when re-pointing it failed after the newer checkpoint was complete
      const std::string pointer = read_latest_pointer(fs::path(resume_path).parent_path().string());
      if (!pointer.empty() && resume_path != args.resume && fs::path(pointer) != fs::path(resume_path))
        fmt::print("[train] '{}' names {}, but {} is newer and complete (updating 'latest' after it failed); "
                   "resuming from the newer one\n", (fs::path(resume_path).parent_path() / "latest").string(),
                   fs::path(pointer).filename().string(), fs::path(resume_path).filename().string());
    }
    saved = read_run_info(resume_path);
    cfg = saved->config;
    if (!args.config_file.empty()) apply_config_file(cfg, args.config_file);
    for (const auto& o : args.overrides) apply_override(cfg, o);
    // A resumed run writes beside the checkpoint it came from, never into a folder merely recorded
    // inside it (a copied run would otherwise write into the original).
    if (!is_named("train.out_dir")) {
      const fs::path parent = fs::path(resume_path).parent_path();
      cfg.train.out_dir = parent.empty() ? "." : parent.string();
    }
    if (!is_named("parallel.dp") && !is_named("parallel.tp") && !is_named("parallel.pp"))
      layout_note = choose_resume_layout(cfg, saved->config, saved->layout, world.size(),
                                         is_named("parallel.microbatches"));
    validate_config(cfg);
    check_unchanged(saved->config, cfg);
    // Never replace checkpoints this run did not write: later ones in the folder are another trajectory.
    const int64_t from = saved->counters.step;
    const auto later = checkpoints_after(cfg.train.out_dir, from);
    if (!later.empty()) {
      MT_CHECK(args.branch,
               "[train] '{}' already holds checkpoints past step {} (the newest is step {}: {}); resuming from step {} "
               "here would replace them. Continue in a new folder with --set train.out_dir=OTHER, or pass --branch to "
               "move the later checkpoints aside (never deleted) and continue here",
               cfg.train.out_dir, from, later.back().first, later.back().second, from);
      world.barrier();  // every rank has looked before rank 0 moves anything
      if (lead) {
        std::string aside = set_aside_checkpoints_after(cfg.train.out_dir, from);
        fmt::print("[train] --branch: moved {} checkpoint{} past step {} into {}\n", later.size(),
                   later.size() == 1 ? "" : "s", from, aside);
      }
      world.barrier();
    }
  } else {
    MT_CHECK(!args.branch, "[train] --branch only applies with --resume");
    cfg = load_config(args.config_file, args.overrides);
    std::string existing = find_latest_checkpoint(cfg.train.out_dir);
    MT_CHECK(existing.empty(),
             "[train] '{}' already holds checkpoints (latest: {}); continue with --resume {}, or start afresh "
             "with --set train.out_dir=OTHER (existing checkpoints are never overwritten)",
             cfg.train.out_dir, existing, cfg.train.out_dir);
  }

  check_same_config(cfg, world);
  // Checkpoints go to out_dir: a folder that cannot be written is an error now, not after the first
  // stretch of training. (A folder that turns read-only later fails that save, clearly, losing nothing.)
  if (world.rank() == 0) {
    std::error_code ec;
    fs::create_directories(cfg.train.out_dir, ec);
    const std::string probe = (fs::path(cfg.train.out_dir) / fmt::format(".write_test_{}", ::getpid())).string();
    std::FILE* f = ec ? nullptr : std::fopen(probe.c_str(), "wb");
    const std::string why = ec ? ec.message() : (f ? "" : std::strerror(errno));
    if (f) {
      std::fclose(f);
      std::remove(probe.c_str());
    }
    MT_CHECK(why.empty(),
             "[train] cannot write into train.out_dir '{}' ({}): checkpoints go there; make it writable or choose "
             "another folder with --set train.out_dir=...", cfg.train.out_dir, why);
  }
  if (world.size() > 1) {
    char host[256] = {0};
    ::gethostname(host, sizeof(host) - 1);
    CommWatchdog::configure(cfg.parallel.timeout_s, world.rank(), host);
  }
  if (!args.trace.empty()) {
    parse_trace_steps(cfg.train.trace_steps, 1);  // a malformed window fails now, not after training
    MT_CHECK(!fs::exists(args.trace), "[train] --trace '{}' exists; traces never replace a file, name a new one",
             args.trace);
  }

  // The device: CUDA when asked for, or (auto) when a GPU is visible; every layout runs on either.
  const bool use_cuda = cfg.train.device == "cuda" || (cfg.train.device == "auto" && cuda_device_count() > 0);
  MT_CHECK(use_cuda || !cfg.train.cuda_graph,
           "[train] train.cuda_graph = true needs the CUDA backend, but this run is on the CPU ({}); set train.device = "
           "cuda on a GPU machine, or train.cuda_graph = false",
           !cuda_built() ? "this build has no CUDA" : "no GPU is visible");
  if (use_cuda) require_cuda("train.device = cuda");
  // How ranks exchange tensors. NCCL needs a GPU of its own for every rank; MPI stages GPU tensors
  // through host memory, so several ranks may share a GPU (how the GPU layouts are tested on one GPU).
  const int gpus = use_cuda ? cuda_device_count() : 0;
  std::string comm = cfg.parallel.comm;
  if (comm == "auto")
    comm = use_cuda && world.size() > 1 && nccl_built() && args.ranks_on_host <= gpus ? "nccl" : "mpi";
  MT_CHECK(comm != "nccl" || use_cuda, "[train] parallel.comm = nccl needs train.device = cuda (GPU tensors); use "
                                       "parallel.comm = mpi on the CPU");
  MT_CHECK(comm != "nccl" || nccl_built(),
           "[train] parallel.comm = nccl, but this build has no NCCL (see CMake's 'NCCL communicator' line); use "
           "parallel.comm = mpi, which stages GPU tensors through host memory");
  MT_CHECK(comm != "nccl" || args.ranks_on_host <= gpus,
           "[train] parallel.comm = nccl needs a GPU per rank, but {} ranks run on this host and it has {} GPU{}; "
           "start at most {} rank{} per host, or use parallel.comm = mpi to let ranks share GPUs",
           args.ranks_on_host, gpus, gpus == 1 ? "" : "s", gpus, gpus == 1 ? "" : "s");
  const int gpu = use_cuda ? (comm == "nccl" ? args.local_rank : args.local_rank % gpus) : -1;
  if (use_cuda) use_cuda_device(gpu);

  const int threads = cfg.train.threads > 0 ? cfg.train.threads : (args.default_threads > 0 ? args.default_threads : available_cores());
  set_num_threads(threads);

  // A CPU that cannot run bf16 GEMMs is refused before any data is prepared.
  if (!use_cuda && cfg.train.precision == "bf16") (void)cpu_bf16_gemm_isa();
  if (cfg.data.train.empty()) {
    MT_CHECK(cfg.data.val.empty() && cfg.data.tokenizer.empty(),
             "[config] data.val / data.tokenizer were set without data.train; set data.train too, or none of them "
             "for the built-in corpus");
    // Rank 0 prepares the corpus; the others then find it ready.
    std::string dir = (fs::path(cfg.train.out_dir) / "data").string();
    if (lead) prepare_builtin_corpus(dir, kBuiltinVocabSize);
    world.barrier();
    BuiltinData d = prepare_builtin_corpus(dir, kBuiltinVocabSize);
    cfg.data.train = d.train;
    cfg.data.val = d.val;
    cfg.data.tokenizer = d.tokenizer;
  }
  std::optional<Tokenizer> tokenizer;
  if (!cfg.data.tokenizer.empty()) {
    cfg.data.tokenizer = fs::absolute(cfg.data.tokenizer).string();
    tokenizer = Tokenizer::load(cfg.data.tokenizer);
  }
  if (cfg.model.vocab_size == 0) {
    MT_CHECK(tokenizer, "[config] model.vocab_size = 0 means 'the tokenizer's', but data.tokenizer is not set");
    cfg.model.vocab_size = tokenizer->vocab_size();
  }
  cfg.model.validate();
  const std::string tokenizer_id = tokenizer ? tokenizer->fingerprint_hex() : "";
  if (saved) {
    check_unchanged(saved->config, cfg);  // the vocabulary, now that it is resolved
    const std::string& was = saved->counters.tokenizer_id;
    MT_CHECK(was.empty() || tokenizer_id.empty() || was == tokenizer_id,
             "[train] data.tokenizer cannot change on resume: the checkpoint was trained with tokenizer {} ('{}'), "
             "this run loads tokenizer {} ('{}'); point data.tokenizer at the checkpoint's tokenizer",
             was, saved->config.data.tokenizer, tokenizer_id, cfg.data.tokenizer);
  }

  auto train_paths = expand_shard_paths(cfg.data.train);
  std::vector<std::string> val_paths;
  if (!cfg.data.val.empty()) val_paths = expand_shard_paths(cfg.data.val);
  if (tokenizer) {
    check_shard_tokenizer(train_paths, tokenizer->fingerprint(), cfg.data.tokenizer);
    check_shard_tokenizer(val_paths, tokenizer->fingerprint(), cfg.data.tokenizer);
  }
  check_shard_vocab(train_paths, cfg.model.vocab_size);
  check_shard_vocab(val_paths, cfg.model.vocab_size);
  const int T = cfg.model.seq_len;
  const int tp_size = cfg.parallel.tp, pp_size = cfg.parallel.pp;
  MT_CHECK(world.size() % (tp_size * pp_size) == 0,
           "[train] parallel.tp x parallel.pp = {} x {} must divide the number of ranks ({}); set parallel.tp and "
           "parallel.pp to fit, or leave all parallel.* keys out on resume to let the run choose",
           tp_size, pp_size, world.size());
  const int dp_size = cfg.parallel.dp > 0 ? cfg.parallel.dp : world.size() / (tp_size * pp_size);
  // The model's device and its stream, then (NCCL) the communicator ordered after that stream.
  std::unique_ptr<Backend> backend = make_run_backend(cfg, use_cuda);
  std::unique_ptr<NcclCommunicator> nccl;
  if (comm == "nccl" && world.size() > 1) {
    nccl = make_nccl_communicator(world, gpu);
    nccl->set_compute_stream(static_cast<CudaStreamHandle>(backend->stream()));
  }
  Communicator& fabric = nccl ? static_cast<Communicator&>(*nccl) : world;
  Mesh mesh(fabric, MeshShape{dp_size, tp_size, pp_size});
  Communicator& dp = mesh.dp();
  // The first and last stage both hold the tied token embedding; their copies' gradients are summed.
  const bool holds_wte = pp_size > 1 && (mesh.pp_rank() == 0 || mesh.pp_rank() == pp_size - 1);
  std::unique_ptr<Communicator> tied =
      fabric.split(holds_wte ? mesh.dp_rank() * tp_size + mesh.tp_rank() : -1, mesh.pp_rank());
  // The global batch of a step, this rank's share, and its micro-batches.
  const BatchSplit split = split_batch(cfg, dp_size);
  MT_CHECK(split.error.empty(), "[train] {}", split.error);
  const int global_rows = split.global_rows, micro_count = split.micro_count, rank_rows = split.rank_rows,
            B = split.micro_rows;
  // (A rank that cannot open its data, for the tests of failing ranks: core/fault.h.)
  const auto rank_paths = test_fault("data", world.rank())
                              ? std::vector<std::string>{cfg.train.out_dir + "/missing_shard_000000.bin"}
                              : train_paths;
  DataLoader loader(rank_paths, T, cfg.train.shuffle, static_cast<uint64_t>(cfg.train.seed));

  AdamWConfig ocfg;
  ocfg.weight_decay = static_cast<float>(cfg.train.weight_decay);
  ocfg.grad_clip = static_cast<float>(cfg.train.grad_clip);
  Gpt model(cfg.model, dp, &mesh.tp(), pp_size, mesh.pp_rank(), std::move(backend));
  model.set_recompute(parse_recompute(cfg.train.recompute));
  // Checkpoints are written from and read into fp32 host memory: a device model stages its weights
  // through a host model of the same shard (the CPU model is its own).
  std::unique_ptr<Gpt> host_copy;
  if (use_cuda) host_copy = std::make_unique<Gpt>(cfg.model, dp, &mesh.tp(), pp_size, mesh.pp_rank());
  Gpt& staging = host_copy ? *host_copy : model;
  // Activations and their gradients travel on communicators of their own: over NCCL each has one
  // stream, which then carries one direction only, so no schedule waits on itself.
  std::unique_ptr<Communicator> pp_backward;
  std::optional<Pipeline> pipe;
  if (pp_size > 1) {
    pp_backward = mesh.pp().split(0, mesh.pp_rank());
    pp_backward->set_name(mesh.pp().name() + "/backward");
    pipe.emplace(model, mesh.pp(), parse_schedule(cfg.parallel.schedule), pp_backward.get());
  }
  DataParallel ddp(model, dp, DataParallelConfig{cfg.parallel.zero, cfg.parallel.bucket_mb}, ocfg, &mesh.pp());
  TrainStep train_step(model, ddp, pipe ? &*pipe : nullptr, tied.get(), dp, cfg.train.cuda_graph);
  RunCounters counters;
  if (!resume_path.empty()) {
    MomentBuffers moments{Tensor::zeros({model.params().numel()}), Tensor::zeros({model.params().numel()})};
    counters = world.size() == 1 ? load_run(resume_path, staging, &moments)
                                 : load_run_sharded(resume_path, staging, &moments, world, mesh.dp_rank());
    if (&staging != &model) ddp.set_params(staging.params().f32());
    ddp.scatter_moments(moments.m, moments.v);
    ddp.optimizer().set_steps(moments.adam_steps);
    loader.set_state(counters.loader);
    if (lead) fmt::print("[train] resumed from {} at step {}; writing into {}\n", resume_path, counters.step,
                         cfg.train.out_dir);
  } else {
    staging.initialize(static_cast<uint64_t>(cfg.train.seed));
    if (&staging != &model) ddp.set_params(staging.params().f32());
  }
  CounterRng sample_rng(static_cast<uint64_t>(cfg.train.seed), 2, static_cast<uint64_t>(counters.rng_counter));

  const int64_t total = cfg.train.steps;
  MT_CHECK(counters.step < total, "[train] the run is already at step {} of train.steps = {}; raise it with --set "
                                  "train.steps=N to continue", counters.step, total);
  counters.tokenizer_id = tokenizer_id;
  LrSchedule schedule = LrSchedule::from_config(cfg.train);
  std::string schedule_note;
  if (saved) {
    LrSchedule before = LrSchedule::from_config(saved->config.train);
    before.anchor_step = counters.lr_anchor_step;
    before.anchor_lr = counters.lr_anchor;
    schedule = schedule_on_resume(before, schedule, counters.step, cfg.train.resume_schedule, &schedule_note);
  }
  counters.lr_anchor_step = schedule.anchor_step;
  counters.lr_anchor = schedule.anchor_lr;
  // Ranks x threads beyond the host's cores: ranks then wait for a core inside collectives. The
  // host's cores are the union of its ranks' affinity masks (mpiexec binds each rank to its own
  // cores; a rank's own mask would undercount), and a rank running more threads than its own mask
  // holds is crowded too. (With several hosts the union is over CPU ids of all of them.)
  const std::vector<int32_t> flags = affinity_flags();
  Tensor cpus = Tensor::empty({static_cast<int64_t>(flags.size())}, DType::i32);
  std::copy(flags.begin(), flags.end(), cpus.data<int32_t>());
  if (world.size() > 1) world.all_reduce(cpus, ReduceOp::max);
  const int cores = std::max(1, static_cast<int>(std::count(cpus.data<int32_t>(), cpus.data<int32_t>() + cpus.numel(), 1)));
  Tensor crowded = Tensor::zeros({1}, DType::i32);
  crowded.data<int32_t>()[0] = args.ranks_on_host * threads > cores || threads > available_cores() ? 1 : 0;
  if (world.size() > 1) world.all_reduce(crowded, ReduceOp::max);
  if (lead) {
    if (!layout_note.empty()) fmt::print("{}\n", layout_note);
    if (!schedule_note.empty()) fmt::print("{}\n", schedule_note);
    if (crowded.data<int32_t>()[0])
      fmt::print("[train] note: {} rank{} x {} thread{} on this host exceed its {} core{}: ranks wait for a core, so "
                 "the communication times below include that waiting, not only data movement\n",
                 args.ranks_on_host, args.ranks_on_host == 1 ? "" : "s", threads, threads == 1 ? "" : "s", cores,
                 cores == 1 ? "" : "s");
    fmt::print("[train] model: {} layers, {} heads, {} channels, T={}, vocab {} (padded {}), {:.2f}M parameters\n",
             cfg.model.n_layer, cfg.model.n_head, cfg.model.n_embd, T, cfg.model.vocab_size,
             cfg.model.padded_vocab(), static_cast<double>(cfg.model.num_params()) / 1e6);
    fmt::print("[train] data: {} training windows of {} tokens; {} sequences per step = {} ranks x {} micro-batches "
               "x {}; {} threads per rank\n", loader.num_windows(), T + 1, global_rows, dp_size, micro_count, B,
               threads);
    if (use_cuda)
      fmt::print("[train] device: {} on {}{}{}\n", model.backend().describe(), cuda_device_description(),
                 cfg.train.cuda_graph ? ", each step replayed as one CUDA graph" : "",
                 world.size() > 1 ? fmt::format("; ranks exchange tensors over {}", comm == "mpi" ? "MPI, staged through host memory" : "NCCL") : "");
    else if (cfg.train.precision == "bf16")
      fmt::print("[train] device: {}\n", model.backend().describe());
    if (world.size() > 1)
      fmt::print("[train] mesh dp {} x tp {} x pp {}: {} gradient buckets, {}\n", dp_size, tp_size, pp_size,
                 ddp.num_buckets(), cfg.parallel.zero ? "ZeRO-1 (optimizer state sharded)" : "optimizer state replicated");
    if (pp_size > 1)
      fmt::print("[train] pipeline: {} stages, {} schedule, {} micro-batches per step: bubble (p-1)/(m+p-1) = {:.1f}% "
                 "of pipeline time\n", pp_size, cfg.parallel.schedule, micro_count,
                 100.0 * Pipeline::bubble_fraction(pp_size, micro_count));
    const size_t state = ddp.optimizer().state_bytes();
    fmt::print("[train] optimizer state on this rank: {} bytes ({:.1f} MiB){}\n", state, state / 1048576.0,
               ddp.optimizer().has_master() ? " incl. fp32 master weights" : "");
    std::fflush(stdout);
  }

  std::vector<int32_t> batch(static_cast<size_t>(rank_rows) * (T + 1)), all_inp(static_cast<size_t>(rank_rows) * T),
      all_tgt(static_cast<size_t>(rank_rows) * T);
  std::optional<StepLog> log;
  if (lead) log.emplace(counters.step, total, cfg.train.log_every, args.metrics, world.size() == 1);
  SampleOptions sopt;
  sopt.max_new_tokens = cfg.train.sample_tokens;
  auto sample = [&](const char* title) {
    // Every rank samples the same tokens (same RNG, same gathered logits); rank 0 prints them.
    if (!tokenizer || args.quiet_samples) return;
    if (lead) log->message(fmt::format("---- sample ({}) ----", title));
    if (lead) log->clear_bar();
    stream_sample(model_logits(model, pipe ? &*pipe : nullptr, sopt.kv_cache), cfg.model, *tokenizer,
                  prompt_tokens(*tokenizer, ""), sopt, sample_rng, file_sink(lead ? stdout : nullptr));
    if (lead) log->message("\n--------------------");
  };

  // MFU against the devices' peak: the one given, else the GPU's from its name (none on the CPU).
  double peak_tflops = cfg.train.peak_tflops;
  if (peak_tflops == 0.0 && use_cuda) peak_tflops = known_peak_tflops(cuda_device_description(), cfg.train.precision == "bf16");

  // Tracing (--trace): steps [first, last] of the window are recorded; all ranks write one file.
  // (Not a structured binding: the lambdas below capture these, which clang 14 refuses for bindings.)
  const std::pair<int64_t, int64_t> trace_window = parse_trace_steps(cfg.train.trace_steps, total);
  const int64_t trace_first = trace_window.first, trace_last = trace_window.second;
  bool trace_pending = !args.trace.empty();
  double trace_offset = 0.0;
  const std::string trace_name = fmt::format("rank {} (dp {}, tp {}, pp {})", world.rank(), mesh.coord().dp,
                                             mesh.coord().tp, mesh.coord().pp);
  auto finish_trace = [&] {
    if (!trace_pending) return;
    trace_pending = false;
    Tracer::get().set_on(false);
    Tracer::get().set_armed(false);
    write_trace(args.trace, world, trace_name, trace_offset);
    if (lead) log->message(fmt::format("[train] trace of steps {}-{} written to {} (open it in ui.perfetto.dev or "
                                       "chrome://tracing)", trace_first, std::min<int64_t>(trace_last, total),
                                       args.trace));
  };
  if (trace_pending) {
    Tracer::get().set_armed(true);
    trace_offset = clock_offset_us(world);
    Tracer::get().name_thread("main");
    // Pipeline neighbours share their dp and tp coordinates: that pair keeps their flows apart from
    // the other pipelines' (core/trace.h).
    Tracer::get().set_flow_scope(static_cast<uint64_t>(mesh.coord().dp * tp_size + mesh.coord().tp));
  }

  StopSignals signals(cfg.train.stop_signal);
  double last_loss = 0.0;
  const int64_t first_step = counters.step;  // (counters.step moves on with each checkpoint)
  for (int64_t step = counters.step; step < total; ++step) {
    Tracer::get().set_step(step + 1);
    // (Injected failures for the tests of failing ranks: core/fault.h.)
    if (test_fault("kill", world.rank(), step + 1)) ::raise(SIGKILL);
    if (test_fault("hang", world.rank(), step + 1))
      while (true) std::this_thread::sleep_for(std::chrono::hours(1));
    if (trace_pending) Tracer::get().set_on(step + 1 >= trace_first && step + 1 <= trace_last);
    std::optional<TraceScope> step_trace;
    step_trace.emplace("step", [&] { return fmt::format("step {}", step + 1); });
    double t0 = now_seconds();
    float lr = schedule.at(step);
    model.take_tp_comm_seconds();  // restart the count (evaluations between steps add to it)
    {
      TraceScope data_trace("data", "data: next batch");
      loader.next_batch(global_rows, dp.rank(), dp_size, batch.data());
    }
    for (int micro = 0; micro < micro_count; ++micro)
      split_windows(batch.data() + static_cast<size_t>(micro) * B * (T + 1), B, T,
                    all_inp.data() + static_cast<size_t>(micro) * B * T, all_tgt.data() + static_cast<size_t>(micro) * B * T);
    const StepResult r = train_step.run(all_inp.data(), all_tgt.data(), micro_count, B, T, lr);
    double dt = now_seconds() - t0;
    step_trace.reset();

    StepRecord rec;
    rec.step = step + 1;
    rec.loss = static_cast<float>(r.loss);
    rec.lr = lr;
    rec.grad_norm = r.grad_norm;
    rec.ms = dt * 1e3;
    rec.tokens_per_s = static_cast<double>(global_rows) * T / dt;
    if (use_cuda) rec.gpu_peak_mib = static_cast<double>(device_memory_peak()) / 1048576.0;
    rec.rss_peak_mib = peak_resident_mib();  // the largest over ranks, below
    if (peak_tflops > 0.0)
      rec.mfu = 100.0 * rec.tokens_per_s * cfg.model.flops_per_token(T) / (peak_tflops * 1e12 * world.size());
    const auto dp_bytes = ddp.take_bytes();
    const auto tp_bytes = model.take_tp_bytes();
    if (world.size() > 1) {
      // Every rank's split and bytes, so the log can give min / mean / max and the slowest rank.
      constexpr int kFields = 11;  // dp, tp, pp, compute and step ms; dp, tp, pp payload bytes; dp, tp bus bytes;
                                   // peak resident MiB
      Tensor mine = Tensor::empty({kFields}), all = Tensor::empty({kFields * static_cast<int64_t>(world.size())});
      float* v = mine.f32();
      v[0] = static_cast<float>(ddp.take_exposed_comm_seconds() * 1e3);
      v[1] = static_cast<float>(model.take_tp_comm_seconds() * 1e3);
      v[2] = static_cast<float>(pipe ? pipe->wait_seconds() * 1e3 : 0.0);
      v[3] = static_cast<float>(dt * 1e3) - v[0] - v[1] - v[2];
      v[4] = static_cast<float>(dt * 1e3);
      v[5] = static_cast<float>(dp_bytes.first);
      v[6] = static_cast<float>(tp_bytes.first);
      v[7] = static_cast<float>(pipe ? pipe->sent_bytes() : 0.0);
      v[8] = static_cast<float>(dp_bytes.second);
      v[9] = static_cast<float>(tp_bytes.second);
      v[10] = static_cast<float>(rec.rss_peak_mib);
      world.all_gather(mine, all);
      const int n = world.size();
      auto field = [&](int rank, int f) { return static_cast<double>(all.f32()[rank * kFields + f]); };
      auto stats = [&](int f, double& lo, double& mean, double& hi) {
        lo = hi = field(0, f);
        mean = 0.0;
        for (int q = 0; q < n; ++q) {
          lo = std::min(lo, field(q, f));
          hi = std::max(hi, field(q, f));
          mean += field(q, f) / n;
        }
      };
      rec.parallel = true;
      stats(0, rec.dp_min_ms, rec.dp_comm_ms, rec.dp_max_ms);
      stats(1, rec.tp_min_ms, rec.tp_comm_ms, rec.tp_max_ms);
      stats(2, rec.pp_min_ms, rec.pp_wait_ms, rec.pp_max_ms);
      stats(3, rec.compute_min_ms, rec.compute_ms, rec.compute_max_ms);
      double rss_lo = 0.0, rss_mean = 0.0;
      stats(10, rss_lo, rss_mean, rec.rss_peak_mib);
      double lo = 0.0, mean = 0.0;
      stats(4, lo, mean, rec.max_ms);
      for (int q = 0; q < n; ++q)
        if (field(q, 4) == rec.max_ms) {
          rec.slowest_rank = q;
          break;
        }
      for (int q = 0; q < n; ++q) {
        rec.dp_bytes += field(q, 5) / n;
        rec.tp_bytes += field(q, 6) / n;
        rec.pp_bytes += field(q, 7) / n;
      }
      // Bus bandwidth: each rank's bus bytes over its waiting time on the axis, then the mean over ranks
      // (pipeline sends are point-to-point: their bus bytes are their payload).
      auto rate = [](double bus_bytes, double ms) { return ms > 0.0 ? bus_bytes / (ms * 1e-3) / 1e9 : 0.0; };
      for (int q = 0; q < n; ++q) {
        rec.dp_busbw += rate(field(q, 8), field(q, 0)) / n;
        rec.tp_busbw += rate(field(q, 9), field(q, 1)) / n;
        rec.pp_busbw += rate(field(q, 7), field(q, 2)) / n;
      }
    }
    bool last = step + 1 == total;
    // Every rank evaluates (tensor-parallel ranks must run the model together); rank 0 reports.
    if (!val_paths.empty() && ((cfg.train.eval_every > 0 && rec.step % cfg.train.eval_every == 0) || last)) {
      TraceScope eval_trace("eval", "evaluation");
      rec.val_loss = evaluate(
          [&](const int32_t* in, const int32_t* tg, int b, int t) {
            return pipe ? pipe->loss(in, tg, b, t) : model.forward(in, tg, b, t);
          },
          val_paths, cfg);
    }
    if (lead) log->record(rec);
    last_loss = rec.loss;
    // After the first step every activation buffer exists: what forward keeps for backward, per
    // micro-batch in flight (pipeline 1F1B keeps several), under the recomputation mode.
    if (lead && step == first_step)
      log->message(fmt::format("[train] activations kept for backward on rank 0: {:.1f} MiB (train.recompute = {})",
                               model.activation_bytes() / 1048576.0, cfg.train.recompute));

    if (cfg.train.sample_every > 0 && rec.step % cfg.train.sample_every == 0 && !last)
      sample(fmt::format("step {}", rec.step).c_str());
    // A stop signal on any rank stops every rank after this step, with a checkpoint.
    Tensor stop = Tensor::zeros({1}, DType::i32);
    stop.data<int32_t>()[0] = signals.received();
    if (world.size() > 1) world.all_reduce(stop, ReduceOp::max);
    const int stop_signal = stop.data<int32_t>()[0];
    if ((cfg.train.checkpoint_every > 0 && rec.step % cfg.train.checkpoint_every == 0) || last || stop_signal) {
      TraceScope checkpoint_trace("checkpoint", "checkpoint save");
      counters.step = rec.step;
      counters.loader = loader.state();
      counters.rng_counter = static_cast<int64_t>(sample_rng.counter());
      // ZeRO-1 shards of the moments are written by their owners; otherwise the moments are whole here.
      const bool zero_shards = cfg.parallel.zero == 1 && dp_size > 1;
      MomentBuffers moments{Tensor(), Tensor(), ddp.optimizer().steps()};
      if (!zero_shards) {
        moments.m = Tensor::zeros({model.params().numel()});
        moments.v = Tensor::zeros({model.params().numel()});
        ddp.gather_moments(moments.m, moments.v);
      }
      if (&staging != &model) ddp.get_params(staging.params());  // the fp32 weights, for the file
      // The file must be new: a run replaces no checkpoint it did not write (all ranks see the same folder).
      const std::string target = checkpoint_path(cfg.train.out_dir, rec.step);
      MT_CHECK(!fs::exists(target),
               "[train] refusing to replace '{}', which this run did not write; move it away or choose another "
               "train.out_dir", target);
      std::string path =
          world.size() == 1
              ? save_run(cfg, staging, moments, counters)
              : save_run_sharded(cfg, staging, moments, counters, world, mesh.dp_rank(),
                                 fmt::format("dp={} tp={} pp={} zero={}", dp_size, tp_size, pp_size, cfg.parallel.zero),
                                 zero_shards ? &ddp.optimizer() : nullptr);
      if (lead) {
        update_latest(cfg.train.out_dir, path);  // last: only a complete checkpoint becomes "latest"
        auto removed = prune_checkpoints(cfg.train.out_dir, cfg.train.keep_checkpoints);
        log->message(fmt::format("[train] checkpoint {}{}", path,
                                 removed.empty() ? "" : fmt::format(" (removed {} older)", removed.size())));
      }
      world.barrier();  // no rank runs ahead of a checkpoint that may yet fail
      if (stop_signal) {
        finish_trace();
        if (lead) {
          log->clear_bar();
          fmt::print(stderr,
                     "[train] stopped by {} after step {} of {}; checkpoint {}\n"
                     "[train] continue with: meshtrain train --resume {} (and the same --config/--set arguments)\n",
                     signal_name(stop_signal), rec.step, total, path, cfg.train.out_dir);
        }
        return {last_loss, stop_signal};
      }
    }
    if (rec.step >= trace_last) finish_trace();
  }
  finish_trace();
  if (cfg.train.sample_every >= 0) sample("final");
  return {last_loss, 0};
}

void split_windows(const int32_t* rows, int B, int T, int32_t* inp, int32_t* tgt) {
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < T; ++t) {
      inp[b * T + t] = rows[b * (T + 1) + t];
      tgt[b * T + t] = rows[b * (T + 1) + t + 1];
    }
}

double evaluate(const LossFn& loss, const std::vector<std::string>& val_paths, const Config& cfg) {
  // Always the same first eval_batches windows, so values are comparable across steps and runs.
  const int B = cfg.train.batch_size, T = cfg.model.seq_len;
  DataLoader val(val_paths, T, false, 0);
  std::vector<int32_t> batch(static_cast<size_t>(B) * (T + 1)), inp(static_cast<size_t>(B) * T),
      tgt(static_cast<size_t>(B) * T);
  int n = static_cast<int>(std::min<int64_t>(cfg.train.eval_batches, std::max<int64_t>(1, val.num_windows() / B)));
  double sum = 0.0;
  for (int i = 0; i < n; ++i) {
    val.next_batch(B, 0, 1, batch.data());
    split_windows(batch.data(), B, T, inp.data(), tgt.data());
    sum += loss(inp.data(), tgt.data(), B, T);
  }
  return sum / n;
}

}  // namespace meshtrain
