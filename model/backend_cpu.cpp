// The CPU backend: the reference kernels of model/kernels/*_cpu.cpp in fp32, run synchronously.
// With bf16 GEMMs (train.precision = bf16 on the CPU) every matmul instead rounds its two inputs to
// bf16 and multiplies them through oneDNN with fp32 accumulation into fp32 outputs, as PyTorch's bf16
// autocast does on a CPU; parameters (the fp32 master weights), gradients, activations, LayerNorm,
// softmax, the loss and AdamW stay fp32, so checkpoints, communicators and the optimizer see no
// difference. The bf16 copy of a weight is made at each use, from the weights as they are then: it
// costs one pass over the weight per GEMM (under 0.1% of the GEMM's work at 1,024 tokens).
#include <algorithm>
#include <cstring>
#include <vector>

#include "core/bf16.h"
#include "core/error.h"
#include "core/gemm_onednn.h"
#include "core/timer.h"

#include "model/backend.h"
#include "model/kernels/attention.h"
#include "model/kernels/crossentropy.h"
#include "model/kernels/encoder.h"
#include "model/kernels/gelu.h"
#include "model/kernels/kv_cache.h"
#include "model/kernels/layernorm.h"
#include "model/kernels/matmul.h"
#include "model/kernels/residual.h"
#include "model/kernels/rope.h"
#include "model/kernels/vocab_parallel.h"

namespace meshtrain {
namespace {

float* f(void* p) { return static_cast<float*>(p); }
const float* f(const void* p) { return static_cast<const float*>(p); }

/// n floats rounded to bf16 (nearest, ties to even) into out, resized to n.
void round_to_bf16(const float* in, int64_t n, std::vector<uint16_t>& out) {
  out.resize(static_cast<size_t>(n));
  uint16_t* o = out.data();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) o[i] = float_to_bf16(in[i]);
}

// Rows of logits per chunk of the fused head with bf16 GEMMs (chosen by measurement, see
// docs/performance.md): enough rows that the GEMM reads the weight few times, few enough that a
// chunk's logits (rows x padded vocabulary floats) stay largely in the last-level cache.
constexpr int64_t kHeadRows = 256;

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(bool bf16_gemms) : bf16_gemms_(bf16_gemms) {
    if (bf16_gemms_) isa_ = cpu_bf16_gemm_isa();
  }
  Device device() const override { return Device::cpu; }
  DType dtype() const override { return DType::f32; }
  std::string describe() const override {
    return bf16_gemms_ ? "cpu fp32 with bf16 GEMMs (oneDNN, " + isa_ + ")" : "cpu fp32";
  }
  void zero(void* p, size_t nbytes) override { std::memset(p, 0, nbytes); }
  void copy(void* dst, const void* src, size_t nbytes) override { std::memmove(dst, src, nbytes); }
  void upload(void* dst, const void* src, size_t nbytes) override { std::memcpy(dst, src, nbytes); }
  void download(void* dst, const void* src, size_t nbytes) override { std::memcpy(dst, src, nbytes); }
  void download_floats(float* dst, const void* src, int64_t n) override {
    std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
  }
  ActivationSizing sizing() const override { return {Device::cpu, DType::f32, AttentionKind::materialised}; }

