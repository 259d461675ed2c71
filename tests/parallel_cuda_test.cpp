// The GPU path on every layout: `mpiexec -n N meshtrain train --set train.device=cuda` with
// parallel.comm = mpi (GPU tensors staged through host memory, so every rank may share one GPU) on
// dp2, tp2, pp2, dp2 x tp2 and ZeRO-1, and with parallel.comm = nccl (a GPU per rank) on dp2, tp2,
// pp2, dp2 x tp2 and pp2 x tp2, trains the model one CPU process trains: per-step losses within
// 1e-4 in fp32 and 2e-2 in bf16 over 10 steps. A resumed GPU run repeats the uninterrupted one bit
// for bit on the same layout, and a checkpoint moves between the GPU and the CPU (either way) and
// trains on within 1e-5. Skipped without a GPU; the CUDA emulation build runs it on the CPU.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <algorithm>
#include <filesystem>
#include <map>
#include <set>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cli_util.h"
#include "core/device.h"
#include "test_util.h"
#include "tiny_corpus.h"

namespace fs = std::filesystem;

namespace {

class ParallelCuda : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = fs::temp_directory_path() / ("meshtrain_parallel_cuda_test_" + std::to_string(::getpid()));
    fs::remove_all(root_);
    fs::create_directories(root_);
    meshtrain::testing::make_tiny_corpus(root_);
  }
  static void TearDownTestSuite() { fs::remove_all(root_); }
  void SetUp() override {
    if (meshtrain::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device visible: the GPU layouts need a GPU";
  }
  static std::string dir(const std::string& name) { return (root_ / name).string(); }

  /// Trains on np ranks (np = 1: one process, no mpiexec) into out and returns the per-step losses.
  static std::vector<double> train(const std::string& out, int np, const std::string& extra) {
    const std::string launcher = np > 1 ? fmt::format("{} -n {} ", MESHTRAIN_MPIEXEC, np) : "";
    const std::string cmd = fmt::format(
        "{0}{1} train --set data.train={2}/shards/train_*.bin --set data.tokenizer={2}/tok --set model.n_layer=2 "
        "--set model.n_head=4 --set model.n_embd=32 --set model.seq_len=16 --set train.batch_size=4 "
        "--set train.grad_accum=2 --set train.steps=10 --set train.checkpoint_every=5 --set train.sample_every=0 "
        "--set train.eval_every=0 --set train.threads=1 --set train.warmup_steps=2 --set train.lr=3e-3 "
        "--set parallel.bucket_mb=0.01 --set train.out_dir={3} --metrics {3}.jsonl {4}",
        launcher, meshtrain::testing::kMeshtrain, root_.string(), dir(out), extra);
    auto r = meshtrain::testing::run_command(cmd, /*use_gpus=*/true);
    EXPECT_EQ(r.code, 0) << cmd << "\n" << r.output;
    return meshtrain::testing::read_losses(dir(out) + ".jsonl");
  }
  /// `mpiexec -n np meshtrain train` on the tiny corpus and model, into out, with extra settings.
  static std::string job(int np, const std::string& out, const std::string& extra) {
    return fmt::format(
        "{0} -n {1} {2} train --set data.train={3}/shards/train_*.bin --set data.tokenizer={3}/tok --set model.n_layer=2 "
        "--set model.n_head=4 --set model.n_embd=32 --set model.seq_len=16 --set train.batch_size=4 "
        "--set train.sample_every=0 --set train.eval_every=0 --set train.out_dir={4} {5}",
        MESHTRAIN_MPIEXEC, np, meshtrain::testing::kMeshtrain, root_.string(), dir(out), extra);
  }
  /// The one-process CPU run every layout is compared with (trained once).
  static const std::vector<double>& cpu_reference() {
    static const std::vector<double> ref = train("cpu_single", 1, "--set train.device=cpu");
    return ref;
  }
  static fs::path root_;
};
fs::path ParallelCuda::root_;

