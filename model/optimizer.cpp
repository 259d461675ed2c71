// AdamW step and learning-rate schedule.
#include "model/optimizer.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstring>

#include "model/backend.h"
#include "model/kernels/adamw.h"

namespace meshtrain {

float lr_at(int64_t step, int64_t warmup, int64_t total, float lr, float min_lr) {
  if (warmup > 0 && step < warmup) return lr * static_cast<float>(step + 1) / static_cast<float>(warmup);
  int64_t decay_steps = total - warmup;
  if (decay_steps <= 1) return lr;
  double progress = static_cast<double>(step - warmup) / static_cast<double>(decay_steps - 1);
  if (progress > 1.0) progress = 1.0;
  double coeff = 0.5 * (1.0 + std::cos(M_PI * progress));
  return static_cast<float>(min_lr + coeff * (lr - min_lr));
}

namespace {
int64_t ranges_numel(const FlatRanges& r) {
  int64_t n = 0;
  for (auto [b, e] : r) n += e - b;
  return n;
}
}  // namespace

AdamW::AdamW(const ParameterTable& table, AdamWConfig cfg, FlatRanges ranges, Backend* backend)
    : table_(table), cfg_(cfg), ranges_(ranges.empty() ? FlatRanges{{0, table.total()}} : std::move(ranges)) {
  for (auto [b, e] : ranges_) MT_CHECK(0 <= b && b <= e, "[adamw] bad range [{}, {})", b, e);
  if (!backend) own_backend_ = make_cpu_backend();
  be_ = backend ? backend : own_backend_.get();
  const Device dev = be_->device();
  const int64_t n = ranges_numel(ranges_);
  m_ = Tensor::zeros({n}, DType::f32, dev);
  v_ = Tensor::zeros({n}, DType::f32, dev);
  if (be_->dtype() == DType::bf16) master_ = Tensor::zeros({n}, DType::f32, dev);
  scalars_ = Tensor::zeros({static_cast<int64_t>(sizeof(AdamWScalars))}, DType::u8, dev);
  partial_ = Tensor::zeros({1}, DType::f32, dev);
  host_in_ = be_->host_buffer(sizeof(AdamWScalars));
  host_out_ = be_->host_buffer(sizeof(AdamWScalars));
  std::memset(host_out_.get(), 0, sizeof(AdamWScalars));
  // One double per run of gradients plus the largest scratch a run can need.
  sum_slots_ = static_cast<int64_t>(ranges_.size() + table.specs().size()) + 1;
  sums_ = Tensor::zeros({(sum_slots_ + be_->sum_squares_scratch(table.total() + 1)) * 8}, DType::u8, dev);
}

AdamW::~AdamW() = default;

std::vector<AdamW::Piece> AdamW::pieces() const {
  std::vector<Piece> out;
  int64_t state = 0;
  for (auto [b, e] : ranges_) {
    for (const auto& s : table_.specs()) {
      const int64_t lo = std::max(b, s.offset), hi = std::min(e, s.offset + s.numel);
      if (lo < hi) out.push_back({lo, hi, state + (lo - b), s.decay ? cfg_.weight_decay : 0.0f});
    }
    state += e - b;
  }
  return out;
}

void AdamW::queue_sum_squares(const Tensor& grads, const std::function<bool(const ParamSpec&)>& counted) {
  // The counted parts of the ranges, contiguous ones merged into runs (one reduction each).
  std::vector<std::pair<int64_t, int64_t>> runs;
  for (auto [b, e] : ranges_)
    for (const auto& s : table_.specs()) {
      const int64_t lo = std::max(b, s.offset), hi = std::min(e, s.offset + s.numel);
      if (lo >= hi || (counted && !counted(s))) continue;
      if (!runs.empty() && runs.back().second == lo) runs.back().second = hi;
      else runs.push_back({lo, hi});
    }
  auto* sums = static_cast<double*>(sums_.raw());
  MT_CHECK(static_cast<int64_t>(runs.size()) < sum_slots_, "[adamw] {} runs of gradients", runs.size());
  const size_t esize = dtype_size(grads.dtype());
  if (runs.empty()) {
    be_->zero(sums, sizeof(double));
    sum_count_ = 1;
    return;
  }
  for (size_t i = 0; i < runs.size(); ++i)
    be_->sum_squares(sums + i, sums + sum_slots_, static_cast<const std::byte*>(grads.raw()) + runs[i].first * esize,
                     runs[i].second - runs[i].first);
  sum_count_ = static_cast<int>(runs.size());
}

double AdamW::read_sum_squares() {
  std::vector<double> host(static_cast<size_t>(sum_count_));
  be_->download(host.data(), sums_.raw(), host.size() * sizeof(double));
  double total = 0.0;
  for (double x : host) total += x;
  return total;
}

Tensor& AdamW::queue_partial() {
  be_->sum_to_float(partial_.f32(), static_cast<const double*>(sums_.raw()), sum_count_);
  return partial_;
}

void AdamW::use_partial() {
  be_->float_to_sum(static_cast<double*>(sums_.raw()), partial_.f32());
  sum_count_ = 1;
}

double AdamW::sum_squares(const Tensor& grads, const std::function<bool(const ParamSpec&)>& counted) {
  queue_sum_squares(grads, counted);
  return read_sum_squares();
}

float AdamW::clip_scale(double norm) const {
  if (cfg_.grad_clip > 0.0f && norm > cfg_.grad_clip) return cfg_.grad_clip / static_cast<float>(norm);
  return 1.0f;
}

void AdamW::set_step_scalars(float lr, float grad_scale) {
  ++t_;
  AdamWScalars in{};
  in.lr = lr;
  in.bias_corr1 = adamw_bias_correction(cfg_.beta1, t_);
  in.bias_corr2 = adamw_bias_correction(cfg_.beta2, t_);
  in.grad_scale = grad_scale;
  std::memcpy(host_in_.get(), &in, sizeof in);
}

void AdamW::queue_adamw(Tensor& params, const Tensor& grads) {
  MT_CHECK(params.numel() >= table_.total() && grads.numel() >= table_.total(),
           "[adamw] parameter/gradient buffers of {} and {} elements for a table of {}", params.numel(),
           grads.numel(), table_.total());
  MT_CHECK(params.device() == be_->device() && grads.device() == be_->device(),
           "[adamw] parameters and gradients must be on the optimizer's device ({})", device_name(be_->device()));
  const size_t esize = dtype_size(params.dtype());
  auto* p = static_cast<std::byte*>(params.raw());
  const auto* g = static_cast<const std::byte*>(grads.raw());
  const auto* sc = static_cast<const AdamWScalars*>(scalars_.raw());
  for (const Piece& x : pieces())
    be_->adamw_update(p + x.begin * esize, master_.defined() ? master_.f32() + x.state : nullptr, g + x.begin * esize,
                      m_.f32() + x.state, v_.f32() + x.state, x.end - x.begin, sc, cfg_.beta1, cfg_.beta2, cfg_.eps,
                      x.decay);
}

void AdamW::queue_update(Tensor& params, const Tensor& grads, float lr) {
  set_step_scalars(lr, 1.0f);
  auto* sc = static_cast<AdamWScalars*>(scalars_.raw());
  be_->upload(sc, host_in_.get(), sizeof(AdamWScalars));
  be_->clip_scale(sc, static_cast<const double*>(sums_.raw()), sum_count_, cfg_.grad_clip);
  queue_adamw(params, grads);
  be_->download_async(host_out_.get(), sc, sizeof(AdamWScalars));
}

float AdamW::last_norm() const {
  AdamWScalars out{};
  std::memcpy(&out, host_out_.get(), sizeof out);
  return out.grad_norm;
}

void AdamW::update(Tensor& params, const Tensor& grads, float lr, float grad_scale) {
  set_step_scalars(lr, grad_scale);
  be_->upload(scalars_.raw(), host_in_.get(), sizeof(AdamWScalars));
  queue_adamw(params, grads);
  be_->synchronize();
}

float AdamW::step(Tensor& params, const Tensor& grads, float lr) {
  queue_sum_squares(grads);
  queue_update(params, grads, lr);
  be_->synchronize();
  return last_norm();
}

void AdamW::set_master(const float* host) {
  if (!master_.defined()) return;
  int64_t state = 0;
  for (auto [b, e] : ranges_) {
    be_->upload(master_.f32() + state, host + b, static_cast<size_t>(e - b) * sizeof(float));
    state += e - b;
  }
  be_->synchronize();
}

void AdamW::get_master(float* host) const {
  if (!master_.defined()) return;
  int64_t state = 0;
  for (auto [b, e] : ranges_) {
    be_->download(host + b, master_.f32() + state, static_cast<size_t>(e - b) * sizeof(float));
    state += e - b;
  }
}

}  // namespace meshtrain
