// The step-time half of `meshtrain plan`: a hardware description (what `plan calibrate` measures,
// or a shipped file under hardware/), and a prediction of one training step's time for a layout,
// split the way the step log splits a measured step (compute, tensor-, data- and pipeline-parallel
// communication, the pipeline bubble, the optimizer).
//
// The model, per rank and step (m micro-batches of B sequences of T tokens, C channels, tp/pp/dp):
//   compute   every GEMM of a micro-batch at its shape, timed by the GEMM throughput measured at that
//             shape (nearest measured one); attention by its own measured throughput; LayerNorm,
//             GELU, residuals and the loss as bytes over the measured element-wise bandwidth
//   tp        4 all-reduces of B*T*C floats per block and micro-batch (2 forward, 2 backward), the
//             embedding's and the loss's, each ring-timed: 2(n-1) latencies + 2(n-1)/n bytes / bandwidth
//   pp        the bubble ((p - 1) slowest-stage micro-batch times) and the activations and gradients
//             sent between stages
//   dp        the gradients' all-reduce (ZeRO-1: reduce-scatter + all-gather, the same bytes), counted
//             as exposed: the CPU's MPI makes little progress while the rank computes. The buckets
//             reduced from backward's hooks cost dp_factor (ZeRO-1: zero_dp_factor) times their
//             modelled time, as `plan calibrate` measured it on a real last micro-batch
//   optimizer AdamW over the rank's share of the parameters, at the measured rate
// Ranks that outnumber the cores share them: the step is then at least the busy time of all ranks
// divided by the cores.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "core/communicator.h"
#include "launch/config.h"

namespace meshtrain {

/// A GEMM shape (M x N x K, row-major M x K times K x N) with its measured throughput.
struct GemmRate {
  int64_t m = 0, n = 0, k = 0;
  double gflops = 0.0;
};

struct Hardware {
  std::string name;      // what the numbers describe
  std::string source;    // where they come from (calibrate on a host, or the vendor's sheet)
  std::string device = "cpu";     // what a rank computes on: cpu or cuda (train.device)
  std::string precision = "fp32"; // what the compute figures are for: fp32 or bf16 (train.precision)
  int cores = 1;         // cores a node's ranks share (CPU); 0 = each rank has its own device
  int threads = 1;       // threads per rank the compute figures were measured with
  double gemm_gflops = 0;        // GEMM throughput for shapes not in `gemm`
  std::vector<GemmRate> gemm;    // measured at the model's shapes
  double attention_gflops = 0;   // attention forward + backward, counted as its matrix products' FLOPs
  double elementwise_gbs = 0;    // LayerNorm, GELU, residual, loss: bytes read + written per second
  double adamw_params_per_s = 0; // AdamW update rate
  double in_step_factor = 1.0;   // a real micro-batch's forward + backward over the sum of its parts
                                 // timed alone (cold caches, bias sums, the embedding, bookkeeping)
  std::vector<std::pair<int, double>> in_step;  // (micro-batch rows, factor) measured; nearest is used
  double tp_factor = 1.0;        // a real tensor-parallel micro-batch (compute + f/g all-reduces) over
                                 // its parts, measured over the launch's ranks
  double dp_factor = 1.0;        // CPU: what a data-parallel last micro-batch (bucket all-reduces
                                 // launched and polled from backward's hooks, then waited for) costs
                                 // beyond the plain micro-batch, over those all-reduces' modelled time
  double zero_dp_factor = 1.0;   // the same with ZeRO-1's reduce-scatters (over half that time)
  double link_gbs = 0;           // collective bandwidth inside a node, GB/s (algorithm bandwidth of a ring step)
  double link_latency_us = 0;    // per message step inside a node
  double async_gbs = 0;          // the same for non-blocking all-reduces (data-parallel buckets); 0 = link
  double async_latency_us = 0;
  double net_gbs = 0;            // across nodes
  double net_latency_us = 0;
  int gpus_per_node = 0;         // ranks per node sharing `link` (0: one node)
  double memory_gib = 0;         // per rank (GPU) or per node (CPU)
  double process_mib = 0;        // resident memory of a rank before the model (libraries, MPI, buffers)
  double peak_tflops = 0;        // for MFU
};

/// Reads a hardware TOML file; errors name the file and the key.
Hardware load_hardware(const std::string& path);
/// The TOML text of hw (what `plan calibrate` writes).
std::string hardware_to_toml(const Hardware& hw);

struct LayoutTime {
  double compute_ms = 0, tp_ms = 0, dp_ms = 0, pp_ms = 0, bubble_ms = 0, optimizer_ms = 0;
  double dp_exposed_ms = 0;  // the part of dp_ms the step waits for (GPUs overlap it with backward)
  double step_ms = 0;      // the prediction
  double tokens_per_s = 0;
  double mfu = 0;          // percent of hw.peak_tflops (0 when unknown)
  bool oversubscribed = false;  // more busy threads than cores: the cores bound the step
};

/// Predicted step time of a layout (dp x tp x pp, ZeRO) on hw. The layout must be valid.
LayoutTime predict_layout_time(const Config& cfg, const Hardware& hw, int dp, int tp, int pp, int zero);

/// The GEMM shapes (M x N x K) one micro-batch of a layout runs, forward and backward.
std::vector<GemmRate> layout_gemm_shapes(const Config& cfg, int dp, int tp);

struct CalibrateArgs {
  std::string config_file;
  std::vector<std::string> overrides;
  int ranks = 0;          // layouts to measure GEMM shapes for (default: the world's size, at least 8)
  std::string out;        // TOML file to write ("" = print)
  std::string name;       // the description's name (default: the CPU model)
  bool overwrite = false;
};
/// What a calibration's own figures say about the machine holding still: a warning (empty when none)
/// when its passes' whole micro-batches (seconds) differ by more than 15%, or when a whole
/// micro-batch ran faster than the sum of its parts (factor < 0.9: the parts were timed in a slow
/// moment). Predictions from such a calibration follow the machine's noise, not the model's.
std::string calibration_steadiness_warning(const std::vector<double>& pass_wholes,
                                           const std::vector<std::pair<int, double>>& in_step);

/// Measures this machine (GEMMs at the model's shapes, attention, element-wise bandwidth, AdamW,
/// and, under a launcher with 2 or more ranks, all-reduce bandwidth and latency) and writes it.
void run_plan_calibrate(const CalibrateArgs& args, Communicator& world);

}  // namespace meshtrain
