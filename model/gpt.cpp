// GPT-2 forward and backward over the CPU kernels in model/kernels. The residual stream flows
// through res[l] (input of block l, res[L] = output of the last block); each block keeps the
// activations its backward needs. Backward walks the blocks in reverse with one residual-gradient
// buffer that every block adds into, as the residual connections do.
#include "model/gpt.h"

#include <cstring>

#include "model/kernels/attention.h"
#include "model/kernels/crossentropy.h"
#include "model/kernels/encoder.h"
#include "model/kernels/gelu.h"
#include "model/kernels/layernorm.h"
#include "model/kernels/matmul.h"
#include "model/kernels/residual.h"
#include "parallel/communicator.h"

namespace meshtrain {

struct Gpt::Acts {
  int B = 0, T = 0;  // capacity
  Tensor buffer;     // every activation below is a view into this one allocation
  std::vector<int32_t> tokens;
  struct Layer {
    float *ln1, *ln1_mean, *ln1_rstd, *qkv, *atty, *att, *res2, *ln2, *ln2_mean, *ln2_rstd, *fch, *fch_gelu;
  };
  std::vector<float*> res;  // L + 1 residual streams
  std::vector<Layer> layers;
  float *lnf, *lnf_mean, *lnf_rstd, *logits, *losses;
  // backward scratch
  float *dres, *dln, *datty, *dqkv, *dfch, *dfch_gelu, *datt_scratch, *proj_out;
};

Gpt::Gpt(const GptConfig& cfg, Communicator& comm) : cfg_(cfg), comm_(comm), table_((cfg.validate(), cfg)) {
  // Flat buffers are padded to a multiple of the data-parallel group size so they split into equal
  // shards; the padding stays zero and belongs to no parameter.
  const int64_t n = comm.size(), padded = (table_.total() + n - 1) / n * n;
  params_ = Tensor::zeros({padded});
  grads_ = Tensor::zeros({padded});
  p_ = param_pointers(table_, cfg_, params_.f32());
  g_ = param_pointers(table_, cfg_, grads_.f32());
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


size_t Gpt::activation_bytes() const { return acts_ ? acts_->buffer.nbytes() : 0; }

void Gpt::ensure_acts(int B, int T) {
  MT_CHECK(B >= 1 && T >= 1 && T <= cfg_.seq_len, "[gpt] batch {} x {} tokens: T must be in [1, seq_len={}]", B, T,
           cfg_.seq_len);
  // Every buffer is indexed from its start with the current B and T, so a smaller batch fits.
  if (acts_ && B <= acts_->B && T <= acts_->T) return;
  auto a = std::make_unique<Acts>();
  a->B = B;
  a->T = T;
  const int64_t BT = static_cast<int64_t>(B) * T, C = cfg_.n_embd, NH = cfg_.n_head, L = cfg_.n_layer;
  const int64_t Vp = cfg_.padded_vocab(), att = static_cast<int64_t>(B) * NH * T * T;
  // Sizes in floats, in the order they are carved out below.
  const int64_t per_layer = BT * C /*ln1*/ + 2 * BT + BT * 3 * C /*qkv*/ + BT * C /*atty*/ + att + BT * C /*res2*/ +
                            BT * C /*ln2*/ + 2 * BT + BT * 4 * C /*fch*/ + BT * 4 * C /*fch_gelu*/;
  const int64_t total = (L + 1) * BT * C + L * per_layer + BT * C + 2 * BT + BT * Vp + BT +
                        /*scratch*/ BT * C * 4 + BT * 3 * C + 2 * BT * 4 * C + att;
  a->buffer = Tensor::empty({total});
  float* cur = a->buffer.f32();
  auto take = [&](int64_t n) {
    float* p = cur;
    cur += n;
    return p;
  };
  for (int64_t l = 0; l <= L; ++l) a->res.push_back(take(BT * C));
  a->layers.resize(L);
  for (auto& y : a->layers) {
    y.ln1 = take(BT * C); y.ln1_mean = take(BT); y.ln1_rstd = take(BT);
    y.qkv = take(BT * 3 * C); y.atty = take(BT * C); y.att = take(att);
    y.res2 = take(BT * C); y.ln2 = take(BT * C); y.ln2_mean = take(BT); y.ln2_rstd = take(BT);
    y.fch = take(BT * 4 * C); y.fch_gelu = take(BT * 4 * C);
  }
  a->lnf = take(BT * C); a->lnf_mean = take(BT); a->lnf_rstd = take(BT);
  a->logits = take(BT * Vp); a->losses = take(BT);
  a->dres = take(BT * C); a->dln = take(BT * C); a->datty = take(BT * C); a->proj_out = take(BT * C);
  a->dqkv = take(BT * 3 * C); a->dfch = take(BT * 4 * C); a->dfch_gelu = take(BT * 4 * C);
  a->datt_scratch = take(att);
  MT_CHECK(cur == a->buffer.f32() + total, "[gpt] activation plan is inconsistent");
  acts_ = std::move(a);
}

void Gpt::forward_blocks(const int32_t* tokens, int B, int T) {
  ensure_acts(B, T);
  Acts& a = *acts_;
  const int C = cfg_.n_embd, NH = cfg_.n_head, BT = B * T;
  a.tokens.assign(tokens, tokens + BT);
  for (int i = 0; i < BT; ++i)
    MT_CHECK(tokens[i] >= 0 && tokens[i] < cfg_.vocab_size, "[gpt] token id {} at position {} outside [0, {})",
             tokens[i], i, cfg_.vocab_size);
  {
    ScopedTimer t(prof_, "encoder");
    encoder_forward_cpu(a.res[0], tokens, p_.wte, p_.wpe, B, T, C);
  }
  for (int l = 0; l < cfg_.n_layer; ++l) {
    const LayerParams& w = p_.layers[l];
    auto& y = a.layers[l];
    {
      ScopedTimer t(prof_, "layernorm");
      layernorm_forward_cpu(y.ln1, y.ln1_mean, y.ln1_rstd, a.res[l], w.ln1_w, w.ln1_b, BT, C);
    }
    {
      ScopedTimer t(prof_, "matmul");
      matmul_forward_cpu(y.qkv, y.ln1, w.qkv_w, w.qkv_b, BT, C, 3 * C);
    }
    {
      ScopedTimer t(prof_, "attention");
      attention_forward_cpu(y.atty, y.att, y.qkv, B, T, C, NH);
    }
    {
      ScopedTimer t(prof_, "matmul");
      matmul_forward_cpu(a.proj_out, y.atty, w.attproj_w, w.attproj_b, BT, C, C);
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
      matmul_forward_cpu(y.fch, y.ln2, w.fc_w, w.fc_b, BT, C, 4 * C);
    }
    {
      ScopedTimer t(prof_, "gelu");
      gelu_forward_cpu(y.fch_gelu, y.fch, static_cast<int64_t>(BT) * 4 * C);
    }
    {
      ScopedTimer t(prof_, "matmul");
      matmul_forward_cpu(a.proj_out, y.fch_gelu, w.fcproj_w, w.fcproj_b, BT, 4 * C, C);
    }
    {
      ScopedTimer t(prof_, "residual");
      residual_forward_cpu(a.res[l + 1], y.res2, a.proj_out, static_cast<int64_t>(BT) * C);
    }
  }
  ScopedTimer t(prof_, "layernorm");
  layernorm_forward_cpu(a.lnf, a.lnf_mean, a.lnf_rstd, a.res[cfg_.n_layer], p_.lnf_w, p_.lnf_b, BT, C);
}

float Gpt::forward(const int32_t* tokens, const int32_t* targets, int B, int T, bool compute_grad,
                   float dloss_scale) {
  MT_CHECK(!compute_grad || targets, "[gpt] forward with compute_grad needs targets");
  forward_blocks(tokens, B, T);
  Acts& a = *acts_;
  const int C = cfg_.n_embd, BT = B * T, Vp = cfg_.padded_vocab();
  last_B_ = B;
  last_T_ = T;
  have_dlogits_ = false;
  {
    ScopedTimer t(prof_, "classifier");
    matmul_forward_cpu(a.logits, a.lnf, p_.wte, nullptr, BT, C, Vp);
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
    softmax_crossentropy_cpu(a.losses, compute_grad ? a.logits : nullptr, a.logits, targets, BT, cfg_.vocab_size,
                             Vp, dloss);
  }
  have_dlogits_ = compute_grad;
  double sum = 0.0;
  for (int i = 0; i < BT; ++i) sum += a.losses[i];
  return static_cast<float>(sum / static_cast<double>(counted));
}

const float* Gpt::logits_row(int64_t r) const {
  MT_CHECK(acts_ && !have_dlogits_ && r >= 0 && r < static_cast<int64_t>(last_B_) * last_T_,
           "[gpt] logits_row({}) without a matching forward", r);
  return acts_->logits + r * cfg_.padded_vocab();
}

const float* Gpt::forward_last_logits(const int32_t* tokens, int T) {
  forward_blocks(tokens, 1, T);
  Acts& a = *acts_;
  const int C = cfg_.n_embd;
  matmul_forward_cpu(a.logits, a.lnf + static_cast<int64_t>(T - 1) * C, p_.wte, nullptr, 1, C, cfg_.padded_vocab());
  have_dlogits_ = false;
  last_B_ = 1;
  last_T_ = 1;
  return a.logits;
}

void Gpt::backward() {
  MT_CHECK(have_dlogits_, "[gpt] backward() needs a forward(..., compute_grad = true) first");
  Acts& a = *acts_;
  const int B = last_B_, T = last_T_, C = cfg_.n_embd, NH = cfg_.n_head, BT = B * T, Vp = cfg_.padded_vocab();
  const int64_t BTC = static_cast<int64_t>(BT) * C;
  std::memset(a.dln, 0, BTC * sizeof(float));
  {
    ScopedTimer t(prof_, "classifier");
    matmul_backward_cpu(a.dln, g_.wte, nullptr, a.logits, a.lnf, p_.wte, BT, C, Vp);
  }
  std::memset(a.dres, 0, BTC * sizeof(float));
  {
    ScopedTimer t(prof_, "layernorm");
    layernorm_backward_cpu(a.dres, g_.lnf_w, g_.lnf_b, a.dln, a.res[cfg_.n_layer], p_.lnf_w, a.lnf_mean, a.lnf_rstd,
                           BT, C);
  }
  if (grad_ready_) grad_ready_(table_.get("ln_f.weight").offset);
  for (int l = cfg_.n_layer - 1; l >= 0; --l) {
    const LayerParams& w = p_.layers[l];
    const LayerParams& gw = g_.layers[l];
    auto& y = a.layers[l];
    // a.dres holds d(res[l+1]); the residual passes it unchanged to res2.
    std::memset(a.dfch_gelu, 0, 4 * BTC * sizeof(float));
    {
      ScopedTimer t(prof_, "matmul");
      matmul_backward_cpu(a.dfch_gelu, gw.fcproj_w, gw.fcproj_b, a.dres, y.fch_gelu, w.fcproj_w, BT, 4 * C, C);
    }
    std::memset(a.dfch, 0, 4 * BTC * sizeof(float));
    {
      ScopedTimer t(prof_, "gelu");
      gelu_backward_cpu(a.dfch, y.fch, a.dfch_gelu, 4 * BTC);
    }
    std::memset(a.dln, 0, BTC * sizeof(float));
    {
      ScopedTimer t(prof_, "matmul");
      matmul_backward_cpu(a.dln, gw.fc_w, gw.fc_b, a.dfch, y.ln2, w.fc_w, BT, C, 4 * C);
    }
    {
      ScopedTimer t(prof_, "layernorm");
      layernorm_backward_cpu(a.dres, gw.ln2_w, gw.ln2_b, a.dln, y.res2, w.ln2_w, y.ln2_mean, y.ln2_rstd, BT, C);
    }
    // a.dres now holds d(res2); the attention residual passes it to res[l].
    std::memset(a.datty, 0, BTC * sizeof(float));
    {
      ScopedTimer t(prof_, "matmul");
      matmul_backward_cpu(a.datty, gw.attproj_w, gw.attproj_b, a.dres, y.atty, w.attproj_w, BT, C, C);
    }
    std::memset(a.dqkv, 0, 3 * BTC * sizeof(float));
    {
      ScopedTimer t(prof_, "attention");
      attention_backward_cpu(a.dqkv, a.datt_scratch, a.datty, y.qkv, y.att, B, T, C, NH);
    }
    std::memset(a.dln, 0, BTC * sizeof(float));
    {
      ScopedTimer t(prof_, "matmul");
      matmul_backward_cpu(a.dln, gw.qkv_w, gw.qkv_b, a.dqkv, y.ln1, w.qkv_w, BT, C, 3 * C);
    }
    {
      ScopedTimer t(prof_, "layernorm");
      layernorm_backward_cpu(a.dres, gw.ln1_w, gw.ln1_b, a.dln, a.res[l], w.ln1_w, y.ln1_mean, y.ln1_rstd, BT, C);
    }
    if (grad_ready_) grad_ready_(gw.ln1_w - grads_.f32());
  }
  {
    ScopedTimer t(prof_, "encoder");
    encoder_backward_cpu(g_.wte, g_.wpe, a.dres, a.tokens.data(), B, T, C);
  }
  have_dlogits_ = false;
  if (grad_ready_) grad_ready_(0);
}

}  // namespace meshtrain
