// The parallel layouts end to end: `mpiexec -n N meshtrain train` on data-, tensor- and
// pipeline-parallel layouts and their combinations, with and without ZeRO-1, with both pipeline
// schedules, trains the same model as one process (per-step losses and final parameters within
// 1e-5), and a rank that fails brings the whole job down with its message.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fmt/format.h>
#include <fstream>
#include <nlohmann/json.hpp>
#include <map>
#include <set>
#include <sstream>
#include <tuple>

#include "core/gemm_onednn.h"
#include "core/tensor.h"
#include "parallel/checkpoint.h"
#include "cli_util.h"
#include "test_util.h"
#include "tiny_corpus.h"

namespace fs = std::filesystem;
using namespace meshtrain;

namespace {

const std::string& kBinary = meshtrain::testing::kMeshtrain;
meshtrain::testing::CommandResult run(const std::string& cmd) { return meshtrain::testing::run_command(cmd); }
const auto& losses = meshtrain::testing::read_losses;

class ParallelLayouts : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = fs::temp_directory_path() / ("meshtrain_dp_test_" + std::to_string(::getpid()));
    fs::remove_all(root_);
    meshtrain::testing::make_tiny_corpus(root_);
    auto r = run(kBinary + " " + args("single") + " --metrics " + (root_ / "single.jsonl").string());
    ASSERT_EQ(r.code, 0) << r.output;
  }
  static void TearDownTestSuite() { fs::remove_all(root_); }

  // Small bucket_mb gives many buckets, so the overlapped reduction path is exercised.
  static std::string args(const std::string& out) {
    return fmt::format(
        "train --set data.train={0}/shards/train_*.bin --set data.tokenizer={0}/tok --set model.n_layer=4 "
        "--set model.n_head=4 --set model.n_embd=32 --set model.seq_len=16 --set train.batch_size=8 "
        "--set train.grad_accum=1 --set train.steps=10 --set train.checkpoint_every=0 --set train.sample_every=0 "
        "--set train.eval_every=0 --set train.threads=1 --set train.warmup_steps=2 --set parallel.bucket_mb=0.02 "
        "--set train.out_dir={0}/{1}",
        root_.string(), out);
  }

  void expect_same_as_single(const std::string& name, const std::string& metrics,
                             const std::string& single = "single", double tol = 1e-5) {
    auto a = losses((root_ / (single + ".jsonl")).string()), b = losses(metrics);
    ASSERT_EQ(a.size(), 10u);
    ASSERT_EQ(b.size(), a.size()) << name;
    for (size_t i = 0; i < a.size(); ++i)
      EXPECT_LE(std::fabs(a[i] - b[i]), tol * std::fabs(a[i])) << name << " step " << i + 1 << ": " << a[i]
                                                                 << " vs " << b[i];
    // Final parameters: relative L2 distance over the whole model. Per tensor it would not hold for
    // the key bias: its gradient is zero in exact arithmetic (softmax ignores a shift shared by all
    // keys), so Adam turns reduction-order noise of ~1e-9 into full-size updates there whatever the
    // layout; it is reported, not bounded, below.
    CheckpointReader ra((root_ / single / "ckpt_000010.h5").string());
    CheckpointReader rb((root_ / name / "ckpt_000010.h5").string());
    double diff = 0, norm = 0, worst = 0;
    std::string worst_name;
    for (const auto& path : ra.list()) {
      if (path.rfind("model/", 0) != 0) continue;
      Tensor x = Tensor::empty(ra.shape(path)), y = Tensor::empty(rb.shape(path));
      ra.read(path, x);
      rb.read(path, y);
      for (int64_t i = 0; i < x.numel(); ++i) {
        double d = std::fabs(x.f32()[i] - y.f32()[i]);
        diff += d * d;
        norm += static_cast<double>(x.f32()[i]) * x.f32()[i];
        if (d > worst) {
          worst = d;
          worst_name = path;
        }
      }
    }
    EXPECT_LE(std::sqrt(diff), tol * std::sqrt(norm)) << name;
    std::printf("%s: final parameters relative L2 distance %.2e, largest element difference %.2e (%s)\n",
                name.c_str(), std::sqrt(diff / norm), worst, worst_name.c_str());
  }

  void run_layout(int np, const std::string& extra, const std::string& name, const std::string& single = "single",
                  double tol = 1e-5) {
    std::string metrics = (root_ / (name + ".jsonl")).string();
    auto r = run(fmt::format("{} -n {} {} {} {} --metrics {}", MESHTRAIN_MPIEXEC, np, kBinary, args(name), extra,
                             metrics));
    ASSERT_EQ(r.code, 0) << r.output;
    expect_same_as_single(name, metrics, single, tol);
  }

  static fs::path root_;
};
fs::path ParallelLayouts::root_;

}  // namespace

