// Signal handlers that only record which signal came (async-signal-safe), and signal names.
#include "launch/train/stop_signals.h"

#include <signal.h>
#include <strings.h>
#include <unistd.h>

#include <cstring>

namespace meshtrain {

namespace {

volatile sig_atomic_t g_received = 0;

void on_stop_signal(int signo) {
  if (g_received != 0 && signo == SIGINT) {
    // A second Ctrl-C: the user does not want to wait for the checkpoint.
    static const char msg[] = "\nmeshtrain: second interrupt, exiting without a checkpoint\n";
    ssize_t ignored = ::write(STDERR_FILENO, msg, sizeof(msg) - 1);
    (void)ignored;
    ::_exit(130);
  }
  if (g_received == 0) g_received = signo;
}

struct Named {
  const char* name;
  int signo;
};
constexpr Named kSignals[] = {{"INT", SIGINT},   {"TERM", SIGTERM}, {"HUP", SIGHUP},   {"QUIT", SIGQUIT},
                              {"USR1", SIGUSR1}, {"USR2", SIGUSR2}, {"ALRM", SIGALRM}, {"XCPU", SIGXCPU}};

}  // namespace

int signal_number(const std::string& name) {
  const char* n = name.c_str();
  if (::strncasecmp(n, "SIG", 3) == 0) n += 3;
  for (const auto& s : kSignals)
    if (::strcasecmp(n, s.name) == 0) return s.signo;
  return 0;
}

std::string signal_name(int signo) {
  for (const auto& s : kSignals)
    if (s.signo == signo) return std::string("SIG") + s.name;
  return "signal " + std::to_string(signo);
}

StopSignals::StopSignals(const std::string& extra) {
  g_received = 0;
  signals_[0] = SIGINT;
  signals_[1] = SIGTERM;
  signals_[2] = extra.empty() ? 0 : signal_number(extra);
  struct sigaction sa;
  std::memset(&sa, 0, sizeof(sa));
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;  // blocking calls (file and socket I/O inside MPI) carry on
  for (int i = 0; i < 3; ++i)
    if (signals_[i] > 0 && (i < 2 || (signals_[i] != SIGINT && signals_[i] != SIGTERM)))
      ::sigaction(signals_[i], &sa, &saved_[i]);
    else
      signals_[i] = 0;
}

StopSignals::~StopSignals() {
  for (int i = 0; i < 3; ++i)
    if (signals_[i] > 0) ::sigaction(signals_[i], &saved_[i], nullptr);
}

int StopSignals::received() const { return g_received; }

}  // namespace meshtrain
