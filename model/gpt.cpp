// GPT-2 forward and backward over the CPU kernels in model/kernels. The residual stream flows
// through res[l] (input of block l, res[L] = output of the last block); each block keeps the
// activations its backward needs. Backward walks the blocks in reverse with one residual-gradient
// buffer that every block adds into, as the residual connections do.
//
// Tensor parallelism (Megatron-LM) changes only the widths and adds four all-reduces per block:
// QKV and fc are column-parallel (this rank's heads / MLP columns), the two projections are
// row-parallel (partial sums, all-reduced before the bias: the "g" operator), and the LayerNorm
// input gradients of the column-parallel layers are all-reduced in backward (the "f" operator).
// Embedding and head are vocabulary-parallel (model/vocab_parallel.h). With tp = 1 every
// all-reduce disappears and the code is the plain single-process model.
#include "model/gpt.h"

#include <cstring>

#include "model/kernels/attention.h"
#include "model/kernels/crossentropy.h"
#include "model/kernels/encoder.h"
#include "model/kernels/gelu.h"
#include "model/kernels/layernorm.h"
#include "model/kernels/matmul.h"
#include "model/kernels/residual.h"
#include "model/vocab_parallel.h"
#include "parallel/communicator.h"

namespace meshtrain {

struct Gpt::Acts {
  int B = 0, T = 0;  // capacity
  Tensor buffer;     // every activation below is a view into this one allocation
  std::vector<int32_t> tokens;
  int last_B = 0, last_T = 0;  // shape of the last forward in this slot
  bool grad_ready = false;     // a forward with compute_grad awaits its backward
  struct Layer {
    float *ln1, *ln1_mean, *ln1_rstd, *qkv, *atty, *att, *res2, *ln2, *ln2_mean, *ln2_rstd, *fch, *fch_gelu;
  };
  std::vector<float*> res;  // L + 1 residual streams
  std::vector<Layer> layers;
  float *lnf, *lnf_mean, *lnf_rstd, *logits, *losses;
  // backward scratch
  float *dres, *dln, *datty, *dqkv, *dfch, *dfch_gelu, *datt_scratch, *proj_out;
};

namespace {
/// A size-1 communicator made on demand, so the model needs no tp group in a single process.
std::unique_ptr<Communicator> make_local() { return std::make_unique<LocalCommunicator>(); }
}  // namespace

Gpt::Gpt(const GptConfig& cfg, Communicator& comm, Communicator* tp, int pp_size, int pp_stage)
    : cfg_(cfg),
      own_tp_(tp ? nullptr : make_local()),
      tp_(tp ? tp : own_tp_.get()),
      table_((cfg.validate(), cfg), tp_->size(), tp_->rank(), pp_size, pp_stage) {
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
  params_ = Tensor::zeros({padded});
  grads_ = Tensor::zeros({padded});
  p_ = param_pointers(table_, params_.f32());
  g_ = param_pointers(table_, grads_.f32());
  // With a pipeline, wte lives on the first and the last stage and its gradient is final only once
  // the two copies' gradients are summed (by the trainer), so backward never reports it final.
  if (pp_size > 1 && table_.find("wte")) tied_ready_ = table_.get("wte").offset + table_.get("wte").numel;
}

Recompute parse_recompute(const std::string& name) {
  if (name == "none") return Recompute::none;
  if (name == "selective") return Recompute::selective;
  if (name == "full") return Recompute::full;
  MT_FAIL("[config] train.recompute must be none, selective or full (got '{}')", name);
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

Tensor Gpt::stage_input(int B, int T) {
  ensure_acts(B, T);
  Acts& a = acts();
  return a.buffer.view(a.res[0] - a.buffer.f32(), {B, T, cfg_.n_embd});
}

Tensor Gpt::stage_output() const {
  Acts& a = acts();
  return a.buffer.view(a.res[n_local_] - a.buffer.f32(), {a.last_B, a.last_T, cfg_.n_embd});
}

Tensor Gpt::stage_output_grad() const {
  Acts& a = acts();
  return a.buffer.view(a.dres - a.buffer.f32(), {a.last_B, a.last_T, cfg_.n_embd});
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

void Gpt::initialize(uint64_t seed) { table_.initialize(params_.f32(), seed); }

void Gpt::zero_grad() { grads_.zero_(); }

size_t Gpt::activation_bytes() const {
  size_t n = 0;
  for (const auto& a : slots_) n += a ? a->buffer.nbytes() : 0;
  return n;
}

void Gpt::ensure_acts(int B, int T) {
  MT_CHECK(B >= 1 && T >= 1 && T <= cfg_.seq_len, "[gpt] batch {} x {} tokens: T must be in [1, seq_len={}]", B, T,
           cfg_.seq_len);
  // Every buffer is indexed from its start with the current B and T, so a smaller batch fits.
  auto& slot = slots_.at(slot_);
  if (slot && B <= slot->B && T <= slot->T) return;
  auto a = std::make_unique<Acts>();
  a->B = B;
  a->T = T;
  const int64_t BT = static_cast<int64_t>(B) * T, C = cfg_.n_embd, L = n_local_;
  const int64_t Vl = table_.last_stage() ? Vl_ : 0;  // only the last stage has logits
  const int64_t Cl = Cl_, Fl = Fl_, att = static_cast<int64_t>(B) * NHl_ * T * T;
  // What a block keeps for backward depends on the recomputation mode: everything (none);
  // everything but the attention probabilities and the GELU output, which live in one buffer shared
  // by all blocks and are recomputed (selective); nothing but its input res[l], every block sharing
  // one set that backward refills by running the block again (full).
  const int64_t kept_att = recompute_ == Recompute::selective ? 0 : att;
  const int64_t kept_gelu = recompute_ == Recompute::selective ? 0 : BT * Fl;
  const int64_t per_layer = BT * C /*ln1*/ + 2 * BT + BT * 3 * Cl /*qkv*/ + BT * Cl /*atty*/ + kept_att +
                            BT * C /*res2*/ + BT * C /*ln2*/ + 2 * BT + BT * Fl /*fch*/ + kept_gelu;
  const int64_t stored_layers = recompute_ == Recompute::full ? 1 : L;
  const int64_t shared = recompute_ == Recompute::selective ? att + BT * Fl : 0;
  const int64_t total = (L + 1) * BT * C + stored_layers * per_layer + shared + BT * C + 2 * BT + BT * Vl + BT +
                        /*scratch*/ BT * C * 2 + BT * Cl + BT * C + BT * 3 * Cl + 2 * BT * Fl + att;
  a->buffer = Tensor::empty({total});
  float* cur = a->buffer.f32();
  auto take = [&](int64_t n) {
    float* p = cur;
    cur += n;
    return p;
  };
  for (int64_t l = 0; l <= L; ++l) a->res.push_back(take(BT * C));
  float* shared_att = recompute_ == Recompute::selective ? take(att) : nullptr;
  float* shared_gelu = recompute_ == Recompute::selective ? take(BT * Fl) : nullptr;
  a->layers.resize(L);
  for (int64_t l = 0; l < L; ++l) {
    auto& y = a->layers[l];
    if (l > 0 && recompute_ == Recompute::full) {
      y = a->layers[0];
      continue;
    }
    y.ln1 = take(BT * C); y.ln1_mean = take(BT); y.ln1_rstd = take(BT);
    y.qkv = take(BT * 3 * Cl); y.atty = take(BT * Cl); y.att = shared_att ? shared_att : take(att);
    y.res2 = take(BT * C); y.ln2 = take(BT * C); y.ln2_mean = take(BT); y.ln2_rstd = take(BT);
    y.fch = take(BT * Fl); y.fch_gelu = shared_gelu ? shared_gelu : take(BT * Fl);
  }
  a->lnf = take(BT * C); a->lnf_mean = take(BT); a->lnf_rstd = take(BT);
  a->logits = take(BT * Vl); a->losses = take(BT);
  a->dres = take(BT * C); a->dln = take(BT * C); a->datty = take(BT * Cl); a->proj_out = take(BT * C);
  a->dqkv = take(BT * 3 * Cl); a->dfch = take(BT * Fl); a->dfch_gelu = take(BT * Fl);
  a->datt_scratch = take(att);
  MT_CHECK(cur == a->buffer.f32() + total, "[gpt] activation plan is inconsistent");
  slot = std::move(a);
}

namespace {

/// All-reduces (sums) n floats at x, which lie inside the activation buffer, over the tp group,
/// adding the time it took to seconds.
void tp_sum(Communicator& tp, const Tensor& buffer, float* x, int64_t n, double& seconds) {
  if (tp.size() == 1) return;
  double t0 = now_seconds();
  Tensor view = buffer.view(x - buffer.f32(), {n});
  tp.all_reduce(view, ReduceOp::sum);
  seconds += now_seconds() - t0;
}

/// Row-parallel linear layer: out = inp @ W^T, summed over the tp group, then + bias (added once).
void row_parallel_forward(Communicator& tp, const Tensor& buffer, float* out, const float* inp, const float* w,
                          const float* bias, int N, int C_in, int C_out, double& seconds) {
  if (tp.size() == 1) return matmul_forward_cpu(out, inp, w, bias, N, C_in, C_out);
  matmul_forward_cpu(out, inp, w, nullptr, N, C_in, C_out);
  tp_sum(tp, buffer, out, static_cast<int64_t>(N) * C_out, seconds);
#pragma omp parallel for schedule(static)
  for (int i = 0; i < N; ++i)
    for (int c = 0; c < C_out; ++c) out[static_cast<int64_t>(i) * C_out + c] += bias[c];
}

}  // namespace

void Gpt::block_forward(int l, int B, int T) {
  Acts& a = acts();
  const int C = cfg_.n_embd, BT = B * T;
  Communicator& tp = *tp_;
  const LayerParams& w = p_.layers[l];
  auto& y = a.layers[l];
  {
    ScopedTimer t(prof_, "layernorm");
    layernorm_forward_cpu(y.ln1, y.ln1_mean, y.ln1_rstd, a.res[l], w.ln1_w, w.ln1_b, BT, C);
  }
  {
    ScopedTimer t(prof_, "matmul");
    matmul_forward_cpu(y.qkv, y.ln1, w.qkv_w, w.qkv_b, BT, C, 3 * Cl_);
  }
  {
    ScopedTimer t(prof_, "attention");
    attention_forward_cpu(y.atty, y.att, y.qkv, B, T, Cl_, NHl_);
  }
  {
    ScopedTimer t(prof_, "matmul");
    row_parallel_forward(tp, a.buffer, a.proj_out, y.atty, w.attproj_w, w.attproj_b, BT, Cl_, C, tp_comm_s_);
  }
  {
    ScopedTimer t(prof_, "residual");
    residual_forward_cpu(y.res2, a.res[l], a.proj_out, static_cast<int64_t>(BT) * C);
  }
  {
    ScopedTimer t(prof_, "layernorm");
    layernorm_forward_cpu(y.ln2, y.ln2_mean, y.ln2_rstd, y.res2, w.ln2_w, w.ln2_b, BT, C);
  }
  {
    ScopedTimer t(prof_, "matmul");
    matmul_forward_cpu(y.fch, y.ln2, w.fc_w, w.fc_b, BT, C, Fl_);
  }
  {
    ScopedTimer t(prof_, "gelu");
    gelu_forward_cpu(y.fch_gelu, y.fch, static_cast<int64_t>(BT) * Fl_);
  }
  {
    ScopedTimer t(prof_, "matmul");
    row_parallel_forward(tp, a.buffer, a.proj_out, y.fch_gelu, w.fcproj_w, w.fcproj_b, BT, Fl_, C, tp_comm_s_);
  }
  {
    ScopedTimer t(prof_, "residual");
    residual_forward_cpu(a.res[l + 1], y.res2, a.proj_out, static_cast<int64_t>(BT) * C);
  }
}

void Gpt::forward_blocks(const int32_t* tokens, int B, int T) {
  ensure_acts(B, T);
  Acts& a = acts();
  const int C = cfg_.n_embd, BT = B * T;
  Communicator& tp = *tp_;
  a.last_B = B;
  a.last_T = T;
  if (table_.first_stage()) {
    MT_CHECK(tokens, "[gpt] the first stage needs tokens");
    a.tokens.assign(tokens, tokens + BT);
    for (int i = 0; i < BT; ++i)
      MT_CHECK(tokens[i] >= 0 && tokens[i] < cfg_.vocab_size, "[gpt] token id {} at position {} outside [0, {})",
               tokens[i], i, cfg_.vocab_size);
    ScopedTimer t(prof_, "encoder");
    if (tp.size() == 1) encoder_forward_cpu(a.res[0], tokens, p_.wte, p_.wpe, B, T, C);
    else vocab_parallel_embedding_forward(a.res[0], tokens, p_.wte, p_.wpe, B, T, C, v0_, Vl_, tp);
  }
  for (int l = 0; l < n_local_; ++l) block_forward(l, B, T);
  if (!table_.last_stage()) return;
  ScopedTimer t(prof_, "layernorm");
  layernorm_forward_cpu(a.lnf, a.lnf_mean, a.lnf_rstd, a.res[n_local_], p_.lnf_w, p_.lnf_b, BT, C);
}

float Gpt::forward(const int32_t* tokens, const int32_t* targets, int B, int T, bool compute_grad,
                   float dloss_scale) {
  MT_CHECK(!compute_grad || targets, "[gpt] forward with compute_grad needs targets");
  forward_blocks(tokens, B, T);
  Acts& a = acts();
  const int C = cfg_.n_embd, BT = B * T;
  a.grad_ready = false;
  if (!table_.last_stage()) {
    a.grad_ready = compute_grad;
    return 0.0f;
  }
  {
    ScopedTimer t(prof_, "classifier");
    matmul_forward_cpu(a.logits, a.lnf, p_.wte, nullptr, BT, C, static_cast<int>(Vl_));
  }
  if (!targets) return 0.0f;
  int64_t counted = 0;
  for (int i = 0; i < BT; ++i) {
    MT_CHECK(targets[i] < cfg_.vocab_size, "[gpt] target id {} at position {} outside [0, {})", targets[i], i,
             cfg_.vocab_size);
    counted += targets[i] >= 0;
  }
  MT_CHECK(counted > 0, "[gpt] every target of the batch is ignored");
  // Mean over counted targets: each one's gradient is dloss_scale / counted.
  float dloss = compute_grad ? dloss_scale / static_cast<float>(counted) : 0.0f;
  {
    ScopedTimer t(prof_, "crossentropy");
    float* dlogits = compute_grad ? a.logits : nullptr;
    if (tp_->size() == 1)
      softmax_crossentropy_cpu(a.losses, dlogits, a.logits, targets, BT, cfg_.vocab_size, static_cast<int>(Vl_),
                               dloss);
    else
      vocab_parallel_crossentropy(a.losses, dlogits, a.logits, targets, BT, cfg_.vocab_size, Vl_, v0_, dloss, *tp_);
  }
  a.grad_ready = compute_grad;
  double sum = 0.0;
  for (int i = 0; i < BT; ++i) sum += a.losses[i];
  return static_cast<float>(sum / static_cast<double>(counted));
}

const float* Gpt::logits_row(int64_t r) const {
  const Acts& a = acts();
  MT_CHECK(table_.last_stage() && !a.grad_ready && r >= 0 && r < static_cast<int64_t>(a.last_B) * a.last_T,
           "[gpt] logits_row({}) without a matching forward", r);
  return a.logits + r * Vl_;
}

const float* Gpt::forward_last_logits(const int32_t* tokens, int T) {
  MT_CHECK(table_.pp_size() == 1, "[gpt] forward_last_logits runs a whole model; pipeline stages use forward()");
  forward_blocks(tokens, 1, T);
  Acts& a = acts();
  const int C = cfg_.n_embd;
  matmul_forward_cpu(a.logits, a.lnf + static_cast<int64_t>(T - 1) * C, p_.wte, nullptr, 1, C, static_cast<int>(Vl_));
  a.grad_ready = false;
  a.last_B = 1;
  a.last_T = 1;
  if (tp_->size() == 1) return a.logits;
  // Sampling needs the whole row: gather every rank's columns (rank order = vocabulary order).
  Tensor mine = Tensor::empty({Vl_});
  std::memcpy(mine.f32(), a.logits, Vl_ * sizeof(float));
  if (!full_logits_.defined()) full_logits_ = Tensor::empty({Vl_ * tp_->size()});
  tp_->all_gather(mine, full_logits_);
  return full_logits_.f32();
}

void Gpt::backward() {
  Acts& a = acts();
  MT_CHECK(a.grad_ready, "[gpt] backward() needs a forward(..., compute_grad = true) first");
  Communicator& tp = *tp_;
  const int B = a.last_B, T = a.last_T, C = cfg_.n_embd, BT = B * T;
  const int64_t BTC = static_cast<int64_t>(BT) * C;
  if (table_.last_stage()) {
    std::memset(a.dln, 0, BTC * sizeof(float));
    {
      ScopedTimer t(prof_, "classifier");
      matmul_backward_cpu(a.dln, g_.wte, nullptr, a.logits, a.lnf, p_.wte, BT, C, static_cast<int>(Vl_));
      tp_sum(tp, a.buffer, a.dln, BTC, tp_comm_s_);  // each rank saw only its vocabulary columns
    }
    std::memset(a.dres, 0, BTC * sizeof(float));
    {
      ScopedTimer t(prof_, "layernorm");
      layernorm_backward_cpu(a.dres, g_.lnf_w, g_.lnf_b, a.dln, a.res[n_local_], p_.lnf_w, a.lnf_mean, a.lnf_rstd,
                             BT, C);
    }
    if (grad_ready_) grad_ready_(table_.get("ln_f.weight").offset);
  }  // else a.dres already holds the gradient of this stage's output
  for (int l = n_local_ - 1; l >= 0; --l) {
    const LayerParams& w = p_.layers[l];
    const LayerParams& gw = g_.layers[l];
    auto& y = a.layers[l];
    if (recompute_ != Recompute::none) {
      // Bring back what forward did not keep; the same kernels on the same inputs give the same bits.
      ScopedTimer t(prof_, "recompute");
      if (recompute_ == Recompute::full) {
        block_forward(l, B, T);
      } else {
        attention_forward_cpu(y.atty, y.att, y.qkv, B, T, Cl_, NHl_);
        gelu_forward_cpu(y.fch_gelu, y.fch, static_cast<int64_t>(BT) * Fl_);
      }
    }
    // a.dres holds d(res[l+1]); the residual passes it unchanged to res2.
    std::memset(a.dfch_gelu, 0, static_cast<int64_t>(BT) * Fl_ * sizeof(float));
    {
      ScopedTimer t(prof_, "matmul");
      matmul_backward_cpu(a.dfch_gelu, gw.fcproj_w, gw.fcproj_b, a.dres, y.fch_gelu, w.fcproj_w, BT, Fl_, C);
    }
    std::memset(a.dfch, 0, static_cast<int64_t>(BT) * Fl_ * sizeof(float));
    {
      ScopedTimer t(prof_, "gelu");
      gelu_backward_cpu(a.dfch, y.fch, a.dfch_gelu, static_cast<int64_t>(BT) * Fl_);
    }
    std::memset(a.dln, 0, BTC * sizeof(float));
    {
      ScopedTimer t(prof_, "matmul");
      matmul_backward_cpu(a.dln, gw.fc_w, gw.fc_b, a.dfch, y.ln2, w.fc_w, BT, C, Fl_);
      tp_sum(tp, a.buffer, a.dln, BTC, tp_comm_s_);
    }
    {
      ScopedTimer t(prof_, "layernorm");
      layernorm_backward_cpu(a.dres, gw.ln2_w, gw.ln2_b, a.dln, y.res2, w.ln2_w, y.ln2_mean, y.ln2_rstd, BT, C);
    }
    // a.dres now holds d(res2); the attention residual passes it to res[l].
    std::memset(a.datty, 0, static_cast<int64_t>(BT) * Cl_ * sizeof(float));
    {
      ScopedTimer t(prof_, "matmul");
      matmul_backward_cpu(a.datty, gw.attproj_w, gw.attproj_b, a.dres, y.atty, w.attproj_w, BT, Cl_, C);
    }
    std::memset(a.dqkv, 0, static_cast<int64_t>(BT) * 3 * Cl_ * sizeof(float));
    {
      ScopedTimer t(prof_, "attention");
      attention_backward_cpu(a.dqkv, a.datt_scratch, a.datty, y.qkv, y.att, B, T, Cl_, NHl_);
    }
    std::memset(a.dln, 0, BTC * sizeof(float));
    {
      ScopedTimer t(prof_, "matmul");
      matmul_backward_cpu(a.dln, gw.qkv_w, gw.qkv_b, a.dqkv, y.ln1, w.qkv_w, BT, C, 3 * Cl_);
      tp_sum(tp, a.buffer, a.dln, BTC, tp_comm_s_);
    }
    {
      ScopedTimer t(prof_, "layernorm");
      layernorm_backward_cpu(a.dres, gw.ln1_w, gw.ln1_b, a.dln, a.res[l], w.ln1_w, y.ln1_mean, y.ln1_rstd, BT, C);
    }
    if (grad_ready_) grad_ready_(gw.ln1_w - grads_.f32());
  }
  if (table_.first_stage()) {
    ScopedTimer t(prof_, "encoder");
    if (tp.size() == 1) encoder_backward_cpu(g_.wte, g_.wpe, a.dres, a.tokens.data(), B, T, C);
    else vocab_parallel_embedding_backward(g_.wte, g_.wpe, a.dres, a.tokens.data(), B, T, C, v0_, Vl_);
  }  // else a.dres now holds the gradient of this stage's input
  a.grad_ready = false;
  if (grad_ready_) grad_ready_(tied_ready_);
}

}  // namespace meshtrain
