// The CUDA backend against the CPU, from one model step to whole training runs: a Gpt on the GPU
// gives the CPU's loss and gradients (fp32 within 1e-4, bf16 within 2e-2, flash and materialised
// attention), and the meshtrain binary trains 20 steps on the GPU with losses within 1e-4 (fp32) or
// 2e-2 (bf16) of the CPU run, bit-identically twice, the same as eager with CUDA graphs, and resumes
// bit-identically. Without a GPU those tests skip, saying so; what a GPU-less machine can check (clear
// errors when CUDA is asked for and absent) always runs.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <vector>

#include <fmt/format.h>

#include "cli_util.h"
#include "core/device.h"
#include "model/backend.h"
#include "model/gpt.h"
#include "core/communicator.h"
#include "launch/config.h"
#include "launch/plan.h"
#include "model/optimizer.h"
#include "model/params.h"
#include "cuda_test_util.h"
#include "test_util.h"
#include "tiny_corpus.h"

namespace fs = std::filesystem;
using namespace meshtrain;

namespace {

#define MT_REQUIRE_GPU() MT_REQUIRE_GPU_FOR("GPU training tests")

/// ||got - want|| / ||want|| over whole vectors (L2), infinite on any non-finite value.
double rel_l2(const std::vector<float>& got, const std::vector<float>& want) {
  double d = 0.0, n = 0.0;
  for (size_t i = 0; i < want.size(); ++i) {
    if (!std::isfinite(got[i])) return INFINITY;
    d += (static_cast<double>(got[i]) - want[i]) * (static_cast<double>(got[i]) - want[i]);
    n += static_cast<double>(want[i]) * want[i];
  }
  return std::sqrt(d / std::max(n, 1e-300));
}

GptConfig tiny_config() {
  GptConfig c;
  c.vocab_size = 211;  // padded to 256: padded columns must stay out of the softmax
  c.seq_len = 48;
  c.n_layer = 2;
  c.n_head = 4;  // head size 16: the fused kernels' smallest
  c.n_embd = 64;
  return c;
}

struct Step {
  float loss;
  std::vector<float> grads;
};

/// One forward + backward of a fresh model (seed 5) on fixed random tokens.
Step run_step(std::unique_ptr<Backend> be, Recompute recompute, int B, int T, GptConfig c = tiny_config()) {
  LocalCommunicator one;
  Gpt model(c, one, nullptr, 1, 0, std::move(be));
  model.set_recompute(recompute);
  model.initialize(5);
  std::vector<int32_t> tok(static_cast<size_t>(B) * T), tgt(tok.size());
  std::vector<float> u = meshtrain::testing::random_floats(2 * tok.size(), 17, 0.0f, 1.0f);
  for (size_t i = 0; i < tok.size(); ++i) {
    tok[i] = std::min(c.vocab_size - 1, static_cast<int>(u[i] * c.vocab_size));
    tgt[i] = std::min(c.vocab_size - 1, static_cast<int>(u[tok.size() + i] * c.vocab_size));
  }
  tgt[3] = -1;  // an ignored position
  model.zero_grad();
  Step s;
  s.loss = model.forward(tok.data(), tgt.data(), B, T, true);
  model.backward();
  s.grads.resize(static_cast<size_t>(model.table().total()));
  model.backend().download_floats(s.grads.data(), model.grads().raw(), model.table().total());
  return s;
}

TEST(GptCuda, LossAndGradientsMatchTheCpu) {
  MT_REQUIRE_GPU();
  const int B = 3, T = 45;  // not a multiple of any tile
  const Step cpu = run_step(make_cpu_backend(), Recompute::none, B, T);
  struct Case {
    DType dt;
    AttentionKind att;
    Recompute rc;
    double tol;
  };
  for (Case k : {Case{DType::f32, AttentionKind::flash, Recompute::none, 1e-4},
                 Case{DType::f32, AttentionKind::materialised, Recompute::none, 1e-4},
                 Case{DType::f32, AttentionKind::flash, Recompute::full, 1e-4},
                 Case{DType::bf16, AttentionKind::flash, Recompute::none, 2e-2},
                 Case{DType::bf16, AttentionKind::materialised, Recompute::selective, 2e-2}}) {
    SCOPED_TRACE(fmt::format("{} {} recompute {}", dtype_name(k.dt),
                             k.att == AttentionKind::flash ? "flash" : "materialised", static_cast<int>(k.rc)));
    const Step gpu = run_step(make_cuda_backend(k.dt, k.att), k.rc, B, T);
    EXPECT_NEAR(gpu.loss, cpu.loss, k.tol * std::fabs(cpu.loss));
    EXPECT_LE(rel_l2(gpu.grads, cpu.grads), k.tol);
  }
}

GptConfig rope_config() {
  GptConfig c = tiny_config();
  c.pos_embedding = "rope";
  c.rope_theta = 1000.0;
  return c;
}

TEST(GptCuda, RopeModelMatchesTheCpu) {
  MT_REQUIRE_GPU();
  const int B = 2, T = 45;
  const Step cpu = run_step(make_cpu_backend(), Recompute::none, B, T, rope_config());
  for (auto [dt, tol] : {std::pair{DType::f32, 1e-4}, std::pair{DType::bf16, 2e-2}}) {
    const Step gpu = run_step(make_cuda_backend(dt), Recompute::selective, B, T, rope_config());
    EXPECT_NEAR(gpu.loss, cpu.loss, tol * std::fabs(cpu.loss)) << dtype_name(dt);
    EXPECT_LE(rel_l2(gpu.grads, cpu.grads), tol) << dtype_name(dt);
  }
}

/// One forward + backward of a frozen model with LoRA adapters (random, B non-zero): the loss and the
/// adapters' gradients.
Step lora_step(std::unique_ptr<Backend> be) {
  const GptConfig c = tiny_config();
  LocalCommunicator one;
  Gpt model(c, one, nullptr, 1, 0, std::move(be));
  model.initialize(5);
  LoraConfig lc;
  lc.rank = 4;
  Lora& lora = model.enable_lora(lc);
  lora.initialize(9);  // A as fine-tuning starts; B small but non-zero, as after some steps
  std::vector<float> p(static_cast<size_t>(lora.table().total()));
  lora.get_params(p.data());
  const std::vector<float> noise = meshtrain::testing::random_floats(p.size(), 23, -0.02f, 0.02f);
  for (const auto& s : lora.table().specs())
    if (s.name.find("lora_B") != std::string::npos)
      for (int64_t i = s.offset; i < s.offset + s.numel; ++i) p[static_cast<size_t>(i)] = noise[static_cast<size_t>(i)];
  lora.set_params(p.data());
  model.set_frozen(true);
  const int B = 2, T = 40;
  std::vector<int32_t> tok(static_cast<size_t>(B) * T), tgt(tok.size());
  for (size_t i = 0; i < tok.size(); ++i) {
    tok[i] = static_cast<int32_t>((i * 31 + 7) % c.vocab_size);
    tgt[i] = static_cast<int32_t>((i * 17 + 3) % c.vocab_size);
  }
  lora.zero_grad();
  Step s;
  s.loss = model.forward(tok.data(), tgt.data(), B, T, true);
  model.backward();
  s.grads.resize(static_cast<size_t>(lora.table().total()));
  model.backend().download_floats(s.grads.data(), lora.grads().raw(), lora.table().total());
  return s;
}

TEST(GptCuda, LoraAdaptersTrainAsOnTheCpu) {
  MT_REQUIRE_GPU();
  const Step cpu = lora_step(make_cpu_backend());
  for (auto [dt, tol] : {std::pair{DType::f32, 1e-4}, std::pair{DType::bf16, 2e-2}}) {
    const Step gpu = lora_step(make_cuda_backend(dt));
    EXPECT_NEAR(gpu.loss, cpu.loss, tol * std::fabs(cpu.loss)) << dtype_name(dt);
    EXPECT_LE(rel_l2(gpu.grads, cpu.grads), tol) << dtype_name(dt);
  }
}

TEST(GptCuda, KeyValueCacheLogitsMatchTheFullForward) {
  MT_REQUIRE_GPU();
  for (const GptConfig& c : {tiny_config(), rope_config()}) {
    for (auto [dt, tol] : {std::pair{DType::f32, 1e-4}, std::pair{DType::bf16, 3e-2}}) {
      SCOPED_TRACE(fmt::format("{} {}", c.pos_embedding, dtype_name(dt)));
      LocalCommunicator one;
      Gpt model(c, one, nullptr, 1, 0, make_cuda_backend(dt));
      model.initialize(8);
      const int T = 20, V = c.padded_vocab();
      std::vector<int32_t> tok(T);
      for (int t = 0; t < T; ++t) tok[t] = (t * 37 + 11) % c.vocab_size;
      model.forward(tok.data(), nullptr, 1, T);
      std::vector<float> full, cached;
      for (int t = 4; t < T; ++t) full.insert(full.end(), model.logits_row(t), model.logits_row(t) + V);
      const float* l = model.forward_cached_logits(tok.data(), 5);  // prefill positions 0..4
      cached.insert(cached.end(), l, l + V);
      for (int t = 5; t < T; ++t) {
        l = model.forward_cached_logits(tok.data() + t, 1);
        cached.insert(cached.end(), l, l + V);
      }
      EXPECT_LE(rel_l2(cached, full), tol);
    }
  }
}

TEST(GptCuda, GradientsAreBitIdenticalRunToRun) {
  MT_REQUIRE_GPU();
  for (DType dt : {DType::f32, DType::bf16}) {
    const Step a = run_step(make_cuda_backend(dt), Recompute::none, 4, 48);
    const Step b = run_step(make_cuda_backend(dt), Recompute::none, 4, 48);
    EXPECT_EQ(a.loss, b.loss);
    EXPECT_TRUE(a.grads == b.grads) << dtype_name(dt);
  }
}

// ---- whole runs through the binary -----------------------------------------------------------------

class TrainCuda : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = fs::temp_directory_path() / ("meshtrain_train_cuda_test_" + std::to_string(::getpid()));
    fs::remove_all(root_);
    fs::create_directories(root_);
    meshtrain::testing::make_tiny_corpus(root_);
  }
  static void TearDownTestSuite() { fs::remove_all(root_); }
  static std::string dir(const std::string& name) { return (root_ / name).string(); }

  /// Trains 20 steps (unless extra says otherwise) into out and returns the per-step losses (fails the test on a
  /// non-zero exit).
  static std::vector<double> train(const std::string& out, const std::string& extra, bool gpus = true) {
    const std::string cmd = fmt::format(
        "{0} train --set data.train={1}/shards/train_*.bin --set data.val={1}/shards/val_*.bin "
        "--set data.tokenizer={1}/tok --set model.n_layer=2 --set model.n_head=4 --set model.n_embd=64 "
        "--set model.seq_len=32 --set train.batch_size=4 --set train.grad_accum=2 --set train.steps=20 "
        "--set train.checkpoint_every=10 --set train.eval_every=10 --set train.eval_batches=2 "
        "--set train.sample_every=0 --set train.sample_tokens=8 --set train.warmup_steps=3 --set train.lr=3e-3 "
        "--set train.out_dir={2} --metrics {2}.jsonl {3}",
        meshtrain::testing::kMeshtrain, root_.string(), dir(out), extra);
    auto r = meshtrain::testing::run_command(cmd, gpus);
    EXPECT_EQ(r.code, 0) << r.output;
    return meshtrain::testing::read_losses(dir(out) + ".jsonl");
  }
  static fs::path root_;
};
fs::path TrainCuda::root_;

