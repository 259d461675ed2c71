// What the model asks of a device: its kernels in one compute dtype, and memory moves. The GPT is
// written once against this interface; backend_cpu.cpp runs the CPU kernels (fp32, the
// specification), backend_cuda.cpp the CUDA kernels (fp32 or bf16) in order on one stream.
//
// Pointers are void* because one model runs in fp32 or bf16: parameters, gradients and activations
// are in dtype(); LayerNorm statistics, attention's saved values, losses and scratch are always fp32.
// Every backward accumulates (+=) into its outputs, as the CPU kernels do, except matmul_backward's
// dinp, which it overwrites (a GEMM with beta = 0 costs nothing, zeroing first costs a pass).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"
#include "core/timer.h"
#include "core/trace.h"
#include "model/kernels/adamw.h"

namespace meshtrain {

/// How attention runs: materialised keeps the (B, NH, T, T) probabilities for backward; flash keeps
/// only each query row's log-sum-exp and recomputes the rest (CUDA only).
enum class AttentionKind { materialised, flash };

/// What a backend's activations take, answerable without its device: `meshtrain plan` sizes GPU
/// layouts on machines that have none, and the model sizes its slots from the same answers.
struct ActivationSizing {
  Device device = Device::cpu;
  DType dtype = DType::f32;
  AttentionKind attention = AttentionKind::materialised;
  /// Whether attention at this head size runs the fused kernels (flash asked for, on a GPU, and a head
  /// size they are built for); otherwise the materialised kernels stand in.
  bool uses_flash(int head_size) const;
  /// fp32 values attention's forward keeps for backward (each query row's log-sum-exp with flash, the
  /// (B, NH, T, T) probabilities without), and the fp32 scratch its backward needs (as many).
  int64_t attention_saved(int B, int T, int C, int NH) const;
  int64_t attention_scratch(int B, int T, int C, int NH) const { return attention_saved(B, T, C, NH); }
  /// Bytes each activation buffer starts on: 256 on a GPU (what cuBLASLt and vector loads like best).
  int64_t align() const { return device == Device::cpu ? 1 : 256; }
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual Device device() const = 0;
  /// Element type of parameters, gradients and activations.
  virtual DType dtype() const = 0;
  /// "cpu fp32", "cuda bf16 (flash attention)".
  virtual std::string describe() const = 0;
  /// The cudaStream_t all work goes to (nullptr on the CPU).
  virtual void* stream() const { return nullptr; }
  /// Waits for queued work (a no-op on the CPU).
  virtual void synchronize() {}

  virtual void zero(void* p, size_t nbytes) = 0;
  /// Device -> device, ordered with the kernels.
  virtual void copy(void* dst, const void* src, size_t nbytes) = 0;
  /// Host -> device, ordered with the kernels (the host memory must stay valid until synchronize()).
  virtual void upload(void* dst, const void* src, size_t nbytes) = 0;
  /// Device -> host; returns once the bytes are there.
  virtual void download(void* dst, const void* src, size_t nbytes) = 0;

  /// The sizes of what the model allocates on this backend (attention's saved values, alignment).
  virtual ActivationSizing sizing() const = 0;
  int64_t attention_saved(int B, int T, int C, int NH) const { return sizing().attention_saved(B, T, C, NH); }
  int64_t attention_scratch(int B, int T, int C, int NH) const { return sizing().attention_scratch(B, T, C, NH); }

