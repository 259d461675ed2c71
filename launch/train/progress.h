// Step logging: plain lines when output is a file or pipe; on a terminal the same lines plus a
// progress bar with ETA redrawn in place. Also the --metrics JSON Lines writer.
#pragma once

#include <cstdio>
#include <optional>
#include <string>

namespace meshtrain {

/// This process's peak resident memory so far, in MiB (getrusage's ru_maxrss).
double peak_resident_mib();

struct StepRecord {
  int64_t step = 0;  // 1-based, the step just completed
  double loss = 0.0;
  double lr = 0.0;
  double grad_norm = 0.0;
  double ms = 0.0;
  double tokens_per_s = 0.0;
  std::optional<double> val_loss;
  // Where the step's time went, averaged over ranks (multi-rank runs only): exposed data-parallel
  // communication, tensor-parallel all-reduces, pipeline waits, and the rest (compute).
  bool parallel = false;
  double compute_ms = 0.0, dp_comm_ms = 0.0, tp_comm_ms = 0.0, pp_wait_ms = 0.0;
  double max_ms = 0.0;  // the slowest rank's step
  double rss_peak_mib = 0.0;  // the process's peak resident memory (the largest over ranks)
  int slowest_rank = 0;
  // The same split's spread over ranks: min and max of each part.
  double compute_min_ms = 0.0, compute_max_ms = 0.0, dp_min_ms = 0.0, dp_max_ms = 0.0;
  double tp_min_ms = 0.0, tp_max_ms = 0.0, pp_min_ms = 0.0, pp_max_ms = 0.0;
  // Bytes one rank moved on each axis this step (mean over ranks), and the bus bandwidth it reached
  // while the step waited on that axis (nccl-tests' busbw: all-reduce bytes x 2(n-1)/n, reduce-scatter
  // and all-gather x (n-1)/n, sends x 1, over the waiting time; GB/s, 0 when nothing waited).
  double dp_bytes = 0.0, tp_bytes = 0.0, pp_bytes = 0.0;
  double dp_busbw = 0.0, tp_busbw = 0.0, pp_busbw = 0.0;
  // GPU runs: peak device memory so far (tensors plus kernel scratch pools), in MiB; 0 on the CPU.
  double gpu_peak_mib = 0.0;
  // Model FLOPs utilisation in percent: tokens/s x (6N + 12 L C T) over the devices' peak; 0 = unknown.
  double mfu = 0.0;
};

/// Dense TFLOP/s of one GPU by its name (cudaDeviceProp::name) for bf16 tensor-core math or plain
/// fp32: H100 / H200 (SXM; PCIe H100 has lower clocks) and A100. 0 when the card is not known.
double known_peak_tflops(const std::string& device_name, bool bf16);

class StepLog {
 public:
  /// total_steps for the ETA; metrics_path "" = no metrics file (appended to otherwise). The bar is
  /// drawn only when allow_bar and stdout is a terminal (MPI launchers hand ranks a pseudo-terminal
  /// even when their output goes to a file, so multi-rank runs pass false).
  StepLog(int64_t first_step, int64_t total_steps, int log_every, const std::string& metrics_path,
          bool allow_bar = true);
  ~StepLog();
  void record(const StepRecord& r);
  /// Prints a message on its own lines (clearing and redrawing the bar on a terminal).
  void message(const std::string& text);
  /// Clears the bar (before output that streams, such as a sample).
  void clear_bar();

 private:
  void draw_bar();
  int64_t first_, total_;
  int log_every_;
  bool tty_;
  bool bar_shown_ = false;
  double start_;
  StepRecord last_;
  std::FILE* metrics_ = nullptr;
};

}  // namespace meshtrain
