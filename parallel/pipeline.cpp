// Pipeline schedules over Gpt's stage interface (stage_input / stage_output / their gradients).
#include "parallel/pipeline.h"

#include <algorithm>
#include <cstring>

#include "core/timer.h"
#include "core/trace.h"
#include "model/gpt.h"

namespace meshtrain {

PipelineSchedule parse_schedule(const std::string& name) {
  if (name == "gpipe") return PipelineSchedule::gpipe;
  if (name == "1f1b") return PipelineSchedule::one_f_one_b;
  MT_FAIL("[config] parallel.schedule must be gpipe or 1f1b (got '{}')", name);
}

Pipeline::Pipeline(Gpt& model, Communicator& pp, PipelineSchedule schedule, Communicator* backward)
    : model_(model), pp_(pp), back_(backward ? *backward : pp), schedule_(schedule), stage_(pp.rank()),
      stages_(pp.size()) {
  MT_CHECK(back_.size() == pp.size() && back_.rank() == pp.rank(),
           "[pipeline] the gradients' communicator must have the stages' ranks ({} of {}), not {} of {}", pp.rank(),
           pp.size(), back_.rank(), back_.size());
}

Pipeline::~Pipeline() {
  for (size_t s = 0; s < sends_.size(); ++s) wait_sends(static_cast<int>(s));
  model_.use_slot(0);
}

void Pipeline::wait_sends(int slot) {
  if (static_cast<size_t>(slot) >= sends_.size()) return;
  for (auto& w : sends_[slot]) w->wait();
  sends_[slot].clear();
}

void Pipeline::forward(int micro, int slot, int B, int T, const int32_t* inp, const int32_t* tgt, bool grad,
                       float scale, double& loss_sum) {
  if (static_cast<size_t>(slot) >= sends_.size()) sends_.resize(slot + 1);
  wait_sends(slot);  // the slot's buffers may still be on their way to a neighbour
  model_.use_slot(slot);
  Tensor in = model_.stage_input(B, T);
  if (stage_ > 0) {
    TraceScope trace("pp", [&] { return fmt::format("recv activations (micro-batch {})", micro); },
                     static_cast<int64_t>(in.nbytes()));
    trace.flow_in(flow_id(micro, stage_ - 1, false));
    double t0 = now_seconds();
    pp_.recv(in, stage_ - 1, 2 * micro);
    wait_s_ += now_seconds() - t0;
  }
  loss_sum += model_.forward(inp, tgt, B, T, grad, scale);
  if (stage_ < stages_ - 1) {
    Tensor out = model_.stage_output();
    TraceScope trace("pp_send", [&] { return fmt::format("send activations (micro-batch {})", micro); },
                     static_cast<int64_t>(out.nbytes()));
    trace.flow_out(flow_id(micro, stage_, false));
    sent_bytes_ += static_cast<double>(out.nbytes());
    sends_[slot].push_back(pp_.isend(out, stage_ + 1, 2 * micro));
  }
}

uint64_t Pipeline::flow_id(int micro, int from_stage, bool gradient) const {
  // Unique per step, micro-batch, sending stage and direction; never 0.
  const auto step = static_cast<uint64_t>(std::max<int64_t>(0, Tracer::get().step()));
  const uint64_t scope = Tracer::get().flow_scope();
  return (((scope * 1048576 + step) * 65536 + static_cast<uint64_t>(micro)) * 1024 + static_cast<uint64_t>(from_stage)) *
             2 + (gradient ? 1 : 0) + 1;
}

void Pipeline::backward(int micro, int slot) {
  model_.use_slot(slot);
  if (stage_ < stages_ - 1) {
    Tensor g = model_.stage_output_grad();
    TraceScope trace("pp", [&] { return fmt::format("recv gradients (micro-batch {})", micro); },
                     static_cast<int64_t>(g.nbytes()));
    trace.flow_in(flow_id(micro, stage_ + 1, true));
    double t0 = now_seconds();
    back_.recv(g, stage_ + 1, 2 * micro + 1);
    wait_s_ += now_seconds() - t0;
  }
  model_.backward();
  if (stage_ > 0) {
    Tensor g = model_.stage_input_grad();
    TraceScope trace("pp_send", [&] { return fmt::format("send gradients (micro-batch {})", micro); },
                     static_cast<int64_t>(g.nbytes()));
    trace.flow_out(flow_id(micro, stage_, true));
    sent_bytes_ += static_cast<double>(g.nbytes());
    sends_[slot].push_back(back_.isend(g, stage_ - 1, 2 * micro + 1));
  }
}

double Pipeline::train(int m, int B, int T, const FillFn& fill, float dloss_scale,
                       const std::function<void()>& before_last_backward) {
  MT_CHECK(m >= 1, "[pipeline] {} micro-batches", m);
  wait_s_ = 0.0;
  sent_bytes_ = 0.0;
  const size_t n = static_cast<size_t>(B) * T;
  std::vector<std::vector<int32_t>> inputs(m, std::vector<int32_t>(n)), targets(m, std::vector<int32_t>(n));
  for (int i = 0; i < m; ++i) fill(i, inputs[i].data(), targets[i].data());
  const int slots = activation_slots(schedule_, m, stages_, stage_);
  double loss_sum = 0.0;
  int backwards = 0;
  auto fwd = [&](int i) {
    forward(i, i % slots, B, T, inputs[i].data(), targets[i].data(), true, dloss_scale, loss_sum);
  };
  auto bwd = [&](int i) {
    if (++backwards == m && before_last_backward) before_last_backward();
    backward(i, i % slots);
  };
  if (schedule_ == PipelineSchedule::gpipe) {
    for (int i = 0; i < m; ++i) fwd(i);
    for (int i = 0; i < m; ++i) bwd(i);
  } else {
    const int warmup = std::min(stages_ - stage_ - 1, m);
    for (int i = 0; i < warmup; ++i) fwd(i);
    for (int i = warmup; i < m; ++i) {
      fwd(i);
      bwd(i - warmup);
    }
    for (int i = m - warmup; i < m; ++i) bwd(i);
  }
  for (int s = 0; s < slots; ++s) wait_sends(s);
  model_.use_slot(0);
  // Only the last stage computed losses: share them with the others.
  Tensor total = Tensor::empty({1});
  total.f32()[0] = static_cast<float>(loss_sum);
  pp_.all_reduce(total, ReduceOp::sum);
  return total.f32()[0];
}

double Pipeline::loss(const int32_t* inputs, const int32_t* targets, int B, int T) {
  double loss_sum = 0.0;
  forward(0, 0, B, T, inputs, targets, false, 1.0f, loss_sum);
  wait_sends(0);
  Tensor total = Tensor::empty({1});
  total.f32()[0] = static_cast<float>(loss_sum);
  pp_.all_reduce(total, ReduceOp::sum);
  return total.f32()[0];
}

const float* Pipeline::last_logits(const int32_t* tokens, int T) {
  double unused = 0.0;
  forward(0, 0, 1, T, tokens, nullptr, false, 1.0f, unused);
  wait_sends(0);
  return share_logits(T - 1);
}

const float* Pipeline::cached_logits(const int32_t* tokens, int T) {
  model_.use_slot(0);
  if (stage_ > 0) {
    // The cache bound is checked on every stage before anything moves, so all stages fail alike.
    MT_CHECK(model_.cached_positions() + T <= model_.config().seq_len,
             "[generate] the key/value cache holds model.seq_len = {} positions: {} cached + {} new do not fit",
             model_.config().seq_len, model_.cached_positions(), T);
    Tensor in = model_.stage_input(1, T);
    pp_.recv(in, stage_ - 1, 0);
  }
  model_.forward_cached(tokens, T);
  if (stage_ < stages_ - 1) pp_.isend(model_.stage_output(), stage_ + 1, 0)->wait();
  return share_logits(0);
}

void Pipeline::reset_cache() { model_.reset_cache(); }

const float* Pipeline::share_logits(int64_t row) {
  const GptConfig& cfg = model_.config();
  const int64_t Vp = cfg.padded_vocab(), Vl = Vp / model_.tp().size();
  if (!logits_.defined()) logits_ = Tensor::empty({Vp});
  if (stage_ == stages_ - 1) {
    Tensor mine = Tensor::empty({Vl});
    std::memcpy(mine.f32(), model_.logits_row(row), Vl * sizeof(float));
    if (model_.tp().size() > 1) model_.tp().all_gather(mine, logits_);
    else logits_.copy_from(mine);
  }
  pp_.broadcast(logits_, stages_ - 1);
  return logits_.f32();
}

}  // namespace meshtrain
