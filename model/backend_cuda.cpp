// The CUDA backend: the kernels of model/kernels/*.cu and cuBLASLt GEMMs (CudaMatmul), in fp32 or
// bf16, queued in order on one stream the backend owns. Nothing here waits for the GPU except
// download() and synchronize(), so a whole training step can be captured in a CUDA graph.
// In builds without CUDA the launchers are stubs and make_cuda_backend fails with "[cuda] not built".
#include "core/device.h"
#include "model/backend.h"
#include "model/kernels/attention.h"
#include "model/kernels/convert.h"
#include "model/kernels/crossentropy.h"
#include "model/kernels/encoder.h"
#include "model/kernels/flash_attention.h"
#include "model/kernels/gelu.h"
#include "model/kernels/kv_cache.h"
#include "model/kernels/layernorm.h"
#include "model/kernels/matmul_cuda.h"
#include "model/kernels/residual.h"
#include "model/kernels/rope.h"
#include "model/kernels/vocab_parallel.h"

namespace meshtrain {
namespace {

template <class T> T* as(void* p) { return static_cast<T*>(p); }
template <class T> const T* as(const void* p) { return static_cast<const T*>(p); }

class CudaBackend final : public Backend {
 public:
  CudaBackend(DType dtype, AttentionKind attention) : dtype_(dtype), attention_(attention), matmul_(stream_.get()) {
    MT_CHECK(dtype == DType::f32 || dtype == DType::bf16, "[cuda] precision {} is not supported (fp32 or bf16)",
             dtype_name(dtype));
  }
  Device device() const override { return Device::cuda; }
  DType dtype() const override { return dtype_; }
  std::string describe() const override {
    return fmt::format("cuda {} ({} attention)", dtype_ == DType::bf16 ? "bf16" : "fp32",
                       attention_ == AttentionKind::flash ? "flash" : "materialised");
  }
  void* stream() const override { return stream_.get(); }
  void synchronize() override { stream_.synchronize(); }
  void zero(void* p, size_t nbytes) override { device_memset_async(p, 0, nbytes, s()); }
  void copy(void* dst, const void* src, size_t nbytes) override { device_copy_async(dst, src, nbytes, s()); }
  void upload(void* dst, const void* src, size_t nbytes) override { device_copy_async(dst, src, nbytes, s()); }
  void download(void* dst, const void* src, size_t nbytes) override {
    device_copy_async(dst, src, nbytes, s());
    stream_.synchronize();
  }
  void download_floats(float* dst, const void* src, int64_t n) override {
    if (dtype_ == DType::f32) return download(dst, src, static_cast<size_t>(n) * sizeof(float));
    std::vector<Bf16> tmp(static_cast<size_t>(n));
    download(tmp.data(), src, tmp.size() * sizeof(Bf16));
    for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_float(tmp[static_cast<size_t>(i)].bits);
  }

  ActivationSizing sizing() const override { return {Device::cuda, dtype_, attention_}; }

