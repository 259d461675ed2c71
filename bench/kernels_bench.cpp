// Google Benchmark of the CPU reference kernels at the benchmark model's shapes (GPT-2 with 4 layers,
// 4 heads, C 256, B 4 x T 256 = 1024 rows, vocabulary 50257 padded to 50304), forward and backward,
// with item, byte and FLOP rates; plus every kernel of one training step in sequence, the number the
// 0.8 s step budget is about. Runs on 2 threads unless MESHTRAIN_BENCH_THREADS says otherwise.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "core/rng.h"
#include "core/threads.h"
#include "model/kernels/adamw.h"
#include "model/kernels/attention.h"
#include "model/kernels/crossentropy.h"
#include "model/kernels/encoder.h"
#include "model/kernels/gelu.h"
#include "model/kernels/layernorm.h"
#include "model/kernels/matmul.h"
#include "model/kernels/residual.h"

namespace meshtrain {
namespace {

constexpr int kB = 4, kT = 256, kC = 256, kNH = 4, kLayers = 4, kV = 50257, kVp = 50304;
constexpr int kN = kB * kT;

using Vec = std::vector<float>;

Vec random_vec(int64_t n, uint64_t seed, float std = 1.0f) {
  Vec v(static_cast<size_t>(n));
  fill_normal(v.data(), n, seed, "bench", 0, std);
  return v;
}

std::vector<int32_t> random_tokens(int64_t n, uint64_t seed) {
  CounterRng rng(seed);
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (auto& x : t) x = static_cast<int32_t>(rng.below(kV));
  return t;
}

// Per-iteration work, reported by Google Benchmark as rates.
void set_rates(benchmark::State& state, double items, double bytes, double flops = 0.0) {
  state.SetItemsProcessed(static_cast<int64_t>(items) * state.iterations());
  if (bytes > 0.0) state.SetBytesProcessed(static_cast<int64_t>(bytes) * state.iterations());
  if (flops > 0.0) state.counters["FLOP/s"] = benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate);
}

constexpr double kF = sizeof(float);

void BM_encoder_forward(benchmark::State& state) {
  Vec wte = random_vec(int64_t{kVp} * kC, 1, 0.02f), wpe = random_vec(kT * kC, 2, 0.02f), out(kN * kC);
  auto tokens = random_tokens(kN, 3);
  for (auto _ : state) encoder_forward_cpu(out.data(), tokens.data(), wte.data(), wpe.data(), kB, kT, kC);
  set_rates(state, kN, 3.0 * kN * kC * kF);
}

void BM_encoder_backward(benchmark::State& state) {
  Vec dwte(int64_t{kVp} * kC, 0.0f), dwpe(kT * kC, 0.0f), dout = random_vec(kN * kC, 4);
  auto tokens = random_tokens(kN, 5);
  for (auto _ : state) encoder_backward_cpu(dwte.data(), dwpe.data(), dout.data(), tokens.data(), kB, kT, kC);
  set_rates(state, kN, 5.0 * kN * kC * kF);
}

void BM_layernorm_forward(benchmark::State& state) {
  Vec inp = random_vec(kN * kC, 6), w = random_vec(kC, 7), b = random_vec(kC, 8), out(kN * kC), mean(kN), rstd(kN);
  for (auto _ : state) {
    layernorm_forward_cpu(out.data(), mean.data(), rstd.data(), inp.data(), w.data(), b.data(), kN, kC);
  }
  set_rates(state, kN, 2.0 * kN * kC * kF, 8.0 * kN * kC);
}

void BM_layernorm_backward(benchmark::State& state) {
  Vec inp = random_vec(kN * kC, 9), w = random_vec(kC, 10), b = random_vec(kC, 11), out(kN * kC), mean(kN), rstd(kN);
  layernorm_forward_cpu(out.data(), mean.data(), rstd.data(), inp.data(), w.data(), b.data(), kN, kC);
  Vec dout = random_vec(kN * kC, 12), dinp(kN * kC, 0.0f), dw(kC, 0.0f), db(kC, 0.0f);
  for (auto _ : state) {
    layernorm_backward_cpu(dinp.data(), dw.data(), db.data(), dout.data(), inp.data(), w.data(), mean.data(),
                           rstd.data(), kN, kC);
  }
  set_rates(state, kN, 4.0 * kN * kC * kF, 14.0 * kN * kC);
}

// Args: C, OC, with bias. Shapes of the block's four linears and the classifier.
void matmul_shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"C", "OC", "bias"});
  b->Args({kC, 3 * kC, 1})->Args({kC, kC, 1})->Args({kC, 4 * kC, 1})->Args({4 * kC, kC, 1})->Args({kC, kVp, 0});
}