  /// wpe (and dwpe) null: no position table (a RoPE model).
  virtual void encoder_forward(void* out, const int32_t* tokens, const void* wte, const void* wpe, int B, int T,
                               int C) = 0;
  virtual void encoder_backward(void* dwte, void* dwpe, const void* dout, const int32_t* tokens, int B, int T,
                                int C) = 0;
  virtual void layernorm_forward(void* out, float* mean, float* rstd, const void* inp, const void* weight,
                                 const void* bias, int N, int C) = 0;
  /// residual = a + b; out = layernorm(residual) (fused where the device has a fused kernel).
  virtual void residual_layernorm_forward(void* residual, void* out, float* mean, float* rstd, const void* a,
                                          const void* b, const void* weight, const void* bias, int N, int C) = 0;
  virtual void layernorm_backward(void* dinp, void* dweight, void* dbias, const void* dout, const void* inp,
                                  const void* weight, const float* mean, const float* rstd, int N, int C) = 0;
  /// out = inp @ weight^T (+ bias); with pre_gelu, pre_gelu = that and out = gelu(pre_gelu).
  virtual void matmul_forward(void* out, const void* inp, const void* weight, const void* bias, int N, int C,
                              int OC, void* pre_gelu = nullptr) = 0;
  /// dinp = dout @ weight (overwritten); dweight += dout^T @ inp; dbias += column sums of dout.
  /// Any of dinp, dweight and dbias may be null (a frozen weight needs only dinp).
  virtual void matmul_backward(void* dinp, void* dweight, void* dbias, const void* dout, const void* inp,
                               const void* weight, int N, int C, int OC) = 0;
  /// saved holds attention_saved() floats for backward.
  virtual void attention_forward(void* out, float* saved, const void* qkv, int B, int T, int C, int NH) = 0;
  virtual void attention_backward(void* dqkv, float* scratch, const void* dout, const void* qkv, const void* out,
                                  const float* saved, int B, int T, int C, int NH) = 0;
  /// Rotary embeddings (model/kernels/rope.h) on q and k of qkv (B, T, 3C), in place, row t at
  /// position pos0 + t; table is rope_table() on this device. inverse: backward, on dqkv.
  virtual void rope(void* qkv, const float* table, int B, int T, int C, int NH, int pos0, bool inverse) = 0;
  /// Appends the T new rows' k and v to the caches at pos0 and attends from their queries to every
  /// cached position (model/kernels/kv_cache.h); one sequence.
  virtual void attention_cached(void* out, void* kcache, void* vcache, const void* qkv, int T, int pos0, int C,
                                int NH) = 0;
  virtual void gelu_forward(void* out, const void* inp, int64_t n) = 0;
  virtual void gelu_backward(void* dinp, const void* inp, const void* dout, int64_t n) = 0;
  virtual void residual_forward(void* out, const void* a, const void* b, int64_t n) = 0;
  /// dst += scale * src over n elements.
  virtual void accumulate(void* dst, const void* src, int64_t n, float scale) = 0;
  /// Fused softmax + cross-entropy (model/kernels/crossentropy.h); dlogits may alias logits.
  virtual void crossentropy(float* losses, void* dlogits, const void* logits, const int32_t* targets, int N, int V,
                            int Vp, float dloss) = 0;
  /// Copies n values of dtype() from device memory into host floats.
  virtual void download_floats(float* dst, const void* src, int64_t n) = 0;

  // ---- The tied LM head fused with the loss, where a backend does better than matmul_forward,
  // crossentropy and matmul_backward (the CPU with bf16 GEMMs: rows in chunks, so the fp32 logits of
  // the whole batch never exist at once, and the gradient is stored as the bf16 its GEMMs read).
  /// Whether the two calls below are implemented for n rows (by default, never).
  virtual bool fuses_classifier_crossentropy(int /*n*/) const { return false; }
  /// losses and the gradient of logits = inp @ weight^T (N x Vp, V real columns) as crossentropy()
  /// gives them. space is room for N x Vp values of dtype(); it receives the gradient in the form
  /// classifier_backward reads. The parts are added to prof's "classifier" and "crossentropy".
  virtual void classifier_crossentropy(float* losses, void* space, const void* inp, const void* weight,
                                       const int32_t* targets, int N, int C, int V, int Vp, float dloss,
                                       Profiler* prof);
  /// matmul_backward of the head from classifier_crossentropy's space: dinp = dlogits @ weight
  /// (overwritten), dweight += dlogits^T @ inp; either may be null.
  virtual void classifier_backward(void* dinp, void* dweight, const void* space, const void* inp, const void* weight,
                                   int N, int C, int Vp);

  // ---- Copies for work that must not wait on the host (a step captured as a CUDA graph).
  /// Device -> host, ordered with the kernels; the bytes are there after synchronize().
  virtual void download_async(void* dst, const void* src, size_t nbytes) = 0;
  /// nbytes of host memory that upload() and download_async() move asynchronously (page-locked on
  /// a GPU; a captured graph reads and writes it at every replay).
  virtual std::shared_ptr<void> host_buffer(size_t nbytes) = 0;

