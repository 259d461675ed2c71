// One data-parallel training step (forward, backward with overlapped bucket reductions, AdamW or
// ZeRO-1) on random tokens, timed per region on every rank and printed min / mean / max over ranks:
// where a step's time goes between compute and communication, and how much of the communication
// is exposed. Usage: mpiexec -n N dp_step_bench [--zero 0|1] [--steps S] [--warmup W] [--threads N]
// [--set section.key=value]...
#include <algorithm>
#include <cstdio>
#include <exception>
#include <memory>
#include <string>
#include <vector>

#include "core/rng.h"
#include "core/threads.h"
#include "core/timer.h"
#include "launch/config.h"
#include "model/gpt.h"
#include "parallel/data_parallel.h"
#include "parallel/mesh.h"
#include "parallel/mpi_runtime.h"

using namespace meshtrain;

namespace {

// Per-step seconds of one rank, in the order they are printed.
enum Metric {
  kStep,
  kForward,
  kBackward,
  kBackwardPlain,
  kOptimizer,
  kCompute,
  kReduceInFlight,
  kHookWork,
  kFinishWait,
  kStepComm,
  kExposed,
  kMetrics
};
constexpr const char* kMetricNames[kMetrics] = {
    "step",
    "forward",
    "backward, armed",
    "backward, not armed (baseline)",
    "optimizer (step() minus its comm)",
    "compute (step - exposed comm)",
    "bucket reductions: launch->complete",
    "exposed: MPI work in backward hooks",
    "exposed: wait in finish()",
    "exposed: ZeRO-1 norm + all-gather",
    "exposed comm total",
};

struct Options {
  Config cfg;
  int steps = 10, warmup = 2, threads = 1;
};

Options parse(int argc, char** argv) {
  Options o;
  o.cfg = default_config();
  // Small enough for 4 ranks sharing 2 cores; the train_step_bench model is not.
  o.cfg.model.n_layer = 4;
  o.cfg.model.n_head = 4;
  o.cfg.model.n_embd = 128;
  o.cfg.model.seq_len = 128;
  o.cfg.model.vocab_size = 8192;
  o.cfg.train.batch_size = 8;  // the global batch, split over the ranks
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--zero" && i + 1 < argc)
      o.cfg.parallel.zero = std::stoi(argv[++i]);
    else if (a == "--steps" && i + 1 < argc)
      o.steps = std::stoi(argv[++i]);
    else if (a == "--warmup" && i + 1 < argc)
      o.warmup = std::stoi(argv[++i]);
    else if (a == "--threads" && i + 1 < argc)
      o.threads = std::stoi(argv[++i]);
    else if (a == "--set" && i + 1 < argc)
      apply_override(o.cfg, argv[++i]);
    else
      MT_FAIL(
          "[dp_step_bench] unknown argument '{}'; usage: dp_step_bench [--zero 0|1] [--steps S] [--warmup W] "
          "[--threads N] [--set section.key=value]...",
          a);
  }
  validate_config(o.cfg);
  o.cfg.model.validate();
  MT_CHECK(o.steps > 0 && o.warmup >= 0 && o.threads > 0,
           "[dp_step_bench] --steps and --threads must be > 0, --warmup >= 0");
  return o;
}

