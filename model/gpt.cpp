// GPT-2 forward and backward over a Backend's kernels (model/backend.h). The residual stream flows
// through res[l] (input of block l, res[L] = output of the last block); each block keeps the
// activations its backward needs. Backward walks the blocks in reverse with one residual-gradient
// buffer that every block adds into, as the residual connections do.
//
// Tensor parallelism (Megatron-LM) changes only the widths and adds four all-reduces per block:
// QKV and fc are column-parallel (this rank's heads / MLP columns), the two projections are
// row-parallel (partial sums, all-reduced before the bias: the "g" operator), and the LayerNorm
// input gradients of the column-parallel layers are all-reduced in backward (the "f" operator).
// Embedding and head are vocabulary-parallel (model/kernels/vocab_parallel.h). With tp = 1 every
// all-reduce disappears and the code is the plain single-process model. The all-reduces take views
// of the device's activation buffer: an NCCL communicator reduces them on the GPU in the order of
// the compute stream, an MPI one stages them through host memory; either way the code is the same.
#include "model/gpt.h"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "model/kernels/matmul.h"
#include "model/kernels/rope.h"
#include "model/kernels/vocab_parallel.h"
#include "core/communicator.h"
#include "core/trace.h"

namespace meshtrain {

struct Gpt::Acts {
  int B = 0, T = 0;  // capacity
  Tensor buffer;     // every activation below is a view into this one allocation (backend dtype)
  Tensor ids;        // B*T tokens then B*T targets (int32, on the device)
  Tensor loss_buf;   // B*T per-position losses (fp32, on the device)
  Tensor xent;       // vocabulary-parallel row statistics: B*T maxima, then 2*B*T sums (fp32, tp > 1 only)
  int last_B = 0, last_T = 0;  // shape of the last forward in this slot
  bool grad_ready = false;     // a forward with compute_grad awaits its backward
  bool head_fused = false;     // logits holds the fused head's gradient (Backend::classifier_crossentropy)
  // Activations are in the backend's dtype (void*); LayerNorm statistics, attention's saved values
  // and the losses are fp32 whatever it is.
  struct Layer {
    void *ln1, *qkv, *atty, *res2, *ln2, *fch, *fch_gelu;
    float *ln1_mean, *ln1_rstd, *att, *ln2_mean, *ln2_rstd;
  };
  std::vector<void*> res;  // L + 1 residual streams
  std::vector<Layer> layers;
  void *lnf, *logits;
  float *lnf_mean, *lnf_rstd;
  // backward scratch
  void *dres, *dln, *datty, *dqkv, *dfch, *dfch_gelu, *proj_out;
  float* att_scratch;
};

namespace {
/// A size-1 communicator made on demand, so the model needs no tp group in a single process.
std::unique_ptr<Communicator> make_local() { return std::make_unique<LocalCommunicator>(); }

/// A profiler region that, on a device that runs asynchronously, waits for the device at both ends
/// so the time is the kernels' (profiling therefore slows a GPU step; it is off by default).
class Region {
 public:
  Region(Profiler* p, Backend& be, const char* name) : p_(p), be_(be), name_(name) {
    if (!p_) return;
    be_.synchronize();
    t0_ = now_seconds();
  }
  ~Region() {
    if (!p_) return;
    try {
      be_.synchronize();
    } catch (...) {  // a device error resurfaces at the next synchronisation
    }
    p_->add(name_, now_seconds() - t0_);
  }
  Region(const Region&) = delete;
  Region& operator=(const Region&) = delete;

