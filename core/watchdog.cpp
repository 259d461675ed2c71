// The communication watchdog (watchdog.h).
#include "core/watchdog.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

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
  // Whom the current wait is for: the other ranks (a communication call), or this rank's GPU with
  // or without a collective queued on it.
  enum class For { kRanks, kGpuCollective, kGpuKernel } waits_for = For::kRanks;
  Clock::time_point since;
  bool running = false;  // a watcher thread is alive (it clears this as it ends)
  bool stop = false;
  std::map<int, std::function<void()>> hooks;
  int next_hook = 0;
  const char* queued_op = nullptr;  // the last communication queued on a GPU stream
  std::string queued_where;
};

State& state() {
  static State* s = new State();  // never destroyed: the thread may outlive static destructors
  return *s;
}

// Runs the hooks on a thread of their own and waits for them at most kAbortSeconds: an abort that
// hangs (a driver stuck with the kernels it should cancel) must not keep the process alive.
void run_abort_hooks(std::vector<std::function<void()>> hooks) {
  if (hooks.empty()) return;
  auto done = std::make_shared<std::atomic<bool>>(false);
  std::thread([hooks = std::move(hooks), done] {
    for (const auto& hook : hooks) hook();
    done->store(true);
  }).detach();
  const auto until = Clock::now() + std::chrono::duration<double>(CommWatchdog::kAbortSeconds);
  while (!done->load() && Clock::now() < until) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  std::fputs(done->load() ? "meshtrain: [watchdog] communicators aborted\n"
                          : "meshtrain: [watchdog] aborting the communicators did not finish in time; exiting anyway\n",
             stderr);
  std::fflush(stderr);
}

void watch() {
  State& s = state();
  std::unique_lock<std::mutex> lock(s.mu);
  while (!s.stop) {
    s.cv.wait_for(lock, std::chrono::milliseconds(100));
    if (s.stop || s.depth == 0) continue;
    const double waited = std::chrono::duration<double>(Clock::now() - s.since).count();
    if (waited < s.timeout_s) continue;
    const char* whom = "the other ranks";
    const char* why = "one of them died, hung or is far behind";
    if (s.waits_for == State::For::kGpuCollective) {
      whom = "this rank's GPU";
      why = "the collective did not finish: another rank died, hung or is far behind (or a kernel here never ended)";
    } else if (s.waits_for == State::For::kGpuKernel) {
      whom = "this rank's GPU";
      why = "no collective was in flight, so a kernel on this GPU never ended";
    }
    const std::string message = fmt::format(
        "\nmeshtrain: error (rank {} on {}): [watchdog] waited {:.1f} s in {} ({}) for {} "
        "(parallel.timeout_s = {}): {}; ending the job\n",
        s.rank, s.host, waited, s.op, s.where, whom, s.timeout_s, why);
    std::fputs(message.c_str(), stderr);
    std::fflush(stderr);
    std::fflush(stdout);
    std::vector<std::function<void()>> hooks;
    for (auto& [id, hook] : s.hooks) hooks.push_back(hook);
    lock.unlock();  // a hook may itself pass through a Guard
    run_abort_hooks(std::move(hooks));
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
    s.queued_op = nullptr;
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

namespace {
std::string describe_queued(const State& s) {
  if (!s.queued_op) return "no collective was queued on a GPU stream";
  return fmt::format("the last collective queued: {} ({})", s.queued_op, s.queued_where);
}

// With s.mu held: the outermost wait starts the clock (a nested one is part of it).
void start_wait(State& s, const char* op, std::string where, State::For waits_for) {
  if (s.depth++ > 0) return;
  s.op = op;
  s.where = std::move(where);
  s.waits_for = waits_for;
  s.since = Clock::now();
}
}  // namespace

bool CommWatchdog::enter(const char* op, const std::string& where) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  start_wait(s, op, where, State::For::kRanks);
  return true;
}

bool CommWatchdog::enter_gpu_wait(const char* op) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  start_wait(s, op, describe_queued(s), s.queued_op ? State::For::kGpuCollective : State::For::kGpuKernel);
  return true;
}

int CommWatchdog::add_abort_hook(std::function<void()> hook) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  s.hooks.emplace(s.next_hook, std::move(hook));
  return s.next_hook++;
}

void CommWatchdog::remove_abort_hook(int id) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  s.hooks.erase(id);
}

void CommWatchdog::set_queued(const char* op, std::string where) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  s.queued_op = op;
  s.queued_where = std::move(where);
}

std::string CommWatchdog::last_queued() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  return describe_queued(s);
}

void CommWatchdog::leave() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  --s.depth;
}

}  // namespace meshtrain