  void encoder_forward(void* out, const int32_t* tokens, const void* wte, const void* wpe, int B, int T,
                       int C) override {
    encoder_forward_cpu(f(out), tokens, f(wte), f(wpe), B, T, C);
  }
  void encoder_backward(void* dwte, void* dwpe, const void* dout, const int32_t* tokens, int B, int T,
                        int C) override {
    encoder_backward_cpu(f(dwte), f(dwpe), f(dout), tokens, B, T, C);
  }
  void layernorm_forward(void* out, float* mean, float* rstd, const void* inp, const void* weight, const void* bias,
                         int N, int C) override {
    layernorm_forward_cpu(f(out), mean, rstd, f(inp), f(weight), f(bias), N, C);
  }
  void residual_layernorm_forward(void* residual, void* out, float* mean, float* rstd, const void* a, const void* b,
                                  const void* weight, const void* bias, int N, int C) override {
    residual_forward_cpu(f(residual), f(a), f(b), static_cast<int64_t>(N) * C);
    layernorm_forward_cpu(f(out), mean, rstd, f(residual), f(weight), f(bias), N, C);
  }
  void layernorm_backward(void* dinp, void* dweight, void* dbias, const void* dout, const void* inp,
                          const void* weight, const float* mean, const float* rstd, int N, int C) override {
    layernorm_backward_cpu(f(dinp), f(dweight), f(dbias), f(dout), f(inp), f(weight), mean, rstd, N, C);
  }
  void matmul_forward(void* out, const void* inp, const void* weight, const void* bias, int N, int C, int OC,
                      void* pre_gelu) override {
    float* dst = f(pre_gelu ? pre_gelu : out);
    // One row (generation, a token at a time) reads the weight once: fp32 is as fast there.
    if (bf16_gemms_ && N > 1) {
      MT_CHECK(C >= 1 && OC >= 1, "[matmul_forward] N={}, C={}, OC={}: every dimension must be at least 1", N, C, OC);
      round_to_bf16(f(inp), int64_t{N} * C, a16_);
      round_to_bf16(f(weight), int64_t{OC} * C, b16_);
      if (bias)
        for (int n = 0; n < N; ++n) std::memcpy(dst + int64_t{n} * OC, bias, sizeof(float) * static_cast<size_t>(OC));
      gemm_onednn(GemmType::bf16, false, true, N, OC, C, a16_.data(), C, b16_.data(), C, bias ? 1.0f : 0.0f, dst, OC);
    } else {
      matmul_forward_cpu(dst, f(inp), f(weight), f(bias), N, C, OC);
    }
    if (pre_gelu) gelu_forward_cpu(f(out), f(pre_gelu), static_cast<int64_t>(N) * OC);
  }
  void matmul_backward(void* dinp, void* dweight, void* dbias, const void* dout, const void* inp, const void* weight,
                       int N, int C, int OC) override {
    if (bf16_gemms_ && N > 1) {
      MT_CHECK(C >= 1 && OC >= 1, "[matmul_backward] N={}, C={}, OC={}: every dimension must be at least 1", N, C, OC);
      round_to_bf16(f(dout), int64_t{N} * OC, a16_);
      bf16_linear_backward(f(dinp), f(dweight), a16_.data(), f(inp), f(weight), N, C, OC);
      if (dbias) matmul_backward_cpu(nullptr, nullptr, f(dbias), f(dout), f(inp), f(weight), N, C, OC);
      return;
    }
    if (dinp) std::memset(dinp, 0, static_cast<size_t>(N) * C * sizeof(float));  // the CPU kernel accumulates
    matmul_backward_cpu(f(dinp), f(dweight), f(dbias), f(dout), f(inp), f(weight), N, C, OC);
  }
  void attention_forward(void* out, float* saved, const void* qkv, int B, int T, int C, int NH) override {
    attention_forward_cpu(f(out), saved, f(qkv), B, T, C, NH);
  }
  void attention_backward(void* dqkv, float* scratch, const void* dout, const void* qkv, const void* /*out*/,
                          const float* saved, int B, int T, int C, int NH) override {
    attention_backward_cpu(f(dqkv), scratch, f(dout), f(qkv), saved, B, T, C, NH);
  }
  void rope(void* qkv, const float* table, int B, int T, int C, int NH, int pos0, bool inverse) override {
    rope_cpu(f(qkv), table, B, T, C, NH, pos0, inverse);
  }
  void attention_cached(void* out, void* kcache, void* vcache, const void* qkv, int T, int pos0, int C,
                        int NH) override {
    attention_cached_cpu(f(out), f(kcache), f(vcache), f(qkv), T, pos0, C, NH);
  }
  void gelu_forward(void* out, const void* inp, int64_t n) override { gelu_forward_cpu(f(out), f(inp), n); }
  void gelu_backward(void* dinp, const void* inp, const void* dout, int64_t n) override {
    gelu_backward_cpu(f(dinp), f(inp), f(dout), n);
  }
  void residual_forward(void* out, const void* a, const void* b, int64_t n) override {
    residual_forward_cpu(f(out), f(a), f(b), n);
  }
  void accumulate(void* dst, const void* src, int64_t n, float scale) override {
    residual_accumulate_cpu(f(dst), f(src), n, scale);
  }
  void crossentropy(float* losses, void* dlogits, const void* logits, const int32_t* targets, int N, int V, int Vp,
                    float dloss) override {
    softmax_crossentropy_cpu(losses, f(dlogits), f(logits), targets, N, V, Vp, dloss);
  }

