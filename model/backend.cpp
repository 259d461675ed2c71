// The answers about activation sizes that hold for a backend whether or not its device is present.
#include "model/backend.h"

#include "core/error.h"
#include "model/kernels/flash_attention.h"

namespace meshtrain {

bool ActivationSizing::uses_flash(int head_size) const {
  return device == Device::cuda && attention == AttentionKind::flash && flash_attention_supports(head_size);
}

int64_t ActivationSizing::attention_saved(int B, int T, int C, int NH) const {
  const int64_t rows = int64_t{B} * NH * T;
  return uses_flash(C / NH) ? rows : rows * T;
}

void Backend::classifier_crossentropy(float* /*losses*/, void* /*space*/, const void* /*inp*/, const void* /*weight*/,
                                      const int32_t* /*targets*/, int /*N*/, int /*C*/, int /*V*/, int /*Vp*/,
                                      float /*dloss*/, Profiler* /*prof*/) {
  MT_FAIL("[backend] {} has no fused classifier + cross-entropy (check fuses_classifier_crossentropy first)",
          describe());
}

void Backend::classifier_backward(void* /*dinp*/, void* /*dweight*/, const void* /*space*/, const void* /*inp*/,
                                  const void* /*weight*/, int /*N*/, int /*C*/, int /*Vp*/) {
  MT_FAIL("[backend] {} has no fused classifier + cross-entropy (check fuses_classifier_crossentropy first)",
          describe());
}

void DeviceTimer::stop() {
  const int64_t end = be_->mark();
  spans_.push_back({open_, end});
  DeviceTrace& device = DeviceTrace::get();
  if (*cat_ && device.recording() && device.backend() == be_)
    device.add({cat_, name_, open_, end, trace_t0_ >= 0.0 ? trace_bytes_ : -1, ""});
  if (trace_t0_ >= 0.0 && Tracer::get().on()) Tracer::get().add_region(cat_, name_, trace_t0_, trace_bytes_);
  trace_t0_ = -1.0;
}

DeviceTrace& DeviceTrace::get() {
  static DeviceTrace t;
  return t;
}

void DeviceTrace::begin_step(Backend& be) {
  spans_.clear();
  be_ = nullptr;
  if (!(Tracer::get().on() || Tracer::get().armed()) || be.device() == Device::cpu) return;
  be_ = &be;
  anchor_ = be.mark();
  anchor_us_ = Tracer::now_us();
}

void DeviceTrace::flush() {
  if (!be_) return;
  Tracer& tracer = Tracer::get();
  if (!tracer.on()) {  // armed, outside the traced steps
    spans_.clear();
    be_ = nullptr;
    return;
  }
  const int tid = tracer.virtual_thread("GPU stream");
  for (Span& s : spans_) {
    TraceEvent e;
    e.name = std::move(s.name);
    e.cat = s.cat;
    e.tid = s.lane.empty() ? tid : tracer.virtual_thread("GPU NCCL stream (" + s.lane + ")");
    e.step = tracer.step();
    e.bytes = s.bytes;
    e.ts_us = anchor_us_ + 1e6 * be_->seconds_between(anchor_, s.a);
    e.dur_us = 1e6 * be_->seconds_between(s.a, s.b);
    tracer.add(std::move(e));
  }
  spans_.clear();
  be_ = nullptr;
}

}  // namespace meshtrain