void expect_close(const std::vector<double>& got, const std::vector<double>& want, double tol) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i)
    EXPECT_NEAR(got[i], want[i], tol * std::fabs(want[i])) << "step " << i + 1;
}

TEST_F(TrainCuda, Fp32AndBf16RunsFollowTheCpuRun) {
  MT_REQUIRE_GPU();
  const auto cpu = train("cpu", "--set train.device=cpu", false);
  ASSERT_EQ(cpu.size(), 20u);
  expect_close(train("fp32", "--set train.device=cuda"), cpu, 1e-4);
  expect_close(train("fp32_mat", "--set train.device=cuda --set train.attention=materialised"), cpu, 1e-4);
  expect_close(train("bf16", "--set train.device=cuda --set train.precision=bf16"), cpu, 2e-2);
}

TEST_F(TrainCuda, RerunsGraphsAndResumeAreBitIdentical) {
  MT_REQUIRE_GPU();
  // 12 steps (the graph is captured at step 2 and replayed from step 3; an evaluation and a
  // checkpoint at step 6 come between replays; the resume goes on from there).
  const std::string shorter = " --set train.steps=12 --set train.checkpoint_every=6 --set train.eval_every=6";
  for (const char* prec : {"fp32", "bf16"}) {
    const std::string p = std::string("--set train.device=cuda --set train.precision=") + prec + shorter;
    const auto a = train(std::string("a_") + prec, p);
    const auto b = train(std::string("b_") + prec, p);
    const auto g = train(std::string("g_") + prec, p + " --set train.cuda_graph=true");
    ASSERT_EQ(a.size(), 12u);
    EXPECT_EQ(a, b) << prec << ": two runs with one seed";
    EXPECT_EQ(a, g) << prec << ": graph replay against eager";
    auto r = meshtrain::testing::run_command(
        fmt::format("{} train --resume {}/ckpt_000006.h5 --set train.out_dir={} --metrics {}.jsonl",
                    meshtrain::testing::kMeshtrain, dir(std::string("a_") + prec), dir(std::string("r_") + prec),
                    dir(std::string("r_") + prec)),
        true);
    ASSERT_EQ(r.code, 0) << r.output;
    const auto resumed = meshtrain::testing::read_losses(dir(std::string("r_") + prec) + ".jsonl");
    ASSERT_EQ(resumed.size(), 6u);
    EXPECT_TRUE(std::equal(resumed.begin(), resumed.end(), a.begin() + 6)) << prec << ": resume at step 6";
  }
}