void expect_close(const std::vector<double>& got, const std::vector<double>& want, double tol, const std::string& what,
                  size_t first_step = 0) {
  ASSERT_EQ(got.size() + first_step, want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i)
    EXPECT_NEAR(got[i], want[first_step + i], tol * std::fabs(want[first_step + i]))
        << what << " step " << first_step + i + 1;
}

/// Whatever happens in a test, no rank of the job started as pid (training into out) outlives it.
struct JobCleanup {
  pid_t job;
  std::string out;
  bool reaped = false;  // the job ended and was waited for
  /// Waits up to limit_s for the job to end; returns the seconds waited (limit_s or more: still running).
  double wait(double limit_s, int& status) {
    double waited = 0;
    for (; waited < limit_s && ::waitpid(job, &status, WNOHANG) == 0; waited += 0.05) ::usleep(50000);
    reaped = waited < limit_s;
    return waited;
  }
  ~JobCleanup() {
    // [m]: the pattern does not match pkill's own shell.
    (void)std::system(fmt::format("pkill -KILL -f -- '[m]eshtrain train .*train.out_dir={} '", out).c_str());
    if (reaped) return;
    ::kill(job, SIGKILL);
    ::waitpid(job, nullptr, 0);
  }
};

const char* kGpu = "--set train.device=cuda --set parallel.comm=mpi";

TEST_F(ParallelCuda, Fp32LayoutsFollowTheCpuRun) {
  const auto& cpu = cpu_reference();
  ASSERT_EQ(cpu.size(), 10u);
  struct Layout {
    const char* name;
    int np;
    const char* extra;
  };
  for (const Layout& l : {Layout{"dp2", 2, ""}, Layout{"tp2", 2, "--set parallel.tp=2"},
                          Layout{"pp2", 2, "--set parallel.pp=2 --set parallel.schedule=1f1b"},
                          Layout{"dp2_zero1", 2, "--set parallel.zero=1"},
                          Layout{"dp2xtp2", 4, "--set parallel.tp=2"}}) {
    SCOPED_TRACE(l.name);
    expect_close(train(l.name, l.np, fmt::format("{} {}", kGpu, l.extra)), cpu, 1e-4, l.name);
  }
}

TEST_F(ParallelCuda, Bf16LayoutsFollowTheCpuRun) {
  const auto& cpu = cpu_reference();
  const std::string bf16 = fmt::format("{} --set train.precision=bf16", kGpu);
  expect_close(train("bf16_tp2", 2, bf16 + " --set parallel.tp=2"), cpu, 2e-2, "bf16 tp2");
  expect_close(train("bf16_dp2_zero1", 2, bf16 + " --set parallel.zero=1"), cpu, 2e-2, "bf16 dp2 ZeRO-1");
}

// NCCL needs a GPU per rank: each layout runs where this host has enough (the CUDA emulation shows
// MT_CUDA_EMU_DEVICES of them) and is skipped, saying so, otherwise.
TEST_F(ParallelCuda, NcclLayoutsFollowTheCpuRun) {
  const auto& cpu = cpu_reference();
  const int gpus = meshtrain::cuda_device_count();
  if (gpus < 2) GTEST_SKIP() << "NCCL needs a GPU per rank and this host has " << gpus << "; the NCCL layouts need 2-4";
  struct Layout {
    const char* name;
    int np;
    const char* extra;
    double tol;
  };
  int ran = 0;
  for (const Layout& l : {Layout{"nccl_dp2", 2, "", 1e-4}, Layout{"nccl_tp2", 2, "--set parallel.tp=2", 1e-4},
                          Layout{"nccl_pp2", 2, "--set parallel.pp=2 --set parallel.schedule=1f1b", 1e-4},
                          Layout{"nccl_dp2xtp2", 4, "--set parallel.tp=2 --set parallel.zero=1", 1e-4},
                          Layout{"nccl_pp2xtp2", 4, "--set parallel.pp=2 --set parallel.tp=2", 1e-4},
                          Layout{"nccl_bf16_dp2xtp2", 4, "--set parallel.tp=2 --set train.precision=bf16", 2e-2}}) {
    if (l.np > gpus) {
      std::printf("[ SKIPPED  ] %s: %d ranks need %d GPUs, this host has %d\n", l.name, l.np, l.np, gpus);
      continue;
    }
    SCOPED_TRACE(l.name);
    expect_close(train(l.name, l.np, fmt::format("--set train.device=cuda --set parallel.comm=nccl {}", l.extra)), cpu,
                 l.tol, l.name);
    ++ran;
  }
  EXPECT_GT(ran, 0);
  // auto picks NCCL when every rank has a GPU of its own.
  auto r = meshtrain::testing::run_command(job(2, "nccl_auto", "--set train.steps=1 --set train.device=cuda"), true);
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("ranks exchange tensors over NCCL"), std::string::npos) << r.output;
}