void BM_matmul_forward(benchmark::State& state) {
  const int C = static_cast<int>(state.range(0)), OC = static_cast<int>(state.range(1));
  Vec inp = random_vec(int64_t{kN} * C, 13), w = random_vec(int64_t{OC} * C, 14, 0.02f), bias = random_vec(OC, 15);
  Vec out(int64_t{kN} * OC);
  const float* bp = state.range(2) ? bias.data() : nullptr;
  for (auto _ : state) matmul_forward_cpu(out.data(), inp.data(), w.data(), bp, kN, C, OC);
  const double n = kN, c = C, oc = OC;
  set_rates(state, n, kF * (n * c + oc * c + n * oc), 2.0 * n * c * oc);
}

void BM_matmul_backward(benchmark::State& state) {
  const int C = static_cast<int>(state.range(0)), OC = static_cast<int>(state.range(1));
  Vec inp = random_vec(int64_t{kN} * C, 16), w = random_vec(int64_t{OC} * C, 17, 0.02f);
  Vec dout = random_vec(int64_t{kN} * OC, 18), dinp(int64_t{kN} * C, 0.0f), dw(int64_t{OC} * C, 0.0f), db(OC, 0.0f);
  float* dbp = state.range(2) ? db.data() : nullptr;
  for (auto _ : state) matmul_backward_cpu(dinp.data(), dw.data(), dbp, dout.data(), inp.data(), w.data(), kN, C, OC);
  const double n = kN, c = C, oc = OC;
  set_rates(state, n, kF * 2.0 * (n * c + oc * c + n * oc), 4.0 * n * c * oc);
}

// FLOPs of the GEMMs as executed: full T x T squares (the causal half is not skipped).
constexpr double kAttentionGemmFlops = 2.0 * kB * kNH * kT * kT * (kC / kNH);

void BM_attention_forward(benchmark::State& state) {
  Vec qkv = random_vec(kN * 3 * kC, 19), out(kN * kC), att(int64_t{kB} * kNH * kT * kT);
  for (auto _ : state) attention_forward_cpu(out.data(), att.data(), qkv.data(), kB, kT, kC, kNH);
  set_rates(state, kN, kF * (kN * 4.0 * kC + double(att.size())), 2.0 * kAttentionGemmFlops);
}

void BM_attention_backward(benchmark::State& state) {
  Vec qkv = random_vec(kN * 3 * kC, 20), out(kN * kC), att(int64_t{kB} * kNH * kT * kT);
  attention_forward_cpu(out.data(), att.data(), qkv.data(), kB, kT, kC, kNH);
  Vec dout = random_vec(kN * kC, 21), dqkv(kN * 3 * kC, 0.0f), scratch(att.size());
  for (auto _ : state) {
    attention_backward_cpu(dqkv.data(), scratch.data(), dout.data(), qkv.data(), att.data(), kB, kT, kC, kNH);
  }
  set_rates(state, kN, kF * (kN * 7.0 * kC + 3.0 * double(att.size())), 4.0 * kAttentionGemmFlops);
}

constexpr int64_t kGeluN = int64_t{kN} * 4 * kC;

void BM_gelu_forward(benchmark::State& state) {
  Vec inp = random_vec(kGeluN, 22), out(kGeluN);
  for (auto _ : state) gelu_forward_cpu(out.data(), inp.data(), kGeluN);
  set_rates(state, kGeluN, 2.0 * kGeluN * kF);
}

void BM_gelu_backward(benchmark::State& state) {
  Vec inp = random_vec(kGeluN, 23), dout = random_vec(kGeluN, 24), dinp(kGeluN, 0.0f);
  for (auto _ : state) gelu_backward_cpu(dinp.data(), inp.data(), dout.data(), kGeluN);
  set_rates(state, kGeluN, 4.0 * kGeluN * kF);
}

void BM_residual_forward(benchmark::State& state) {
  const int64_t n = int64_t{kN} * kC;
  Vec a = random_vec(n, 25), b = random_vec(n, 26), out(n);
  for (auto _ : state) residual_forward_cpu(out.data(), a.data(), b.data(), n);
  set_rates(state, n, 3.0 * n * kF);
}

void BM_residual_accumulate(benchmark::State& state) {
  const int64_t n = int64_t{kN} * kC;
  Vec dst = random_vec(n, 27), src = random_vec(n, 28);
  for (auto _ : state) residual_accumulate_cpu(dst.data(), src.data(), n);
  set_rates(state, n, 3.0 * n * kF);
}