// Runs the benchmark on this rank; returns the per-step means of every metric (seconds).
std::vector<double> run(const Options& o, Communicator& world, bool lead) {
  const Config& cfg = o.cfg;
  Mesh mesh(world, MeshShape{world.size(), 1, 1});
  Communicator& dp = mesh.dp();
  const int global_rows = cfg.train.batch_size, T = cfg.model.seq_len;
  MT_CHECK(global_rows % dp.size() == 0,
           "[dp_step_bench] train.batch_size {} (the global batch) must divide over {} ranks", global_rows, dp.size());
  const int B = global_rows / dp.size();
  set_num_threads(o.threads);

  Gpt model(cfg.model, dp);
  model.initialize(static_cast<uint64_t>(cfg.train.seed));
  DataParallel ddp(model, dp, DataParallelConfig{cfg.parallel.zero, cfg.parallel.bucket_mb}, AdamWConfig{});
  // Every rank draws the whole global batch from one seed and takes its rows, as the loader would.
  CounterRng rng(static_cast<uint64_t>(cfg.train.seed), 5);
  std::vector<int32_t> inp(static_cast<size_t>(global_rows) * T), tgt(inp.size());
  for (size_t i = 0; i < inp.size(); ++i) {
    inp[i] = static_cast<int32_t>(rng.below(cfg.model.vocab_size));
    tgt[i] = static_cast<int32_t>(rng.below(cfg.model.vocab_size));
  }
  const size_t first = static_cast<size_t>(dp.rank()) * B * T;

  if (lead) {
    std::printf(
        "model: L=%d H=%d C=%d T=%d vocab=%d, %.2fM params | %d ranks x %d rows (global batch %d) | "
        "%d thread(s)/rank\n",
        cfg.model.n_layer, cfg.model.n_head, cfg.model.n_embd, T, cfg.model.vocab_size, cfg.model.num_params() / 1e6,
        dp.size(), B, global_rows, o.threads);
    std::printf("zero %d | %lld buckets of <= %.2f MiB | optimizer state %.2f MiB/rank | %d warm-up + %d steps\n",
                cfg.parallel.zero, static_cast<long long>(ddp.num_buckets()), cfg.parallel.bucket_mb,
                ddp.optimizer().state_bytes() / 1048576.0, o.warmup, o.steps);
    std::fflush(stdout);
  }

  std::vector<double> sum(kMetrics, 0.0);
  for (int s = -o.warmup; s < o.steps; ++s) {
    dp.barrier();  // every rank starts the step together, so waits measure the step, not skew
    const double t0 = now_seconds();
    model.zero_grad();
    ddp.arm();
    model.forward(inp.data() + first, tgt.data() + first, B, T, true, 1.0f);
    const double t1 = now_seconds();
    model.backward();
    const double t2 = now_seconds();
    ddp.finish();
    const double finish_wait = ddp.take_exposed_comm_seconds();
    ddp.step(3e-4f);
    const double t3 = now_seconds();
    if (s < 0) continue;

    // The same backward with nothing armed: on the CPU a collective advances only inside MPI calls,
    // so the launches and polls made from the hooks are communication work charged to backward.
    dp.barrier();
    model.zero_grad();
    model.forward(inp.data() + first, tgt.data() + first, B, T, true, 1.0f);
    const double t4 = now_seconds();
    model.backward();
    const double plain = now_seconds() - t4;

    // Launch to observed completion: a completion is only seen at the next poll (in a hook or in
    // finish()), so this is an upper bound on how long the reductions took.
    double first_launch = 0, last_done = 0;
    for (const auto& b : ddp.last_timings()) {
      if (b.launched == 0.0) continue;
      first_launch = first_launch == 0.0 ? b.launched : std::min(first_launch, b.launched);
      last_done = std::max(last_done, b.completed);
    }
    const double step_comm = ddp.take_exposed_comm_seconds();
    // One rank installs no hook, so any difference there is noise; elsewhere noise can make it negative.
    const double hook_work = dp.size() > 1 ? std::max(0.0, (t2 - t1) - plain) : 0.0;
    const double exposed = hook_work + finish_wait + step_comm;
    sum[kStep] += t3 - t0;
    sum[kForward] += t1 - t0;
    sum[kBackward] += t2 - t1;
    sum[kBackwardPlain] += plain;
    sum[kOptimizer] += (t3 - t2 - finish_wait) - step_comm;
    sum[kCompute] += (t3 - t0) - exposed;
    sum[kReduceInFlight] += first_launch > 0.0 ? last_done - first_launch : 0.0;
    sum[kHookWork] += hook_work;
    sum[kFinishWait] += finish_wait;
    sum[kStepComm] += step_comm;
    sum[kExposed] += exposed;
  }
  for (auto& v : sum) v /= o.steps;
  return sum;
}

// Every rank's metrics on every rank (f32 over the world), then rank 0 prints min / mean / max.
void report(const std::vector<double>& mine, Communicator& world, int global_rows, int T) {
  const int n = world.size();
  Tensor local = Tensor::empty({kMetrics}), all = Tensor::empty({static_cast<int64_t>(kMetrics) * n});
  for (int k = 0; k < kMetrics; ++k) local.f32()[k] = static_cast<float>(mine[k]);
  world.all_gather(local, all);
  if (world.rank() != 0) return;
  auto stat = [&](int k, double& lo, double& mean, double& hi) {
    lo = 1e30, hi = -1e30, mean = 0.0;
    for (int r = 0; r < n; ++r) {
      const double v = all.f32()[r * kMetrics + k];
      lo = std::min(lo, v), hi = std::max(hi, v), mean += v / n;
    }
  };
  std::printf("\n%-36s %9s %9s %9s\n", "ms per step (over ranks)", "min", "mean", "max");
  for (int k = 0; k < kMetrics; ++k) {
    double lo, mean, hi;
    stat(k, lo, mean, hi);
    std::printf("%-36s %9.2f %9.2f %9.2f\n", kMetricNames[k], lo * 1e3, mean * 1e3, hi * 1e3);
  }
  // Fractions of the rank means: a step lasts as long as the mean rank spends in it.
  double lo, step, hi, exposed, in_flight, finish_wait, hook_work;
  stat(kStep, lo, step, hi);
  stat(kExposed, lo, exposed, hi);
  stat(kReduceInFlight, lo, in_flight, hi);
  stat(kFinishWait, lo, finish_wait, hi);
  stat(kHookWork, lo, hook_work, hi);
  std::printf("\nexposed (non-overlapped) communication: %.1f%% of the step", 100.0 * exposed / step);
  if (in_flight > 0.0)
    std::printf("; bucket reductions overlapped with compute: %.0f%% of launch->complete",
                100.0 * std::max(0.0, 1.0 - (finish_wait + hook_work) / in_flight));
  std::printf("\nthroughput: %.0f tokens/s (mean step)\n", global_rows * static_cast<double>(T) / step);
}

}  // namespace

int main(int argc, char** argv) {
  std::unique_ptr<MpiRuntime> runtime;
  std::unique_ptr<Communicator> world;
  try {
    runtime = MpiRuntime::init_if_launched(&argc, &argv);
    world = world_communicator(runtime.get());
    Options o = parse(argc, argv);
    std::vector<double> mine = run(o, *world, world->rank() == 0);
    report(mine, *world, o.cfg.train.batch_size, o.cfg.model.seq_len);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "[rank %d] %s\n", world ? world->rank() : 0, e.what());
    std::fflush(stderr);
    if (world && world->size() > 1) world->abort(1);  // the other ranks may be waiting in a collective
    return 1;
  }
  return 0;
}