TEST_F(ParallelCuda, ResumeIsBitIdenticalAndCheckpointsMoveBetweenDevices) {
  // The uninterrupted GPU run (tp2) wrote checkpoints at steps 5 and 10.
  const auto whole = train("whole_tp2", 2, fmt::format("{} --set parallel.tp=2", kGpu));
  ASSERT_EQ(whole.size(), 10u);
  const std::string ckpt5 = dir("whole_tp2") + "/ckpt_000005.h5";
  ASSERT_TRUE(fs::exists(ckpt5));
  // Same layout, same device: steps 6..10 exactly.
  const auto resumed = train("resumed_tp2", 2, fmt::format("{} --set parallel.tp=2 --resume {}", kGpu, ckpt5));
  ASSERT_EQ(resumed.size(), 5u);
  for (size_t i = 0; i < 5; ++i) EXPECT_EQ(resumed[i], whole[5 + i]) << "step " << 6 + i;
  // The GPU checkpoint trains on on the CPU (one process) ...
  expect_close(train("gpu_to_cpu", 1, fmt::format("--set train.device=cpu --resume {}", ckpt5)), whole, 1e-5,
               "GPU checkpoint resumed on the CPU", 5);
  // ... and the CPU's on the GPU (dp2 on the GPU from the one-process CPU run's step 5).
  const auto& cpu = cpu_reference();
  const std::string cpu5 = dir("cpu_single") + "/ckpt_000005.h5";
  expect_close(train("cpu_to_gpu", 2, fmt::format("{} --resume {}", kGpu, cpu5)), cpu, 1e-5,
               "CPU checkpoint resumed on the GPU", 5);
  // bf16 with ZeRO-1 over NCCL: each rank holds the fp32 master weights of its chunks only; the
  // checkpoint gathers them and a resume scatters them back, so it repeats the run bit for bit.
  if (meshtrain::cuda_device_count() >= 4) {
    const std::string zero = "--set train.device=cuda --set parallel.comm=nccl --set parallel.tp=2 "
                             "--set parallel.zero=1 --set train.precision=bf16";
    const auto run = train("whole_bf16_zero", 4, zero);
    ASSERT_EQ(run.size(), 10u);
    const auto again =
        train("resumed_bf16_zero", 4, fmt::format("{} --resume {}/ckpt_000005.h5", zero, dir("whole_bf16_zero")));
    ASSERT_EQ(again.size(), 5u);
    for (size_t i = 0; i < 5; ++i) EXPECT_EQ(again[i], run[5 + i]) << "bf16 ZeRO-1 step " << 6 + i;
  } else {
    std::printf("[ SKIPPED  ] bf16 ZeRO-1 resume over NCCL: 4 ranks need 4 GPUs, this host has %d\n",
                meshtrain::cuda_device_count());
  }
}

}  // namespace