  void encoder_forward(void* out, const int32_t* tokens, const void* wte, const void* wpe, int B, int T,
                       int C) override {
    each([&](auto t) {
      using T_ = decltype(t);
      encoder_forward_cuda(as<T_>(out), tokens, as<T_>(wte), as<T_>(wpe), B, T, C, s());
    });
  }
  void encoder_backward(void* dwte, void* dwpe, const void* dout, const int32_t* tokens, int B, int T,
                        int C) override {
    each([&](auto t) {
      using T_ = decltype(t);
      encoder_backward_cuda(as<T_>(dwte), as<T_>(dwpe), as<T_>(dout), tokens, B, T, C, s());
    });
  }
  void layernorm_forward(void* out, float* mean, float* rstd, const void* inp, const void* weight, const void* bias,
                         int N, int C) override {
    each([&](auto t) {
      using T_ = decltype(t);
      layernorm_forward_cuda(as<T_>(out), mean, rstd, as<T_>(inp), as<T_>(weight), as<T_>(bias), N, C, s());
    });
  }
  void residual_layernorm_forward(void* residual, void* out, float* mean, float* rstd, const void* a, const void* b,
                                  const void* weight, const void* bias, int N, int C) override {
    each([&](auto t) {
      using T_ = decltype(t);
      residual_layernorm_forward_cuda(as<T_>(residual), as<T_>(out), mean, rstd, as<T_>(a), as<T_>(b),
                                      as<T_>(weight), as<T_>(bias), N, C, s());
    });
  }
  void layernorm_backward(void* dinp, void* dweight, void* dbias, const void* dout, const void* inp,
                          const void* weight, const float* mean, const float* rstd, int N, int C) override {
    each([&](auto t) {
      using T_ = decltype(t);
      layernorm_backward_cuda(as<T_>(dinp), as<T_>(dweight), as<T_>(dbias), as<T_>(dout), as<T_>(inp),
                              as<T_>(weight), mean, rstd, N, C, s());
    });
  }
  void matmul_forward(void* out, const void* inp, const void* weight, const void* bias, int N, int C, int OC,
                      void* pre_gelu) override {
    each([&](auto t) {
      using T_ = decltype(t);
      matmul_.forward(as<T_>(out), as<T_>(inp), as<T_>(weight), as<T_>(bias), N, C, OC, as<T_>(pre_gelu));
    });
  }
  void matmul_backward(void* dinp, void* dweight, void* dbias, const void* dout, const void* inp, const void* weight,
                       int N, int C, int OC) override {
    each([&](auto t) {
      using T_ = decltype(t);
      matmul_.backward(as<T_>(dinp), as<T_>(dweight), as<T_>(dbias), as<T_>(dout), as<T_>(inp), as<T_>(weight), N,
                       C, OC, /*accumulate_dinp=*/false);
    });
  }
  void attention_forward(void* out, float* saved, const void* qkv, int B, int T, int C, int NH) override {
    each([&](auto t) {
      using T_ = decltype(t);
      if (flash(C / NH)) flash_attention_forward_cuda(as<T_>(out), saved, as<T_>(qkv), B, T, C, NH, s());
      else attention_forward_cuda(as<T_>(out), saved, as<T_>(qkv), B, T, C, NH, s());
    });
  }
  void attention_backward(void* dqkv, float* scratch, const void* dout, const void* qkv, const void* out,
                          const float* saved, int B, int T, int C, int NH) override {
    each([&](auto t) {
      using T_ = decltype(t);
      if (flash(C / NH))
        flash_attention_backward_cuda(as<T_>(dqkv), scratch, as<T_>(dout), as<T_>(qkv), as<T_>(out), saved, B, T, C,
                                      NH, s());
      else attention_backward_cuda(as<T_>(dqkv), scratch, as<T_>(dout), as<T_>(qkv), saved, B, T, C, NH, s());
    });
  }
  void rope(void* qkv, const float* table, int B, int T, int C, int NH, int pos0, bool inverse) override {
    each([&](auto t) {
      using T_ = decltype(t);
      rope_cuda(as<T_>(qkv), table, B, T, C, NH, pos0, inverse, s());
    });
  }
  void attention_cached(void* out, void* kcache, void* vcache, const void* qkv, int T, int pos0, int C,
                        int NH) override {
    each([&](auto t) {
      using T_ = decltype(t);
      attention_cached_cuda(as<T_>(out), as<T_>(kcache), as<T_>(vcache), as<T_>(qkv), T, pos0, C, NH, s());
    });
  }
  void gelu_forward(void* out, const void* inp, int64_t n) override {
    each([&](auto t) {
      using T_ = decltype(t);
      gelu_forward_cuda(as<T_>(out), as<T_>(inp), n, s());
    });
  }
  void gelu_backward(void* dinp, const void* inp, const void* dout, int64_t n) override {
    each([&](auto t) {
      using T_ = decltype(t);
      gelu_backward_cuda(as<T_>(dinp), as<T_>(inp), as<T_>(dout), n, s());
    });
  }
  void residual_forward(void* out, const void* a, const void* b, int64_t n) override {
    each([&](auto t) {
      using T_ = decltype(t);
      residual_forward_cuda(as<T_>(out), as<T_>(a), as<T_>(b), n, s());
    });
  }
  void accumulate(void* dst, const void* src, int64_t n, float scale) override {
    each([&](auto t) {
      using T_ = decltype(t);
      residual_accumulate_cuda(as<T_>(dst), as<T_>(src), n, s(), scale);
    });
  }
  void crossentropy(float* losses, void* dlogits, const void* logits, const int32_t* targets, int N, int V, int Vp,
                    float dloss) override {
    each([&](auto t) {
      using T_ = decltype(t);
      softmax_crossentropy_cuda(losses, as<T_>(dlogits), as<T_>(logits), targets, N, V, Vp, dloss, s());
    });
  }

  void download_async(void* dst, const void* src, size_t nbytes) override { device_copy_async(dst, src, nbytes, s()); }
  int64_t mark() override { return mark_on(s()); }
  int64_t mark_on(void* stream) override {
    if (next_ == static_cast<int64_t>(events_.size())) events_.push_back(timing_event_create());
    timing_event_record(events_[static_cast<size_t>(next_)], stream);
    return next_++;
  }
  void reset_marks() override { next_ = 0; }
  double seconds_between(int64_t a, int64_t b) override {
    return timing_event_seconds(events_.at(static_cast<size_t>(a)), events_.at(static_cast<size_t>(b)));
  }
  ~CudaBackend() override {
    for (void* e : events_) timing_event_destroy(e);
  }
  std::shared_ptr<void> host_buffer(size_t nbytes) override {
    auto pinned = std::make_shared<PinnedBuffer>(nbytes > 0 ? nbytes : 1);
    return std::shared_ptr<void>(pinned, pinned->data());
  }