// Arg: 1 = gradient written in place over the logits (as training does), 0 = losses only.
void BM_crossentropy(benchmark::State& state) {
  const bool grad = state.range(0) != 0;
  const Vec logits0 = random_vec(int64_t{kN} * kVp, 29, 2.0f);
  Vec logits = logits0, losses(kN);
  auto targets = random_tokens(kN, 30);
  for (auto _ : state) {
    // Restoring the logits each time keeps the in-place case honest; the copy is not timed.
    if (grad) {
      state.PauseTiming();
      logits = logits0;
      state.ResumeTiming();
    }
    softmax_crossentropy_cpu(losses.data(), grad ? logits.data() : nullptr, logits.data(), targets.data(), kN, kV, kVp,
                             1.0f / kN);
  }
  set_rates(state, kN, kF * double{kN} * kVp * (grad ? 2.0 : 1.0));
}

int64_t model_params() {
  const int64_t C = kC;
  return int64_t{kVp} * C + int64_t{kT} * C + kLayers * (12 * C * C + 13 * C) + 2 * C;
}

void BM_adamw_update(benchmark::State& state) {
  const int64_t n = model_params();
  Vec p = random_vec(n, 31, 0.02f), g = random_vec(n, 32, 1e-3f), m(n, 0.0f), v(n, 0.0f);
  int t = 0;
  for (auto _ : state) {
    adamw_update_cpu(p.data(), g.data(), m.data(), v.data(), n, 3e-4f, 0.9f, 0.95f, 1e-8f, 0.1f, ++t, 1.0f);
  }
  set_rates(state, n, 7.0 * n * kF);
}

void BM_sum_squares(benchmark::State& state) {
  const int64_t n = model_params();
  Vec g = random_vec(n, 33, 1e-3f);
  for (auto _ : state) benchmark::DoNotOptimize(sum_squares_cpu(g.data(), n));
  set_rates(state, n, n * kF);
}

