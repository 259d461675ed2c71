// Helpers for the tests that drive the meshtrain binary (alone or under mpiexec): running a command
// line and capturing its output, and reading files and --metrics logs back.
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

namespace meshtrain::testing {

/// The meshtrain executable of this build.
inline const std::string kMeshtrain = std::string(MESHTRAIN_BINARY_DIR) + "/meshtrain";

struct CommandResult {
  int code;            // exit status (124 when the 120 s timeout hit, -1 when killed by a signal)
  std::string output;  // stdout and stderr together
};

/// Runs a shell command line with no input, Open MPI allowed to run as root and to put several ranks
/// on a core (harmless without mpiexec), and a 120 s limit. Unless use_gpus, the GPUs are hidden
/// (CUDA_VISIBLE_DEVICES empty), so train.device = auto means the CPU that these tests are about.
/// The environment the command helpers put before a command line. PMIX_MCA_psec=native: where
/// libmunge is installed (Debian's PMIx depends on it) but no munge daemon runs, every mpiexec
/// otherwise spends 2.3 s retrying the daemon's socket before it starts a rank.
inline std::string command_env(bool use_gpus = false) {
  return "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1 "
         "OMPI_MCA_hwloc_base_binding_policy=none OMPI_MCA_mpi_yield_when_idle=1 OMPI_MCA_btl=self,vader "
         "PMIX_MCA_psec=native " +
         std::string(use_gpus ? "" : "CUDA_VISIBLE_DEVICES= ");
}

inline CommandResult run_command(const std::string& cmd, bool use_gpus = false) {
  namespace fs = std::filesystem;
  const std::string log =
      (fs::temp_directory_path() / ("meshtrain_cmd_" + std::to_string(::getpid()) + ".log")).string();
  const int status = std::system((command_env(use_gpus) + "timeout 120 " + cmd + " > " + log + " 2>&1 < /dev/null").c_str());
  std::ifstream f(log);
  std::stringstream ss;
  ss << f.rdbuf();
  fs::remove(log);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, ss.str()};
}

/// Starts a command line in the background (same environment as run_command, output to log) and
/// returns its process id: the shell execs the command, so signals sent to the id reach it.
inline pid_t start_command(const std::string& cmd, const std::string& log, bool use_gpus = false) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    const std::string line = "exec env " + command_env(use_gpus) + cmd + " > " + log + " 2>&1 < /dev/null";
    ::execl("/bin/sh", "sh", "-c", line.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  return pid;
}

/// Waits for a started command; its exit status (128 + n when signal n ended it).
inline int wait_command(pid_t pid) {
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/// Lines in a file (0 when it does not exist yet).
inline int count_lines(const std::string& path) {
  std::ifstream f(path);
  int n = 0;
  std::string line;
  while (std::getline(f, line)) ++n;
  return n;
}

/// Polls until path has at least n lines or timeout_s passes; whether it got there.
inline bool wait_for_lines(const std::string& path, int n, double timeout_s = 60.0) {
  for (double waited = 0; waited < timeout_s; waited += 0.01) {
    if (count_lines(path) >= n) return true;
    ::usleep(10000);
  }
  return false;
}

/// A file's bytes.
inline std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

/// Every file under dir (relative path -> bytes): compare two to see that nothing in a folder changed.
inline std::map<std::string, std::string> snapshot(const std::filesystem::path& dir) {
  std::map<std::string, std::string> files;
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir))
    if (e.is_regular_file()) files[std::filesystem::relative(e.path(), dir).string()] = slurp(e.path().string());
  return files;
}

/// Every JSON object of a --metrics file.
inline std::vector<nlohmann::json> read_metrics(const std::string& path) {
  std::vector<nlohmann::json> rows;
  std::ifstream f(path);
  std::string line;
  while (std::getline(f, line)) rows.push_back(nlohmann::json::parse(line));
  return rows;
}

/// The per-step training losses of a --metrics file.
inline std::vector<double> read_losses(const std::string& path) {
  std::vector<double> out;
  for (const auto& row : read_metrics(path)) out.push_back(row["loss"].get<double>());
  return out;
}

}  // namespace meshtrain::testing
