// The communication watchdog (watchdog.h).
#include "parallel/watchdog.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <thread>

#include <fmt/format.h>

namespace meshtrain {

namespace {

using Clock = std::chrono::steady_clock;

struct State {
  std::atomic<bool> on{false};
  std::mutex mu;
  std::condition_variable cv;
  double timeout_s = 0.0;
  int rank = 0;
  std::string host;
  int depth = 0;  // nested blocking calls (a wait inside a blocking collective)
  const char* op = nullptr;
  std::string where;
  Clock::time_point since;
  bool running = false;  // a watcher thread is alive (it clears this as it ends)
  bool stop = false;
};

State& state() {
  static State* s = new State();  // never destroyed: the thread may outlive static destructors
  return *s;
}

void watch() {
  State& s = state();
  std::unique_lock<std::mutex> lock(s.mu);
  while (!s.stop) {
    s.cv.wait_for(lock, std::chrono::milliseconds(100));
    if (s.stop || s.depth == 0) continue;
    const double waited = std::chrono::duration<double>(Clock::now() - s.since).count();
    if (waited < s.timeout_s) continue;
    const std::string message = fmt::format(
        "\nmeshtrain: error (rank {} on {}): [watchdog] waited {:.1f} s in {} ({}) for the other ranks "
        "(parallel.timeout_s = {}): one of them died, hung or is far behind; ending the job\n",
        s.rank, s.host, waited, s.op, s.where, s.timeout_s);
    std::fputs(message.c_str(), stderr);
    std::fflush(stderr);
    std::fflush(stdout);
    ::_exit(1);  // the launcher ends the other ranks; nothing here may wait for them
  }
  s.running = false;
}

}  // namespace

void CommWatchdog::configure(double timeout_s, int rank, const std::string& host) {
  State& s = state();
  bool start = false;
  {
    std::lock_guard<std::mutex> lock(s.mu);
    s.timeout_s = timeout_s;
    s.rank = rank;
    s.host = host;
    s.stop = timeout_s <= 0.0;
    // One watcher at a time: one still running (even one told to stop that has not woken yet) sees
    // stop cleared again and carries on with the new timeout.
    start = !s.stop && !s.running;
    if (start) s.running = true;
  }
  s.on.store(timeout_s > 0.0);
  if (start) std::thread(watch).detach();
  s.cv.notify_all();
}

bool CommWatchdog::on() { return state().on.load(std::memory_order_relaxed); }

bool CommWatchdog::enter(const char* op, const std::string& where) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  if (s.depth++ == 0) {
    s.op = op;
    s.where = where;
    s.since = Clock::now();
  }
  return true;
}

void CommWatchdog::leave() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  --s.depth;
}

}  // namespace meshtrain