  void vocab_embedding_rows(void* out, const int32_t* tokens, const void* wte_local, int64_t BT, int C, int64_t v0,
                            int64_t Vl) override {
    each([&](auto t) {
      using T_ = decltype(t);
      vocab_embedding_rows_cuda(as<T_>(out), tokens, as<T_>(wte_local), BT, C, v0, Vl, s());
    });
  }
  void add_positions(void* out, const void* wpe, int B, int T, int C) override {
    each([&](auto t) {
      using T_ = decltype(t);
      add_positions_cuda(as<T_>(out), as<T_>(wpe), B, T, C, s());
    });
  }
  void vocab_embedding_backward(void* dwte_local, void* dwpe, const void* dout, const int32_t* tokens, int B, int T,
                                int C, int64_t v0, int64_t Vl) override {
    each([&](auto t) {
      using T_ = decltype(t);
      vocab_embedding_backward_cuda(as<T_>(dwte_local), as<T_>(dwpe), as<T_>(dout), tokens, B, T, C, v0, Vl, s());
    });
  }
  void vocab_xent_max(float* mx, const void* logits, int N, int64_t Vl, int64_t V, int64_t v0) override {
    each([&](auto t) {
      using T_ = decltype(t);
      vocab_xent_max_cuda(mx, as<T_>(logits), N, Vl, V, v0, s());
    });
  }
  void vocab_xent_sums(float* sums, const void* logits, const int32_t* targets, const float* mx, int N, int64_t Vl,
                       int64_t V, int64_t v0) override {
    each([&](auto t) {
      using T_ = decltype(t);
      vocab_xent_sums_cuda(sums, as<T_>(logits), targets, mx, N, Vl, V, v0, s());
    });
  }
  void vocab_xent_finish(float* losses, void* dlogits, const void* logits, const int32_t* targets, const float* mx,
                         const float* sums, int N, int64_t Vl, int64_t V, int64_t v0, float dloss) override {
    each([&](auto t) {
      using T_ = decltype(t);
      vocab_xent_finish_cuda(losses, as<T_>(dlogits), as<T_>(logits), targets, mx, sums, N, Vl, V, v0, dloss, s());
    });
  }

  int64_t sum_squares_scratch(int64_t n) const override { return sum_squares_partials(n); }
  void sum_squares(double* out, double* scratch, const void* x, int64_t n) override {
    each([&](auto t) {
      using T_ = decltype(t);
      sum_squares_async_cuda(out, scratch, as<T_>(x), n, s());
    });
  }
  void sum_to_float(float* out, const double* pieces, int count) override {
    sum_to_float_cuda(out, pieces, count, s());
  }
  void float_to_sum(double* sum, const float* in) override { float_to_sum_cuda(sum, in, s()); }
  void clip_scale(AdamWScalars* scalars, const double* pieces, int count, float grad_clip) override {
    clip_scale_cuda(scalars, pieces, count, grad_clip, s());
  }
  void adamw_update(void* params, float* master, const void* grads, float* m, float* v, int64_t n,
                    const AdamWScalars* scalars, float beta1, float beta2, float eps, float weight_decay) override {
    if (dtype_ == DType::bf16)
      adamw_update_cuda(as<Bf16>(params), master, as<Bf16>(grads), m, v, n, scalars, beta1, beta2, eps, weight_decay,
                        s());
    else
      adamw_update_cuda(as<float>(params), as<float>(grads), m, v, n, scalars, beta1, beta2, eps, weight_decay, s());
  }

 private:
  void* s() const { return stream_.get(); }
  /// Calls fn with a value of the element type (float or Bf16), which the lambdas turn into pointer casts.
  template <class Fn> void each(Fn&& fn) const {
    if (dtype_ == DType::bf16) fn(Bf16{});
    else fn(0.0f);
  }
  /// The materialised kernels stand in for head sizes the fused kernels do not handle; the saved
  /// buffer is sized for them then (sizing() answers the same question).
  bool flash(int head_size) const { return sizing().uses_flash(head_size); }

  std::vector<void*> events_;  // timing events, reused from index 0 after reset_marks()
  int64_t next_ = 0;
  DType dtype_;
  AttentionKind attention_;
  CudaStream stream_;
  CudaMatmul matmul_;
};

}  // namespace

std::unique_ptr<Backend> make_cuda_backend(DType dtype, AttentionKind attention) {
  require_cuda("a CUDA backend was asked for");
  return std::make_unique<CudaBackend>(dtype, attention);
}

}  // namespace meshtrain
