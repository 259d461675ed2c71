// Tracing: named regions of each thread's time, recorded as Chrome Trace Event "complete" events
// (name, category, start, duration) when tracing is on, and nothing at all when it is off (one
// relaxed atomic load per region). Categories name where time goes: "compute" (model work),
// "tp" / "dp" / "pp" (communication the step waits for, measured at the same points as the step
// log's split), "pp_send", "optimizer", "data", "eval", "checkpoint", "step". A region can start or
// end a flow (an arrow in the viewer, e.g. from a pipeline send to its receive on another rank).
// parallel/trace_writer.h merges every rank's events into one file. CUDA builds also push each
// region as an NVTX range (nvtx3), so Nsight Systems shows them beside the GPU's kernels.
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

namespace meshtrain {

struct TraceEvent {
  std::string name;
  const char* cat = "";
  int tid = 0;           // per-thread index (0 = the first thread that recorded)
  double ts_us = 0.0;    // start, microseconds on this process's steady clock
  double dur_us = 0.0;
  int64_t step = -1;     // the training step the region belongs to (-1: none)
  int64_t bytes = -1;    // bytes moved by a communication region
  uint64_t flow_out = 0; // non-zero: a flow starts here
  uint64_t flow_in = 0;  // non-zero: a flow ends here
};

class Tracer {
 public:
  /// The process's tracer.
  static Tracer& get();
  bool on() const { return on_.load(std::memory_order_relaxed); }
  void set_on(bool on) { on_.store(on, std::memory_order_relaxed); }
  /// A trace was asked for this run (on() or not yet): device timelines record their marks from now
  /// on, so that a step captured as a CUDA graph before the traced window still replays them.
  bool armed() const { return armed_.load(std::memory_order_relaxed); }
  void set_armed(bool armed) { armed_.store(armed, std::memory_order_relaxed); }
  /// The step regions recorded from now on belong to.
  void set_step(int64_t step) { step_.store(step, std::memory_order_relaxed); }
  int64_t step() const { return step_.load(std::memory_order_relaxed); }
  /// Mixed into flow ids so that ranks exchanging the same kind of message at the same time in
  /// different groups (e.g. pipelines of different dp / tp coordinates) get distinct flows.
  void set_flow_scope(uint64_t scope) { scope_.store(scope, std::memory_order_relaxed); }
  uint64_t flow_scope() const { return scope_.load(std::memory_order_relaxed); }
  /// Microseconds on the steady clock (what TraceEvent::ts_us is measured in).
  static double now_us();
  /// This thread's index and the names given to threads ("main", ...).
  int thread_index();
  void name_thread(const std::string& name);
  /// The index of a timeline that is not a host thread (e.g. "GPU stream"), made at its first use.
  int virtual_thread(const std::string& name);
  std::vector<std::string> thread_names() const;
  void add(TraceEvent e);
  /// Records a region of the calling thread that began at ts_us and ends now (in the current step).
  void add_region(const char* cat, std::string name, double ts_us, int64_t bytes = -1);
  /// The events recorded so far (and forgets them).
  std::vector<TraceEvent> take();

 private:
  std::atomic<bool> on_{false};
  std::atomic<bool> armed_{false};
  std::atomic<int64_t> step_{-1};
  std::atomic<uint64_t> scope_{0};
  mutable std::mutex mu_;
  std::vector<TraceEvent> events_;
  std::vector<std::string> threads_;
  std::vector<int> virtual_;  // indices of threads_ that virtual_thread() made
};

/// Records the region from construction to destruction (when tracing is on).
class TraceScope {
 public:
  TraceScope(const char* cat, const char* name, int64_t bytes = -1) {
    if (Tracer::get().on()) begin(cat, name, bytes);
  }
  template <class NameFn>  // the name is only built when tracing is on
  TraceScope(const char* cat, NameFn&& make_name, int64_t bytes = -1) {
    if (Tracer::get().on()) begin(cat, make_name(), bytes);
  }
  ~TraceScope() { end(); }
  TraceScope(const TraceScope&) = delete;
  TraceScope& operator=(const TraceScope&) = delete;
  void flow_out(uint64_t id) { e_.flow_out = id; }
  void flow_in(uint64_t id) { e_.flow_in = id; }
  /// Ends the region now (the destructor then does nothing).
  void end();

 private:
  void begin(const char* cat, std::string name, int64_t bytes);
  bool active_ = false;
  TraceEvent e_;
};

}  // namespace meshtrain
