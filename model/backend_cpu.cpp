// The CPU backend: the reference kernels of model/kernels/*_cpu.cpp in fp32, run synchronously.
#include <cstring>
#include <vector>

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

class CpuBackend final : public Backend {
 public:
  Device device() const override { return Device::cpu; }
  DType dtype() const override { return DType::f32; }
  std::string describe() const override { return "cpu fp32"; }
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
    if (!pre_gelu) return matmul_forward_cpu(f(out), f(inp), f(weight), f(bias), N, C, OC);
    matmul_forward_cpu(f(pre_gelu), f(inp), f(weight), f(bias), N, C, OC);
    gelu_forward_cpu(f(out), f(pre_gelu), static_cast<int64_t>(N) * OC);
  }
  void matmul_backward(void* dinp, void* dweight, void* dbias, const void* dout, const void* inp, const void* weight,
                       int N, int C, int OC) override {
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
  std::vector<double> marks_;
  int64_t next_ = 0;
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend() { return std::make_unique<CpuBackend>(); }

}  // namespace meshtrain