  // With bf16 GEMMs the head runs in chunks of rows: each chunk's fp32 logits land in the second
  // half of `space` (still in cache when the loss reads them) and its gradient goes to the first half
  // as bf16, the form the two backward GEMMs read, so the batch's logits are never all in fp32 and
  // the gradient is neither rounded again nor read at full width. The numbers are those of
  // matmul_forward + crossentropy + matmul_backward (tests/onednn_gemm_test.cpp).
  bool fuses_classifier_crossentropy(int n) const override { return bf16_gemms_ && n >= 2; }
  void classifier_crossentropy(float* losses, void* space, const void* inp, const void* weight, const int32_t* targets,
                               int N, int C, int V, int Vp, float dloss, Profiler* prof) override {
    MT_CHECK(fuses_classifier_crossentropy(N) && C >= 1 && Vp >= V && V >= 1,
             "[classifier_crossentropy] N={}, C={}, V={}, Vp={}: needs bf16 GEMMs, N >= 2, C >= 1, 1 <= V <= Vp", N, C,
             V, Vp);
    const int64_t total = int64_t{N} * Vp, half = (total + 1) / 2;
    uint16_t* grad16 = static_cast<uint16_t*>(space);
    float* chunk = f(space) + half;
    const int rows = static_cast<int>(std::min<int64_t>(kHeadRows, (total - half) / Vp));
    {
      ScopedTimer t(prof, "classifier");
      round_to_bf16(f(inp), int64_t{N} * C, a16_);
      round_to_bf16(f(weight), int64_t{Vp} * C, b16_);
    }
    for (int r0 = 0; r0 < N; r0 += rows) {
      const int n = std::min(rows, N - r0);
      {
        ScopedTimer t(prof, "classifier");
        gemm_onednn(GemmType::bf16, false, true, n, Vp, C, a16_.data() + int64_t{r0} * C, C, b16_.data(), C, 0.0f,
                    chunk, Vp);
      }
      ScopedTimer t(prof, "crossentropy");
      softmax_crossentropy_bf16_grad_cpu(losses + r0, grad16 + int64_t{r0} * Vp, chunk, targets + r0, n, V, Vp, dloss);
    }
  }
  void classifier_backward(void* dinp, void* dweight, const void* space, const void* inp, const void* weight, int N,
                           int C, int Vp) override {
    MT_CHECK(fuses_classifier_crossentropy(N) && C >= 1 && Vp >= 1,
             "[classifier_backward] N={}, C={}, Vp={}: needs bf16 GEMMs, N >= 2 and C, Vp >= 1", N, C, Vp);
    bf16_linear_backward(f(dinp), f(dweight), static_cast<const uint16_t*>(space), f(inp), f(weight), N, C, Vp);
  }

  void download_async(void* dst, const void* src, size_t nbytes) override { std::memcpy(dst, src, nbytes); }
  int64_t mark() override {
    if (next_ == static_cast<int64_t>(marks_.size())) marks_.push_back(0.0);
    marks_[static_cast<size_t>(next_)] = now_seconds();
    return next_++;
  }
  void reset_marks() override { next_ = 0; }
  double seconds_between(int64_t a, int64_t b) override {
    return marks_.at(static_cast<size_t>(b)) - marks_.at(static_cast<size_t>(a));
  }
  std::shared_ptr<void> host_buffer(size_t nbytes) override {
    return std::shared_ptr<void>(::operator new(nbytes > 0 ? nbytes : 1), [](void* p) { ::operator delete(p); });
  }