// More ranks on a host than GPUs with parallel.comm = nccl is one clear error on every rank.
// With every collective on the GPU (NCCL), the whole data- and tensor-parallel step is captured as
// one CUDA graph and replayed: the same losses, bit for bit, as the same layout run eagerly.
TEST_F(ParallelCuda, NcclStepsReplayedAsCudaGraphsRepeatTheEagerSteps) {
  const int gpus = meshtrain::cuda_device_count();
  if (gpus < 2) GTEST_SKIP() << "NCCL needs a GPU per rank and this host has " << gpus;
  struct Layout {
    const char* name;
    int np;
    const char* extra;
  };
  for (const Layout& l : {Layout{"dp2", 2, ""},
                          Layout{"dp2xtp2_zero1_bf16", 4, "--set parallel.tp=2 --set parallel.zero=1 "
                                                          "--set train.precision=bf16"}}) {
    if (l.np > gpus) {
      std::printf("[ SKIPPED  ] graph %s: %d ranks need %d GPUs, this host has %d\n", l.name, l.np, l.np, gpus);
      continue;
    }
    SCOPED_TRACE(l.name);
    const std::string base = fmt::format("--set train.device=cuda --set parallel.comm=nccl {}", l.extra);
    const auto eager = train(std::string("eager_") + l.name, l.np, base);
    const auto graph = train(std::string("graph_") + l.name, l.np, base + " --set train.cuda_graph=true");
    ASSERT_EQ(graph.size(), eager.size());
    for (size_t i = 0; i < eager.size(); ++i) EXPECT_EQ(graph[i], eager[i]) << "step " << i + 1;
    // Where the time went, measured on the device's timeline in replayed steps too (the captured
    // step's events are recorded again by every replay): tensor-parallel all-reduces are seen.
    for (const auto& row : meshtrain::testing::read_metrics(dir(std::string("graph_") + l.name) + ".jsonl")) {
      const double parts = row["compute_ms"].get<double>() + row["dp_comm_ms"].get<double>() +
                           row["tp_comm_ms"].get<double>() + row["pp_wait_ms"].get<double>();
      // The parts are means over ranks of each rank's step: they add up to the mean step time.
      EXPECT_LE(parts, row["max_ms"].get<double>() * 1.001 + 0.01) << row.dump();
      EXPECT_GT(row["compute_ms"].get<double>(), 0.0) << row.dump();
      if (l.np == 4) {
        EXPECT_GT(row["tp_comm_ms"].get<double>(), 0.0) << row.dump();
      }
    }
  }
  // Where a collective would wait on the host, a graph is refused with the reason.
  auto mpi = meshtrain::testing::run_command(
      job(2, "graph_mpi", "--set train.device=cuda --set parallel.comm=mpi --set train.cuda_graph=true --set train.steps=1"),
      true);
  EXPECT_NE(mpi.code, 0) << mpi.output;
  EXPECT_NE(mpi.output.find("train.cuda_graph needs every collective of the step on the GPU"), std::string::npos)
      << mpi.output;
  auto pp = meshtrain::testing::run_command(job(2, "graph_pp",
                                                "--set train.device=cuda --set parallel.comm=nccl --set parallel.pp=2 "
                                                "--set train.cuda_graph=true --set train.steps=1"),
                                            true);
  EXPECT_NE(pp.code, 0) << pp.output;
  EXPECT_NE(pp.output.find("a pipeline's schedule waits on its neighbours"), std::string::npos) << pp.output;
}

// A rank that dies while the others wait for it in NCCL collectives ends the whole job, quickly.
TEST_F(ParallelCuda, ARankThatDiesMidRunEndsTheJobWithin30Seconds) {
  const int gpus = meshtrain::cuda_device_count();
  if (gpus < 2) GTEST_SKIP() << "NCCL needs a GPU per rank and this host has " << gpus;
  const std::string out = dir("dies"), log = out + ".log";
  const pid_t pid = meshtrain::testing::start_command(
      job(2, "dies",
          fmt::format("--set train.steps=100000 --set train.checkpoint_every=0 --set train.device=cuda "
                      "--set parallel.comm=nccl --set parallel.tp=2 --metrics {}.jsonl", out)),
      log, /*use_gpus=*/true);
  JobCleanup cleanup{pid, out};
  ASSERT_TRUE(meshtrain::testing::wait_for_lines(out + ".jsonl", 2, 90)) << meshtrain::testing::slurp(log);
  // One rank (the newest process of the job) dies without a word.
  const std::string kill_one = fmt::format("pkill -KILL -n -f -- '[m]eshtrain train .*train.out_dir={} '", out);  // [m]: not pkill's shell
  ASSERT_EQ(std::system(kill_one.c_str()), 0) << kill_one << "\n" << meshtrain::testing::slurp(log);
  int status = 0;
  const double waited = cleanup.wait(30.0, status);
  if (waited >= 30.0) FAIL() << "the job was still running 30 s after a rank died\n" << meshtrain::testing::slurp(log);
  EXPECT_FALSE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << meshtrain::testing::slurp(log);
  std::printf("[ INFO     ] the job ended %.1f s after a rank died\n", waited);
}

