// GPT-2 124M training on one GPU: the largest micro-batch that fits (or --batch), tokens/s eager and
// with the step replayed as a CUDA graph, MFU against the card's dense bf16 peak, peak device memory
// and time per kernel family (one profiled step, synchronised around each family). Random tokens, no
// data files. Prints numbers (a markdown table), never fails on a slow card; without a GPU it says so
// and exits 0.
//
// FLOPs per token = 6 N + 12 L C T (N = parameters in the matmuls: the blocks plus the tied LM head,
// wpe excluded; the attention term counts QK^T and AV over all T keys, as PaLM's appendix does).
//
// Usage: gpu_train_bench [--precision bf16|fp32] [--T N] [--batch N] [--steps N] [--peak-tflops X]
//                        [--attention flash|materialised] [--recompute none|selective|full] [--layers N]
#include <cstdio>
#include <exception>
#include <map>
#include <string>
#include <vector>

#include "core/device.h"
#include "core/rng.h"
#include "core/timer.h"
#include "model/backend.h"
#include "core/communicator.h"
#include "launch/train/train_step.h"
#include "model/gpt.h"
#include "parallel/data_parallel.h"

using namespace meshtrain;

namespace {

struct Options {
  std::string precision = "bf16", attention = "flash", recompute = "none";
  int T = 1024, batch = 0, steps = 20, layers = 12;
  double peak_tflops = 989.0;  // H100/H200 SXM dense bf16
};

/// The trainer's own step (launch/train/train_step.h) on one GPU: model, data parallelism of one
/// rank (the optimizer) and the step, as `meshtrain train` builds them.
struct Trainer {
  LocalCommunicator one;
  std::unique_ptr<Gpt> model;
  std::unique_ptr<DataParallel> ddp;
  std::unique_ptr<TrainStep> step;
  StepResult run(const std::vector<int32_t>& tok, const std::vector<int32_t>& tgt, int B, int T) {
    return step->run(tok.data(), tgt.data(), 1, B, T, 1e-4f);
  }
};

std::unique_ptr<Trainer> make_trainer(const GptConfig& cfg, const Options& o, bool graph) {
  auto t = std::make_unique<Trainer>();
  t->model = std::make_unique<Gpt>(
      cfg, t->one, nullptr, 1, 0,
      make_cuda_backend(o.precision == "bf16" ? DType::bf16 : DType::f32,
                        o.attention == "flash" ? AttentionKind::flash : AttentionKind::materialised));
  t->model->set_recompute(parse_recompute(o.recompute));
  t->ddp = std::make_unique<DataParallel>(*t->model, t->one, DataParallelConfig{}, AdamWConfig{});
  t->step = std::make_unique<TrainStep>(*t->model, *t->ddp, nullptr, nullptr, t->one, graph);
  std::vector<float> host(static_cast<size_t>(t->model->table().total()));
  t->model->table().initialize(host.data(), 1);
  t->ddp->set_params(host.data());
  return t;
}

struct Batch {
  std::vector<int32_t> tok, tgt;
};

Batch random_batch(const GptConfig& cfg, int B, int T, uint64_t seed) {
  CounterRng rng(seed, 7);
  Batch b;
  b.tok.resize(static_cast<size_t>(B) * T);
  b.tgt.resize(b.tok.size());
  for (size_t i = 0; i < b.tok.size(); ++i) {
    b.tok[i] = static_cast<int32_t>(rng.below(static_cast<uint64_t>(cfg.vocab_size)));
    b.tgt[i] = static_cast<int32_t>(rng.below(static_cast<uint64_t>(cfg.vocab_size)));
  }
  return b;
}

struct Timing {
  double ms = 0.0, tokens_per_s = 0.0, loss = 0.0;
};

Timing time_steps(Trainer& t, const GptConfig& cfg, int B, int T, int steps) {
  Batch b = random_batch(cfg, B, T, 3);
  for (int i = 0; i < 3; ++i) t.run(b.tok, b.tgt, B, T);  // warm-up (and capture)
  double t0 = now_seconds();
  Timing r;
  for (int i = 0; i < steps; ++i) r.loss = t.run(b.tok, b.tgt, B, T).loss;
  double dt = (now_seconds() - t0) / steps;
  r.ms = dt * 1e3;
  r.tokens_per_s = static_cast<double>(B) * T / dt;
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "gpu_train_bench: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--precision") o.precision = next();
    else if (a == "--attention") o.attention = next();
    else if (a == "--recompute") o.recompute = next();
    else if (a == "--T") o.T = std::stoi(next());
    else if (a == "--batch") o.batch = std::stoi(next());
    else if (a == "--steps") o.steps = std::stoi(next());
    else if (a == "--layers") o.layers = std::stoi(next());
    else if (a == "--peak-tflops") o.peak_tflops = std::stod(next());
    else {
      std::fprintf(stderr,
                   "usage: %s [--precision bf16|fp32] [--T N] [--batch N] [--steps N] [--peak-tflops X] "
                   "[--attention flash|materialised] [--recompute none|selective|full] [--layers N]\n",
                   argv[0]);
      return a == "--help" ? 0 : 2;
    }
  }
  if (cuda_device_count() == 0) {
    std::printf("gpu_train_bench: no CUDA device; skipped\n");
    return 0;
  }
  GptConfig cfg;  // GPT-2 124M
  cfg.vocab_size = 50257;
  cfg.seq_len = o.T;
  cfg.n_layer = o.layers;
  cfg.n_head = 12;
  cfg.n_embd = 768;
  const int T = o.T;
  try {
    std::printf("device: %s\n", cuda_device_description().c_str());
    // The largest micro-batch that fits: try from large to small; an allocation failure frees everything.
    std::vector<int> tries = o.batch > 0 ? std::vector<int>{o.batch} : std::vector<int>{128, 96, 64, 48, 32, 16, 8, 4, 2, 1};
    int B = 0;
    for (int b : tries) {
      try {
        auto t = make_trainer(cfg, o, false);
        Batch x = random_batch(cfg, b, T, 1);
        t->run(x.tok, x.tgt, b, T);
        B = b;
        break;
      } catch (const std::exception& e) {
        if (std::string(e.what()).find("out of") == std::string::npos) throw;  // out of (device) memory
        std::printf("micro-batch %d does not fit\n", b);
      }
    }
    if (B == 0) {
      std::printf("gpu_train_bench: not even a micro-batch of 1 fits\n");
      return 0;
    }
    const double N = static_cast<double>(cfg.num_params()) - static_cast<double>(cfg.seq_len) * cfg.n_embd;
    const double flops_per_token = 6.0 * N + 12.0 * cfg.n_layer * cfg.n_embd * T;

    std::map<std::string, double> families;
    double profiled_ms = 0.0;
    Timing eager, graph;
    size_t peak = 0;
    {
      auto t = make_trainer(cfg, o, false);
      device_memory_reset_peak();
      eager = time_steps(*t, cfg, B, T, o.steps);
      peak = device_memory_peak();
      // One step with a profiler: each family's kernels timed between device synchronisations.
      Profiler prof;
      t->model->set_profiler(&prof);
      Batch x = random_batch(cfg, B, T, 5);
      double t0 = now_seconds();
      t->run(x.tok, x.tgt, B, T);
      profiled_ms = (now_seconds() - t0) * 1e3;
      families.insert(prof.totals().begin(), prof.totals().end());
    }
    {
      auto t = make_trainer(cfg, o, true);
      graph = time_steps(*t, cfg, B, T, o.steps);
    }
    auto mfu = [&](const Timing& x) { return 100.0 * x.tokens_per_s * flops_per_token / (o.peak_tflops * 1e12); };
    std::printf("\nGPT-2 124M (%d layers), %s, %s attention, recompute %s, T=%d, micro-batch %d (largest that fits%s)\n",
                cfg.n_layer, o.precision.c_str(), o.attention.c_str(), o.recompute.c_str(), T, B,
                o.batch > 0 ? ": given" : "");
    std::printf("FLOPs/token %.3e (6N + 12LCT, N = %.1fM); MFU against %.0f TFLOP/s\n\n", flops_per_token, N / 1e6,
                o.peak_tflops);
    std::printf("| mode | ms/step | tokens/s | MFU | peak memory |\n|---|---|---|---|---|\n");
    std::printf("| eager | %.1f | %.0f | %.1f%% | %.2f GiB |\n", eager.ms, eager.tokens_per_s, mfu(eager),
                static_cast<double>(peak) / (1 << 30));
    std::printf("| CUDA graph | %.1f | %.0f | %.1f%% | |\n", graph.ms, graph.tokens_per_s, mfu(graph));
    std::printf("\nTime per kernel family (one step, synchronised around each family: %.1f ms in all)\n\n", profiled_ms);
    std::printf("| family | ms | share |\n|---|---|---|\n");
    double sum = 0.0;
    for (const auto& [name, s] : families) {
      std::printf("| %s | %.2f | %.1f%% |\n", name.c_str(), s * 1e3, 100.0 * s * 1e3 / profiled_ms);
      sum += s * 1e3;
    }
    std::printf("| optimizer + other | %.2f | %.1f%% |\n", profiled_ms - sum, 100.0 * (profiled_ms - sum) / profiled_ms);
    std::printf("\nlosses (random tokens, ~ln V = 10.8): eager %.4f, graph %.4f\n", eager.loss, graph.loss);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "gpu_train_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