// Every kernel of one training step of the benchmark model in the order a trainer calls them, with
// the gradient zeroing it needs. One layer's activations and weights are reused by all four layers:
// same work and traffic as separate buffers, much less setup.
void BM_training_step_kernels(benchmark::State& state) {
  const int64_t N = kN, C = kC, P = model_params();
  Vec params = random_vec(P, 40, 0.02f), grads(P, 0.0f), m(P, 0.0f), v(P, 0.0f);
  float* cur = params.data();
  auto take = [&](int64_t n) { return std::exchange(cur, cur + n); };
  float *wte = take(kVp * C), *wpe = take(kT * C), *ln1_w = take(C), *ln1_b = take(C), *qkv_w = take(3 * C * C),
        *qkv_b = take(3 * C), *ap_w = take(C * C), *ap_b = take(C), *ln2_w = take(C), *ln2_b = take(C),
        *fc_w = take(4 * C * C), *fc_b = take(4 * C), *fp_w = take(4 * C * C), *fp_b = take(C);
  const int64_t lnf_off = P - 2 * C;
  float *lnf_w = params.data() + lnf_off, *lnf_b = lnf_w + C;
  auto grad_of = [&](const float* p) { return grads.data() + (p - params.data()); };
  auto tokens = random_tokens(N, 41), targets = random_tokens(N, 42);
  const int64_t att_n = int64_t{kB} * kNH * kT * kT;
  Vec res(N * C), res2(N * C), ln(N * C), mean(N), rstd(N), qkv(N * 3 * C), atty(N * C), att(att_n), proj(N * C);
  Vec fch(N * 4 * C), fch_gelu(N * 4 * C), logits(N * kVp), losses(N);
  Vec dres(N * C), dln(N * C), datty(N * C), dqkv(N * 3 * C), dfch(N * 4 * C), dfch_gelu(N * 4 * C), scratch(att_n);
  auto zero = [](Vec& x) { std::fill(x.begin(), x.end(), 0.0f); };
  int step = 0;
  for (auto _ : state) {
    zero(grads);
    encoder_forward_cpu(res.data(), tokens.data(), wte, wpe, kB, kT, kC);
    for (int l = 0; l < kLayers; ++l) {
      layernorm_forward_cpu(ln.data(), mean.data(), rstd.data(), res.data(), ln1_w, ln1_b, kN, kC);
      matmul_forward_cpu(qkv.data(), ln.data(), qkv_w, qkv_b, kN, kC, 3 * kC);
      attention_forward_cpu(atty.data(), att.data(), qkv.data(), kB, kT, kC, kNH);
      matmul_forward_cpu(proj.data(), atty.data(), ap_w, ap_b, kN, kC, kC);
      residual_forward_cpu(res2.data(), res.data(), proj.data(), N * C);
      layernorm_forward_cpu(ln.data(), mean.data(), rstd.data(), res2.data(), ln2_w, ln2_b, kN, kC);
      matmul_forward_cpu(fch.data(), ln.data(), fc_w, fc_b, kN, kC, 4 * kC);
      gelu_forward_cpu(fch_gelu.data(), fch.data(), N * 4 * C);
      matmul_forward_cpu(proj.data(), fch_gelu.data(), fp_w, fp_b, kN, 4 * kC, kC);
      residual_forward_cpu(res.data(), res2.data(), proj.data(), N * C);
    }
    layernorm_forward_cpu(ln.data(), mean.data(), rstd.data(), res.data(), lnf_w, lnf_b, kN, kC);
    matmul_forward_cpu(logits.data(), ln.data(), wte, nullptr, kN, kC, kVp);
    softmax_crossentropy_cpu(losses.data(), logits.data(), logits.data(), targets.data(), kN, kV, kVp, 1.0f / kN);

    zero(dln);
    matmul_backward_cpu(dln.data(), grad_of(wte), nullptr, logits.data(), ln.data(), wte, kN, kC, kVp);
    zero(dres);
    layernorm_backward_cpu(dres.data(), grad_of(lnf_w), grad_of(lnf_b), dln.data(), res.data(), lnf_w, mean.data(),
                           rstd.data(), kN, kC);
    for (int l = 0; l < kLayers; ++l) {
      zero(dfch_gelu);
      matmul_backward_cpu(dfch_gelu.data(), grad_of(fp_w), grad_of(fp_b), dres.data(), fch_gelu.data(), fp_w, kN,
                          4 * kC, kC);
      zero(dfch);
      gelu_backward_cpu(dfch.data(), fch.data(), dfch_gelu.data(), N * 4 * C);
      zero(dln);
      matmul_backward_cpu(dln.data(), grad_of(fc_w), grad_of(fc_b), dfch.data(), ln.data(), fc_w, kN, kC, 4 * kC);
      layernorm_backward_cpu(dres.data(), grad_of(ln2_w), grad_of(ln2_b), dln.data(), res2.data(), ln2_w, mean.data(),
                             rstd.data(), kN, kC);
      zero(datty);
      matmul_backward_cpu(datty.data(), grad_of(ap_w), grad_of(ap_b), dres.data(), atty.data(), ap_w, kN, kC, kC);
      zero(dqkv);
      attention_backward_cpu(dqkv.data(), scratch.data(), datty.data(), qkv.data(), att.data(), kB, kT, kC, kNH);
      zero(dln);
      matmul_backward_cpu(dln.data(), grad_of(qkv_w), grad_of(qkv_b), dqkv.data(), ln.data(), qkv_w, kN, kC, 3 * kC);
      layernorm_backward_cpu(dres.data(), grad_of(ln1_w), grad_of(ln1_b), dln.data(), res.data(), ln1_w, mean.data(),
                             rstd.data(), kN, kC);
    }
    encoder_backward_cpu(grad_of(wte), grad_of(wpe), dres.data(), tokens.data(), kB, kT, kC);
    const double norm = std::sqrt(sum_squares_cpu(grads.data(), P));
    const float clip = norm > 1.0 ? static_cast<float>(1.0 / norm) : 1.0f;
    adamw_update_cpu(params.data(), grads.data(), m.data(), v.data(), P, 3e-4f, 0.9f, 0.95f, 1e-8f, 0.1f, ++step, clip);
  }
  // Training FLOPs: 6 per parameter per token plus attention's 12 L T C (as GptConfig counts them).
  const double flops = (6.0 * double(P) + 12.0 * kLayers * kT * kC) * N;
  set_rates(state, N, 0.0, flops);
}

BENCHMARK(BM_encoder_forward)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_encoder_backward)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_layernorm_forward)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_layernorm_backward)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_matmul_forward)->Apply(matmul_shapes)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_matmul_backward)->Apply(matmul_shapes)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_attention_forward)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_attention_backward)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_gelu_forward)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_gelu_backward)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_residual_forward)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_residual_accumulate)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_crossentropy)->ArgName("grad")->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_adamw_update)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_sum_squares)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_training_step_kernels)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(3.0);

}  // namespace
}  // namespace meshtrain

int main(int argc, char** argv) {
  int threads = 2;
  if (const char* env = std::getenv("MESHTRAIN_BENCH_THREADS")) threads = std::atoi(env);
  meshtrain::set_num_threads(threads);
  benchmark::AddCustomContext("threads", std::to_string(meshtrain::num_threads()));
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