// --trace on the GPU: besides the host's regions (when work was queued), each rank has a thread
// "GPU stream" whose regions are timed by CUDA events (when it ran): every block's forward and
// backward, the head, the optimizer and the waits for collectives, nested, inside their step, and
// summing to the step log's split. With a CUDA graph captured before the traced window, the
// replayed steps carry the same regions (the capture recorded their events).
TEST_F(ParallelCuda, TracesShowTheGpuStreamTimedByEvents) {
  const int gpus = meshtrain::cuda_device_count();
  if (gpus < 2) GTEST_SKIP() << "NCCL needs a GPU per rank and this host has " << gpus;
  struct Case {
    std::string name, settings, axis;
  };
  for (const Case& c : {Case{"trace_tp", "--set parallel.tp=2", "tp"},
                        Case{"trace_dp_graph", "--set parallel.dp=2 --set train.cuda_graph=true", "dp"}}) {
    const std::string trace = dir(c.name) + ".json", metrics = dir(c.name) + ".jsonl";
    auto r = meshtrain::testing::run_command(
        job(2, c.name,
            fmt::format("--set train.steps=5 --set train.checkpoint_every=0 --set train.device=cuda "
                        "--set parallel.comm=nccl --set parallel.bucket_mb=0.01 {} --set train.trace_steps=3:5 "
                        "--trace {} --metrics {}",
                        c.settings, trace, metrics)),
        true);
    ASSERT_EQ(r.code, 0) << r.output;
    const nlohmann::json file = nlohmann::json::parse(meshtrain::testing::slurp(trace));
    // pid -> the "GPU stream" thread, and the thread of the axis's communicator's NCCL stream
    std::map<int, int> gpu_tid, nccl_tid;
    const std::string nccl_thread = "GPU NCCL stream (nccl/" + c.axis + ")";
    for (const auto& e : file["traceEvents"]) {
      if (e["ph"] != "M" || e["name"] != "thread_name") continue;
      if (e["args"]["name"] == "GPU stream") gpu_tid[e["pid"]] = e["tid"];
      if (e["args"]["name"] == nccl_thread) nccl_tid[e["pid"]] = e["tid"];
    }
    ASSERT_EQ(gpu_tid.size(), 2u) << c.name << ": every rank has a GPU stream";
    ASSERT_EQ(nccl_tid.size(), 2u) << c.name << ": every rank has a thread " << nccl_thread;
    std::map<std::pair<int, int64_t>, std::pair<double, double>> host_step;  // (pid, step) -> [start, end]
    std::map<std::pair<int, int64_t>, std::vector<nlohmann::json>> gpu;      // (pid, step) -> GPU regions
    std::map<std::pair<int, int64_t>, std::vector<nlohmann::json>> nccl;     // (pid, step) -> NCCL's regions
    for (const auto& e : file["traceEvents"]) {
      if (e["ph"] != "X") continue;
      const int pid = e["pid"];
      const int64_t step = e["args"]["step"];
      if (e["tid"] == gpu_tid[pid])
        gpu[{pid, step}].push_back(e);
      else if (e["tid"] == nccl_tid[pid])
        nccl[{pid, step}].push_back(e);
      else if (e["cat"] == "step")
        host_step[{pid, step}] = {e["ts"].get<double>(), e["ts"].get<double>() + e["dur"].get<double>()};
    }
    const auto rows = meshtrain::testing::read_metrics(metrics);
    ASSERT_EQ(rows.size(), 5u);
    for (int pid = 0; pid < 2; ++pid) {
      for (int64_t step = 3; step <= 5; ++step) {
        const auto& list = gpu[{pid, step}];
        ASSERT_FALSE(list.empty()) << c.name << " rank " << pid << " step " << step;
        std::set<std::string> names;
        std::vector<std::pair<double, double>> spans;
        double waits_ms = 0.0;
        const auto [begin, end] = host_step.at({pid, step});
        for (const auto& e : list) {
          names.insert(e["name"].get<std::string>());
          const double ts = e["ts"], dur = e["dur"];
          ASSERT_GE(dur, 0.0);
          // The GPU ran the step's work after the host began it and before the host saw it finish.
          EXPECT_GE(ts, begin - 2000.0) << e.dump();
          EXPECT_LE(ts + dur, end + 2000.0) << e.dump();
          spans.push_back({ts, ts + dur});
          if (e["cat"] == c.axis) waits_ms += dur / 1000.0;
        }
        for (const char* want : {"forward block 0", "forward block 1", "backward block 1", "backward block 0",
                                 "head forward (logits, loss)", "head backward", "optimizer (norm, clip, AdamW)"})
          EXPECT_EQ(names.count(want), 1u) << c.name << " rank " << pid << " step " << step << ": " << want;
        std::sort(spans.begin(), spans.end(),
                  [](auto a, auto b) { return a.first < b.first || (a.first == b.first && a.second > b.second); });
        std::vector<double> open;
        for (const auto& [b, e] : spans) {
          while (!open.empty() && b >= open.back() - 1e-3) open.pop_back();
          ASSERT_TRUE(open.empty() || e <= open.back() + 1e-3) << c.name << ": GPU regions overlap without nesting";
          open.push_back(e);
        }
        // The axis's NCCL stream: its collectives, each with its bytes, inside the host's step, one
        // after another.
        int axis_ops = 0;
        double last_end = -1e30;
        for (const auto& e : nccl[{pid, step}]) {
          const double ts = e["ts"], dur = e["dur"];
          ASSERT_GE(dur, 0.0) << e.dump();
          EXPECT_GE(ts, begin - 2000.0) << e.dump();
          EXPECT_LE(ts + dur, end + 2000.0) << e.dump();
          EXPECT_GE(ts, last_end - 1e-3) << c.name << ": operations of one stream overlap: " << e.dump();
          last_end = std::max(last_end, ts + dur);
          EXPECT_GT(e["args"].value("bytes", int64_t{0}), 0) << e.dump();
          axis_ops += e["name"].get<std::string>().find("(nccl/" + c.axis + " rank ") != std::string::npos;
        }
        EXPECT_GT(axis_ops, 0) << c.name << " rank " << pid << " step " << step << ": no " << c.axis
                               << " collective on NCCL's stream";
        // The step log's split of the axis is the mean over ranks of the same event intervals.
        const double logged = rows[static_cast<size_t>(step - 1)][c.axis + "_comm_ms_max"];
        EXPECT_LE(waits_ms, logged * 1.05 + 0.05) << c.name << " rank " << pid << " step " << step;
        EXPECT_GT(waits_ms, 0.0) << c.name << " rank " << pid << " step " << step;
      }
    }
    for (int64_t step = 3; step <= 5; ++step) {
      double mean = 0.0;
      for (int pid = 0; pid < 2; ++pid)
        for (const auto& e : gpu[{pid, step}])
          if (e["cat"] == c.axis) mean += e["dur"].get<double>() / 1000.0 / 2.0;
      const double logged = rows[static_cast<size_t>(step - 1)][c.axis + "_comm_ms"];
      EXPECT_NEAR(mean, logged, 0.05 * logged + 0.05) << c.name << " step " << step;
    }
  }
}

