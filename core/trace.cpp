// The process's tracer (trace.h).
#include "core/trace.h"

#include <chrono>
#include <thread>

#ifdef MESHTRAIN_NVTX
#include <nvtx3/nvToolsExt.h>
#endif

namespace meshtrain {

Tracer& Tracer::get() {
  static Tracer t;
  return t;
}

double Tracer::now_us() {
  using namespace std::chrono;
  return duration<double, std::micro>(steady_clock::now().time_since_epoch()).count();
}

int Tracer::thread_index() {
  thread_local int index = -1;
  if (index < 0) {
    std::lock_guard<std::mutex> lock(mu_);
    index = static_cast<int>(threads_.size());
    threads_.push_back(index == 0 ? "main" : "thread " + std::to_string(index));
  }
  return index;
}

void Tracer::name_thread(const std::string& name) {
  const int i = thread_index();
  std::lock_guard<std::mutex> lock(mu_);
  threads_[static_cast<size_t>(i)] = name;
}

int Tracer::virtual_thread(const std::string& name) {
  std::lock_guard<std::mutex> lock(mu_);
  for (size_t i = 0; i < virtual_.size(); ++i)
    if (threads_[static_cast<size_t>(virtual_[i])] == name) return virtual_[i];
  const int index = static_cast<int>(threads_.size());
  threads_.push_back(name);
  virtual_.push_back(index);
  return index;
}

std::vector<std::string> Tracer::thread_names() const {
  std::lock_guard<std::mutex> lock(mu_);
  return threads_;
}

void Tracer::add(TraceEvent e) {
  std::lock_guard<std::mutex> lock(mu_);
  events_.push_back(std::move(e));
}

void Tracer::add_region(const char* cat, std::string name, double ts_us, int64_t bytes) {
  TraceEvent e;
  e.name = std::move(name);
  e.cat = cat;
  e.tid = thread_index();
  e.step = step();
  e.bytes = bytes;
  e.ts_us = ts_us;
  e.dur_us = now_us() - ts_us;
  add(std::move(e));
}

std::vector<TraceEvent> Tracer::take() {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<TraceEvent> out;
  out.swap(events_);
  return out;
}

void TraceScope::begin(const char* cat, std::string name, int64_t bytes) {
  Tracer& t = Tracer::get();
  active_ = true;
  e_.name = std::move(name);
  e_.cat = cat;
  e_.tid = t.thread_index();
  e_.step = t.step();
  e_.bytes = bytes;
#ifdef MESHTRAIN_NVTX
  nvtxRangePushA(e_.name.c_str());
#endif
  e_.ts_us = Tracer::now_us();
}

void TraceScope::end() {
  if (!active_) return;
  active_ = false;
  e_.dur_us = Tracer::now_us() - e_.ts_us;
#ifdef MESHTRAIN_NVTX
  nvtxRangePop();
#endif
  Tracer::get().add(std::move(e_));
}

}  // namespace meshtrain