  // ---- Vocabulary-parallel embedding and cross-entropy: the kernels of
  // model/kernels/vocab_parallel.h, between which the model all-reduces over its tp group.
  virtual void vocab_embedding_rows(void* out, const int32_t* tokens, const void* wte_local, int64_t BT, int C,
                                    int64_t v0, int64_t Vl) = 0;
  virtual void add_positions(void* out, const void* wpe, int B, int T, int C) = 0;
  virtual void vocab_embedding_backward(void* dwte_local, void* dwpe, const void* dout, const int32_t* tokens, int B,
                                        int T, int C, int64_t v0, int64_t Vl) = 0;
  virtual void vocab_xent_max(float* mx, const void* logits, int N, int64_t Vl, int64_t V, int64_t v0) = 0;
  virtual void vocab_xent_sums(float* sums, const void* logits, const int32_t* targets, const float* mx, int N,
                               int64_t Vl, int64_t V, int64_t v0) = 0;
  virtual void vocab_xent_finish(float* losses, void* dlogits, const void* logits, const int32_t* targets,
                                 const float* mx, const float* sums, int N, int64_t Vl, int64_t V, int64_t v0,
                                 float dloss) = 0;

  // ---- The optimizer step (model/kernels/adamw.h), its per-step scalars in this device's memory.
  /// Doubles of scratch sum_squares() needs for n elements.
  virtual int64_t sum_squares_scratch(int64_t n) const = 0;
  /// *out = the sum of x[i]^2 over n elements of dtype(), in double and in a fixed order.
  virtual void sum_squares(double* out, double* scratch, const void* x, int64_t n) = 0;
  /// *out = (float) the sum of the count pieces in order; and back: *sum = (double) *in. The global
  /// norm's partial sums cross ranks as one float.
  virtual void sum_to_float(float* out, const double* pieces, int count) = 0;
  virtual void float_to_sum(double* sum, const float* in) = 0;
  /// grad_norm = sqrt(sum of the count pieces, in order) and the clipping factor, into scalars.
  virtual void clip_scale(AdamWScalars* scalars, const double* pieces, int count, float grad_clip) = 0;
  /// AdamW over n parameters with lr, bias corrections and grad_scale from scalars. fp32: params
  /// are updated and master is null; bf16: master (fp32) is updated and params get it rounded.
  virtual void adamw_update(void* params, float* master, const void* grads, float* m, float* v, int64_t n,
                            const AdamWScalars* scalars, float beta1, float beta2, float eps, float weight_decay) = 0;

  // ---- Time on the device's timeline (where a step's time goes, measured without host waits).
  /// Records a point in the stream's order (a CUDA event; the host clock on the CPU); returns its id.
  /// Ids restart from 0 at reset_marks(), reusing the same events, so a captured CUDA graph records
  /// the same points again at every replay.
  virtual int64_t mark() = 0;
  /// A mark recorded on another stream of the same device (a communicator's), in the same id
  /// sequence; seconds_between works across streams. The CPU has one timeline: mark().
  virtual int64_t mark_on(void* stream) {
    (void)stream;
    return mark();
  }
  virtual void reset_marks() = 0;
  /// Seconds from mark a to mark b, once the device has passed both.
  virtual double seconds_between(int64_t a, int64_t b) = 0;
};

/// Intervals on a Backend's timeline: the time the device's stream spent between start() and stop()
/// (on a GPU, waiting for a collective it was ordered after; on the CPU, host time), summed.
///
/// With tracing on (core/trace.h) each interval is also a trace region of category trace_cat, timed
/// on the host: on the CPU the same interval as the device's, on a GPU the host's view of it.
class DeviceTimer {
 public:
  using Spans = std::vector<std::pair<int64_t, int64_t>>;
  explicit DeviceTimer(Backend* be = nullptr, const char* trace_cat = "", const char* trace_name = "")
      : be_(be), cat_(trace_cat), name_(trace_name) {}
  void start(int64_t bytes = -1) {
    open_ = be_->mark();
    if (Tracer::get().on()) {
      trace_t0_ = Tracer::now_us();
      trace_bytes_ = bytes;
    }
  }
  void stop();
  /// Seconds in the intervals since the last take() (the device must have passed them); clears them.
  double take() {
    double s = 0.0;
    for (auto [a, b] : spans_) s += be_->seconds_between(a, b);
    spans_.clear();
    return s;
  }
  /// The intervals recorded (by a step captured as a CUDA graph), to be taken again after a replay.
  const Spans& spans() const { return spans_; }
  void set_spans(Spans spans) { spans_ = std::move(spans); }

