// Wall-clock timing: a monotonic clock, and a Profiler that accumulates seconds per named region
// (forward, backward, optimizer, data, ...) so each step can say where its time went.
#pragma once

#include <chrono>
#include <map>
#include <string>

namespace meshtrain {

/// Seconds on a monotonic clock since an arbitrary origin.
inline double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

class Profiler {
 public:
  void add(const std::string& region, double seconds) { totals_[region] += seconds; }
  const std::map<std::string, double>& totals() const { return totals_; }
  void clear() { totals_.clear(); }

 private:
  std::map<std::string, double> totals_;
};

/// Adds the lifetime of this object to a profiler region; a null profiler makes it free.
class ScopedTimer {
 public:
  ScopedTimer(Profiler* profiler, const char* region)
      : profiler_(profiler), region_(region), start_(profiler ? now_seconds() : 0.0) {}
  ~ScopedTimer() {
    if (profiler_) profiler_->add(region_, now_seconds() - start_);
  }
  ScopedTimer(const ScopedTimer&) = delete;
  ScopedTimer& operator=(const ScopedTimer&) = delete;

 private:
  Profiler* profiler_;
  const char* region_;
  double start_;
};

}  // namespace meshtrain
