// Whole training step of the benchmark model on the CPU: forward, backward and AdamW on random
// tokens, with time per layer family, achieved GFLOP/s and peak resident memory. Prints numbers,
// never fails on a slow machine. Usage: train_step_bench [--steps N] [--threads N] [--trace] [--precision bf16]
// [--set key=value]... --trace records trace regions as `train --trace` does (without writing them): the
// cost of tracing. --precision bf16 times the fp32 step and then the step with bf16 GEMMs (oneDNN;
// train.precision = bf16 on the CPU) in the same run, each with its per-family table.
#include <sys/resource.h>

#include <cstdio>
#include <string>
#include <vector>

#include "core/gemm.h"
#include "core/gemm_onednn.h"
#include "core/rng.h"
#include "core/threads.h"
#include "core/timer.h"
#include "core/trace.h"
#include "launch/config.h"
#include "model/backend.h"
#include "model/gpt.h"
#include "model/optimizer.h"
#include "core/communicator.h"

using namespace meshtrain;

int main(int argc, char** argv) {
  Config cfg = default_config();
  cfg.model = GptConfig{};  // n_layer 4, n_head 4, n_embd 256, seq_len 256, vocab 50257
  cfg.train.batch_size = 4;
  int steps = 5, threads = 2;
  bool trace = false;  // record trace regions (core/trace.h), as `train --trace` does
  std::string precision = "fp32";
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--steps" && i + 1 < argc) steps = std::stoi(argv[++i]);
    else if (a == "--threads" && i + 1 < argc) threads = std::stoi(argv[++i]);
    else if (a == "--trace") trace = true;
    else if (a == "--precision" && i + 1 < argc) precision = argv[++i];
    else if (a == "--set" && i + 1 < argc) apply_override(cfg, argv[++i]);
    else {
      std::fprintf(stderr, "usage: %s [--steps N] [--threads N] [--trace] [--precision fp32|bf16] "
                   "[--set section.key=value]...\n", argv[0]);
      return 2;
    }
  }
  if (precision != "fp32" && precision != "bf16") {
    std::fprintf(stderr, "--precision must be fp32 or bf16 (got '%s')\n", precision.c_str());
    return 2;
  }
  set_num_threads(threads);
  Tracer::get().set_on(trace);
  const int B = cfg.train.batch_size, T = cfg.model.seq_len, V = cfg.model.vocab_size;
  LocalCommunicator comm;
  CounterRng rng(42, 0);
  std::vector<int32_t> inp(static_cast<size_t>(B) * T), tgt(inp.size());
  for (size_t i = 0; i < inp.size(); ++i) {
    inp[i] = static_cast<int32_t>(rng.below(V));
    tgt[i] = static_cast<int32_t>(rng.below(V));
  }
  Profiler prof;
  double flops = cfg.model.flops_per_token(T) * B * T;
  std::printf("model: L=%d H=%d C=%d T=%d B=%d vocab=%d (padded %d), %.2fM params, %.1f GFLOP/step, %d threads, "
              "recompute %s\n", cfg.model.n_layer, cfg.model.n_head, cfg.model.n_embd, T, B, V,
              cfg.model.padded_vocab(), cfg.model.num_params() / 1e6, flops / 1e9, threads,
              cfg.train.recompute.c_str());
  double fp32_mean = 0.0;
  size_t activation_bytes = 0, param_bytes = 0;
  for (const bool bf16 : {false, true}) {
  if (bf16 && precision != "bf16") break;
  std::unique_ptr<Backend> backend;
  try {
    backend = make_cpu_backend(bf16);
  } catch (const std::exception& e) {
    std::printf("\nbf16 GEMMs: %s\n", e.what());
    break;
  }
  std::printf("\n== %s\n", backend->describe().c_str());
  Gpt model(cfg.model, comm, nullptr, 1, 0, std::move(backend));
  model.set_recompute(parse_recompute(cfg.train.recompute));
  model.initialize(1);
  AdamW opt(model.table(), AdamWConfig{});
  prof.clear();
  double best = 1e30, sum = 0.0;
  for (int s = -1; s < steps; ++s) {  // step -1 warms up (allocations, page faults)
    if (s == 0) prof.clear();
    model.set_profiler(s >= 0 ? &prof : nullptr);
    double t0 = now_seconds();
    model.zero_grad();
    model.forward(inp.data(), tgt.data(), B, T, true, 1.0f);
    model.backward();
    {
      ScopedTimer t(s >= 0 ? &prof : nullptr, "adamw");
      opt.step(model.params(), model.grads(), 1e-4f);
    }
    double dt = now_seconds() - t0;
    if (s >= 0) {
      best = std::min(best, dt);
      sum += dt;
      std::printf("step %d: %.1f ms\n", s + 1, dt * 1e3);
      Tracer::get().take();  // as a trace window would, without the file
    }
  }
  double mean = sum / steps;
  std::printf("\nms/step: mean %.1f, best %.1f | %.1f GFLOP/s (mean) | %.0f tokens/s\n", mean * 1e3, best * 1e3,
              flops / mean / 1e9, B * T / mean);
  std::printf("\n%-14s %10s %7s\n", "region", "ms/step", "share");
  double total = 0.0;
  for (const auto& [k, v] : prof.totals()) total += v;
  for (const auto& [k, v] : prof.totals())
    std::printf("%-14s %10.1f %6.1f%%\n", k.c_str(), v / steps * 1e3, 100.0 * v / total);
  if (!bf16) fp32_mean = mean;
  else std::printf("\nbf16 GEMMs against fp32: %.2fx faster (%.1f -> %.1f ms/step)\n", fp32_mean / mean,
                   fp32_mean * 1e3, mean * 1e3);
  activation_bytes = model.activation_bytes();
  param_bytes = model.params().nbytes();
  }
  // The machine's sgemm rate on a square product, the ceiling a step's GEMM-bound work can reach.
  {
    const int n = 1024;
    std::vector<float> a(n * n, 0.5f), b(n * n, 0.25f), c(n * n, 0.0f);
    gemm_cpu(false, false, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n);
    double t0 = now_seconds();
    const int reps = 10;
    for (int r = 0; r < reps; ++r) gemm_cpu(false, false, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n);
    double gf = 2.0 * n * n * n * reps / (now_seconds() - t0) / 1e9;
    std::printf("\nOpenBLAS sgemm 1024^3: %.1f GFLOP/s; the fp32 step reaches %.0f%% of it (perfect step %.0f ms)\n",
                gf, 100.0 * flops / fp32_mean / 1e9 / gf, flops / gf / 1e6);
  }
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  std::printf("\npeak resident memory: %.1f MiB (activations %.1f MiB, parameters+grads+moments %.1f MiB)\n",
              ru.ru_maxrss / 1024.0, activation_bytes / 1048576.0, 4.0 * param_bytes / 1048576.0);
  return 0;
}