// Every layout of the proof: (dp, tp, pp) with ZeRO 0 and 1 where there is data parallelism and
// both schedules where there is a pipeline. Each rank splits its share of a step's 8 sequences into
// micro-batches (4 with a pipeline and one data-parallel rank, 2 otherwise); one process takes the
// 8 at once, so the equivalence covers micro-batching too.
struct Layout {
  int dp, tp, pp, zero;
  std::string schedule;
};

std::vector<Layout> all_layouts() {
  std::vector<Layout> out;
  for (auto [dp, tp, pp] : std::vector<std::array<int, 3>>{{2, 1, 1}, {1, 2, 1}, {1, 1, 2}, {4, 1, 1}, {1, 4, 1},
                                                           {1, 1, 4}, {2, 2, 1}, {2, 1, 2}, {1, 2, 2}, {2, 2, 2}})
    for (int zero : {0, 1})
      for (std::string schedule : {"1f1b", "gpipe"}) {
        if ((zero == 1 && dp == 1) || (schedule == "gpipe" && pp == 1)) continue;
        out.push_back({dp, tp, pp, zero, schedule});
      }
  return out;
}

// Under AddressSanitizer (MESHTRAIN_TEST_LAYOUT_SUBSET, set by the asan test preset, where every
// process runs several times slower) a subset with every axis, both schedules, ZeRO-1 and all three
// axes at once; scripts/test.sh runs the whole matrix in its release pass.
bool in_subset(const Layout& l) {
  const std::array<int, 5> key{l.dp, l.tp, l.pp, l.zero, l.schedule == "gpipe"};
  for (const auto& k : std::vector<std::array<int, 5>>{
           {2, 1, 1, 1, 0}, {1, 2, 1, 0, 0}, {1, 1, 2, 0, 0}, {1, 1, 4, 0, 1}, {1, 4, 1, 0, 0}, {2, 2, 2, 1, 0}})
    if (k == key) return true;
  return false;
}

TEST_F(ParallelLayouts, EveryLayoutTrainsTheSameModelAsOneProcess) {
  const char* subset_env = std::getenv("MESHTRAIN_TEST_LAYOUT_SUBSET");
  const bool subset = subset_env != nullptr && *subset_env != '\0' && *subset_env != '0';
  int runs = 0;
  for (const Layout& l : all_layouts()) {
    if (subset && !in_subset(l)) continue;
    const int micro = 8 / l.dp >= 4 && l.pp > 1 ? 4 : 2;
    std::string name = fmt::format("dp{}tp{}pp{}z{}{}", l.dp, l.tp, l.pp, l.zero, l.pp > 1 ? l.schedule : "");
    std::string set = fmt::format(
        "--set parallel.dp={} --set parallel.tp={} --set parallel.pp={} --set parallel.zero={} "
        "--set parallel.schedule={} --set parallel.microbatches={}",
        l.dp, l.tp, l.pp, l.zero, l.schedule, micro);
    SCOPED_TRACE(name);
    run_layout(l.dp * l.tp * l.pp, set, name);
    ++runs;
  }
  EXPECT_EQ(runs, subset ? 6 : 22);
}

// train.precision = bf16 on the CPU (GEMMs in bf16 through oneDNN) on tensor, data and pipeline
// axes against one bf16 process, within bf16's 2e-2.
TEST_F(ParallelLayouts, Bf16GemmsOnTheCpuTrainTheSameOnEveryAxis) {
  const std::string bf16 = " --set train.precision=bf16";
  auto r = meshtrain::testing::run_command(
      kBinary + " " + args("single_bf16") + bf16 + " --metrics " + (root_ / "single_bf16.jsonl").string(), false);
  if (!onednn_built() || onednn_bf16_isa().empty()) {  // refused, saying why
    EXPECT_NE(r.code, 0);
    EXPECT_NE(r.output.find("[bf16-cpu]"), std::string::npos) << r.output;
    return;
  }
  ASSERT_EQ(r.code, 0) << r.output;
  run_layout(4, "--set parallel.dp=2 --set parallel.tp=2 --set parallel.microbatches=2" + bf16, "bf16_dp2tp2",
             "single_bf16", 2e-2);
  run_layout(2, "--set parallel.pp=2 --set parallel.microbatches=4 --set parallel.zero=0" + bf16, "bf16_pp2",
             "single_bf16", 2e-2);
}