TEST_F(TrainCuda, StepLogReportsPeakGpuMemory) {
  MT_REQUIRE_GPU();
  train("mem", "--set train.device=cuda --set train.steps=3");
  auto rows = meshtrain::testing::read_metrics(dir("mem") + ".jsonl");
  ASSERT_FALSE(rows.empty());
  ASSERT_TRUE(rows[0].contains("gpu_peak_mib"));
  EXPECT_GT(rows[0]["gpu_peak_mib"].get<double>(), 0.0);
}

// These run everywhere: asking for CUDA where there is none is a clear error with a non-zero exit.
TEST_F(TrainCuda, CudaWithoutAGpuIsAClearError) {
  const std::string data = fmt::format("--set data.train={0}/shards/train_*.bin --set data.tokenizer={0}/tok",
                                       root_.string());
  auto r = meshtrain::testing::run_command(
      fmt::format("{} train {} --set train.device=cuda --set train.steps=1 --set train.out_dir={}",
                  meshtrain::testing::kMeshtrain, data, dir("nogpu")),
      false);  // GPUs hidden
  EXPECT_NE(r.code, 0);
  EXPECT_TRUE(r.output.find("no CUDA device is visible") != std::string::npos ||
              r.output.find("this build has no CUDA backend") != std::string::npos)
      << r.output;
  EXPECT_FALSE(fs::exists(dir("nogpu") + "/latest"));

  auto b = meshtrain::testing::run_command(
      fmt::format("{} train {} --set train.cuda_graph=true --set train.steps=1 --set train.out_dir={}",
                  meshtrain::testing::kMeshtrain, data, dir("nogpu_graph")),
      false);
  EXPECT_NE(b.code, 0);
  EXPECT_NE(b.output.find("train.cuda_graph = true needs the CUDA backend"), std::string::npos) << b.output;

  auto c = meshtrain::testing::run_command(
      fmt::format("{} train {} --set train.device=cpu --set train.cuda_graph=true --set train.out_dir={}",
                  meshtrain::testing::kMeshtrain, data, dir("nogpu_graph")),
      false);
  EXPECT_NE(c.code, 0);
  EXPECT_NE(c.output.find("train.device = cpu"), std::string::npos) << c.output;
}

}  // namespace

