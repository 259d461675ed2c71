// Chapter 1: an explicit backward pass, checked the way autograd frameworks check theirs (by finite
// differences). First one op, GELU, element by element; then a whole 2-layer GPT, where the
// gradient of the loss with respect to a handful of weights in every parameter tensor is compared
// with (L(w + h) - L(w - h)) / 2h.
#include <cmath>
#include <cstdio>
#include <vector>

#include "core/communicator.h"
#include "core/rng.h"
#include "model/gpt.h"
#include "model/kernels/gelu.h"

using namespace meshtrain;

int main() {
  // ---- One op: out = gelu(x). Backward receives dout = dL/dout and adds dL/dx = dout * gelu'(x).
  std::printf("GELU: backward against a central difference (h = 1e-3), dout = 1\n");
  std::printf("%8s %14s %14s %10s\n", "x", "backward", "finite diff", "rel. err");
  for (float x : {-2.0f, -0.5f, 0.0f, 0.7f, 3.0f}) {
    float dx = 0.0f, one = 1.0f, hi, lo;
    gelu_backward_cpu(&dx, &x, &one, 1);
    const float h = 1e-3f, xp = x + h, xm = x - h;
    gelu_forward_cpu(&hi, &xp, 1);
    gelu_forward_cpu(&lo, &xm, 1);
    double fd = (double(hi) - lo) / (2.0 * h);
    std::printf("%8.2f %14.6f %14.6f %10.1e\n", x, dx, fd, std::fabs(fd - dx) / std::max(1e-6, std::fabs(fd)));
  }

  // ---- A whole GPT: 2 blocks, 2 heads, 16 channels, a 64-token vocabulary, 2 sequences of 6 tokens.
  GptConfig cfg;
  cfg.n_layer = 2, cfg.n_head = 2, cfg.n_embd = 16, cfg.seq_len = 8, cfg.vocab_size = 64;
  LocalCommunicator comm;  // one process: nothing to reduce
  Gpt model(cfg, comm);
  model.initialize(11);
  float* w = model.params().f32();
  // GPT-2's N(0, 0.02) weights make most gradients tiny; larger ones make every path measurable.
  CounterRng rng(1, 1);
  for (int64_t i = 0; i < model.table().total(); ++i) w[i] += 0.3f * (rng.uniform() - 0.5f);
  const int B = 2, T = 6;
  std::vector<int32_t> tokens(B * T), targets(B * T);
  for (int i = 0; i < B * T; ++i) tokens[i] = int32_t(rng.below(64)), targets[i] = int32_t(rng.below(64));

  model.zero_grad();
  float loss = model.forward(tokens.data(), targets.data(), B, T, /*compute_grad=*/true);
  model.backward();  // every parameter's dL/dw, into model.grads()
  const float* g = model.grads().f32();
  std::printf("\nGPT (%lld parameters): loss %.4f, ln(64) = %.4f\n", (long long)model.table().total(), loss,
              std::log(64.0));
  std::printf("%-26s %6s %12s %12s %9s\n", "parameter", "index", "backward", "finite diff", "rel. err");
  double worst = 0.0;
  for (const auto& s : model.table().specs()) {
    // wte: one of the 64 real rows (the rest is padding up to 128); wpe: one of the T positions used.
    int64_t n = s.name == "wte" ? 64 * s.shape[1] : s.name == "wpe" ? T * s.shape[1] : s.numel;
    int64_t i = s.offset + int64_t(rng.below(n));
    const float saved = w[i], h = 1e-2f;
    w[i] = saved + h;
    double lp = model.forward(tokens.data(), targets.data(), B, T);
    w[i] = saved - h;
    double lm = model.forward(tokens.data(), targets.data(), B, T);
    w[i] = saved;
    double fd = (lp - lm) / (2.0 * h);
    double err = std::fabs(fd - g[i]) / std::max(1e-2, std::fabs(fd) + std::fabs(g[i]));
    worst = std::max(worst, err);
    std::printf("%-26s %6lld %12.6f %12.6f %9.1e\n", s.name.c_str(), (long long)(i - s.offset), g[i], fd, err);
  }
  std::printf("worst relative error %.1e over %zu tensors: %s\n", worst, model.table().specs().size(),
              worst < 3e-2 ? "backward agrees with the finite differences" : "MISMATCH");
  return worst < 3e-2 ? 0 : 1;
}