TEST_F(ParallelLayouts, GradAccumulationWithDataParallelMatchesOneProcess) {
  run_layout(2, "--set parallel.microbatches=2 --set parallel.zero=1", "dp2m2");
}

TEST_F(ParallelLayouts, ZeroOneShardsOptimizerState) {
  auto r1 = run(fmt::format("{} -n 2 {} {} --set parallel.zero=0 --set train.steps=1", MESHTRAIN_MPIEXEC, kBinary,
                            args("mem0")));
  auto r2 = run(fmt::format("{} -n 2 {} {} --set parallel.zero=1 --set train.steps=1", MESHTRAIN_MPIEXEC, kBinary,
                            args("mem1")));
  ASSERT_EQ(r1.code, 0) << r1.output;
  ASSERT_EQ(r2.code, 0) << r2.output;
  auto bytes = [](const std::string& out) {
    const std::string key = "optimizer state on this rank: ";
    auto at = out.find(key);
    EXPECT_NE(at, std::string::npos) << out;
    return std::stod(out.substr(at + key.size()));
  };
  EXPECT_NEAR(bytes(r2.output), bytes(r1.output) / 2, 0.01 * bytes(r1.output));
}

TEST_F(ParallelLayouts, BadLayoutsAndFailingRanksEndTheJobWithAMessage) {
  auto r = run(fmt::format("{} -n 3 {} {} --set parallel.dp=2", MESHTRAIN_MPIEXEC, kBinary, args("bad1")));
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("must equal the number of ranks (3)"), std::string::npos) << r.output;
  r = run(fmt::format("{} -n 2 {} {} --set train.batch_size=3", MESHTRAIN_MPIEXEC, kBinary, args("bad2")));
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("must divide by parallel.dp 2"), std::string::npos) << r.output;
  r = run(fmt::format("{} -n 2 {} {} --set parallel.pp=2 --set model.n_layer=1", MESHTRAIN_MPIEXEC, kBinary,
                      args("bad5")));
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("parallel.pp = 2 stages need at least as many blocks"), std::string::npos) << r.output;
  r = run(fmt::format("{} -n 4 {} {} --set parallel.tp=4 --set model.n_head=2 --set model.n_embd=32",
                      MESHTRAIN_MPIEXEC, kBinary, args("bad4")));
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("model.n_head = 2 must divide by parallel.tp = 4"), std::string::npos) << r.output;
  // Rank 1 gets a different configuration: it fails, and the job ends instead of hanging.
  r = run(fmt::format("{0} -n 1 {1} {2} : -n 1 {1} {2} --set train.lr=0.5", MESHTRAIN_MPIEXEC, kBinary,
                      args("bad3")));
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.code, 124) << "the job hung until the timeout";
  EXPECT_NE(r.output.find("different configuration"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("train.lr"), std::string::npos) << r.output;
}

TEST_F(ParallelLayouts, GenerateOnTensorAndPipelineLayoutsMatchesOneProcess) {
  // One process without the key/value cache is the reference; every layout (and one process) with
  // the cache must print the same text, sampled and greedy.
  for (const std::string sampling : {"--seed 5", "--temperature 0"}) {
    const std::string gen = kBinary + " generate --checkpoint " + (root_ / "single").string() +
                            " --prompt 'the cat' --max-new-tokens 12 --ignore-eos " + sampling;
    auto one = run(gen + " --no-kv-cache");
    ASSERT_EQ(one.code, 0) << one.output;
    EXPECT_EQ(one.output.rfind("the cat", 0), 0u) << one.output;
    EXPECT_GT(one.output.size(), std::string("the cat\n").size()) << one.output;
    for (const auto& [np, layout] : std::vector<std::pair<int, std::string>>{
             {1, ""}, {2, "--tp 2"}, {2, "--pp 2"}, {4, "--tp 2 --pp 2"}, {4, "--pp 4"}}) {
      auto r = run(fmt::format("{} -n {} {} {}", MESHTRAIN_MPIEXEC, np, gen, layout));
      ASSERT_EQ(r.code, 0) << layout << "\n" << r.output;
      EXPECT_EQ(r.output, one.output) << sampling << " " << layout << " (with the key/value cache)";
    }
  }
}