 private:
  Backend* be_;
  const char* cat_;
  const char* name_;
  int64_t open_ = -1;
  double trace_t0_ = -1.0;
  int64_t trace_bytes_ = -1;
  Spans spans_;
};

/// The GPU's own timeline in a trace. On a GPU the host's regions show when work was queued, not when
/// it ran. While a training step is recorded (begin_step .. flush, every step once a trace is armed,
/// so that a CUDA graph captured before the traced window records them too), the DeviceScope regions (blocks,
/// head, optimizer) and the DeviceTimer intervals (waits for tp and dp collectives) also record two
/// marks (CUDA events) on the backend's stream, and flush() turns them into complete events of a
/// thread named "GPU stream", once the device has passed them. The clock: begin_step records a mark
/// while the stream is idle (the previous step ended with a synchronize), so that mark happened at
/// the host time it was recorded; every other mark is placed at that time plus the event-measured
/// interval from it. On the CPU nothing is recorded: the host's regions are the device's timeline.
class DeviceTrace {
 public:
  struct Span {
    const char* cat = "";
    std::string name;
    int64_t a = -1, b = -1;  // the backend's marks at the region's start and end
    int64_t bytes = -1;
    /// The trace thread: empty for the model's stream ("GPU stream"), else a communicator's name,
    /// whose stream is "GPU NCCL stream (<name>)": its collectives, which overlap the compute
    /// stream's work where the schedule allows.
    std::string lane;
  };
  /// The process's device timeline.
  static DeviceTrace& get();
  /// Starts recording this step's regions when a trace is armed (Tracer::armed) and be runs on a GPU;
  /// call it after Backend::reset_marks(), with the stream idle.
  void begin_step(Backend& be);
  /// Whether the current step's regions are being recorded.
  bool recording() const { return be_ != nullptr; }
  Backend* backend() const { return be_; }
  void add(Span s) { spans_.push_back(std::move(s)); }
  /// The regions recorded so far in this step: a step captured as a CUDA graph records them once, and
  /// each replay sets them again (the replay records the same marks).
  const std::vector<Span>& spans() const { return spans_; }
  void set_spans(std::vector<Span> spans) { spans_ = std::move(spans); }
  /// Once the device has passed every mark (after a synchronize): adds the regions to the Tracer on
  /// the "GPU stream" thread and NCCL's on one "GPU NCCL stream (<communicator>)" each (when the step
  /// is traced, Tracer::on), and stops recording.
  void flush();

 private:
  Backend* be_ = nullptr;
  int64_t anchor_ = -1;
  double anchor_us_ = 0.0;
  std::vector<Span> spans_;
};

/// A region of the device's stream, recorded while DeviceTrace is recording (beside the host's
/// TraceScope of the same name). make_name is only called then.
class DeviceScope {
 public:
  template <class NameFn>
  DeviceScope(const char* cat, NameFn&& make_name) {
    DeviceTrace& t = DeviceTrace::get();
    if (!t.recording()) return;
    span_.cat = cat;
    span_.name = make_name();
    span_.a = t.backend()->mark();
  }
  ~DeviceScope() {
    DeviceTrace& t = DeviceTrace::get();
    if (span_.a < 0 || !t.recording()) return;
    span_.b = t.backend()->mark();
    t.add(std::move(span_));
  }
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;

 private:
  DeviceTrace::Span span_;
};

/// The CPU backend. bf16_gemms: every matmul through oneDNN in bf16 with fp32 accumulation, the rest
/// fp32 (train.precision = bf16 on the CPU); throws "[bf16-cpu] not built" without oneDNN and refuses
/// a CPU without bf16 instructions.
std::unique_ptr<Backend> make_cpu_backend(bool bf16_gemms = false);
/// The instruction set oneDNN runs bf16 GEMMs with here (e.g. "AVX512_CORE_AMX"); throws the error
/// make_cpu_backend(true) would, so a command can refuse before it prepares anything.
std::string cpu_bf16_gemm_isa();
/// A CUDA backend on the current device and a stream of its own. Throws "[cuda] not built" in builds
/// without CUDA and a clear error when no GPU is present.
std::unique_ptr<Backend> make_cuda_backend(DType dtype, AttentionKind attention = AttentionKind::flash);

}  // namespace meshtrain
