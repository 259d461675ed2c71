// DataParallel: bucketed, overlapped gradient reduction and ZeRO-1.
#include "parallel/data_parallel.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstring>

#include "core/timer.h"
#include "core/trace.h"
#include "model/gpt.h"

namespace meshtrain {

DataParallel::DataParallel(Gpt& model, Communicator& dp, DataParallelConfig cfg, AdamWConfig opt_cfg,
                           Communicator* pp)
    : model_(model), comm_(dp), pp_(pp && pp->size() > 1 ? pp : nullptr), cfg_(cfg), timer_(&model.backend(), "dp", "dp reduction wait / ZeRO collectives") {
  MT_CHECK(cfg.zero == 0 || cfg.zero == 1, "[data_parallel] parallel.zero must be 0 or 1 (got {})", cfg.zero);
  MT_CHECK(cfg.bucket_mb > 0.0, "[data_parallel] parallel.bucket_mb must be > 0 (got {})", cfg.bucket_mb);
  const int64_t n = comm_.size(), total = model.grads().numel();
  MT_CHECK(total % n == 0, "[data_parallel] flat buffer of {} elements does not split over {} ranks", total, n);
  // Bucket lengths are multiples of the group size so every bucket reduce-scatters into equal chunks.
  int64_t elems = static_cast<int64_t>(cfg.bucket_mb * 1048576.0 / 4.0) / n * n;
  elems = std::max<int64_t>(elems, n);
  for (int64_t b = 0; b < total; b += elems) buckets_.push_back({b, std::min(total, b + elems), nullptr, false});
  FlatRanges owned;
  if (cfg.zero == 1) {
    for (const auto& b : buckets_) owned.push_back({chunk_begin(b), chunk_begin(b) + chunk_len(b)});
    shard_ = Tensor::zeros({total / n}, model.grads().dtype(), model.grads().device());
  }
  opt_ = std::make_unique<AdamW>(model.table(), opt_cfg, owned, &model.backend());
}

DataParallel::~DataParallel() { model_.set_grad_ready_hook(nullptr); }

int64_t DataParallel::chunk_begin(const Bucket& b) const { return b.begin + comm_.rank() * chunk_len(b); }

void DataParallel::arm() {
  timings_.assign(buckets_.size(), {});
  for (auto& b : buckets_) b.launched = false;
  exposed_ = 0.0;
  armed_ = true;
  if (comm_.size() > 1) model_.set_grad_ready_hook([this](int64_t from) { on_ready(from); });
}

void DataParallel::launch(size_t i) {
  Bucket& b = buckets_[i];
  Tensor grads = model_.grads().view(b.begin, {b.end - b.begin});
  const double n = comm_.size(), payload = static_cast<double>(grads.nbytes());
  bytes_.first += payload;
  bytes_.second += payload * (cfg_.zero == 0 ? 2.0 : 1.0) * (n - 1) / n;
  if (cfg_.zero == 0) {
    b.work = comm_.all_reduce_async(grads, ReduceOp::avg);
  } else {
    int64_t shard_at = 0;
    for (size_t j = 0; j < i; ++j) shard_at += chunk_len(buckets_[j]);
    Tensor out = shard_.view(shard_at, {chunk_len(b)});
    b.work = comm_.reduce_scatter_async(grads, out, ReduceOp::avg);
  }
  b.launched = true;
  timings_[i] = {b.begin, b.end, now_seconds(), 0.0};
}

void DataParallel::on_ready(int64_t ready_from) {
  // MPI work done here (launching, polling) is communication the CPU does instead of compute.
  TraceScope trace("dp", "dp buckets: launch and poll");
  const double t0 = now_seconds();
  // Launch, last bucket first, every bucket whose whole range is final; then let MPI progress the
  // ones in flight (CPU collectives advance only inside MPI calls).
  for (size_t i = buckets_.size(); i-- > 0;) {
    if (buckets_[i].launched) continue;
    if (buckets_[i].begin < ready_from) break;
    launch(i);
  }
  if (!comm_.on_device_streams())  // NCCL moves on by itself (and a captured step may not poll)
    for (size_t i = 0; i < buckets_.size(); ++i)
      if (buckets_[i].work && timings_[i].completed == 0.0 && buckets_[i].work->test())
        timings_[i].completed = now_seconds();
  exposed_ += now_seconds() - t0;
}

void DataParallel::finish() {
  MT_CHECK(armed_, "[data_parallel] finish() without arm()");
  armed_ = false;
  model_.set_grad_ready_hook(nullptr);
  if (comm_.size() == 1) return;
  timer_.start();  // on the device's timeline: how long its stream waits for the reductions
  for (size_t i = buckets_.size(); i-- > 0;)
    if (!buckets_[i].launched) launch(i);
  int64_t shard_at = 0;
  for (size_t i = 0; i < buckets_.size(); ++i) {
    Bucket& b = buckets_[i];
    b.work->wait();
    b.work.reset();
    if (timings_[i].completed == 0.0) timings_[i].completed = now_seconds();
    if (cfg_.zero == 1) {
      // The averaged chunk goes back to its place in the flat buffer, where AdamW reads gradients.
      const size_t e = dtype_size(shard_.dtype());
      model_.backend().copy(static_cast<std::byte*>(model_.grads().raw()) + chunk_begin(b) * e,
                            static_cast<const std::byte*>(shard_.raw()) + shard_at * e, chunk_len(b) * e);
      shard_at += chunk_len(b);
    }
  }
  timer_.stop();
}

void DataParallel::queue_step(float lr) {
  Tensor& params = model_.params();
  const Tensor& grads = model_.grads();
  // Global norm: tensor-parallel shards, pipeline stages and ZeRO-1 chunks add up; parameters held
  // whole by every tp rank count on tp rank 0 only, the tied embedding on the first stage only.
  Communicator& tp = model_.tp();
  const bool first_stage = model_.table().first_stage();
  opt_->queue_sum_squares(grads, [&](const ParamSpec& s) {
    if (s.shard == ShardKind::replicated && tp.rank() != 0) return false;
    return first_stage || s.name != "wte";
  });
  const bool over_dp = cfg_.zero == 1 && comm_.size() > 1;
  if (tp.size() > 1 || pp_ || over_dp) {
    // The partial sums meet as one float on the device, in stream order (no host wait over NCCL).
    Tensor& partial = opt_->queue_partial();
    timer_.start();
    if (tp.size() > 1) tp.all_reduce_async(partial, ReduceOp::sum)->wait();
    if (pp_) pp_->all_reduce_async(partial, ReduceOp::sum)->wait();
    if (over_dp) comm_.all_reduce_async(partial, ReduceOp::sum)->wait();
    timer_.stop();
    opt_->use_partial();
  }
  opt_->queue_update(params, grads, lr);
  if (cfg_.zero == 1 && comm_.size() > 1) {
    timer_.start();
    // Each rank's updated chunks go out from shard_ (free again once finish() copied the reduced
    // gradients out of it), so a captured step allocates nothing.
    std::vector<std::unique_ptr<Work>> works;
    const size_t e = dtype_size(params.dtype());
    int64_t shard_at = 0;
    for (const auto& b : buckets_) {
      Tensor mine = shard_.view(shard_at, {chunk_len(b)});
      model_.backend().copy(mine.raw(), static_cast<const std::byte*>(params.raw()) + chunk_begin(b) * e,
                            chunk_len(b) * e);
      Tensor whole = params.view(b.begin, {b.end - b.begin});
      bytes_.first += static_cast<double>(whole.nbytes());
      bytes_.second += static_cast<double>(whole.nbytes()) * (comm_.size() - 1) / comm_.size();
      works.push_back(comm_.all_gather_async(mine, whole));
      shard_at += chunk_len(b);
    }
    for (auto& w : works) w->wait();
    timer_.stop();
  }
}

float DataParallel::step(float lr) {
  queue_step(lr);
  model_.backend().synchronize();
  return opt_->last_norm();
}

void DataParallel::set_params(const float* host) {
  model_.set_params(host);
  opt_->set_master(host);
}

void DataParallel::get_params(Tensor& host) {
  MT_CHECK(host.device() == Device::cpu && host.dtype() == DType::f32 && host.numel() >= model_.table().total(),
           "[data_parallel] get_params needs {} host floats", model_.table().total());
  if (!opt_->has_master()) return model_.get_params(host.f32());
  if (cfg_.zero == 0 || comm_.size() == 1) return opt_->get_master(host.f32());
  // ZeRO-1: each rank holds the master weights of its chunk of every bucket.
  Tensor master = opt_->master().on(Device::cpu);
  int64_t at = 0;
  for (const auto& b : buckets_) {
    Tensor whole = host.view(b.begin, {b.end - b.begin});
    comm_.all_gather(master.view(at, {chunk_len(b)}), whole);
    at += chunk_len(b);
  }
}

void DataParallel::gather_moments(Tensor& m, Tensor& v) {
  const int64_t total = model_.grads().numel();
  MT_CHECK(m.numel() == total && v.numel() == total, "[data_parallel] gather_moments into {} / {} of {} elements",
           m.numel(), v.numel(), total);
  if (cfg_.zero == 0) {  // moments cover [0, table total); the padding after it has none
    m.zero_();
    v.zero_();
    m.view(0, {opt_->m().numel()}).copy_from(opt_->m());
    v.view(0, {opt_->v().numel()}).copy_from(opt_->v());
    return;
  }
  const Tensor hm = opt_->m().on(Device::cpu), hv = opt_->v().on(Device::cpu);
  int64_t at = 0;
  for (const auto& b : buckets_) {
    Tensor mv = m.view(b.begin, {b.end - b.begin}), vv = v.view(b.begin, {b.end - b.begin});
    comm_.all_gather(hm.view(at, {chunk_len(b)}), mv);
    comm_.all_gather(hv.view(at, {chunk_len(b)}), vv);
    at += chunk_len(b);
  }
}

void DataParallel::scatter_moments(const Tensor& m, const Tensor& v) {
  if (cfg_.zero == 0) {
    opt_->m().copy_from(m.view(0, {opt_->m().numel()}));
    opt_->v().copy_from(v.view(0, {opt_->v().numel()}));
    return;
  }
  int64_t at = 0;
  for (const auto& b : buckets_) {
    opt_->m().view(at, {chunk_len(b)}).copy_from(m.view(chunk_begin(b), {chunk_len(b)}));
    opt_->v().view(at, {chunk_len(b)}).copy_from(v.view(chunk_begin(b), {chunk_len(b)}));
    at += chunk_len(b);
  }
}

}  // namespace meshtrain