 private:
  Profiler* p_;
  Backend& be_;
  const char* name_;
  double t0_ = 0.0;
};
}  // namespace

Gpt::Gpt(const GptConfig& cfg, Communicator& comm, Communicator* tp, int pp_size, int pp_stage,
         std::unique_ptr<Backend> backend)
    : cfg_(cfg),
      own_tp_(tp ? nullptr : make_local()),
      tp_(tp ? tp : own_tp_.get()),
      table_((cfg.validate(), cfg), tp_->size(), tp_->rank(), pp_size, pp_stage),
      be_(backend ? std::move(backend) : make_cpu_backend()),
      esize_(dtype_size(be_->dtype())),
      tp_timer_(be_.get(), "tp", "tp all-reduce") {
  n_local_ = table_.layer_end() - table_.layer_begin();
  slots_.resize(1);
  const int t = tp_->size();
  Cl_ = cfg.n_embd / t;
  NHl_ = cfg.n_head / t;
  Fl_ = 4 * cfg.n_embd / t;
  Vl_ = cfg.padded_vocab() / t;
  v0_ = Vl_ * tp_->rank();
  // Flat buffers are padded to a multiple of the data-parallel group size so they split into equal
  // shards; the padding stays zero and belongs to no parameter.
  const int64_t n = comm.size(), padded = (table_.total() + n - 1) / n * n;
  params_ = Tensor::zeros({padded}, be_->dtype(), be_->device());
  grads_ = Tensor::zeros({padded}, be_->dtype(), be_->device());
  p_ = param_pointers(table_, params_.raw(), esize_);
  g_ = param_pointers(table_, grads_.raw(), esize_);
  // With a pipeline, wte lives on the first and the last stage and its gradient is final only once
  // the two copies' gradients are summed (by the trainer), so backward never reports it final.
  if (pp_size > 1 && table_.find("wte")) tied_ready_ = table_.get("wte").offset + table_.get("wte").numel;
  if (cfg.rope() && n_local_ > 0) {
    std::vector<float> table = rope_table(cfg.seq_len, cfg.head_size(), cfg.rope_theta);
    rope_table_ = Tensor::empty({static_cast<int64_t>(table.size())}, DType::f32, be_->device());
    be_->upload(rope_table_.raw(), table.data(), table.size() * sizeof(float));
    be_->synchronize();
  }
}

Recompute parse_recompute(const std::string& name) {
  if (name == "none") return Recompute::none;
  if (name == "selective") return Recompute::selective;
  if (name == "full") return Recompute::full;
  MT_FAIL("[config] train.recompute must be none, selective or full (got '{}')", name);
}

Lora& Gpt::enable_lora(const LoraConfig& lc) {
  MT_CHECK(table_.pp_size() == 1, "[lora] adapters need the whole model on each rank: parallel.pp must be 1");
  lora_ = std::make_unique<Lora>(cfg_, lc, *tp_, *be_);
  return *lora_;
}

void Gpt::set_recompute(Recompute mode) {
  recompute_ = mode;
  for (auto& slot : slots_) slot.reset();
}

void Gpt::use_slot(int slot) {
  MT_CHECK(slot >= 0 && slot < 1024, "[gpt] activation slot {} out of range", slot);
  if (static_cast<size_t>(slot) >= slots_.size()) slots_.resize(slot + 1);
  slot_ = slot;
}

const void* Gpt::act(const void* base, int64_t elements) const {
  return static_cast<const std::byte*>(base) + elements * static_cast<int64_t>(esize_);
}

namespace {
/// Element offset of p inside buffer (p must point into it).
int64_t offset_in(const Tensor& buffer, const void* p) {
  return (static_cast<const std::byte*>(p) - static_cast<const std::byte*>(buffer.raw())) /
         static_cast<int64_t>(dtype_size(buffer.dtype()));
}
}  // namespace

Tensor Gpt::stage_input(int B, int T) {
  ensure_acts(B, T);
  Acts& a = acts();
  return a.buffer.view(offset_in(a.buffer, a.res[0]), {B, T, cfg_.n_embd});
}

Tensor Gpt::stage_output() const {
  Acts& a = acts();
  return a.buffer.view(offset_in(a.buffer, a.res[n_local_]), {a.last_B, a.last_T, cfg_.n_embd});
}

Tensor Gpt::stage_output_grad() const {
  Acts& a = acts();
  return a.buffer.view(offset_in(a.buffer, a.dres), {a.last_B, a.last_T, cfg_.n_embd});
}

Tensor Gpt::input_tokens(int B, int T) {
  ensure_acts(B, T);
  return acts().ids.view(0, {static_cast<int64_t>(B) * T});
}

Tensor Gpt::input_targets(int B, int T) {
  ensure_acts(B, T);
  Acts& a = acts();
  return a.ids.view(static_cast<int64_t>(a.B) * a.T, {static_cast<int64_t>(B) * T});
}

Tensor Gpt::losses() const {
  Acts& a = acts();
  MT_CHECK(table_.last_stage(), "[gpt] only the last pipeline stage has losses");
  return a.loss_buf.view(0, {static_cast<int64_t>(a.last_B) * a.last_T});
}

Gpt::~Gpt() = default;

Tensor Gpt::param(const std::string& name) const {
  const auto& s = table_.get(name);
  return params_.view(s.offset, s.shape);
}

Tensor Gpt::grad(const std::string& name) const {
  const auto& s = table_.get(name);
  return grads_.view(s.offset, s.shape);
}

void Gpt::initialize(uint64_t seed) {
  if (be_->device() == Device::cpu) return table_.initialize(params_.f32(), seed);
  std::vector<float> host(static_cast<size_t>(table_.total()));
  table_.initialize(host.data(), seed);
  set_params(host.data());
}

void Gpt::set_params(const float* host) {
  const int64_t n = table_.total();
  if (be_->dtype() == DType::f32) {
    be_->upload(params_.raw(), host, static_cast<size_t>(n) * sizeof(float));
  } else {
    std::vector<Bf16> b(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) b[static_cast<size_t>(i)].bits = float_to_bf16(host[i]);
    be_->upload(params_.raw(), b.data(), b.size() * sizeof(Bf16));
  }
  be_->synchronize();  // the host memory may go away after this returns
}

void Gpt::get_params(float* host) const { be_->download_floats(host, params_.raw(), table_.total()); }

void Gpt::zero_grad() { be_->zero(grads_.raw(), grads_.nbytes()); }

size_t Gpt::activation_bytes() const {
  size_t n = 0;
  for (const auto& a : slots_)
    if (a) n += a->buffer.nbytes() + a->ids.nbytes() + a->loss_buf.nbytes() + a->xent.nbytes();
  return n;
}

Gpt::ActivationShape Gpt::activation_shape(const GptConfig& cfg, int B, int T, int tp_size, int pp_size, int pp_stage,
                                           Recompute mode, const ActivationSizing& be) {
  const auto [first, last] = ParameterTable::stage_layers(cfg.n_layer, pp_size, pp_stage);
  ActivationShape s;
  s.B = B;
  s.T = T;
  s.C = cfg.n_embd;
  s.Cl = cfg.n_embd / tp_size;
  s.Fl = 4 * cfg.n_embd / tp_size;
  s.L = last - first;
  s.Vl = pp_stage == pp_size - 1 ? cfg.padded_vocab() / tp_size : 0;  // only the last stage has logits
  s.att_saved = be.attention_saved(B, T, static_cast<int>(s.Cl), cfg.n_head / tp_size);
  s.att_scratch = be.attention_scratch(B, T, static_cast<int>(s.Cl), cfg.n_head / tp_size);
  s.esize = static_cast<int64_t>(dtype_size(be.dtype));
  s.align = be.align();
  s.recompute = mode;
  s.tp_rows = tp_size > 1;
  return s;
}

int64_t Gpt::slot_bytes(const ActivationShape& s) {
  const int64_t BT = static_cast<int64_t>(s.B) * s.T;
  const int64_t buffer = (lay_out(s, 0, nullptr) + s.esize - 1) / s.esize * s.esize;
  return buffer + 2 * BT * 4 /* ids */ + BT * 4 /* losses */ + (s.tp_rows ? 3 * BT * 4 : 0);
}

int64_t Gpt::lay_out(const ActivationShape& s, uintptr_t base, Acts* a) {
  const int64_t BT = static_cast<int64_t>(s.B) * s.T, C = s.C, L = s.L, Vl = s.Vl, Cl = s.Cl, Fl = s.Fl;
  // What a block keeps for backward depends on the recomputation mode: everything (none);
  // everything but the attention's saved values and the GELU output, which live in one buffer shared
  // by all blocks and are recomputed (selective); nothing but its input res[l], every block sharing
  // one set that backward refills by running the block again (full).
  const bool selective = s.recompute == Recompute::selective;
  const int64_t stored_layers = s.recompute == Recompute::full ? 1 : L;
  Acts scratch;
  Acts& x = a ? *a : scratch;  // counting only: the pointers land in a throwaway
  int64_t off = 0;             // bytes
  auto take_bytes = [&](int64_t bytes) {
    auto* p = reinterpret_cast<std::byte*>(base + static_cast<uintptr_t>(off));
    off += (bytes + s.align - 1) / s.align * s.align;
    return p;
  };
  auto take = [&](int64_t n) -> void* { return take_bytes(n * s.esize); };
  auto take_f32 = [&](int64_t n) { return reinterpret_cast<float*>(take_bytes(n * 4)); };
  x.res.clear();
  for (int64_t l = 0; l <= L; ++l) x.res.push_back(take(BT * C));
  float* shared_att = selective ? take_f32(s.att_saved) : nullptr;
  void* shared_gelu = selective ? take(BT * Fl) : nullptr;
  x.layers.assign(L, {});
  for (int64_t l = 0; l < L; ++l) {
    auto& y = x.layers[l];
    if (l >= stored_layers) {
      y = x.layers[0];
      continue;
    }
    y.ln1 = take(BT * C); y.ln1_mean = take_f32(BT); y.ln1_rstd = take_f32(BT);
    y.qkv = take(BT * 3 * Cl); y.atty = take(BT * Cl); y.att = shared_att ? shared_att : take_f32(s.att_saved);
    y.res2 = take(BT * C); y.ln2 = take(BT * C); y.ln2_mean = take_f32(BT); y.ln2_rstd = take_f32(BT);
    y.fch = take(BT * Fl); y.fch_gelu = shared_gelu ? shared_gelu : take(BT * Fl);
  }
  x.lnf = take(BT * C); x.lnf_mean = take_f32(BT); x.lnf_rstd = take_f32(BT);
  x.logits = take(BT * Vl);
  x.dres = take(BT * C); x.dln = take(BT * C); x.datty = take(BT * Cl); x.proj_out = take(BT * C);
  x.dqkv = take(BT * 3 * Cl); x.dfch = take(BT * Fl); x.dfch_gelu = take(BT * Fl);
  x.att_scratch = take_f32(s.att_scratch);
  return off;
}

void Gpt::ensure_acts(int B, int T) {
  MT_CHECK(B >= 1 && T >= 1 && T <= cfg_.seq_len, "[gpt] batch {} x {} tokens: T must be in [1, seq_len={}]", B, T,
           cfg_.seq_len);
  // Every buffer is indexed from its start with the current B and T, so a smaller batch fits.
  auto& slot = slots_.at(slot_);
  if (slot && B <= slot->B && T <= slot->T) return;
  slot.reset();  // free the old plan before allocating the new one (device memory is scarce)
  auto a = std::make_unique<Acts>();
  a->B = B;
  a->T = T;
  const ActivationShape shape =
      activation_shape(cfg_, B, T, tp_->size(), table_.pp_size(), table_.pp_stage(), recompute_, be_->sizing());
  // The plan runs twice: once from address 0 to size the buffer, then from the buffer's start.
  const int64_t bytes = lay_out(shape, 0, nullptr), es = static_cast<int64_t>(esize_);
  a->buffer = Tensor::empty({(bytes + es - 1) / es}, be_->dtype(), be_->device());
  lay_out(shape, reinterpret_cast<uintptr_t>(a->buffer.raw()), a.get());
  const int64_t BT = static_cast<int64_t>(B) * T;
  a->ids = Tensor::zeros({2 * BT}, DType::i32, be_->device());
  a->loss_buf = Tensor::zeros({BT}, DType::f32, be_->device());
  if (shape.tp_rows) a->xent = Tensor::zeros({3 * BT}, DType::f32, be_->device());
  slot = std::move(a);
}

namespace {

/// All-reduces (sums) n elements at x, which lie inside the activation buffer, over the tp group,
/// timing it on the device's timeline.
void tp_sum(Communicator& tp, const Tensor& buffer, void* x, int64_t n, DeviceTimer& timer,
            std::pair<double, double>& bytes) {
  if (tp.size() == 1) return;
  const int64_t payload = n * static_cast<int64_t>(dtype_size(buffer.dtype()));
  bytes.first += static_cast<double>(payload);
  bytes.second += static_cast<double>(payload) * 2.0 * (tp.size() - 1) / tp.size();
  timer.start(payload);
  Tensor view = buffer.view(offset_in(buffer, x), {n});
  tp.all_reduce_async(view, ReduceOp::sum)->wait();  // over NCCL: the stream waits, not the host
  timer.stop();
}

/// Row-parallel linear layer: out = inp @ W^T summed over the tp group, plus the bias, which tp
/// rank 0 alone adds in its GEMM so the sum holds it once.
void row_parallel_forward(Backend& be, Communicator& tp, const Tensor& buffer, void* out, const void* inp,
                          const void* w, const void* bias, int N, int C_in, int C_out, DeviceTimer& timer,
                          std::pair<double, double>& bytes) {
  be.matmul_forward(out, inp, w, tp.rank() == 0 ? bias : nullptr, N, C_in, C_out);
  tp_sum(tp, buffer, out, static_cast<int64_t>(N) * C_out, timer, bytes);
}

}  // namespace

void Gpt::block_forward(int l, int B, int T, int cache_pos) {
  auto name = [&] { return "forward block " + std::to_string(table_.layer_begin() + l); };
  TraceScope trace("compute", name);
  DeviceScope on_device("compute", name);
  Acts& a = acts();
  Backend& be = *be_;
  const int C = cfg_.n_embd, BT = B * T;
  Communicator& tp = *tp_;
  const LayerParams& w = p_.layers[l];
  auto& y = a.layers[l];
  {
    Region r(prof_, be, "layernorm");
    be.layernorm_forward(y.ln1, y.ln1_mean, y.ln1_rstd, a.res[l], w.ln1_w, w.ln1_b, BT, C);
  }
  {
    Region r(prof_, be, "matmul");
    be.matmul_forward(y.qkv, y.ln1, w.qkv_w, w.qkv_b, BT, C, 3 * Cl_);
    if (lora_) lora_->forward(l, LoraTarget::qkv, y.qkv, y.ln1, BT);
  }
  if (rope_table_.defined()) {
    Region r(prof_, be, "rope");  // q and k turned by position, in place (the attention keeps them so)
    be.rope(y.qkv, rope_table_.f32(), B, T, Cl_, NHl_, std::max(cache_pos, 0), false);
  }
  if (cache_pos >= 0) {
    Region r(prof_, be, "attention");
    const int64_t per_block = static_cast<int64_t>(cfg_.seq_len) * Cl_;  // elements of one cache
    auto* keys = static_cast<std::byte*>(kv_cache_.raw()) + 2 * l * per_block * static_cast<int64_t>(esize_);
    be.attention_cached(y.atty, keys, keys + per_block * static_cast<int64_t>(esize_), y.qkv, T, cache_pos, Cl_, NHl_);
  } else {
    Region r(prof_, be, "attention");
    be.attention_forward(y.atty, y.att, y.qkv, B, T, Cl_, NHl_);
  }
  {
    Region r(prof_, be, "matmul");
    row_parallel_forward(be, tp, a.buffer, a.proj_out, y.atty, w.attproj_w, w.attproj_b, BT, Cl_, C, tp_timer_, tp_bytes_);
    if (lora_) lora_->forward(l, LoraTarget::proj, a.proj_out, y.atty, BT);
  }
  {
    Region r(prof_, be, "layernorm");  // fused with the attention residual
    be.residual_layernorm_forward(y.res2, y.ln2, y.ln2_mean, y.ln2_rstd, a.res[l], a.proj_out, w.ln2_w, w.ln2_b, BT,
                                  C);
  }
  const bool fc_lora = lora_ && lora_->targets(LoraTarget::fc);
  if (recompute_ == Recompute::selective || fc_lora) {
    // Backward recomputes the GELU output with gelu_forward from y.fch, so forward must make it the same
    // way: a GELU fused into the GEMM epilogue (cuBLASLt, bf16) works on the unrounded sum and gives
    // other bits than gelu_forward on the stored y.fch. An adapter on fc adds its branch before the GELU.
    Region r(prof_, be, "matmul");
    be.matmul_forward(y.fch, y.ln2, w.fc_w, w.fc_b, BT, C, Fl_);
    if (fc_lora) lora_->forward(l, LoraTarget::fc, y.fch, y.ln2, BT);
    be.gelu_forward(y.fch_gelu, y.fch, static_cast<int64_t>(BT) * Fl_);
  } else {
    Region r(prof_, be, "matmul");  // with GELU in the epilogue where the device fuses it
    be.matmul_forward(y.fch_gelu, y.ln2, w.fc_w, w.fc_b, BT, C, Fl_, y.fch);
  }
  {
    Region r(prof_, be, "matmul");
    row_parallel_forward(be, tp, a.buffer, a.proj_out, y.fch_gelu, w.fcproj_w, w.fcproj_b, BT, Fl_, C, tp_timer_, tp_bytes_);
    if (lora_) lora_->forward(l, LoraTarget::fc_proj, a.proj_out, y.fch_gelu, BT);
  }
  {
    Region r(prof_, be, "residual");
    be.residual_forward(a.res[l + 1], y.res2, a.proj_out, static_cast<int64_t>(BT) * C);
  }
}

void Gpt::check_tokens(const int32_t* tokens, int64_t n) const {
  for (int64_t i = 0; i < n; ++i)
    MT_CHECK(tokens[i] >= 0 && tokens[i] < cfg_.vocab_size, "[gpt] token id {} at position {} outside [0, {})",
             tokens[i], i, cfg_.vocab_size);
}

int64_t Gpt::count_targets(const int32_t* targets, int64_t n) const {
  int64_t counted = 0;
  for (int64_t i = 0; i < n; ++i) {
    MT_CHECK(targets[i] < cfg_.vocab_size, "[gpt] target id {} at position {} outside [0, {})", targets[i], i,
             cfg_.vocab_size);
    counted += targets[i] >= 0;
  }
  MT_CHECK(counted > 0, "[gpt] every target of the batch is ignored");
  return counted;
}

void Gpt::forward_blocks(const int32_t* tokens, int B, int T) {
  ensure_acts(B, T);
  Acts& a = acts();
  const int BT = B * T;
  if (table_.first_stage()) {
    MT_CHECK(tokens, "[gpt] the first stage needs tokens");
    check_tokens(tokens, BT);
    be_->upload(a.ids.raw(), tokens, static_cast<size_t>(BT) * sizeof(int32_t));
  }
  run_blocks(B, T);
}

void Gpt::run_blocks(int B, int T, int cache_pos) {
  Acts& a = acts();
  Backend& be = *be_;
  const int C = cfg_.n_embd, BT = B * T;
  Communicator& tp = *tp_;
  a.last_B = B;
  a.last_T = T;
  if (table_.first_stage()) {
    Region r(prof_, be, "encoder");
    const int32_t* tokens = a.ids.data<int32_t>();
    // Rows of the position table from the first new position on (none in a RoPE model).
    const void* wpe = p_.wpe ? act(p_.wpe, static_cast<int64_t>(std::max(cache_pos, 0)) * C) : nullptr;
    if (tp.size() == 1) {
      be.encoder_forward(a.res[0], tokens, p_.wte, wpe, B, T, C);
    } else {
      // The rank holding each token's row contributes it, the others zeros: the sum is exact.
      be.vocab_embedding_rows(a.res[0], tokens, p_.wte, BT, C, v0_, Vl_);
      tp_sum(tp, a.buffer, a.res[0], static_cast<int64_t>(BT) * C, tp_timer_, tp_bytes_);
      if (wpe) be.add_positions(a.res[0], wpe, B, T, C);
    }
  }
  for (int l = 0; l < n_local_; ++l) block_forward(l, B, T, cache_pos);
  if (!table_.last_stage()) return;
  Region r(prof_, be, "layernorm");
  be.layernorm_forward(a.lnf, a.lnf_mean, a.lnf_rstd, a.res[n_local_], p_.lnf_w, p_.lnf_b, BT, C);
}

void Gpt::head_forward(int B, int T, bool has_targets, bool compute_grad, float dloss) {
  TraceScope trace("compute", "head forward (logits, loss)");
  DeviceScope on_device("compute", [] { return "head forward (logits, loss)"; });
  Acts& a = acts();
  Backend& be = *be_;
  const int C = cfg_.n_embd, BT = B * T;
  a.head_fused = compute_grad && tp_->size() == 1 && be.fuses_classifier_crossentropy(BT);
  if (a.head_fused) {  // the backend times its own parts
    const int32_t* targets = a.ids.data<int32_t>() + static_cast<int64_t>(a.B) * a.T;
    be.classifier_crossentropy(a.loss_buf.f32(), a.logits, a.lnf, p_.wte, targets, BT, C, cfg_.vocab_size,
                               static_cast<int>(Vl_), dloss, prof_);
    return;
  }
  {
    Region r(prof_, be, "classifier");
    be.matmul_forward(a.logits, a.lnf, p_.wte, nullptr, BT, C, static_cast<int>(Vl_));
  }
  if (!has_targets) return;
  Region r(prof_, be, "crossentropy");
  void* dlogits = compute_grad ? a.logits : nullptr;
  const int32_t* targets = a.ids.data<int32_t>() + static_cast<int64_t>(a.B) * a.T;
  if (tp_->size() == 1) {
    be.crossentropy(a.loss_buf.f32(), dlogits, a.logits, targets, BT, cfg_.vocab_size, static_cast<int>(Vl_), dloss);
    return;
  }
  // Per row, the ranks agree on the maximum, then on the sum of exponentials and the target's logit.
  Tensor mx = a.xent.view(0, {BT}), sums = a.xent.view(BT, {2 * static_cast<int64_t>(BT)});
  be.vocab_xent_max(mx.f32(), a.logits, BT, Vl_, cfg_.vocab_size, v0_);
  const double xent_bytes = 3.0 * BT * sizeof(float);  // both all-reduces
  tp_bytes_.first += xent_bytes;
  tp_bytes_.second += xent_bytes * 2.0 * (tp_->size() - 1) / tp_->size();
  tp_timer_.start();
  tp_->all_reduce_async(mx, ReduceOp::max)->wait();
  tp_timer_.stop();
  be.vocab_xent_sums(sums.f32(), a.logits, targets, mx.f32(), BT, Vl_, cfg_.vocab_size, v0_);
  tp_timer_.start();
  tp_->all_reduce_async(sums, ReduceOp::sum)->wait();
  tp_timer_.stop();
  be.vocab_xent_finish(a.loss_buf.f32(), dlogits, a.logits, targets, mx.f32(), sums.f32(), BT, Vl_, cfg_.vocab_size,
                       v0_, dloss);
}

void Gpt::forward_queued(int B, int T, bool has_targets, bool compute_grad, float dloss) {
  MT_CHECK(table_.pp_size() == 1, "[gpt] forward_queued runs a whole model");
  MT_CHECK(!compute_grad || has_targets, "[gpt] forward with compute_grad needs targets");
  ensure_acts(B, T);
  run_blocks(B, T);
  head_forward(B, T, has_targets, compute_grad, dloss);
  acts().grad_ready = compute_grad;
}

float Gpt::forward(const int32_t* tokens, const int32_t* targets, int B, int T, bool compute_grad,
                   float dloss_scale) {
  MT_CHECK(!compute_grad || targets, "[gpt] forward with compute_grad needs targets");
  forward_blocks(tokens, B, T);
  Acts& a = acts();
  const int BT = B * T;
  a.grad_ready = false;
  if (!table_.last_stage()) {
    a.grad_ready = compute_grad;
    return 0.0f;
  }
  int64_t counted = 0;
  if (targets) {
    counted = count_targets(targets, BT);
    be_->upload(a.ids.data<int32_t>() + static_cast<int64_t>(a.B) * a.T, targets,
                static_cast<size_t>(BT) * sizeof(int32_t));
  }
  // Mean over counted targets: each one's gradient is dloss_scale / counted.
  const float dloss = compute_grad ? dloss_scale / static_cast<float>(counted) : 0.0f;
  head_forward(B, T, targets != nullptr, compute_grad, dloss);
  a.grad_ready = compute_grad;
  if (!targets) return 0.0f;
  std::vector<float> losses(static_cast<size_t>(BT));
  be_->download(losses.data(), a.loss_buf.raw(), losses.size() * sizeof(float));
  double sum = 0.0;
  for (float v : losses) sum += v;
  return static_cast<float>(sum / static_cast<double>(counted));
}

const float* Gpt::logits_row(int64_t r) const {
  const Acts& a = acts();
  MT_CHECK(table_.last_stage() && !a.grad_ready && r >= 0 && r < static_cast<int64_t>(a.last_B) * a.last_T,
           "[gpt] logits_row({}) without a matching forward", r);
  const void* row = act(a.logits, r * Vl_);
  if (be_->device() == Device::cpu) return static_cast<const float*>(row);
  host_logits_.resize(static_cast<size_t>(Vl_));
  be_->download_floats(host_logits_.data(), row, Vl_);
  return host_logits_.data();
}

void Gpt::head_last_row(int T) {
  Acts& a = acts();
  const int C = cfg_.n_embd;
  Region r(prof_, *be_, "classifier");
  be_->matmul_forward(a.logits, act(a.lnf, static_cast<int64_t>(T - 1) * C), p_.wte, nullptr, 1, C,
                      static_cast<int>(Vl_));
  a.grad_ready = false;
  a.last_B = 1;
  a.last_T = 1;
}

const float* Gpt::forward_last_logits(const int32_t* tokens, int T) {
  MT_CHECK(table_.pp_size() == 1, "[gpt] forward_last_logits runs a whole model; pipeline stages use forward()");
  forward_blocks(tokens, 1, T);
  head_last_row(T);
  return gathered_row0();
}

void Gpt::forward_cached(const int32_t* tokens, int T) {
  const int pos0 = cached_;
  MT_CHECK(T >= 1 && pos0 + T <= cfg_.seq_len,
           "[generate] the key/value cache holds model.seq_len = {} positions: {} cached + {} new do not fit; "
           "start a new sequence (reset_cache) from a shorter context", cfg_.seq_len, pos0, T);
  ensure_acts(1, T);
  if (!kv_cache_.defined() && n_local_ > 0)
    kv_cache_ = Tensor::zeros({2 * static_cast<int64_t>(n_local_) * cfg_.seq_len * Cl_}, be_->dtype(), be_->device());
  Acts& a = acts();
  if (table_.first_stage()) {
    MT_CHECK(tokens, "[gpt] the first stage needs tokens");
    check_tokens(tokens, T);
    be_->upload(a.ids.raw(), tokens, static_cast<size_t>(T) * sizeof(int32_t));
  }
  run_blocks(1, T, pos0);
  cached_ = pos0 + T;
  a.grad_ready = false;
  if (table_.last_stage()) head_last_row(T);
  be_->synchronize();  // the host's tokens may go away after this returns
}

const float* Gpt::forward_cached_logits(const int32_t* tokens, int T) {
  MT_CHECK(table_.pp_size() == 1, "[gpt] forward_cached_logits runs a whole model; pipeline stages use forward_cached()");
  forward_cached(tokens, T);
  return gathered_row0();
}

const float* Gpt::gathered_row0() {
  const float* mine = logits_row(0);
  if (tp_->size() == 1) return mine;
  // Sampling needs the whole row: gather every rank's columns (rank order = vocabulary order).
  Tensor part = Tensor::empty({Vl_});
  std::memcpy(part.f32(), mine, Vl_ * sizeof(float));
  if (!full_logits_.defined()) full_logits_ = Tensor::empty({Vl_ * tp_->size()});
  tp_->all_gather(part, full_logits_);
  return full_logits_.f32();
}

void Gpt::backward() {
  Acts& a = acts();
  MT_CHECK(a.grad_ready, "[gpt] backward() needs a forward(..., compute_grad = true) first");
  Backend& be = *be_;
  Communicator& tp = *tp_;
  const int B = a.last_B, T = a.last_T, C = cfg_.n_embd, BT = B * T;
  const int64_t BTC = static_cast<int64_t>(BT) * C;
  const size_t e = esize_;
  if (table_.last_stage()) {
    TraceScope head_trace("compute", "head backward");
    DeviceScope head_on_device("compute", [] { return "head backward"; });
    {
      Region r(prof_, be, "classifier");
      if (a.head_fused) {
        be.classifier_backward(a.dln, frozen_ ? nullptr : g_.wte, a.logits, a.lnf, p_.wte, BT, C, static_cast<int>(Vl_));
      } else {
        be.matmul_backward(a.dln, frozen_ ? nullptr : g_.wte, nullptr, a.logits, a.lnf, p_.wte, BT, C,
                           static_cast<int>(Vl_));
      }
      tp_sum(tp, a.buffer, a.dln, BTC, tp_timer_, tp_bytes_);  // each rank saw only its vocabulary columns
    }
    be.zero(a.dres, BTC * e);
    {
      Region r(prof_, be, "layernorm");
      be.layernorm_backward(a.dres, g_.lnf_w, g_.lnf_b, a.dln, a.res[n_local_], p_.lnf_w, a.lnf_mean, a.lnf_rstd, BT,
                            C);
    }
    if (grad_ready_) grad_ready_(table_.get("ln_f.weight").offset);
  }  // else a.dres already holds the gradient of this stage's output
  for (int l = n_local_ - 1; l >= 0; --l) {
    auto name = [&] { return "backward block " + std::to_string(table_.layer_begin() + l); };
    TraceScope trace("compute", name);
    DeviceScope on_device("compute", name);
    const LayerParams& w = p_.layers[l];
    const LayerParams& gw = g_.layers[l];
    auto grad = [&](void* g) { return frozen_ ? nullptr : g; };  // a frozen model keeps no weight gradients
    auto& y = a.layers[l];
    if (recompute_ != Recompute::none) {
      // Bring back what forward did not keep; the same kernels on the same inputs give the same bits.
      Region r(prof_, be, "recompute");
      if (recompute_ == Recompute::full) {
        block_forward(l, B, T);
      } else {
        be.attention_forward(y.atty, y.att, y.qkv, B, T, Cl_, NHl_);
        be.gelu_forward(y.fch_gelu, y.fch, static_cast<int64_t>(BT) * Fl_);
      }
    }
    // a.dres holds d(res[l+1]); the residual passes it unchanged to res2.
    {
      Region r(prof_, be, "matmul");
      be.matmul_backward(a.dfch_gelu, grad(gw.fcproj_w), grad(gw.fcproj_b), a.dres, y.fch_gelu, w.fcproj_w, BT, Fl_,
                         C);
      if (lora_) lora_->backward(l, LoraTarget::fc_proj, a.dfch_gelu, a.dres, y.fch_gelu, BT);
    }
    be.zero(a.dfch, static_cast<int64_t>(BT) * Fl_ * e);
    {
      Region r(prof_, be, "gelu");
      be.gelu_backward(a.dfch, y.fch, a.dfch_gelu, static_cast<int64_t>(BT) * Fl_);
    }
    {
      Region r(prof_, be, "matmul");
      be.matmul_backward(a.dln, grad(gw.fc_w), grad(gw.fc_b), a.dfch, y.ln2, w.fc_w, BT, C, Fl_);
      tp_sum(tp, a.buffer, a.dln, BTC, tp_timer_, tp_bytes_);
      if (lora_) lora_->backward(l, LoraTarget::fc, a.dln, a.dfch, y.ln2, BT);
    }
    {
      Region r(prof_, be, "layernorm");
      be.layernorm_backward(a.dres, gw.ln2_w, gw.ln2_b, a.dln, y.res2, w.ln2_w, y.ln2_mean, y.ln2_rstd, BT, C);
    }
    // a.dres now holds d(res2); the attention residual passes it to res[l].
    {
      Region r(prof_, be, "matmul");
      be.matmul_backward(a.datty, grad(gw.attproj_w), grad(gw.attproj_b), a.dres, y.atty, w.attproj_w, BT, Cl_, C);
      if (lora_) lora_->backward(l, LoraTarget::proj, a.datty, a.dres, y.atty, BT);
    }
    be.zero(a.dqkv, static_cast<int64_t>(BT) * 3 * Cl_ * e);
    {
      Region r(prof_, be, "attention");
      be.attention_backward(a.dqkv, a.att_scratch, a.datty, y.qkv, y.atty, y.att, B, T, Cl_, NHl_);
    }
    if (rope_table_.defined()) {
      Region r(prof_, be, "rope");  // gradients of the rotated q and k, turned back
      be.rope(a.dqkv, rope_table_.f32(), B, T, Cl_, NHl_, 0, true);
    }
    {
      Region r(prof_, be, "matmul");
      be.matmul_backward(a.dln, grad(gw.qkv_w), grad(gw.qkv_b), a.dqkv, y.ln1, w.qkv_w, BT, C, 3 * Cl_);
      tp_sum(tp, a.buffer, a.dln, BTC, tp_timer_, tp_bytes_);
      if (lora_) lora_->backward(l, LoraTarget::qkv, a.dln, a.dqkv, y.ln1, BT);
    }
    {
      Region r(prof_, be, "layernorm");
      be.layernorm_backward(a.dres, gw.ln1_w, gw.ln1_b, a.dln, a.res[l], w.ln1_w, y.ln1_mean, y.ln1_rstd, BT, C);
    }
    if (grad_ready_) grad_ready_(offset_in(grads_, gw.ln1_w));
  }
  if (table_.first_stage() && !frozen_) {
    Region r(prof_, be, "encoder");
    const int32_t* tokens = a.ids.data<int32_t>();
    if (tp.size() == 1) be.encoder_backward(g_.wte, g_.wpe, a.dres, tokens, B, T, C);
    else be.vocab_embedding_backward(g_.wte, g_.wpe, a.dres, tokens, B, T, C, v0_, Vl_);
  }  // else a.dres now holds the gradient of this stage's input
  a.grad_ready = false;
  if (grad_ready_) grad_ready_(tied_ready_);
}

}  // namespace meshtrain