// `meshtrain plan` sizes GPU layouts without a GPU (layout_sizing from the config alone); the bytes it
// predicts are the bytes the CUDA model and optimizer allocate, for both precisions, both attention
// kernels (the fused ones keep a float per query row; head size 24 falls back to the materialised
// ones) and every recomputation mode.
TEST(GptCuda, PlanPredictsTheGpuModelsAllocation) {
  MT_REQUIRE_GPU();
  GptConfig odd = tiny_config();
  odd.n_head = 2, odd.n_embd = 48;  // head size 24: no fused kernel
  for (const GptConfig& c : {tiny_config(), odd}) {
    for (DType dt : {DType::f32, DType::bf16}) {
      for (AttentionKind att : {AttentionKind::flash, AttentionKind::materialised}) {
        for (Recompute mode : {Recompute::none, Recompute::selective, Recompute::full}) {
          SCOPED_TRACE(fmt::format("C {} {} {} recompute {}", c.n_embd, dtype_name(dt),
                                   att == AttentionKind::flash ? "flash" : "materialised", static_cast<int>(mode)));
          Config cfg = default_config();
          cfg.model = c;
          cfg.train.device = "cuda";
          cfg.train.precision = dt == DType::bf16 ? "bf16" : "fp32";
          cfg.train.attention = att == AttentionKind::flash ? "flash" : "materialised";
          cfg.train.recompute = mode == Recompute::none ? "none" : mode == Recompute::selective ? "selective" : "full";
          cfg.train.batch_size = 3;
          cfg.train.grad_accum = 1;
          const LayoutMemory plan = predict_layout_memory(cfg, 1, 1, 1, 0);
          ASSERT_TRUE(plan.rejected.empty()) << plan.rejected;
          LocalCommunicator one;
          Gpt model(c, one, nullptr, 1, 0, make_cuda_backend(dt, att));
          model.set_recompute(mode);
          model.use_slot(0);
          model.input_tokens(3, c.seq_len);  // allocates the slot
          EXPECT_EQ(static_cast<int64_t>(model.activation_bytes()), plan.activations);
          EXPECT_EQ(static_cast<int64_t>(model.params().nbytes()), plan.params);
          const AdamW opt(ParameterTable(c), AdamWConfig{}, {}, &model.backend());
          EXPECT_EQ(static_cast<int64_t>(opt.state_bytes()), plan.optimizer);
        }
      }
    }
  }
}