TEST_F(ParallelLayouts, GenerationPastTheContextAndStopStrings) {
  // seq_len is 16: 60 new tokens go well past it, with the cache refilling its window and without.
  const std::string gen = kBinary + " generate --checkpoint " + (root_ / "single").string() +
                          " --prompt 'the cat' --temperature 0 --ignore-eos";
  for (const std::string extra : {"", " --no-kv-cache", " --tp 2 --pp 2"}) {
    const bool mpi = extra.find("--tp") != std::string::npos;
    const std::string cmd = gen + " --max-new-tokens 60" + extra;
    auto r = run(mpi ? fmt::format("{} -n 4 {}", MESHTRAIN_MPIEXEC, cmd) : cmd);
    ASSERT_EQ(r.code, 0) << extra << "\n" << r.output;
    EXPECT_GT(r.output.size(), 60u) << extra << "\n" << r.output;
  }
  // A stop string taken from the greedy text itself: the output ends just before it.
  auto full = run(gen + " --max-new-tokens 12");
  ASSERT_EQ(full.code, 0) << full.output;
  const std::string text = full.output.substr(7, full.output.size() - 8);  // after "the cat", before "\n"
  ASSERT_GT(text.size(), 6u) << full.output;
  const std::string stop = text.substr(text.size() / 2, 3);
  const std::string expected = "the cat" + text.substr(0, text.find(stop)) + "\n";
  auto stopped = run(gen + " --max-new-tokens 12 --stop '" + stop + "' --timing");
  ASSERT_EQ(stopped.code, 0) << stopped.output;
  EXPECT_NE(stopped.output.find(expected), std::string::npos) << "stop '" << stop << "'\n" << stopped.output;
  EXPECT_NE(stopped.output.find("finished by stop"), std::string::npos) << stopped.output;
  auto bad = run(gen + " --top-p 0");
  EXPECT_NE(bad.code, 0);
}

TEST_F(ParallelLayouts, RopeModelTrainsTheSameOnEveryAxis) {
  const std::string rope = " --set model.pos_embedding=rope --set model.rope_theta=500";
  auto r = run(kBinary + " " + args("rope_single") + rope + " --metrics " + (root_ / "rope_single.jsonl").string());
  ASSERT_EQ(r.code, 0) << r.output;
  for (const auto& [np, layout, name] : std::vector<std::tuple<int, std::string, std::string>>{
           {2, "--set parallel.tp=2", "rope_tp2"},
           {2, "--set parallel.pp=2 --set parallel.microbatches=2", "rope_pp2"},
           {8, "--set parallel.dp=2 --set parallel.tp=2 --set parallel.pp=2 --set parallel.zero=1 "
               "--set parallel.microbatches=2", "rope_dp2tp2pp2"}}) {
    SCOPED_TRACE(name);
    run_layout(np, layout + rope, name, "rope_single");
  }
  // Generation with the cache on a RoPE model over tensor and pipeline ranks matches one process.
  const std::string gen = kBinary + " generate --checkpoint " + (root_ / "rope_single").string() +
                          " --prompt 'the cat' --max-new-tokens 10 --temperature 0";
  auto one = run(gen + " --no-kv-cache");
  ASSERT_EQ(one.code, 0) << one.output;
  auto split = run(fmt::format("{} -n 4 {} --tp 2 --pp 2", MESHTRAIN_MPIEXEC, gen));
  ASSERT_EQ(split.code, 0) << split.output;
  EXPECT_EQ(split.output, one.output);
}

