// Step-time prediction and hardware calibration for `meshtrain plan` (launch/plan_time.h).
#include "launch/plan_time.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <toml++/toml.h>

#include "core/error.h"
#include "core/tensor.h"
#include "core/threads.h"
#include "launch/plan.h"
#include "model/backend.h"
#include "model/gpt.h"
#include "model/kernels/adamw.h"
#include "model/params.h"
#include "parallel/data_parallel.h"
#include "parallel/pipeline.h"

namespace meshtrain {

namespace {

namespace fs = std::filesystem;

// ---- The work of one micro-batch, shared by the prediction and by calibrate (which times the same
// operations at the same shapes, so the byte and FLOP conventions cancel out).

/// Bytes read and written by one block's element-wise work (fp32): two LayerNorms forward (8 NC
/// each) and backward (12 NC each), GELU forward (8 NF) and backward (12 NF), two residual adds
/// forward (12 NC each) and their gradients accumulated backward (12 NC each). F = 4C / tp.
double block_elementwise_bytes(double N, double C, double F) { return 88.0 * N * C + 20.0 * N * F; }
/// The loss: softmax over each row's Vl logits and its gradient in place (read, read, write).
double loss_elementwise_bytes(double N, double Vl) { return 12.0 * N * Vl; }
/// Attention's matrix products, forward (QK^T and PV) and backward (four more): 12 B H T^2 hd.
double attention_flops(double B, double T, double H, double hd) { return 12.0 * B * H * T * T * hd; }

struct Linear {  // out[tokens x out] = in[tokens x in] W^T; forward and backward are 6 tokens in out FLOPs
  int64_t tokens, in, out;
  double flops() const { return 6.0 * double(tokens) * double(in) * double(out); }
};

/// The linears of one block for a micro-batch of N tokens at tensor-parallel degree tp.
std::vector<Linear> block_linears(int64_t N, int64_t C, int tp) {
  return {{N, C, 3 * C / tp}, {N, C / tp, C}, {N, C, 4 * C / tp}, {N, 4 * C / tp, C}};
}
Linear classifier(int64_t N, int64_t C, int64_t Vp, int tp) { return {N, C, Vp / tp}; }

double gemm_seconds(const Hardware& hw, const Linear& l) {
  // The measured shape closest in log space; a shape far from every measured one falls back to the
  // generic figure.
  double best = 1e300, rate = hw.gemm_gflops;
  for (const GemmRate& g : hw.gemm) {
    const double d = std::abs(std::log(double(g.m) / double(l.tokens))) + std::abs(std::log(double(g.n) / double(l.out))) +
                     std::abs(std::log(double(g.k) / double(l.in)));
    if (d < best) {
      best = d;
      rate = g.gflops;
    }
  }
  if (best > 1.5) rate = hw.gemm_gflops;  // more than ~4.5x off in some dimension
  MT_CHECK(rate > 0, "[plan] the hardware description has no GEMM throughput (gemm_gflops)");
  return l.flops() / (rate * 1e9);
}

/// The link a group uses: (bandwidth GB/s, latency us); fails when the description has none.
std::pair<double, double> link_of(const Hardware& hw, bool across_nodes) {
  const double gbs = across_nodes ? hw.net_gbs : hw.link_gbs, lat = across_nodes ? hw.net_latency_us : hw.link_latency_us;
  MT_CHECK(gbs > 0,
           "[plan] the hardware description has no {} bandwidth, which layouts with more than one rank need: "
           "calibrate under the launcher (mpiexec -n 2 meshtrain plan calibrate ...) or write [{}] gbs",
           across_nodes ? "net" : "link", across_nodes ? "net" : "link");
  return {gbs, lat};
}

/// Ring all-reduce of bytes over n ranks (nccl-tests' bus-bandwidth convention): 2(n-1) steps,
/// each a latency and bytes/n over the link. A ring that crosses nodes runs one ring per network
/// rail at once (NCCL's channels; a GPU node has a network card per GPU): `rails` of the group's
/// ranks sit on each node and each brings its own card, up to the bandwidth inside the node.
double all_reduce_seconds(const Hardware& hw, double bytes, int n, bool across_nodes, int rails = 1) {
  if (n <= 1) return 0.0;
  auto [gbs, lat] = link_of(hw, across_nodes);
  if (across_nodes && rails > 1 && hw.cores == 0) gbs = std::min(gbs * rails, hw.link_gbs > 0 ? hw.link_gbs : gbs * rails);
  return 2.0 * (n - 1) * lat * 1e-6 + 2.0 * (n - 1) / n * bytes / (gbs * 1e9);
}
double p2p_seconds(const Hardware& hw, double bytes, bool across_nodes) {
  const auto [gbs, lat] = link_of(hw, across_nodes);
  return lat * 1e-6 + bytes / (gbs * 1e9);
}

/// One micro-batch's compute on one stage, from the op rates alone (in_step_factor not applied):
/// a block, the head (last stage: classifier and loss) and the embedding (first stage).
struct MicroWork {
  double block = 0, head = 0, embed = 0;
};
/// value_bytes: 4 (fp32) or 2 (bf16 activations: the element-wise traffic halves).
MicroWork micro_work(const GptConfig& m, const Hardware& hw, int B, int tp, bool recompute, double value_bytes = 4.0) {
  const double N = double(B) * m.seq_len, C = m.n_embd, F = 4.0 * C / tp;
  const double bytes_scale = value_bytes / 4.0;
  const double Vl = double(m.padded_vocab()) / tp, H = double(m.n_head) / tp;
  MicroWork w;
  for (const Linear& l : block_linears(int64_t(N), int64_t(C), tp)) w.block += gemm_seconds(hw, l);
  w.block += attention_flops(B, m.seq_len, H, m.head_size()) / (hw.attention_gflops * 1e9);
  w.block += bytes_scale * block_elementwise_bytes(N, C, F) / (hw.elementwise_gbs * 1e9);
  if (recompute) w.block *= 4.0 / 3.0;  // one more forward (a third of forward + backward)
  w.head = gemm_seconds(hw, classifier(int64_t(N), int64_t(C), m.padded_vocab(), tp)) +
           bytes_scale * loss_elementwise_bytes(N, Vl) / (hw.elementwise_gbs * 1e9);
  w.embed = 6.0 * N * C * value_bytes / (hw.elementwise_gbs * 1e9);
  return w;
}

/// The measured in-step factor of the nearest micro-batch size (in log distance), else the default.
double in_step_factor(const Hardware& hw, int rows) {
  double best = 1e300, factor = hw.in_step_factor;
  for (const auto& [r, f] : hw.in_step) {
    const double d = std::abs(std::log(double(r) / double(rows)));
    if (d < best) best = d, factor = f;
  }
  return factor;
}

double get_number(const toml::table& t, const std::string& key, const std::string& path, bool required) {
  const toml::node* n = t.at_path(key).node();
  if (!n) {
    MT_CHECK(!required, "[plan] {}: the hardware description needs {}", path, key);
    return 0.0;
  }
  if (auto v = n->value<double>()) return *v;
  MT_FAIL("[plan] {}: {} must be a number", path, key);
}

}  // namespace

std::vector<GemmRate> layout_gemm_shapes(const Config& cfg, int dp, int tp) {
  const BatchSplit split = split_batch(cfg, dp);
  MT_CHECK(split.error.empty(), "[plan] {}", split.error);
  const int64_t N = int64_t(split.micro_rows) * cfg.model.seq_len, C = cfg.model.n_embd;
  std::vector<GemmRate> out;
  auto add = [&](const Linear& l) {
    for (const auto& g : out)
      if (g.m == l.tokens && g.n == l.out && g.k == l.in) return;
    out.push_back({l.tokens, l.out, l.in, 0.0});
  };
  for (const Linear& l : block_linears(N, C, tp)) add(l);
  add(classifier(N, C, cfg.model.padded_vocab(), tp));
  return out;
}

Hardware load_hardware(const std::string& path) {
  toml::table t;
  try {
    t = toml::parse_file(path);
  } catch (const toml::parse_error& e) {
    MT_FAIL("[plan] cannot read the hardware description '{}': {} (line {})", path, e.description(),
            e.source().begin.line);
  }
  Hardware hw;
  hw.name = t["name"].value_or(std::string("?"));
  hw.source = t["source"].value_or(std::string(""));
  hw.device = t["device"].value_or(std::string("cpu"));
  hw.precision = t["precision"].value_or(std::string("fp32"));
  MT_CHECK(hw.device == "cpu" || hw.device == "cuda", "[plan] {}: device must be cpu or cuda (got '{}')", path,
           hw.device);
  MT_CHECK(hw.precision == "fp32" || hw.precision == "bf16", "[plan] {}: precision must be fp32 or bf16 (got '{}')",
           path, hw.precision);
  hw.cores = static_cast<int>(get_number(t, "cores", path, false));
  hw.threads = std::max(1, static_cast<int>(get_number(t, "compute.threads", path, false)));
  hw.gemm_gflops = get_number(t, "compute.gemm_gflops", path, true);
  hw.attention_gflops = get_number(t, "compute.attention_gflops", path, true);
  hw.elementwise_gbs = get_number(t, "compute.elementwise_gbs", path, true);
  hw.adamw_params_per_s = get_number(t, "compute.adamw_params_per_s", path, true);
  hw.link_gbs = get_number(t, "link.gbs", path, false);  // 0: calibrated on one rank (no collectives)
  hw.link_latency_us = get_number(t, "link.latency_us", path, false);
  hw.async_gbs = get_number(t, "link.async_gbs", path, false);
  hw.async_latency_us = get_number(t, "link.async_latency_us", path, false);
  if (t.at_path("compute.in_step_factor").node()) hw.in_step_factor = get_number(t, "compute.in_step_factor", path, true);
  MT_CHECK(hw.in_step_factor > 0, "[plan] {}: compute.in_step_factor must be above 0", path);
  if (t.at_path("compute.tp_factor").node()) hw.tp_factor = get_number(t, "compute.tp_factor", path, true);
  MT_CHECK(hw.tp_factor > 0, "[plan] {}: compute.tp_factor must be above 0", path);
  for (auto [key, value] : {std::pair{"compute.dp_factor", &hw.dp_factor}, {"compute.zero_dp_factor", &hw.zero_dp_factor}}) {
    if (t.at_path(key).node()) *value = get_number(t, key, path, true);
    MT_CHECK(*value >= 0, "[plan] {}: {} must be 0 or above", path, key);
  }
  if (const toml::array* a = t.at_path("compute.in_step").as_array()) {
    for (const toml::node& n : *a) {
      const toml::table* e = n.as_table();
      MT_CHECK(e, "[plan] {}: compute.in_step holds tables {{ rows, factor }}", path);
      hw.in_step.push_back({static_cast<int>(get_number(*e, "rows", path, true)), get_number(*e, "factor", path, true)});
      MT_CHECK(hw.in_step.back().first > 0 && hw.in_step.back().second > 0,
               "[plan] {}: compute.in_step rows and factor must be above 0", path);
      for (size_t i = 0; i + 1 < hw.in_step.size(); ++i)
        MT_CHECK(hw.in_step[i].first != hw.in_step.back().first,
                 "[plan] {}: compute.in_step has two factors for rows = {} ({:.3f} and {:.3f}); keep one (`plan "
                 "calibrate` writes one per micro-batch size)",
                 path, hw.in_step.back().first, hw.in_step[i].second, hw.in_step.back().second);
    }
  }
  hw.net_gbs = get_number(t, "net.gbs", path, false);
  hw.net_latency_us = get_number(t, "net.latency_us", path, false);
  hw.gpus_per_node = static_cast<int>(get_number(t, "gpus_per_node", path, false));
  hw.memory_gib = get_number(t, "memory.gib", path, false);
  hw.process_mib = get_number(t, "memory.process_mib", path, false);
  hw.peak_tflops = get_number(t, "compute.peak_tflops", path, false);
  if (const toml::array* a = t.at_path("compute.gemm").as_array()) {
    for (const toml::node& n : *a) {
      const toml::table* g = n.as_table();
      MT_CHECK(g, "[plan] {}: compute.gemm holds tables {{ m, n, k, gflops }}", path);
      hw.gemm.push_back({static_cast<int64_t>(get_number(*g, "m", path, true)),
                         static_cast<int64_t>(get_number(*g, "n", path, true)),
                         static_cast<int64_t>(get_number(*g, "k", path, true)), get_number(*g, "gflops", path, true)});
    }
  }
  for (double v : {hw.gemm_gflops, hw.attention_gflops, hw.elementwise_gbs, hw.adamw_params_per_s})
    MT_CHECK(v > 0, "[plan] {}: every compute and link figure must be above 0", path);
  return hw;
}

std::string hardware_to_toml(const Hardware& hw) {
  std::ostringstream o;
  o << fmt::format("# A hardware description for `meshtrain plan --hardware` (launch/plan_time.h says how each\n"
                   "# figure is used).\nname = \"{}\"\nsource = \"{}\"\ndevice = \"{}\"\nprecision = \"{}\"\ncores = {}\n",
                   hw.name, hw.source, hw.device, hw.precision, hw.cores);
  if (hw.gpus_per_node) o << fmt::format("gpus_per_node = {}\n", hw.gpus_per_node);
  o << fmt::format("\n[compute]\nthreads = {}\ngemm_gflops = {:.2f}\nattention_gflops = {:.2f}\nelementwise_gbs = {:.2f}\n"
                   "adamw_params_per_s = {:.4g}\nin_step_factor = {:.3f}\ntp_factor = {:.3f}\n"
                   "dp_factor = {:.3f}\nzero_dp_factor = {:.3f}\n",
                   hw.threads, hw.gemm_gflops, hw.attention_gflops, hw.elementwise_gbs, hw.adamw_params_per_s,
                   hw.in_step_factor, hw.tp_factor, hw.dp_factor, hw.zero_dp_factor);
  if (hw.peak_tflops > 0) o << fmt::format("peak_tflops = {:.1f}\n", hw.peak_tflops);
  if (!hw.in_step.empty()) {
    o << "# A whole micro-batch of `rows` sequences over the sum of its parts timed alone.\nin_step = [\n";
    for (const auto& [r, f] : hw.in_step) o << fmt::format("  {{ rows = {}, factor = {:.3f} }},\n", r, f);
    o << "]\n";
  }
  o << "# GEMM throughput at the model's shapes: m tokens x n outputs x k inputs, forward and backward.\n"
       "gemm = [\n";
  for (const auto& g : hw.gemm) o << fmt::format("  {{ m = {}, n = {}, k = {}, gflops = {:.2f} }},\n", g.m, g.n, g.k, g.gflops);
  o << "]\n";
  o << fmt::format("\n[link]\ngbs = {:.3f}\nlatency_us = {:.2f}\n", hw.link_gbs, hw.link_latency_us);
  if (hw.async_gbs > 0)
    o << fmt::format("async_gbs = {:.3f}\nasync_latency_us = {:.2f}\n", hw.async_gbs, hw.async_latency_us);
  if (hw.net_gbs > 0) o << fmt::format("\n[net]\ngbs = {:.3f}\nlatency_us = {:.2f}\n", hw.net_gbs, hw.net_latency_us);
  o << fmt::format("\n[memory]\ngib = {:.1f}\nprocess_mib = {:.1f}\n", hw.memory_gib, hw.process_mib);
  return o.str();
}

namespace {

/// hw with the data-parallel buckets' own link figures (non-blocking all-reduces) where measured.
Hardware bucket_link(const Hardware& hw) {
  Hardware h = hw;
  if (hw.async_gbs > 0) h.link_gbs = hw.async_gbs, h.link_latency_us = hw.async_latency_us;
  return h;
}

/// One micro-batch of `rows` sequences on pipeline stage s of pp at tensor-parallel degree tp:
/// (compute, tensor-parallel communication) in seconds, the in-step factor applied, and for tp > 1
/// the measured tensor-parallel factor on both.
std::pair<double, double> stage_micro_seconds(const GptConfig& m, const Hardware& hw, int rows, int tp, int pp, int s,
                                              bool recompute, bool tp_across, double value_bytes = 4.0) {
  const MicroWork w = micro_work(m, hw, rows, tp, recompute, value_bytes);
  const double f = in_step_factor(hw, rows) * (tp > 1 ? hw.tp_factor : 1.0);
  const double N = double(rows) * m.seq_len, act = N * m.n_embd * value_bytes;
  const double tp_one = all_reduce_seconds(hw, act, tp, tp_across, hw.gpus_per_node);
  const auto [first, last] = ParameterTable::stage_layers(m.n_layer, pp, s);
  const int blocks = last - first;
  double t = blocks * w.block, comm = blocks * 4 * tp_one;  // f and g: 2 all-reduces forward, 2 backward
  if (s == 0) t += w.embed, comm += tp_one;                  // the vocabulary-parallel embedding's sum
  if (s == pp - 1) t += w.head, comm += 3 * all_reduce_seconds(hw, N * 4.0, tp, tp_across, hw.gpus_per_node);  // the loss's (fp32)
  return {t * f, comm * (tp > 1 ? hw.tp_factor : 1.0)};
}

}  // namespace

std::string calibration_steadiness_warning(const std::vector<double>& pass_wholes,
                                           const std::vector<std::pair<int, double>>& in_step) {
  std::vector<std::string> why;
  if (!pass_wholes.empty()) {
    const auto [lo, hi] = std::minmax_element(pass_wholes.begin(), pass_wholes.end());
    if (*lo > 0 && *hi > 1.15 * *lo)
      why.push_back(fmt::format("the same micro-batches took {:.1f} to {:.1f} ms in its passes ({:+.0f}%)", *lo * 1e3,
                                *hi * 1e3, 100.0 * (*hi / *lo - 1.0)));
  }
  for (const auto& [rows, factor] : in_step)
    if (factor < 0.9)
      why.push_back(fmt::format("a whole micro-batch of {} sequences ran in {:.2f} x the sum of its parts, so the parts "
                                "were timed while the machine was slower",
                                rows, factor));
  if (why.empty()) return "";
  return fmt::format("this machine's speed moved while it was measured: {}. Predictions from these figures follow "
                     "that noise; calibrate again while the machine is quiet (on a shared VM, other tenants; "
                     "elsewhere, other jobs or CPU frequency scaling)",
                     fmt::join(why, "; "));
}

LayoutTime predict_layout_time(const Config& cfg, const Hardware& hw, int dp, int tp, int pp, int zero) {
  const GptConfig& m = cfg.model;
  const BatchSplit split = split_batch(cfg, dp);
  MT_CHECK(split.error.empty(), "[plan] {}", split.error);
  const int ranks = dp * tp * pp, micro = split.micro_count;
  const double N = double(split.micro_rows) * m.seq_len, C = m.n_embd;
  // Bytes per value of parameters, gradients and activations (what the collectives move).
  // (bf16 on the CPU multiplies in bf16 but stores and reduces fp32.)
  const double fp = cfg.train.device == "cuda" && cfg.train.precision == "bf16" ? 2.0 : 4.0;
  // Where a group's ranks sit: consecutive ranks fill a node, tp innermost, then dp, then pp.
  const int per_node = hw.gpus_per_node > 0 ? hw.gpus_per_node : ranks;
  const bool tp_across = tp > per_node, dp_across = tp * dp > per_node, pp_across = ranks > per_node && pp > 1;
  // A data-parallel ring that crosses nodes: its ranks on one node, each with its own network card.
  const int dp_rails = std::max(1, std::min(dp, per_node / std::max(1, tp)));
  const bool recompute = cfg.train.recompute != "none";

  const double act = N * C * fp;

  // The same hardware without message latencies: what a rank's communication keeps its core busy
  // with (copying and reducing the bytes); waiting for its peers it yields the core.
  Hardware busy_hw = hw;
  busy_hw.link_latency_us = busy_hw.async_latency_us = busy_hw.net_latency_us = 0;

  // The slowest stage's micro-batch (blocks split as evenly as the model splits them).
  double stage_micro = 0.0, stage_tp = 0.0, params_max = 0.0, all_stages = 0.0, all_stages_busy = 0.0;
  for (int s = 0; s < pp; ++s) {
    const ParameterTable table(m, tp, 0, pp, s);
    auto [t, comm] = stage_micro_seconds(m, hw, split.micro_rows, tp, pp, s, recompute, tp_across, fp);
    if (pp > 1) comm += 2 * p2p_seconds(hw, act, pp_across);
    if (t + comm > stage_micro + stage_tp) stage_micro = t, stage_tp = comm;
    all_stages += t + comm;
    if (hw.cores > 0) {
      auto [tb, comm_busy] = stage_micro_seconds(m, busy_hw, split.micro_rows, tp, pp, s, recompute, tp_across, fp);
      if (pp > 1) comm_busy += 2 * p2p_seconds(busy_hw, act, pp_across);
      all_stages_busy += tb + comm_busy;
    }
    params_max = std::max(params_max, double(table.total()));
  }
  LayoutTime r;
  r.compute_ms = micro * stage_micro * 1e3;
  r.tp_ms = micro * stage_tp * 1e3;
  // The slowest stage idles while the first micro-batch's forward reaches it and while the last
  // one's backward leaves the stages before it: one micro-batch of every other stage, which is the
  // textbook (p - 1) micro-batch times when the stages are equal.
  r.bubble_ms = (all_stages - (stage_micro + stage_tp)) * 1e3;
  r.pp_ms = r.bubble_ms + (pp > 1 ? all_reduce_seconds(hw, double(m.padded_vocab()) / tp * C * fp, 2, pp_across,
                                                        1) * 1e3 : 0.0);
  // The gradients go as non-blocking all-reduces (buckets): their own measured figures where known.
  const Hardware dp_hw = bucket_link(hw);
  r.dp_ms = all_reduce_seconds(dp_hw, params_max * fp, dp, dp_across, dp_rails) * 1e3;
  r.dp_exposed_ms = r.dp_ms;
  if (hw.cores > 0 && dp > 1) {
    // CPUs: the buckets reduced from backward's hooks (all of them; under ZeRO-1 the reduce-scatters,
    // half the bytes) cost what `plan calibrate` measured them to cost in a real micro-batch: MPI's
    // progress in the hooks, the wait after backward, and the compute they slow down. ZeRO-1's
    // all-gather after the optimizer is counted as it is.
    const double hooked = zero ? r.dp_ms / 2 : r.dp_ms;
    r.dp_exposed_ms = hooked * (zero ? hw.zero_dp_factor : hw.dp_factor) + (r.dp_ms - hooked);
  }
  if (hw.cores == 0 && dp > 1) {
    // GPUs: buckets are reduced on a communication stream while the last micro-batch's backward
    // (two thirds of its work) still runs; what does not fit under it, and at least the last
    // bucket, is exposed. ZeRO-1's all-gather (half the bytes moved) comes after the optimizer and
    // is exposed whole. On CPUs the ranks' cores also drive the transfers, so nothing is hidden.
    const double window = 2.0 / 3.0 * stage_micro * 1e3;
    const double bucket = std::min(params_max * fp, cfg.parallel.bucket_mb * 1048576.0);
    const double last = all_reduce_seconds(dp_hw, bucket, dp, dp_across, dp_rails) * 1e3;
    const double overlapped = zero ? r.dp_ms / 2 : r.dp_ms, after = r.dp_ms - overlapped;
    r.dp_exposed_ms = after + std::max(std::min(last, overlapped), overlapped - window);
  }
  // ZeRO-1 moves the same bytes (reduce-scatter + all-gather = one all-reduce) and shards AdamW.
  const double share = zero ? params_max / dp : params_max;
  r.optimizer_ms = share / hw.adamw_params_per_s * 1e3;
  // A pipeline with more stages than cores cannot run its steady state (every stage working at
  // once) at full speed: the slowest stage's micro-batches stretch by all stages' work over what the
  // cores give. The bubble, when fewer stages work, is left as it is.
  const int threads = std::max(1, cfg.train.threads > 0 ? cfg.train.threads : hw.threads);
  if (hw.cores > 0 && pp * threads > hw.cores) {
    const double slowdown = std::max(1.0, all_stages * threads / (hw.cores * (stage_micro + stage_tp)));
    r.compute_ms *= slowdown;
    r.tp_ms *= slowdown;
    r.oversubscribed = slowdown > 1.0;
  }
  r.step_ms = r.compute_ms + r.tp_ms + r.pp_ms + r.dp_exposed_ms + r.optimizer_ms;
  // Ranks that outnumber the cores take turns: every rank's busy time over the cores bounds the step
  // (compute, optimizer and the copies its communication makes; a waiting rank yields its core).
  if (hw.cores > 0 && ranks * threads > hw.cores) {
    // Each rank is busy with its own stage's micro-batches (the slowest stage's figures above would
    // count the head on every stage), its gradients' reduction and its optimizer share.
    Hardware dp_busy = dp_hw;  // the buckets' figures, without their latencies
    dp_busy.link_latency_us = dp_busy.net_latency_us = 0;
    const double dp_copy_ms = all_reduce_seconds(dp_busy, params_max * fp, dp, dp_across, dp_rails) * 1e3;
    const double busy = dp * tp * micro * all_stages_busy * 1e3 + ranks * (dp_copy_ms + r.optimizer_ms);
    const double bound = busy * threads / hw.cores;
    if (bound > r.step_ms) {
      r.oversubscribed = true;
      r.step_ms = bound;
    }
  }
  const double tokens = double(split.global_rows) * m.seq_len;
  r.tokens_per_s = tokens / (r.step_ms * 1e-3);
  if (hw.peak_tflops > 0) {
    const double n_params = 12.0 * m.n_layer * C * C + double(m.padded_vocab()) * C;
    const double flops_per_token = 6.0 * n_params + 12.0 * m.n_layer * C * m.seq_len;
    r.mfu = 100.0 * r.tokens_per_s * flops_per_token / (hw.peak_tflops * 1e12 * ranks);
  }
  return r;
}

namespace {

/// Seconds per call of fn: the median of repeats after a warm-up; before each, between() (untimed).
template <class Fn, class Between>
double time_it(Fn&& fn, int repeats, Between&& between) {
  fn();
  std::vector<double> t;
  for (int i = 0; i < repeats; ++i) {
    between();
    const auto a = std::chrono::steady_clock::now();
    fn();
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - a).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}
template <class Fn>
double time_it(Fn&& fn, int repeats = 7) {
  return time_it(fn, repeats, [] {});
}

/// Writes 64 MiB so that the next operation starts with cold caches, as a training step's
/// collectives do (their buffers were last touched before the compute that came in between).
void evict_caches() {
  static std::vector<char> junk(size_t(64) << 20);
  static char value = 0;
  std::fill(junk.begin(), junk.end(), ++value);
}

double resident_mib() {
  std::ifstream f("/proc/self/statm");
  long pages_total = 0, pages_resident = 0;
  f >> pages_total >> pages_resident;
  return double(pages_resident) * double(::sysconf(_SC_PAGESIZE)) / 1048576.0;
}

/// All-reduces over every rank of world at four sizes (blocking, or non-blocking and waited for as
/// the data-parallel buckets are); returns (bandwidth GB/s, latency us) by a fit of
/// t = 2(n-1) latency + 2(n-1)/n bytes / bandwidth, weighted by 1 / t^2 so its error is relative:
/// the small sizes pin the latency, the large ones the bandwidth.
template <class Progress>
std::pair<double, double> fit_all_reduce(Communicator& world, bool async, Progress&& progress) {
  const int n = world.size();
  std::vector<double> xs, ts;
  for (int64_t count : {int64_t(256), int64_t(16384), int64_t(262144), int64_t(1048576)}) {
    Tensor t = Tensor::empty({count});
    std::fill(t.f32(), t.f32() + count, 1.0f);
    world.barrier();
    const double s = time_it(
        [&] {
          if (async) world.all_reduce_async(t, ReduceOp::sum)->wait();
          else world.all_reduce(t, ReduceOp::sum);
        },
        9,
        [&] {
          evict_caches();
          world.barrier();
        });
    Tensor agreed = Tensor::empty({1});
    agreed.f32()[0] = float(s);
    world.all_reduce(agreed, ReduceOp::max);
    xs.push_back(2.0 * (n - 1) / n * double(count) * 4.0);
    ts.push_back(double(agreed.f32()[0]));
    progress(fmt::format("{}all-reduce of {} KiB over {} ranks: {:.1f} us", async ? "non-blocking " : "",
                         count * 4 / 1024, n, agreed.f32()[0] * 1e6));
  }
  double sw = 0, sx = 0, st = 0, sxx = 0, sxt = 0;
  for (size_t i = 0; i < xs.size(); ++i) {
    const double w = 1.0 / (ts[i] * ts[i]);
    sw += w, sx += w * xs[i], st += w * ts[i], sxx += w * xs[i] * xs[i], sxt += w * xs[i] * ts[i];
  }
  const double slope = (sw * sxt - sx * st) / (sw * sxx - sx * sx), icept = (st - slope * sx) / sw;
  return {slope > 0 ? 1.0 / slope / 1e9 : 0.0, std::max(0.0, icept / (2.0 * (n - 1)) * 1e6)};
}

/// The token ids every calibration micro-batch of `rows` sequences runs on (inputs and targets
/// alike): spread over the vocabulary so the embedding and the loss touch many rows.
std::vector<int32_t> calibration_ids(const GptConfig& m, int rows) {
  std::vector<int32_t> ids(static_cast<size_t>(rows) * m.seq_len);
  for (size_t j = 0; j < ids.size(); ++j) ids[j] = int32_t((j * 7919) % size_t(m.vocab_size));
  return ids;
}

/// Measures dp_factor and zero_dp_factor: a data-parallel last micro-batch over every rank of the
/// launch (forward, backward with the gradient buckets launched and polled from its hooks, the wait
/// for them), with and without ZeRO-1, against the same micro-batch without data parallelism, timed
/// interleaved. What the buckets add, over their modelled time, is the factor.
template <class Progress>
void measure_data_parallel(const Config& cfg, Hardware& hw, Communicator& world, Progress&& progress) {
  const GptConfig& m = cfg.model;
  const int n = world.size();
  const BatchSplit split = split_batch(cfg, n);
  if (!split.error.empty()) return;  // no dp-n layout: the factors stay 1
  const int rows = split.micro_rows, T = m.seq_len;
  LocalCommunicator alone;
  Gpt model(m, alone);
  model.set_recompute(parse_recompute(cfg.train.recompute));
  model.initialize(1);
  if (model.grads().numel() % n) return;  // the flat buffer must split over the ranks, as training needs
  DataParallel all_reduce(model, world, {0, cfg.parallel.bucket_mb}, AdamWConfig{});
  DataParallel zero(model, world, {1, cfg.parallel.bucket_mb}, AdamWConfig{});
  const std::vector<int32_t> ids = calibration_ids(m, rows);
  auto micro_batch = [&](DataParallel* ddp) {
    model.zero_grad();
    model.forward(ids.data(), ids.data(), rows, T, true, 1.0f);
    if (ddp) ddp->arm();
    model.backward();
    if (ddp) ddp->finish();
  };
  // The three kinds interleaved, repetition by repetition, so that the machine's drift (which moves
  // a micro-batch by a quarter within a minute on a shared VM) falls on all three alike; each
  // repetition's times are the slowest rank's (the step waits for it), and the cost is the median,
  // over repetitions, of each one's difference from the plain micro-batch beside it.
  constexpr int kReps = 21;
  DataParallel* kinds[3] = {nullptr, &all_reduce, &zero};
  for (DataParallel* k : kinds) micro_batch(k);  // warm-up
  Tensor times = Tensor::empty({3 * kReps});
  for (int rep = 0; rep < kReps; ++rep)
    for (int k = 0; k < 3; ++k) {
      world.barrier();
      const auto a = std::chrono::steady_clock::now();
      micro_batch(kinds[k]);
      times.f32()[3 * rep + k] = std::chrono::duration<float>(std::chrono::steady_clock::now() - a).count();
    }
  world.all_reduce(times, ReduceOp::max);
  auto median_of = [&](auto&& value) {
    std::vector<double> v;
    for (int rep = 0; rep < kReps; ++rep) v.push_back(value(times.f32() + 3 * rep));
    std::nth_element(v.begin(), v.begin() + kReps / 2, v.end());
    return v[kReps / 2];
  };
  const double plain = median_of([](const float* t) { return t[0]; });
  const double with_all_reduce = median_of([](const float* t) { return double(t[1]) - t[0]; });
  const double with_zero = median_of([](const float* t) { return double(t[2]) - t[0]; });
  const double modelled = all_reduce_seconds(bucket_link(hw), double(model.grads().numel()) * 4.0, n, false);
  if (modelled <= 0) return;
  hw.dp_factor = std::max(0.0, with_all_reduce) / modelled;
  hw.zero_dp_factor = std::max(0.0, with_zero) / (modelled / 2);
  progress(fmt::format("a data-parallel micro-batch of {} sequences over {} ranks: {:.2f} ms, {:+.2f} ms with its "
                       "bucket all-reduces, {:+.2f} ms with ZeRO-1's reduce-scatters (medians of {} interleaved "
                       "repetitions); all-reduces modelled at {:.2f} ms, so dp_factor {:.2f}, zero_dp_factor {:.2f}",
                       rows, n, plain * 1e3, with_all_reduce * 1e3, with_zero * 1e3, kReps, modelled * 1e3,
                       hw.dp_factor, hw.zero_dp_factor));
}

}  // namespace

void run_plan_calibrate(const CalibrateArgs& args, Communicator& world) {
  const bool lead = world.rank() == 0;
  Config cfg = load_config(args.config_file, args.overrides);
  const std::string vocab_from = resolve_vocab_size(cfg);
  if (lead && !vocab_from.empty())
    fmt::print("[plan calibrate] model.vocab_size = 0: the vocabulary is {}\n", vocab_from);
  MT_CHECK(cfg.train.device != "cuda" && cfg.train.precision == "fp32",
           "[plan] calibrate measures this machine's CPU in fp32 (train.device = {}, train.precision = {} asked); GPU "
           "descriptions are written from the card's figures: see hardware/README.md",
           cfg.train.device, cfg.train.precision);
  if (lead && !args.out.empty()) {
    MT_CHECK(args.overwrite || !fs::exists(args.out),
             "[plan] '{}' exists; pass --overwrite to replace it, or choose another --out", args.out);
  }
  Hardware hw;
  hw.name = args.name.empty() ? cpu_model_name() : args.name;
  {  // the cores the launch's ranks may use together (each bound rank sees only its own)
    const std::vector<int32_t> mine = affinity_flags();
    Tensor flags = Tensor::empty({int64_t(mine.size())}, DType::i32);
    std::copy(mine.begin(), mine.end(), flags.data<int32_t>());
    world.all_reduce(flags, ReduceOp::max);
    hw.cores = int(std::count(flags.data<int32_t>(), flags.data<int32_t>() + flags.numel(), 1));
  }
  hw.threads = std::max(1, cfg.train.threads);
  hw.process_mib = resident_mib();
  hw.memory_gib = double(::sysconf(_SC_PHYS_PAGES)) * double(::sysconf(_SC_PAGESIZE)) / (1 << 30);
  hw.source = fmt::format("meshtrain plan calibrate, {} thread{} per rank, {} rank{}", hw.threads,
                          hw.threads == 1 ? "" : "s", world.size(), world.size() == 1 ? "" : "s");
  set_num_threads(hw.threads);
  const std::unique_ptr<Backend> be = make_cpu_backend();
  const int ranks = args.ranks > 0 ? args.ranks : std::max(world.size(), 8);
  const GptConfig& m = cfg.model;
  auto progress = [&](const std::string& what) {
    if (lead) fmt::print(stderr, "[plan calibrate] {}\n", what);
  };

  // GEMMs: every linear of every layout's micro-batch, forward and backward through the backend.
  // Every rank of the launch measures at the same time, as a job's ranks compute at the same time
  // (shared caches, memory bandwidth and, on a CPU, cores), and the figures are their means.
  // One pass measures every compute figure; whole_seconds gets its whole micro-batches' time.
  auto measure_compute = [&](Hardware& hw, double& whole_seconds) {
    world.barrier();
    std::vector<GemmRate> shapes;
    for (int tp = 1; tp <= ranks; ++tp)
      for (int dp = 1; dp * tp <= ranks; ++dp) {
        if (ranks % (dp * tp) || m.n_head % tp || split_batch(cfg, dp).error.size()) continue;
        for (const GemmRate& g : layout_gemm_shapes(cfg, dp, tp))
          if (std::none_of(shapes.begin(), shapes.end(),
                           [&](const GemmRate& s) { return s.m == g.m && s.n == g.n && s.k == g.k; }))
            shapes.push_back(g);
      }
    double flops = 0, secs = 0;
    for (GemmRate& g : shapes) {
      Tensor in = Tensor::empty({g.m, g.k}), w = Tensor::empty({g.n, g.k}), out = Tensor::empty({g.m, g.n});
      Tensor din = Tensor::empty({g.m, g.k}), dw = Tensor::empty({g.n, g.k});
      for (Tensor* t : {&in, &w, &out}) std::fill(t->f32(), t->f32() + t->numel(), 0.01f);
      std::fill(dw.f32(), dw.f32() + dw.numel(), 0.0f);
      const double s = time_it([&] {
        be->matmul_forward(out.raw(), in.raw(), w.raw(), nullptr, int(g.m), int(g.k), int(g.n));
        be->matmul_backward(din.raw(), dw.raw(), nullptr, out.raw(), in.raw(), w.raw(), int(g.m), int(g.k), int(g.n));
      });
      g.gflops = Linear{g.m, g.k, g.n}.flops() / s / 1e9;
      flops += Linear{g.m, g.k, g.n}.flops();
      secs += s;
    }
    hw.gemm = shapes;
    hw.gemm_gflops = flops / secs / 1e9;

    // Attention and the element-wise work at the single-rank micro-batch's shape.
    const BatchSplit split = split_batch(cfg, 1);
    MT_CHECK(split.error.empty(), "[plan] {}", split.error);
    const int B = split.micro_rows, T = m.seq_len, C = m.n_embd, NH = m.n_head;
    const int64_t N = int64_t(B) * T, F = 4 * C, Vp = m.padded_vocab();
    Tensor qkv = Tensor::empty({N, 3 * C}), att = Tensor::empty({N, C}), datt = Tensor::empty({N, C});
    Tensor dqkv = Tensor::empty({N, 3 * C});
    Tensor saved = Tensor::empty({std::max<int64_t>(1, be->attention_saved(B, T, C, NH))});
    Tensor scratch = Tensor::empty({std::max<int64_t>(1, be->attention_scratch(B, T, C, NH))});
    for (Tensor* t : {&qkv, &datt}) std::fill(t->f32(), t->f32() + t->numel(), 0.01f);
    const double ta = time_it([&] {
      be->attention_forward(att.raw(), saved.f32(), qkv.raw(), B, T, C, NH);
      be->attention_backward(dqkv.raw(), scratch.f32(), datt.raw(), qkv.raw(), att.raw(), saved.f32(), B, T, C, NH);
    });
    hw.attention_gflops = attention_flops(B, T, NH, m.head_size()) / ta / 1e9;

    Tensor x = Tensor::empty({N, C}), y = Tensor::empty({N, C}), dx = Tensor::empty({N, C}), res = Tensor::empty({N, C});
    Tensor g = Tensor::empty({C}), b = Tensor::empty({C}), dg = Tensor::empty({C}), db = Tensor::empty({C});
    Tensor mean = Tensor::empty({N}), rstd = Tensor::empty({N});
    Tensor h = Tensor::empty({N, F}), gh = Tensor::empty({N, F}), dh = Tensor::empty({N, F});
    for (Tensor* t : {&x, &y, &dx, &res, &g, &b, &h, &dh}) std::fill(t->f32(), t->f32() + t->numel(), 0.5f);
    const double tb = time_it([&] {
      for (int i = 0; i < 2; ++i) {
        be->layernorm_forward(y.raw(), mean.f32(), rstd.f32(), x.raw(), g.raw(), b.raw(), int(N), C);
        be->residual_forward(res.raw(), x.raw(), y.raw(), N * C);
      }
      be->gelu_forward(gh.raw(), h.raw(), N * F);
      be->gelu_backward(dh.raw(), h.raw(), gh.raw(), N * F);
      for (int i = 0; i < 2; ++i) {
        be->layernorm_backward(dx.raw(), dg.raw(), db.raw(), y.raw(), x.raw(), g.raw(), mean.f32(), rstd.f32(), int(N), C);
        be->accumulate(res.raw(), dx.raw(), N * C, 1.0f);
      }
    });
    Tensor logits = Tensor::empty({N, Vp}), losses = Tensor::empty({N});
    Tensor targets = Tensor::empty({N}, DType::i32);
    std::fill(logits.f32(), logits.f32() + logits.numel(), 0.1f);
    for (int64_t i = 0; i < N; ++i) targets.data<int32_t>()[i] = int32_t(i % m.vocab_size);
    const double tl = time_it([&] {
      be->crossentropy(losses.f32(), logits.raw(), logits.raw(), targets.data<int32_t>(), int(N), m.vocab_size,
                       int(Vp), 1.0f / float(N));
    });
    hw.elementwise_gbs =
        (block_elementwise_bytes(double(N), C, double(F)) + loss_elementwise_bytes(double(N), double(Vp))) / (tb + tl) / 1e9;

    const ParameterTable table(m, 1, 0, 1, 0);
    const int64_t P = table.total();
    Tensor p = Tensor::empty({P}), gr = Tensor::empty({P}), m1 = Tensor::empty({P}), v1 = Tensor::empty({P});
    for (Tensor* t : {&p, &gr, &m1, &v1}) std::fill(t->f32(), t->f32() + t->numel(), 0.01f);
    AdamWScalars sc{1e-4f, 0.9f, 0.99f, 1.0f, 1.0f};
    const double to = time_it([&] {
      be->adamw_update(p.raw(), nullptr, gr.raw(), m1.f32(), v1.f32(), P, &sc, 0.9f, 0.95f, 1e-8f, 0.1f);
    });
    hw.adamw_params_per_s = double(P) / to;

    // The ranks' means.
    Tensor rates = Tensor::empty({int64_t(hw.gemm.size()) + 4});
    float* r = rates.f32();
    for (size_t i = 0; i < hw.gemm.size(); ++i) r[i] = float(hw.gemm[i].gflops);
    const size_t k = hw.gemm.size();
    r[k] = float(hw.gemm_gflops), r[k + 1] = float(hw.attention_gflops), r[k + 2] = float(hw.elementwise_gbs);
    r[k + 3] = float(hw.adamw_params_per_s / 1e6);
    world.all_reduce(rates, ReduceOp::sum);
    const double n = world.size();
    for (size_t i = 0; i < k; ++i) hw.gemm[i].gflops = r[i] / n;
    hw.gemm_gflops = r[k] / n, hw.attention_gflops = r[k + 1] / n, hw.elementwise_gbs = r[k + 2] / n;
    hw.adamw_params_per_s = r[k + 3] / n * 1e6;

    // A real micro-batch of the whole model (one rank, no parallelism) against the sum of its parts,
    // at each micro-batch size the layouts use (a smaller one has relatively more fixed costs).
    {
      LocalCommunicator alone;
      Gpt model(m, alone);
      model.set_recompute(parse_recompute(cfg.train.recompute));
      model.initialize(1);
      std::vector<int> sizes;
      for (int dp = 1; dp <= ranks; ++dp) {
        const BatchSplit sp = split_batch(cfg, dp);
        if (ranks % dp == 0 && sp.error.empty() && std::find(sizes.begin(), sizes.end(), sp.micro_rows) == sizes.end())
          sizes.push_back(sp.micro_rows);
      }
      Tensor f = Tensor::empty({int64_t(sizes.size()) + 1});  // the factors, then the whole time
      f.f32()[sizes.size()] = 0.0f;
      // This pass's factors only: the pass starts from a copy of the kept one, whose entries would
      // otherwise come first and be the ones looked up.
      hw.in_step.clear();
      for (size_t i = 0; i < sizes.size(); ++i) {
        const int rows = sizes[i];
        const std::vector<int32_t> ids = calibration_ids(m, rows);
        world.barrier();
        const double measured = time_it([&] {
          model.zero_grad();
          model.forward(ids.data(), ids.data(), rows, T, true, 1.0f);
          model.backward();
        }, 11);
        const MicroWork w = micro_work(m, hw, rows, 1, cfg.train.recompute != "none");
        f.f32()[i] = float(measured / (m.n_layer * w.block + w.head + w.embed));
        f.f32()[sizes.size()] += float(measured);
      }
      world.all_reduce(f, ReduceOp::sum);
      for (size_t i = 0; i < sizes.size(); ++i) {
        hw.in_step.push_back({sizes[i], f.f32()[i] / world.size()});
        if (sizes[i] == B) hw.in_step_factor = hw.in_step.back().second;
      }
      whole_seconds = f.f32()[sizes.size()] / world.size();  // the same on every rank
    }
  };
  // The machine's speed drifts (a neighbour on a shared host, a migrated vCPU): the compute figures
  // are measured in three passes and the pass whose whole micro-batches ran fastest is kept, as
  // bench/plan_check.sh keeps the faster of two runs of each layout.
  std::vector<double> pass_wholes;
  {
    double best = 1e300;
    for (int pass = 0; pass < 3; ++pass) {
      Hardware h = hw;
      double whole = 0.0;
      measure_compute(h, whole);
      progress(fmt::format("pass {}: whole micro-batches {:.1f} ms", pass + 1, whole * 1e3));
      pass_wholes.push_back(whole);
      if (whole < best) best = whole, hw = h;
    }
    for (const GemmRate& g : hw.gemm)
      progress(fmt::format("linear {} x {} -> {}: {:.1f} GFLOP/s", g.m, g.k, g.n, g.gflops));
    const BatchSplit split = split_batch(cfg, 1);
    progress(fmt::format("attention B {} T {} heads {}: {:.1f} GFLOP/s", split.micro_rows, m.seq_len, m.n_head,
                         hw.attention_gflops));
    progress(fmt::format("element-wise (LayerNorm, GELU, residual, loss): {:.1f} GB/s", hw.elementwise_gbs));
    progress(fmt::format("AdamW: {:.3g} parameters/s", hw.adamw_params_per_s));
    for (const auto& [rows, factor] : hw.in_step)
      progress(fmt::format("a whole micro-batch of {} sequences takes {:.2f} x the sum of its parts", rows, factor));
    if (world.size() > 1)
      progress(fmt::format("(means over {} ranks measuring at once; the fastest of 3 passes)", world.size()));
  }

  // Collectives: all-reduce over every rank of the launch at three sizes; latency and bandwidth by a
  // least-squares fit of t = 2(n-1) latency + 2(n-1)/n bytes / bandwidth.
  const int n = world.size();
  if (n >= 2) {
    const auto [gbs, lat] = fit_all_reduce(world, false, progress);
    hw.link_gbs = gbs, hw.link_latency_us = lat;
    const auto [agbs, alat] = fit_all_reduce(world, true, progress);
    hw.async_gbs = agbs, hw.async_latency_us = alat;
    // A real tensor-parallel micro-batch over every rank of the launch against its parts (sharded
    // compute and the f/g all-reduces): replicated LayerNorms, the vocabulary-parallel loss's three
    // passes and the staging around each all-reduce are what the parts miss.
    const int rows = split_batch(cfg, 1).micro_rows;
    if (m.n_head % n == 0 && m.padded_vocab() % n == 0 && rows > 0) {
      Gpt model(m, world, &world);
      model.set_recompute(parse_recompute(cfg.train.recompute));
      model.initialize(1);
      const std::vector<int32_t> ids = calibration_ids(m, rows);
      // Three rounds, the fastest round's median (the same drift as above).
      double measured = 1e300;
      for (int round = 0; round < 3; ++round) {
        world.barrier();
        measured = std::min(measured, time_it([&] {
                              model.zero_grad();
                              model.forward(ids.data(), ids.data(), rows, m.seq_len, true, 1.0f);
                              model.backward();
                            }, 11));
      }
      Tensor agreed = Tensor::empty({1});
      agreed.f32()[0] = float(measured);
      world.all_reduce(agreed, ReduceOp::max);
      const auto [t, comm] = stage_micro_seconds(m, hw, rows, n, 1, 0, cfg.train.recompute != "none", false);
      hw.tp_factor = agreed.f32()[0] / (t + comm);  // t and comm carry tp_factor 1 here
      progress(fmt::format("a tensor-parallel micro-batch over {} ranks takes {:.2f} x its parts", n, hw.tp_factor));
    }
    measure_data_parallel(cfg, hw, world, progress);
  } else if (lead) {
    fmt::print(stderr, "[plan calibrate] one rank: link figures left at 0; run under mpiexec -n 2 (or srun) to "
                       "measure collectives\n");
  }
  if (!lead) return;
  const std::string unsteady = calibration_steadiness_warning(pass_wholes, hw.in_step);
  if (!unsteady.empty()) fmt::print(stderr, "[plan calibrate] warning: {}\n", unsteady);
  const std::string text = hardware_to_toml(hw);
  if (args.out.empty()) {
    fmt::print("{}", text);
    return;
  }
  const std::string tmp = args.out + ".tmp";
  {
    std::ofstream f(tmp);
    f << text;
    f.flush();
    MT_CHECK(f.good(), "[plan] cannot write '{}'", tmp);
  }
  std::error_code ec;
  fs::rename(tmp, args.out, ec);
  MT_CHECK(!ec, "[plan] cannot rename '{}' to '{}': {}", tmp, args.out, ec.message());
  fmt::print("[plan calibrate] wrote {}\n", args.out);
}

}  // namespace meshtrain