// A rank that stops answering (alive, but never reaching its next collective) leaves the other
// blocked on the GPU: NCCL sees no error and the host waits for a stream. The watchdog times that
// wait (parallel.timeout_s), names it, aborts the NCCL communicators and ends the job.
TEST_F(ParallelCuda, ARankThatHangsInANcclCollectiveEndsTheJobThroughTheWatchdog) {
  const int gpus = meshtrain::cuda_device_count();
  if (gpus < 2) GTEST_SKIP() << "NCCL needs a GPU per rank and this host has " << gpus;
  for (const std::string axis : {"tp", "dp", "pp"}) {  // pp: NCCL's sends and receives run on its stream
    const std::string layout = "--set parallel." + axis + "=2", name = "hangs_" + axis;
    const std::string out = dir(name), log = out + ".log";
    // Rank 1 sleeps at the start of step 3.
    const pid_t pid = meshtrain::testing::start_command(
        "MESHTRAIN_TEST_FAULT=hang:1:3 " +
            job(2, name,
                fmt::format("--set train.steps=20 --set train.checkpoint_every=0 --set train.device=cuda "
                            "--set parallel.comm=nccl --set parallel.timeout_s=3 {} --metrics {}.jsonl",
                            layout, out)),
        log, /*use_gpus=*/true);
    JobCleanup cleanup{pid, out};
    int status = 0;
    const double waited = cleanup.wait(120.0, status);
    if (waited >= 120.0) FAIL() << layout << ": the job was still running after 120 s\n" << meshtrain::testing::slurp(log);
    const std::string output = meshtrain::testing::slurp(log);
    EXPECT_FALSE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << output;
    // The launcher ended the hung rank too: no process of the job is left (before the cleanup looks).
    const auto left = meshtrain::testing::run_command(fmt::format("pgrep -f '[m]eshtrain train .*train.out_dir={} '", out));
    EXPECT_NE(left.code, 0) << "processes left behind:\n" << left.output;
    // Rank 0 is the one left waiting; it names itself, the wait and the collective it waits behind.
    EXPECT_NE(output.find("error (rank 0 on "), std::string::npos) << layout << "\n" << output;
    EXPECT_NE(output.find("[watchdog] waited 3."), std::string::npos) << layout << "\n" << output;
    EXPECT_NE(output.find("parallel.timeout_s = 3"), std::string::npos) << layout << "\n" << output;
    EXPECT_NE(output.find("nccl"), std::string::npos) << layout << "\n" << output;
    EXPECT_NE(output.find("[watchdog] communicators aborted"), std::string::npos) << layout << "\n" << output;
    // Steps 1 and 2 completed on both ranks before rank 1 stopped.
    EXPECT_EQ(meshtrain::testing::read_losses(out + ".jsonl").size(), 2u) << output;
    const size_t at = output.find("[watchdog] waited");
    const std::string said = at == std::string::npos ? "" : output.substr(at, output.find('\n', at) - at);
    std::printf("[ INFO     ] %s: the job ended %.1f s after it started: %s\n", layout.c_str(), waited, said.c_str());
  }
}

