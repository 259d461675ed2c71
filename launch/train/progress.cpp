// StepLog implementation.
#include "launch/train/progress.h"

#include <filesystem>

#include <sys/resource.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/timer.h"

namespace meshtrain {

namespace {
std::string format_duration(double s) {
  if (s < 0) s = 0;
  int64_t t = static_cast<int64_t>(s + 0.5);
  if (t >= 3600) return fmt::format("{}h{:02d}m", t / 3600, (t / 60) % 60);
  return fmt::format("{}m{:02d}s", t / 60, t % 60);
}
}  // namespace

StepLog::StepLog(int64_t first_step, int64_t total_steps, int log_every, const std::string& metrics_path,
                 bool allow_bar)
    : first_(first_step), total_(total_steps), log_every_(log_every), tty_(allow_bar && ::isatty(STDOUT_FILENO)),
      start_(now_seconds()) {
  if (!metrics_path.empty()) {
    const std::filesystem::path parent = std::filesystem::path(metrics_path).parent_path();
    std::error_code ec;
    if (!parent.empty()) std::filesystem::create_directories(parent, ec);
    MT_CHECK(!ec, "[metrics] cannot create the folder '{}' for '{}': {}", parent.string(), metrics_path, ec.message());
    metrics_ = std::fopen(metrics_path.c_str(), "a");
    MT_CHECK(metrics_, "[metrics] cannot open '{}' for appending: {}", metrics_path, std::strerror(errno));
  }
}

StepLog::~StepLog() {
  clear_bar();
  if (metrics_) std::fclose(metrics_);
}

void StepLog::clear_bar() {
  if (tty_ && bar_shown_) {
    std::fputs("\r\033[2K", stdout);
    std::fflush(stdout);
    bar_shown_ = false;
  }
}

void StepLog::message(const std::string& text) {
  clear_bar();
  std::fputs(text.c_str(), stdout);
  if (text.empty() || text.back() != '\n') std::fputc('\n', stdout);
  std::fflush(stdout);
  if (tty_) draw_bar();
}

double peak_resident_mib() {
  struct rusage ru {};
  ::getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_maxrss) / 1024.0;  // KiB on Linux
}

void StepLog::draw_bar() {
  if (last_.step == 0) return;
  double elapsed = now_seconds() - start_;
  int64_t done = last_.step - first_, left = total_ - last_.step;
  double eta = done > 0 ? elapsed / static_cast<double>(done) * static_cast<double>(left) : 0.0;
  const int width = 30;
  int filled = static_cast<int>(width * static_cast<double>(last_.step) / static_cast<double>(total_));
  std::string bar(filled, '#');
  bar.resize(width, '.');
  std::fprintf(stdout, "\r\033[2K[%s] %lld/%lld loss %.4f | %.0f tok/s | elapsed %s | ETA %s", bar.c_str(),
               static_cast<long long>(last_.step), static_cast<long long>(total_), last_.loss, last_.tokens_per_s,
               format_duration(elapsed).c_str(), format_duration(eta).c_str());
  std::fflush(stdout);
  bar_shown_ = true;
}

void StepLog::record(const StepRecord& r) {
  last_ = r;
  if (metrics_) {
    nlohmann::json j;
    j["step"] = r.step;
    j["loss"] = r.loss;
    j["lr"] = r.lr;
    j["grad_norm"] = r.grad_norm;
    j["ms"] = r.ms;
    j["tokens_per_s"] = r.tokens_per_s;
    if (r.parallel) {
      j["compute_ms"] = r.compute_ms;
      j["dp_comm_ms"] = r.dp_comm_ms;
      j["tp_comm_ms"] = r.tp_comm_ms;
      j["pp_wait_ms"] = r.pp_wait_ms;
      j["max_ms"] = r.max_ms;
      j["slowest_rank"] = r.slowest_rank;
      j["compute_ms_min"] = r.compute_min_ms;
      j["compute_ms_max"] = r.compute_max_ms;
      j["dp_comm_ms_min"] = r.dp_min_ms;
      j["dp_comm_ms_max"] = r.dp_max_ms;
      j["tp_comm_ms_min"] = r.tp_min_ms;
      j["tp_comm_ms_max"] = r.tp_max_ms;
      j["pp_wait_ms_min"] = r.pp_min_ms;
      j["pp_wait_ms_max"] = r.pp_max_ms;
      j["dp_bytes"] = r.dp_bytes;
      j["tp_bytes"] = r.tp_bytes;
      j["pp_bytes"] = r.pp_bytes;
      j["dp_busbw_gbs"] = r.dp_busbw;
      j["tp_busbw_gbs"] = r.tp_busbw;
      j["pp_busbw_gbs"] = r.pp_busbw;
    }
    if (r.gpu_peak_mib > 0.0) j["gpu_peak_mib"] = r.gpu_peak_mib;
    if (r.rss_peak_mib > 0.0) j["rss_peak_mib"] = r.rss_peak_mib;
    if (r.mfu > 0.0) j["mfu"] = r.mfu;
    if (r.val_loss) j["val_loss"] = *r.val_loss;
    std::string line = j.dump() + "\n";
    std::fputs(line.c_str(), metrics_);
    std::fflush(metrics_);
  }
  bool line_due = r.step == first_ + 1 || r.step == total_ || r.step % log_every_ == 0 || r.val_loss;
  if (line_due) {
    double elapsed = now_seconds() - start_;
    int64_t done = r.step - first_;
    double eta = elapsed / static_cast<double>(done) * static_cast<double>(total_ - r.step);
    std::string val = r.val_loss ? fmt::format(" | val {:.4f}", *r.val_loss) : "";
    std::string comm = r.parallel ? fmt::format(" (compute {:.0f} + dp {:.0f} + tp {:.0f} + pp {:.0f}; slowest rank {})",
                                                r.compute_ms, r.dp_comm_ms, r.tp_comm_ms, r.pp_wait_ms, r.slowest_rank)
                                  : "";
    std::string text = fmt::format("step {:>5}/{} | loss {:.4f}{} | lr {:.2e} | norm {:.3f} | {:.0f} ms{} | {:.0f} tok/s",
                                   r.step, total_, r.loss, val, r.lr, r.grad_norm, r.ms, comm, r.tokens_per_s);
    if (r.gpu_peak_mib > 0.0) text += fmt::format(" | peak {:.0f} MiB", r.gpu_peak_mib);
    if (r.mfu > 0.0) text += fmt::format(" | MFU {:.1f}%", r.mfu);
    if (!tty_) text += " | ETA " + format_duration(eta);
    message(text);
  } else if (tty_) {
    draw_bar();
  }
}

double known_peak_tflops(const std::string& name, bool bf16) {
  // NVIDIA's datasheets, dense (no sparsity): bf16 tensor cores / fp32 CUDA cores.
  struct Card {
    const char* key;
    double bf16, fp32;
  };
  static const Card cards[] = {{"H200", 989.0, 67.0}, {"H100 PCIe", 756.0, 51.0}, {"H100", 989.0, 67.0},
                               {"A100", 312.0, 19.5}};
  for (const Card& c : cards)
    if (name.find(c.key) != std::string::npos) return bf16 ? c.bf16 : c.fp32;
  return 0.0;
}

}  // namespace meshtrain