// --trace on dp 2 x tp 2 x pp 2 with ZeRO-1: one Chrome Trace Event file with every rank, regions
// nested per thread, every pipeline send joined to its receive, and per-step sums of the dp, tp and
// pp regions equal to the step log's split.
TEST_F(ParallelLayouts, TraceHasEveryRankAndMatchesTheStepLog) {
  const std::string trace = (root_ / "trace.json").string(), metrics = (root_ / "traced.jsonl").string();
  auto r = run(fmt::format(
      "{} -n 8 {} {} --set parallel.dp=2 --set parallel.tp=2 --set parallel.pp=2 --set parallel.zero=1 "
      "--set parallel.microbatches=2 --set train.trace_steps=3:6 --trace {} --metrics {}",
      MESHTRAIN_MPIEXEC, kBinary, args("traced"), trace, metrics));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("trace of steps 3-6 written to"), std::string::npos) << r.output;
  const nlohmann::json file = nlohmann::json::parse(meshtrain::testing::slurp(trace));
  const auto& events = file["traceEvents"];
  std::map<int, std::string> processes;
  std::map<std::pair<int, int>, std::vector<std::pair<double, double>>> slices;  // (pid, tid) -> [start, end)
  std::map<uint64_t, std::vector<nlohmann::json>> flows;
  std::map<std::tuple<int, int64_t, std::string>, double> sums;  // (pid, step, category) -> ms
  std::set<int64_t> steps;
  for (const auto& e : events) {
    const std::string ph = e["ph"];
    if (ph == "M" && e["name"] == "process_name") processes[e["pid"]] = e["args"]["name"];
    if (ph == "s" || ph == "f") flows[e["id"].get<uint64_t>()].push_back(e);
    if (ph != "X") continue;
    const double ts = e["ts"], dur = e["dur"];
    ASSERT_GE(dur, 0.0);
    slices[{e["pid"], e["tid"]}].push_back({ts, ts + dur});
    ASSERT_TRUE(e["args"].contains("step")) << e.dump();
    const int64_t step = e["args"]["step"];
    steps.insert(step);
    sums[{e["pid"], step, e["cat"]}] += dur / 1000.0;
  }
  ASSERT_EQ(processes.size(), 8u);
  EXPECT_EQ(processes[5], "rank 5 (dp 0, tp 1, pp 1)");
  EXPECT_EQ(steps, (std::set<int64_t>{3, 4, 5, 6})) << "only the window's steps are recorded";
  // Complete events of one thread nest (no partial overlap), as a viewer's stacks need.
  for (auto& [thread, list] : slices) {
    std::sort(list.begin(), list.end(),
              [](auto a, auto b) { return a.first < b.first || (a.first == b.first && a.second > b.second); });
    std::vector<double> open;
    for (const auto& [begin, end] : list) {
      while (!open.empty() && begin >= open.back() - 1e-3) open.pop_back();
      ASSERT_TRUE(open.empty() || end <= open.back() + 1e-3)
          << "rank " << thread.first << ": a region overlaps the end of its enclosing one";
      open.push_back(end);
    }
  }
  // Every send has its receive, on another rank, after it.
  ASSERT_FALSE(flows.empty());
  for (const auto& [id, ends] : flows) {
    ASSERT_EQ(ends.size(), 2u) << "flow " << id;
    const auto& s = ends[0]["ph"] == "s" ? ends[0] : ends[1];
    const auto& f = ends[0]["ph"] == "s" ? ends[1] : ends[0];
    EXPECT_EQ(s["ph"], "s");
    EXPECT_EQ(f["ph"], "f");
    EXPECT_NE(s["pid"], f["pid"]);
    EXPECT_GE(f["ts"].get<double>(), s["ts"].get<double>()) << "flow " << id << " arrives before it leaves";
  }
  EXPECT_EQ(flows.size(), 4u * 2 * 2 * 4) << "4 steps x 2 micro-batches x 2 directions x 4 pipelines";
  // The step log's split is the mean over ranks of the same regions.
  const auto rows = meshtrain::testing::read_metrics(metrics);
  ASSERT_EQ(rows.size(), 10u);
  for (int64_t step : steps) {
    const auto& row = rows[static_cast<size_t>(step - 1)];
    for (const auto& [cat, key] : std::vector<std::pair<std::string, std::string>>{
             {"dp", "dp_comm_ms"}, {"tp", "tp_comm_ms"}, {"pp", "pp_wait_ms"}}) {
      double mean = 0.0;
      for (int pid = 0; pid < 8; ++pid) mean += sums[{pid, step, cat}] / 8.0;
      const double logged = row[key];
      EXPECT_NEAR(mean, logged, 0.05 * logged + 0.05) << "step " << step << " " << cat;
    }
    double slowest = 0.0;
    for (int pid = 0; pid < 8; ++pid) slowest = std::max(slowest, sums[{pid, step, "step"}]);
    const double rank0 = sums[{0, step, "step"}];
    EXPECT_NEAR(rank0, row["ms"].get<double>(), 0.05 * row["ms"].get<double>() + 0.05);
    EXPECT_NEAR(slowest, row["max_ms"].get<double>(), 0.05 * row["max_ms"].get<double>() + 0.05);
  }
  // The log's spread over ranks and the bytes per axis. Per rank and step (2 micro-batches of
  // 2 x 16 tokens, 32 channels, 2 blocks per stage): pp sends 2 x 2 x 16 x 32 floats = 8192 bytes;
  // tp all-reduces 4 per block and micro-batch of 32 x 32 floats, plus the vocabulary-parallel
  // embedding (stage 0) or head (stage 1): 74112 bytes on average.
  for (const auto& row : rows) {
    for (const std::string key : {"compute_ms", "dp_comm_ms", "tp_comm_ms", "pp_wait_ms"}) {
      EXPECT_LE(row[key + "_min"].get<double>(), row[key].get<double>() + 1e-6) << key;
      EXPECT_LE(row[key].get<double>(), row[key + "_max"].get<double>() + 1e-6) << key;
    }
    EXPECT_GE(row["slowest_rank"].get<int>(), 0);
    EXPECT_LT(row["slowest_rank"].get<int>(), 8);
    EXPECT_EQ(row["pp_bytes"].get<double>(), 8192.0);
    EXPECT_EQ(row["tp_bytes"].get<double>(), 74112.0);
    EXPECT_GT(row["dp_bytes"].get<double>(), 0.0);
    for (const char* bw : {"dp_busbw_gbs", "tp_busbw_gbs", "pp_busbw_gbs"}) EXPECT_GE(row[bw].get<double>(), 0.0);
  }
  // A trace never replaces a file, and a malformed window fails before training.
  auto again = run(fmt::format("{} {} --trace {}", kBinary, args("traced2"), trace));
  EXPECT_NE(again.code, 0);
  EXPECT_NE(again.output.find("traces never replace a file"), std::string::npos) << again.output;
  auto bad = run(fmt::format("{} {} --set train.trace_steps=7 --trace {}", kBinary, args("traced3"),
                             (root_ / "t3.json").string()));
  EXPECT_NE(bad.code, 0);
  EXPECT_NE(bad.output.find("train.trace_steps must be FIRST:LAST"), std::string::npos) << bad.output;
}