  void vocab_embedding_rows(void* out, const int32_t* tokens, const void* wte_local, int64_t BT, int C, int64_t v0,
                            int64_t Vl) override {
    vocab_embedding_rows_cpu(f(out), tokens, f(wte_local), BT, C, v0, Vl);
  }
  void add_positions(void* out, const void* wpe, int B, int T, int C) override { add_positions_cpu(f(out), f(wpe), B, T, C); }
  void vocab_embedding_backward(void* dwte_local, void* dwpe, const void* dout, const int32_t* tokens, int B, int T,
                                int C, int64_t v0, int64_t Vl) override {
    vocab_embedding_backward_cpu(f(dwte_local), f(dwpe), f(dout), tokens, B, T, C, v0, Vl);
  }
  void vocab_xent_max(float* mx, const void* logits, int N, int64_t Vl, int64_t V, int64_t v0) override {
    vocab_xent_max_cpu(mx, f(logits), N, Vl, V, v0);
  }
  void vocab_xent_sums(float* sums, const void* logits, const int32_t* targets, const float* mx, int N, int64_t Vl,
                       int64_t V, int64_t v0) override {
    vocab_xent_sums_cpu(sums, f(logits), targets, mx, N, Vl, V, v0);
  }
  void vocab_xent_finish(float* losses, void* dlogits, const void* logits, const int32_t* targets, const float* mx,
                         const float* sums, int N, int64_t Vl, int64_t V, int64_t v0, float dloss) override {
    vocab_xent_finish_cpu(losses, f(dlogits), f(logits), targets, mx, sums, N, Vl, V, v0, dloss);
  }

  int64_t sum_squares_scratch(int64_t /*n*/) const override { return 0; }
  void sum_squares(double* out, double* /*scratch*/, const void* x, int64_t n) override { *out = sum_squares_cpu(f(x), n); }
  void sum_to_float(float* out, const double* pieces, int count) override { sum_to_float_cpu(out, pieces, count); }
  void float_to_sum(double* sum, const float* in) override { *sum = *in; }
  void clip_scale(AdamWScalars* scalars, const double* pieces, int count, float grad_clip) override {
    clip_scale_cpu(scalars, pieces, count, grad_clip);
  }
  void adamw_update(void* params, float* /*master*/, const void* grads, float* m, float* v, int64_t n,
                    const AdamWScalars* scalars, float beta1, float beta2, float eps, float weight_decay) override {
    adamw_update_cpu(f(params), f(grads), m, v, n, *scalars, beta1, beta2, eps, weight_decay);
  }

 private:
  // A linear layer's backward GEMMs from its output gradient already in bf16 (N x OC): dinp = dout W
  // (overwritten) and dweight += dout^T inp, either skipped when null.
  void bf16_linear_backward(float* dinp, float* dweight, const uint16_t* dout16, const float* inp, const float* weight,
                            int N, int C, int OC) {
    if (dinp) {
      round_to_bf16(weight, int64_t{OC} * C, b16_);
      gemm_onednn(GemmType::bf16, false, false, N, C, OC, dout16, OC, b16_.data(), C, 0.0f, dinp, C);
    }
    if (dweight) {
      round_to_bf16(inp, int64_t{N} * C, b16_);
      gemm_onednn(GemmType::bf16, true, false, OC, C, N, dout16, OC, b16_.data(), C, 1.0f, dweight, C);
    }
  }

  std::vector<double> marks_;
  int64_t next_ = 0;
  bool bf16_gemms_ = false;
  std::string isa_;                   // what oneDNN runs bf16 on (bf16 GEMMs only)
  std::vector<uint16_t> a16_, b16_;   // a GEMM's two inputs in bf16
};

}  // namespace

std::string cpu_bf16_gemm_isa() {
  MT_CHECK(onednn_built(), "[bf16-cpu] not built: train.precision = bf16 on the CPU runs its GEMMs through oneDNN, "
                           "which this build lacks; install libdnnl-dev (bash scripts/setup.sh) and build again, or "
                           "set train.precision = fp32");
  std::string isa = onednn_bf16_isa();
  MT_CHECK(!isa.empty(), "[bf16-cpu] this CPU has no bf16 instructions (neither AVX512_BF16 nor AMX): oneDNN {}; "
                         "set train.precision = fp32",
           onednn_bf16_matmuls() ? "would emulate bf16 GEMMs on AVX-512, slower than fp32"
                                 : "has no bf16 GEMMs for it at all (no AVX-512)");
  return isa;
}

std::unique_ptr<Backend> make_cpu_backend(bool bf16_gemms) { return std::make_unique<CpuBackend>(bf16_gemms); }

}  // namespace meshtrain