TEST_F(ParallelCuda, NcclWithMoreRanksThanGpusIsAClearError) {
  const int gpus = meshtrain::cuda_device_count();
  const int np = gpus + 1;
  if (np > 5) GTEST_SKIP() << "this host has " << gpus << " GPUs; the test starts one rank more than that";
  auto r = meshtrain::testing::run_command(
      job(np, "too_many", "--set train.device=cuda --set parallel.comm=nccl --set train.steps=1"), true);
  EXPECT_NE(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("parallel.comm = nccl needs a GPU per rank"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("or use parallel.comm = mpi"), std::string::npos) << r.output;
}

// Bad input needs no GPU: asking for NCCL on the CPU is one clear error.
TEST(ParallelCudaConfig, NcclOnTheCpuIsAClearError) {
  auto r = meshtrain::testing::run_command(fmt::format(
      "{} train --set train.device=cpu --set parallel.comm=nccl --set train.steps=1", meshtrain::testing::kMeshtrain));
  EXPECT_NE(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("parallel.comm = nccl"), std::string::npos) << r.output;
  auto bad = meshtrain::testing::run_command(
      fmt::format("{} train --set parallel.comm=carrier-pigeon --set train.steps=1", meshtrain::testing::kMeshtrain));
  EXPECT_NE(bad.code, 0) << bad.output;
  EXPECT_NE(bad.output.find("parallel.comm must be auto, mpi or nccl"), std::string::npos) << bad.output;
}
