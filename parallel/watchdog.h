// The communication watchdog: a rank that died, hung or fell far behind leaves the others blocked
// in a collective (or a receive) forever, which MPI does not notice. With a timeout set, every
// blocking MPI call marks the calling thread as waiting; a background thread checks every 100 ms
// and, once a wait passes the timeout, prints which rank on which host waited how long in which
// operation of which group, and ends the process. The launcher (mpirun, srun) then ends the rest
// of the job. Off (0) costs one atomic load per call.
#pragma once

#include <string>

namespace meshtrain {

class CommWatchdog {
 public:
  /// Starts watching with this timeout in seconds (0 stops); rank and host name the process in the
  /// message.
  static void configure(double timeout_s, int rank, const std::string& host);
  static bool on();

  /// Marks a blocking communication call from construction to destruction.
  class Guard {
   public:
    template <class WhereFn>
    Guard(const char* op, WhereFn&& where) {
      if (on()) entered_ = enter(op, where());
    }
    ~Guard() {
      if (entered_) leave();
    }
    Guard(const Guard&) = delete;
    Guard& operator=(const Guard&) = delete;

   private:
    bool entered_ = false;
  };

 private:
  static bool enter(const char* op, const std::string& where);
  static void leave();
};

}  // namespace meshtrain
