// The communication watchdog: a rank that died, hung or fell far behind leaves the others blocked
// in a collective (or a receive) forever, which neither MPI nor NCCL notices. With a timeout set,
// every blocking MPI call, and every host wait for a GPU stream (where NCCL's collectives and the
// waits ordered after them run), marks the calling thread as waiting; a background thread checks
// every 100 ms and, once a wait passes the timeout, prints which rank on which host waited how long
// in which operation of which group, runs the abort hooks (NCCL communicators abort themselves, so
// kernels stuck in a collective release the GPU; bounded to a few seconds), and ends the process.
// The launcher (mpirun, srun) then ends the rest of the job. Off (0) costs one atomic load per call.
#pragma once

#include <functional>
#include <string>

namespace meshtrain {

class CommWatchdog {
 public:
  /// Starts watching with this timeout in seconds (0 stops); rank and host name the process in the
  /// message.
  static void configure(double timeout_s, int rank, const std::string& host);
  static bool on();

  /// Runs hook on the watchdog's thread when a wait times out, after the message and before the
  /// process ends (all hooks together get at most kAbortSeconds). Returns an id for remove_abort_hook.
  static int add_abort_hook(std::function<void()> hook);
  static void remove_abort_hook(int id);
  static constexpr double kAbortSeconds = 5.0;

  /// Names the last communication queued on a GPU stream: the host then waits for the stream, not
  /// for the collective, and a wait for the stream that times out names it.
  template <class WhereFn>
  static void note_queued(const char* op, WhereFn&& where) {
    if (on()) set_queued(op, where());
  }
  /// "the last collective queued: OP (WHERE)", or that none was queued since the watchdog started.
  static std::string last_queued();

  /// Marks a blocking communication call from construction to destruction; a timeout blames the
  /// other ranks.
  class Guard {
   public:
    template <class WhereFn>
    Guard(const char* op, WhereFn&& where) : entered_(on() && enter(op, where())) {}
    /// Marks a host wait for this rank's GPU (a stream or device synchronize). NCCL's collectives
    /// run on the GPU's streams, so the message names the last collective queued, if any; with none
    /// queued it says that a kernel on this GPU, not a peer, did not finish.
    static Guard gpu_wait(const char* op) { return Guard(on() && enter_gpu_wait(op)); }
    ~Guard() {
      if (entered_) leave();
    }
    Guard(const Guard&) = delete;
    Guard& operator=(const Guard&) = delete;

   private:
    explicit Guard(bool entered) : entered_(entered) {}
    bool entered_;
  };

 private:
  static bool enter(const char* op, const std::string& where);
  static bool enter_gpu_wait(const char* op);
  static void leave();
  static void set_queued(const char* op, std::string where);
};

}  // namespace meshtrain