// A rank that is killed, hangs inside a collective, cannot open its data, or dies in the middle of a
// sharded checkpoint ends the whole job within a bounded time, names what happened, leaves no
// process behind, and the last complete checkpoint resumes to the end (core/fault.h injects each).
TEST_F(ParallelLayouts, FailingRanksEndTheJobInBoundedTimeAndTheRunResumes) {
  struct Case {
    std::string fault, expect;
    bool resumable;
  };
  for (const Case& c : {Case{"kill:1:4", "", true}, Case{"hang:2:4", "[watchdog] waited", true},
                        Case{"data:3", "missing_shard_000000.bin", false},
                        Case{"kill_in_save:1:4", "", true}}) {
    SCOPED_TRACE(c.fault);
    const std::string name = "fault_" + c.fault.substr(0, c.fault.find(':')), dir = (root_ / name).string();
    const std::string layout =
        "--set parallel.dp=2 --set parallel.tp=2 --set train.checkpoint_every=2 --set parallel.timeout_s=3";
    const auto t0 = std::chrono::steady_clock::now();
    auto r = run(fmt::format("env MESHTRAIN_TEST_FAULT={} {} -n 4 {} {} {}", c.fault, MESHTRAIN_MPIEXEC, kBinary,
                             args(name), layout));
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_NE(r.code, 0) << r.output;
    EXPECT_NE(r.code, 124) << "the job hung until the test's timeout";
    EXPECT_LT(seconds, 40.0) << r.output;
    if (!c.expect.empty()) {
      EXPECT_NE(r.output.find(c.expect), std::string::npos) << r.output;
    }
    if (c.fault.rfind("hang", 0) == 0) {
      EXPECT_NE(r.output.find("parallel.timeout_s = 3"), std::string::npos) << r.output;
    }
    auto left = run(fmt::format("pgrep -f '[m]eshtrain train.*{}'", dir));  // [m]: not pgrep's own shell
    EXPECT_NE(left.code, 0) << "processes left behind:\n" << left.output;
    if (!c.resumable) continue;
    EXPECT_EQ(meshtrain::testing::slurp(dir + "/latest"), "ckpt_000002.h5\n") << "latest must name the last complete one";
    EXPECT_FALSE(fs::exists(dir + "/ckpt_000004.h5"));
    auto resumed = run(fmt::format("{} -n 4 {} train --resume {} {}", MESHTRAIN_MPIEXEC, kBinary, dir, layout));
    ASSERT_EQ(resumed.code, 0) << resumed.output;
    EXPECT_TRUE(fs::exists(dir + "/ckpt_000010.h5")) << resumed.output;
  }
}
