// `meshtrain plan`'s memory model: the activation bytes it predicts are the bytes the model
// allocates (one plan, two callers), parameters and optimizer state follow the layout, and layouts
// that cannot run say why. Its time model: monotone where it must be (more micro-batches, a smaller
// bubble; faster parts, a shorter step), bound by the cores when ranks outnumber them, and hardware
// files that round-trip or fail naming the file and key.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>

#include <fstream>
#include <tuple>
#include <vector>

#include "core/communicator.h"
#include "launch/builtin_corpus.h"
#include "launch/config.h"
#include "launch/plan.h"
#include "launch/plan_time.h"
#include "core/error.h"
#include "test_util.h"
#include "tiny_corpus.h"
#include "model/backend.h"
#include "model/gpt.h"
#include "model/params.h"

namespace meshtrain {
namespace {

GptConfig small(int layers, int heads, int channels, int context, int vocab) {
  GptConfig c;
  c.n_layer = layers;
  c.n_head = heads;
  c.n_embd = channels;
  c.seq_len = context;
  c.vocab_size = vocab;
  return c;
}

TEST(Plan, PredictedActivationBytesEqualTheModelsAllocation) {
  const std::unique_ptr<Backend> cpu = make_cpu_backend();
  struct Case {
    GptConfig cfg;
    int B, T, pp, stage;
  };
  const std::vector<Case> cases = {{small(2, 4, 64, 32, 300), 3, 32, 1, 0},  {small(3, 2, 48, 20, 129), 2, 17, 1, 0},
                                   {small(5, 4, 64, 16, 500), 4, 16, 2, 0},  {small(5, 4, 64, 16, 500), 4, 16, 2, 1},
                                   {small(4, 4, 32, 24, 260), 1, 24, 3, 1},  {small(4, 4, 32, 24, 260), 5, 9, 3, 2}};
  for (const Case& c : cases) {
    for (Recompute mode : {Recompute::none, Recompute::selective, Recompute::full}) {
      SCOPED_TRACE(::testing::Message() << "L" << c.cfg.n_layer << " C" << c.cfg.n_embd << " B" << c.B << " T" << c.T
                                        << " stage " << c.stage << " of " << c.pp << " recompute "
                                        << static_cast<int>(mode));
      LocalCommunicator comm;
      Gpt model(c.cfg, comm, nullptr, c.pp, c.stage);
      model.set_recompute(mode);
      model.use_slot(0);
      model.input_tokens(c.B, c.T);  // allocates the slot
      const int64_t predicted = Gpt::slot_bytes(Gpt::activation_shape(c.cfg, c.B, c.T, 1, c.pp, c.stage, mode, cpu->sizing()));
      EXPECT_EQ(static_cast<int64_t>(model.activation_bytes()), predicted);
      model.use_slot(1);  // a second micro-batch in flight: twice the bytes
      model.input_tokens(c.B, c.T);
      EXPECT_EQ(static_cast<int64_t>(model.activation_bytes()), 2 * predicted);
      // Parameters and gradients: the flat buffers of this stage (one data-parallel rank: no padding).
      EXPECT_EQ(static_cast<int64_t>(model.params().nbytes()), ParameterTable(c.cfg, 1, 0, c.pp, c.stage).total() * 4);
    }
  }
}

TEST(Plan, RecomputationOnlyEverShrinksActivations) {
  const std::unique_ptr<Backend> cpu = make_cpu_backend();
  const GptConfig cfg = small(6, 4, 64, 64, 512);
  const auto bytes = [&](Recompute m) { return Gpt::slot_bytes(Gpt::activation_shape(cfg, 4, 64, 1, 1, 0, m, cpu->sizing())); };
  EXPECT_GT(bytes(Recompute::none), bytes(Recompute::selective));
  EXPECT_GT(bytes(Recompute::selective), bytes(Recompute::full));
}

Config plan_config() {
  Config cfg = default_config();
  cfg.model = small(4, 4, 64, 32, 512);
  cfg.train.batch_size = 8;
  cfg.train.grad_accum = 1;
  cfg.parallel.microbatches = 4;
  return cfg;
}

TEST(Plan, LayoutsFollowTheirSharding) {
  const Config cfg = plan_config();
  const LayoutMemory one = predict_layout_memory(cfg, 1, 1, 1, 0);
  ASSERT_TRUE(one.rejected.empty()) << one.rejected;
  const ParameterTable whole(cfg.model);
  EXPECT_EQ(one.params, whole.total() * 4);
  EXPECT_EQ(one.optimizer, 2 * 4 * whole.total());
  EXPECT_EQ(one.micro_batch, 2);  // 8 sequences in 4 micro-batches
  // ZeRO-1 shards the optimizer state and adds the reduced gradient chunk.
  const LayoutMemory dp2 = predict_layout_memory(cfg, 2, 1, 1, 0), zero = predict_layout_memory(cfg, 2, 1, 1, 1);
  EXPECT_EQ(zero.optimizer * 2, dp2.optimizer + (dp2.params / 4 - whole.total()) * 8);
  EXPECT_EQ(zero.zero_shard * 2, zero.params);
  // Tensor parallelism splits parameters (all but the replicated LayerNorms and biases of row-parallel layers).
  const LayoutMemory tp2 = predict_layout_memory(cfg, 1, 2, 1, 0);
  EXPECT_EQ(tp2.params, ParameterTable(cfg.model, 2, 0).total() * 4);
  EXPECT_LT(tp2.params, one.params);
  // Pipeline: 1F1B's first stage keeps pp micro-batches in flight, GPipe all of them.
  const LayoutMemory pp2 = predict_layout_memory(cfg, 1, 1, 2, 0);
  EXPECT_EQ(pp2.slots, pp2.stage == 0 ? 2 : 1);
  Config gpipe = cfg;
  gpipe.parallel.schedule = "gpipe";
  EXPECT_EQ(predict_layout_memory(gpipe, 1, 1, 2, 0).slots, 4);
}

TEST(Plan, GpuLayoutsInBf16HoldMasterWeightsAndFlashKeepsLess) {
  Config gpu = plan_config();  // head size 16: the fused kernels handle it
  gpu.train.device = "cuda";
  gpu.train.precision = "bf16";
  const ActivationSizing sizing = layout_sizing(gpu);
  EXPECT_TRUE(sizing.uses_flash(16));
  EXPECT_FALSE(sizing.uses_flash(24)) << "head sizes the fused kernels lack fall back to the materialised ones";
  EXPECT_EQ(sizing.align(), 256);
  const ParameterTable whole(gpu.model);
  const LayoutMemory flash = predict_layout_memory(gpu, 1, 1, 1, 0);
  ASSERT_TRUE(flash.rejected.empty()) << flash.rejected;
  EXPECT_EQ(flash.params, whole.total() * 2);         // bf16 weights
  EXPECT_EQ(flash.grads, whole.total() * 2);          // and gradients
  EXPECT_EQ(flash.optimizer, 3 * 4 * whole.total());  // fp32 master weights, m and v
  const LayoutMemory zero = predict_layout_memory(gpu, 2, 1, 1, 1);
  EXPECT_EQ(zero.optimizer, 3 * 4 * ((whole.total() + 1) / 2));
  // Flash keeps one float per query row instead of T: less than materialised, and than the CPU's
  // fp32 activations.
  Config materialised = gpu;
  materialised.train.attention = "materialised";
  EXPECT_LT(flash.activations, predict_layout_memory(materialised, 1, 1, 1, 0).activations);
  EXPECT_LT(flash.activations, predict_layout_memory(plan_config(), 1, 1, 1, 0).activations);
}

// model.vocab_size = 0 ("the tokenizer's", the default) resolves as `train` resolves it, so a plan
// of the default configuration is the default run's.
TEST(Plan, AVocabularyOfZeroIsTheTokenizersAsInTrain) {
  Config builtin = default_config();
  ASSERT_EQ(builtin.model.vocab_size, 0);
  EXPECT_EQ(resolve_vocab_size(builtin), "the built-in corpus's tokenizer");
  EXPECT_EQ(builtin.model.vocab_size, kBuiltinVocabSize);

  testing::ScratchDir dir("plan_vocab");
  testing::make_tiny_corpus(dir.path(), 300, 300);
  Config own = default_config();
  own.data.train = dir.str("shards/train_*.bin");
  own.data.tokenizer = dir.str("tok");
  EXPECT_NE(resolve_vocab_size(own).find("data.tokenizer's"), std::string::npos);
  EXPECT_EQ(own.model.vocab_size, Tokenizer::load(dir.str("tok")).vocab_size());

  Config given = own;
  given.model.vocab_size = 1234;
  EXPECT_EQ(resolve_vocab_size(given), "");
  EXPECT_EQ(given.model.vocab_size, 1234);

  Config no_tokenizer = default_config();
  no_tokenizer.data.train = dir.str("shards/train_*.bin");
  try {
    resolve_vocab_size(no_tokenizer);
    ADD_FAILURE() << "accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("data.train is set without data.tokenizer"), std::string::npos) << e.what();
  }
}

TEST(Plan, LayoutsThatCannotRunSayWhy) {
  Config cfg = plan_config();
  cfg.model.n_layer = 2;
  const std::vector<LayoutMemory> plan = plan_layouts(cfg, 6);
  int rejected = 0;
  bool heads = false, blocks = false, batch = false;
  for (const auto& r : plan) {
    if (r.rejected.empty()) {
      EXPECT_EQ(rejected, 0) << "valid layouts come first";
      EXPECT_EQ(r.dp * r.tp * r.pp, 6);
      continue;
    }
    ++rejected;
    EXPECT_EQ(r.rejected.find(".cpp:"), std::string::npos) << "a reason for users, without a source line: " << r.rejected;
    heads |= r.tp == 3 && r.rejected.find("model.n_head") != std::string::npos;
    blocks |= r.pp == 3 && r.rejected.find("model.n_layer") != std::string::npos;
    batch |= r.dp == 6 && r.rejected.find("must divide by parallel.dp 6") != std::string::npos;
  }
  EXPECT_TRUE(heads) << "tp 3 with 4 heads";
  EXPECT_TRUE(blocks) << "pp 3 with 2 blocks";
  EXPECT_TRUE(batch) << "dp 6 with 8 sequences";
  EXPECT_THROW(plan_layouts(cfg, 0), Error);
}

}  // namespace
}  // namespace meshtrain

// ---- The step-time model (launch/plan_time.h).

namespace meshtrain {
namespace time_model {

Hardware reference_hardware() {
  Hardware hw;
  hw.name = "test";
  hw.cores = 0;  // each rank its own device: no core sharing
  hw.gemm_gflops = 100, hw.attention_gflops = 50, hw.elementwise_gbs = 20, hw.adamw_params_per_s = 1e9;
  hw.link_gbs = 5, hw.link_latency_us = 10;
  return hw;
}

Config model_config(int micro) {
  Config cfg = default_config();
  cfg.model = small(8, 4, 128, 64, 2048);
  cfg.train.batch_size = 32;
  cfg.parallel.microbatches = micro;
  return cfg;
}

TEST(PlanTime, MoreMicroBatchesShrinkTheBubbleShare) {
  const Hardware hw = reference_hardware();
  double last_share = 1.0;
  for (int micro : {2, 4, 8, 16, 32}) {
    const LayoutTime t = predict_layout_time(model_config(micro), hw, 1, 1, 4, 0);
    const double share = t.bubble_ms / t.step_ms;
    EXPECT_LT(share, last_share) << micro << " micro-batches";
    // One micro-batch of each stage but the slowest: at most the textbook (p - 1) / m of the slowest
    // stage's work, and more than half of it here (the stages differ only by the embedding and head).
    EXPECT_GT(t.bubble_ms, 0.0);
    EXPECT_LE(t.bubble_ms, (t.compute_ms + t.tp_ms) * 3.0 / micro * (1 + 1e-9));
    EXPECT_GT(t.bubble_ms, (t.compute_ms + t.tp_ms) * 3.0 / micro / 2);
    last_share = share;
  }
  EXPECT_EQ(predict_layout_time(model_config(4), hw, 4, 1, 1, 0).bubble_ms, 0.0) << "no pipeline, no bubble";
}

TEST(PlanTime, FasterPartsNeverSlowTheStep) {
  const Config cfg = model_config(4);
  const Hardware base = reference_hardware();
  for (auto [dp, tp, pp] : {std::tuple{2, 2, 2}, std::tuple{8, 1, 1}, std::tuple{1, 4, 2}}) {
    const LayoutTime t0 = predict_layout_time(cfg, base, dp, tp, pp, 0);
    Hardware link = base;
    link.link_gbs *= 2;
    const LayoutTime t1 = predict_layout_time(cfg, link, dp, tp, pp, 0);
    EXPECT_LE(t1.tp_ms, t0.tp_ms);
    EXPECT_LT(t1.dp_ms + t1.tp_ms + t1.pp_ms, t0.dp_ms + t0.tp_ms + t0.pp_ms);
    EXPECT_EQ(t1.compute_ms, t0.compute_ms);
    Hardware gemm = base;
    gemm.gemm_gflops *= 2;
    const LayoutTime t2 = predict_layout_time(cfg, gemm, dp, tp, pp, 0);
    EXPECT_LT(t2.compute_ms, t0.compute_ms);
    EXPECT_LT(t2.step_ms, t0.step_ms);
  }
  // Splitting the same work over more data-parallel ranks shortens each rank's compute.
  EXPECT_LT(predict_layout_time(cfg, base, 4, 1, 1, 0).compute_ms, predict_layout_time(cfg, base, 2, 1, 1, 0).compute_ms);
  // ZeRO-1 shards the optimizer's work.
  EXPECT_LT(predict_layout_time(cfg, base, 4, 1, 1, 1).optimizer_ms, predict_layout_time(cfg, base, 4, 1, 1, 0).optimizer_ms);
}

TEST(PlanTime, RanksThatOutnumberTheCoresAreBoundByThem) {
  const Config cfg = model_config(4);
  Hardware hw = reference_hardware();
  hw.link_latency_us = 0;  // every microsecond of communication is copying: busy
  const LayoutTime own = predict_layout_time(cfg, hw, 4, 1, 1, 0);
  EXPECT_FALSE(own.oversubscribed);
  hw.cores = 2;  // four single-threaded ranks on two cores
  const LayoutTime shared = predict_layout_time(cfg, hw, 4, 1, 1, 0);
  EXPECT_TRUE(shared.oversubscribed);
  EXPECT_NEAR(shared.step_ms, 2.0 * (own.compute_ms + own.tp_ms + own.dp_ms + own.optimizer_ms), 1e-9);
  // Waiting for peers (the latency part) yields the core to another rank: it adds to the step's
  // collectives but not to the cores' bound.
  Hardware waits = hw;
  waits.link_latency_us = 50;
  const LayoutTime tp4 = predict_layout_time(cfg, waits, 1, 4, 1, 0), tp4_copy = predict_layout_time(cfg, hw, 1, 4, 1, 0);
  EXPECT_TRUE(tp4.oversubscribed);
  EXPECT_NEAR(tp4.step_ms, tp4_copy.step_ms, 1e-9);
  EXPECT_GT(tp4.tp_ms, tp4_copy.tp_ms);
}

TEST(PlanTime, AMeasuredShapeIsUsedForItsGemms) {
  const Config cfg = model_config(4);
  Hardware hw = reference_hardware();
  const LayoutTime generic = predict_layout_time(cfg, hw, 1, 1, 1, 0);
  for (GemmRate g : layout_gemm_shapes(cfg, 1, 1)) {
    g.gflops = 2 * hw.gemm_gflops;
    hw.gemm.push_back(g);
  }
  const LayoutTime measured = predict_layout_time(cfg, hw, 1, 1, 1, 0);
  EXPECT_LT(measured.compute_ms, generic.compute_ms);
}

TEST(PlanTime, HardwareFilesRoundTripAndBadOnesSayWhy) {
  testing::ScratchDir dir("plan_hw");
  auto write = [&](const std::string& name, const std::string& text) {
    std::ofstream(dir.str(name)) << text;
    return dir.str(name);
  };
  Hardware hw = reference_hardware();
  hw.cores = 2;
  hw.gemm.push_back({256, 384, 128, 99.5});
  hw.process_mib = 150;
  const std::string good = write("good.toml", hardware_to_toml(hw));
  const Hardware back = load_hardware(good);
  EXPECT_EQ(back.cores, 2);
  ASSERT_EQ(back.gemm.size(), 1u);
  EXPECT_EQ(back.gemm[0].n, 384);
  EXPECT_NEAR(back.gemm[0].gflops, 99.5, 1e-9);
  EXPECT_NEAR(back.link_gbs, hw.link_gbs, 1e-3);
  EXPECT_NEAR(back.process_mib, 150, 1e-9);
  auto fails = [&](const std::string& text, const std::string& expect) {
    const std::string path = write("bad.toml", text);
    try {
      load_hardware(path);
      ADD_FAILURE() << "accepted: " << text;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(expect), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("bad.toml"), std::string::npos) << e.what();
    }
  };
  fails("[compute]\ngemm_gflops = 1\n", "compute.attention_gflops");
  fails(hardware_to_toml(hw) + "\n[[oops", "cannot read the hardware description");
  std::string text = hardware_to_toml(hw);
  text.replace(text.find("gemm_gflops = "), 14, "gemm_gflops = \"fast\" #");
  fails(text, "compute.gemm_gflops must be a number");
  text = hardware_to_toml(hw);
  text.replace(text.find("elementwise_gbs = "), 18, "elementwise_gbs = -");
  fails(text, "above 0");
  // One factor per micro-batch size: a second one for the same size would be silently ignored.
  Hardware twice = hw;
  twice.in_step = {{4, 1.10}, {8, 1.05}, {4, 0.73}};
  fails(hardware_to_toml(twice), "compute.in_step has two factors for rows = 4 (1.100 and 0.730)");
  twice.in_step = {{4, 1.10}, {8, 1.05}};
  EXPECT_EQ(load_hardware(write("two.toml", hardware_to_toml(twice))).in_step.size(), 2u);
}

TEST(PlanTime, Bf16MovesHalfTheBytes) {
  Config cfg = model_config(4);
  Hardware hw = reference_hardware();
  hw.link_latency_us = 0;
  const LayoutTime fp32 = predict_layout_time(cfg, hw, 4, 2, 1, 0);
  cfg.train.device = "cuda";
  cfg.train.precision = "bf16";
  const LayoutTime bf16 = predict_layout_time(cfg, hw, 4, 2, 1, 0);
  EXPECT_NEAR(bf16.dp_ms, fp32.dp_ms / 2, 1e-9 * fp32.dp_ms);
  EXPECT_LT(bf16.tp_ms, fp32.tp_ms);  // activations in bf16; the loss's sums stay fp32
  EXPECT_GT(bf16.tp_ms, fp32.tp_ms / 2);
  EXPECT_LT(bf16.compute_ms, fp32.compute_ms);  // element-wise traffic halves, FLOPs stay
}

TEST(PlanTime, GpusHideTheGradientReductionBehindBackward) {
  const Config cfg = model_config(4);
  Hardware gpu = reference_hardware();  // cores = 0: a device per rank
  const LayoutTime t = predict_layout_time(cfg, gpu, 4, 1, 1, 0);
  EXPECT_LT(t.dp_exposed_ms, t.dp_ms);
  EXPECT_GT(t.dp_exposed_ms, 0.0) << "the last bucket is always exposed";
  EXPECT_NEAR(t.step_ms, t.compute_ms + t.tp_ms + t.pp_ms + t.dp_exposed_ms + t.optimizer_ms, 1e-9);
  // A link so slow that the reduction outlasts backward: the rest shows.
  Hardware slow = gpu;
  slow.link_gbs = 1e-3;
  const LayoutTime s = predict_layout_time(cfg, slow, 4, 1, 1, 0);
  EXPECT_NEAR(s.dp_ms - s.dp_exposed_ms, 2.0 / 3.0 * s.compute_ms / 4, 1e-6 * s.dp_ms);
  // ZeRO-1's all-gather comes after the optimizer: at least half stays exposed.
  const LayoutTime z = predict_layout_time(cfg, gpu, 4, 1, 1, 1);
  EXPECT_GE(z.dp_exposed_ms, z.dp_ms / 2);
  // CPU ranks drive their own transfers: nothing is hidden.
  Hardware cpu = gpu;
  cpu.cores = 64;
  const LayoutTime c = predict_layout_time(cfg, cpu, 4, 1, 1, 0);
  EXPECT_EQ(c.dp_exposed_ms, c.dp_ms);
}

TEST(PlanTime, CpuBucketsCostWhatCalibrateMeasured) {
  const Config cfg = model_config(4);
  Hardware cpu = reference_hardware();
  cpu.cores = 64;
  const LayoutTime plain = predict_layout_time(cfg, cpu, 4, 1, 1, 0), plain_zero = predict_layout_time(cfg, cpu, 4, 1, 1, 1);
  Hardware measured = cpu;
  measured.dp_factor = 2.5;
  measured.zero_dp_factor = 3.0;
  const LayoutTime t = predict_layout_time(cfg, measured, 4, 1, 1, 0);
  EXPECT_DOUBLE_EQ(t.dp_ms, plain.dp_ms) << "the collectives' own time is the link's";
  EXPECT_DOUBLE_EQ(t.dp_exposed_ms, 2.5 * plain.dp_ms);
  EXPECT_NEAR(t.step_ms - plain.step_ms, 1.5 * plain.dp_ms, 1e-9 * t.step_ms);
  // ZeRO-1: the reduce-scatters (half the bytes) run from the hooks; the all-gather after AdamW does not.
  const LayoutTime z = predict_layout_time(cfg, measured, 4, 1, 1, 1);
  EXPECT_NEAR(z.dp_exposed_ms, 3.0 * plain_zero.dp_ms / 2 + plain_zero.dp_ms / 2, 1e-9 * z.dp_ms);
  // Nothing to reduce on one data-parallel rank; GPUs overlap on their own streams.
  EXPECT_DOUBLE_EQ(predict_layout_time(cfg, measured, 1, 4, 1, 0).step_ms, predict_layout_time(cfg, cpu, 1, 4, 1, 0).step_ms);
  Hardware gpu = measured;
  gpu.cores = 0;
  Hardware gpu_plain = cpu;
  gpu_plain.cores = 0;
  EXPECT_DOUBLE_EQ(predict_layout_time(cfg, gpu, 4, 1, 1, 0).step_ms, predict_layout_time(cfg, gpu_plain, 4, 1, 1, 0).step_ms);
  // The factors round-trip through the hardware file; a negative one is refused, naming the key.
  testing::ScratchDir dir("plan_dp_factor");
  std::ofstream(dir.str("hw.toml")) << hardware_to_toml(measured);
  const Hardware back = load_hardware(dir.str("hw.toml"));
  EXPECT_NEAR(back.dp_factor, 2.5, 1e-9);
  EXPECT_NEAR(back.zero_dp_factor, 3.0, 1e-9);
  std::string text = hardware_to_toml(measured);
  text.replace(text.find("zero_dp_factor = "), 17, "zero_dp_factor = -");
  std::ofstream(dir.str("bad.toml")) << text;
  try {
    load_hardware(dir.str("bad.toml"));
    ADD_FAILURE() << "a negative zero_dp_factor was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("compute.zero_dp_factor must be 0 or above"), std::string::npos) << e.what();
  }
}

TEST(PlanTime, RingsAcrossGpuNodesUseEveryRail) {
  const Config cfg = model_config(1);
  Hardware hw = reference_hardware();
  hw.link_latency_us = hw.net_latency_us = 0;
  hw.link_gbs = 400, hw.net_gbs = 40, hw.gpus_per_node = 4;
  const double bytes = 4.0 * ParameterTable(cfg.model).total();
  auto ring_ms = [&](int n, double gbs) { return 2.0 * (n - 1) / n * bytes / (gbs * 1e9) * 1e3; };
  // dp 8 over 2 nodes: 4 ranks a node, 4 cards at once (160 GB/s, under NVLink's 400).
  EXPECT_NEAR(predict_layout_time(cfg, hw, 8, 1, 1, 0).dp_ms, ring_ms(8, 160), 1e-9);
  // dp 2 x tp 4: one data-parallel rank a node, one card.
  EXPECT_NEAR(predict_layout_time(cfg, hw, 2, 4, 1, 0).dp_ms, ring_ms(2, 40) * ParameterTable(cfg.model, 4, 0).total() /
                                                                   ParameterTable(cfg.model).total(), 1e-9);
  // Within a node: NVLink.
  EXPECT_NEAR(predict_layout_time(cfg, hw, 4, 1, 1, 0).dp_ms, ring_ms(4, 400), 1e-9);
}

// The calibrated CPU descriptions in hardware/ still load, and still describe a 2-core machine whose
// time model splits bench/layouts.sh's step: dp 2 on two cores is faster than one process, and
// dp 4 on the same two cores is bound by them (and so slower than dp 2).
TEST(PlanTime, ShippedCpuDescriptionsLoadAndPlanTheLayoutsModel) {
  for (const char* name : {"cpu-amd-epyc-zen4-2core.toml", "cpu-amd-epyc-avx2-2core.toml"}) {
    SCOPED_TRACE(name);
    const Hardware hw = load_hardware(std::string(MESHTRAIN_SOURCE_DIR) + "/hardware/" + name);
    EXPECT_EQ(hw.device, "cpu");
    EXPECT_EQ(hw.cores, 2);
    EXPECT_EQ(hw.threads, 1);
    EXPECT_GT(hw.gemm_gflops, 0);
    EXPECT_FALSE(hw.gemm.empty());
    EXPECT_GT(hw.link_gbs, 0);
    Config cfg = default_config();
    cfg.model = small(4, 4, 128, 64, 2048);  // bench/layouts.sh's model
    cfg.train.batch_size = 16;
    cfg.train.grad_accum = 1;
    cfg.parallel.microbatches = 4;
    cfg.train.threads = 1;
    const LayoutTime one = predict_layout_time(cfg, hw, 1, 1, 1, 0);
    const LayoutTime dp2 = predict_layout_time(cfg, hw, 2, 1, 1, 0);
    const LayoutTime dp4 = predict_layout_time(cfg, hw, 4, 1, 1, 0);
    EXPECT_TRUE(std::isfinite(one.step_ms));
    EXPECT_GT(one.step_ms, 0);
    EXPECT_LT(dp2.step_ms, one.step_ms);
    EXPECT_FALSE(dp2.oversubscribed);
    EXPECT_TRUE(dp4.oversubscribed);
    EXPECT_GT(dp4.step_ms, dp2.step_ms);
  }
}

TEST(PlanTime, ShippedGpuDescriptionsLoadAndPlanGpt2OnEightGpus) {
  for (const char* name : {"gpu-h100-sxm-8x.toml", "gpu-h200-sxm-8x.toml"}) {
    SCOPED_TRACE(name);
    const Hardware hw = load_hardware(std::string(MESHTRAIN_SOURCE_DIR) + "/hardware/" + name);
    EXPECT_EQ(hw.device, "cuda");
    EXPECT_EQ(hw.precision, "bf16");
    EXPECT_EQ(hw.gpus_per_node, 8);
    Config cfg = default_config();
    cfg.model = small(12, 12, 768, 1024, 50257);  // GPT-2 124M
    cfg.train.device = "cuda";
    cfg.train.precision = "bf16";
    cfg.train.batch_size = 64;
    cfg.train.grad_accum = 8;  // 512 sequences of 1,024: llm.c's 0.5M-token step
    const LayoutTime t = predict_layout_time(cfg, hw, 8, 1, 1, 0);
    EXPECT_GT(t.mfu, 20.0);
    EXPECT_LT(t.mfu, 70.0);
    EXPECT_LT(t.dp_exposed_ms, t.dp_ms);
  }
}

}  // namespace time_model
}  // namespace meshtrain

namespace meshtrain {
namespace time_model {

TEST(PlanTime, AHardwareDescriptionOfAnotherDeviceOrPrecisionIsRefused) {
  PlanArgs args;
  args.ranks = 2;
  args.overrides = {"model.n_layer=2", "model.n_head=2", "model.n_embd=32", "model.seq_len=16", "model.vocab_size=200",
                    "train.batch_size=4"};
  args.hardware = std::string(MESHTRAIN_SOURCE_DIR) + "/hardware/gpu-h100-sxm-8x.toml";
  auto refused = [&](const std::vector<std::string>& more, const std::string& expect) {
    PlanArgs a = args;
    a.overrides.insert(a.overrides.end(), more.begin(), more.end());
    try {
      run_plan(a);
      ADD_FAILURE() << "accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(expect), std::string::npos) << e.what();
    }
  };
  refused({"train.device=cpu"}, "is of cuda ranks, but train.device = cpu");
  refused({"train.device=cuda", "train.precision=fp32"}, "gives bf16 compute rates, but train.precision = fp32");
  // train.device = auto takes the description's device.
  PlanArgs ok = args;
  ok.overrides.push_back("train.precision=bf16");
  EXPECT_NO_THROW(run_plan(ok));
}

// --gpus-per-node replaces the description's ranks per node: dp 8 of H100s over two nodes of 4
// reduces over the network, over one node of 8 over NVLink; without a description it is refused.
TEST(PlanTime, GpusPerNodeOnTheCommandLineReplacesTheDescriptions) {
  PlanArgs args;
  args.ranks = 8;
  args.json = true;
  args.overrides = {"model.n_layer=2", "model.n_head=2", "model.n_embd=64", "model.seq_len=32", "model.vocab_size=512",
                    "train.batch_size=8", "train.precision=bf16"};
  args.hardware = std::string(MESHTRAIN_SOURCE_DIR) + "/hardware/gpu-h100-sxm-8x.toml";
  const auto dp8_ms = [&](int gpus_per_node) {
    PlanArgs a = args;
    a.gpus_per_node = gpus_per_node;
    ::testing::internal::CaptureStdout();
    run_plan(a);
    std::fflush(stdout);
    const nlohmann::json j = nlohmann::json::parse(::testing::internal::GetCapturedStdout());
    for (const auto& o : j)
      if (o["dp"] == 8 && o["tp"] == 1 && o["pp"] == 1 && o["zero"] == 0) return o["dp_ms"].get<double>();
    ADD_FAILURE() << "no dp 8 layout in " << j.dump();
    return 0.0;
  };
  const double described = dp8_ms(0), one_node = dp8_ms(8), two_nodes = dp8_ms(4);
  EXPECT_DOUBLE_EQ(described, one_node);  // the description says 8
  EXPECT_GT(two_nodes, 2 * one_node);  // the network: 4 us a ring step and 4 x 45 GB/s, against 1.5 us and 450
  PlanArgs bare = args;
  bare.hardware.clear();
  bare.gpus_per_node = 4;
  try {
    run_plan(bare);
    ADD_FAILURE() << "accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--gpus-per-node 4 needs --hardware"), std::string::npos) << e.what();
  }
}

// A calibration taken while the machine's speed moved says so (a shared VM's neighbours moved a
// pass's whole micro-batches from 83 ms to 47 ms; the parts timed in a slow moment gave factors < 1).
TEST(PlanTime, ACalibrationWhoseMachineMovedSaysSo) {
  EXPECT_EQ(calibration_steadiness_warning({0.0824, 0.0834, 0.0801}, {{4, 1.12}, {2, 1.19}, {1, 1.25}}), "");
  const std::string passes = calibration_steadiness_warning({0.0824, 0.0834, 0.0466}, {{4, 1.12}});
  EXPECT_NE(passes.find("took 46.6 to 83.4 ms in its passes (+79%)"), std::string::npos) << passes;
  EXPECT_NE(passes.find("calibrate again while the machine is quiet"), std::string::npos) << passes;
  // bench/plan_compare.py leaves out a round whose calibration log holds these words.
  EXPECT_NE(passes.find("this machine's speed moved while it was measured"), std::string::npos) << passes;
  EXPECT_EQ(passes.find("sum of its parts"), std::string::npos) << passes;
  const std::string parts = calibration_steadiness_warning({0.080, 0.081}, {{4, 0.65}, {2, 0.95}, {1, 0.74}});
  EXPECT_NE(parts.find("4 sequences ran in 0.65 x the sum of its parts"), std::string::npos) << parts;
  EXPECT_NE(parts.find("1 sequences ran in 0.74 x"), std::string::npos) << parts;
  EXPECT_EQ(parts.find("2 sequences"), std::string::npos) << parts;
  EXPECT_EQ(parts.find("in its passes"), std::string::npos) << parts;
}

TEST(PlanTime, CalibrateWritesADescriptionThatPlansOneRankAndRefusesToOverwrite) {
  testing::ScratchDir dir("plan_cal");
  CalibrateArgs args;
  args.overrides = {"model.n_layer=2", "model.n_head=2", "model.n_embd=32", "model.seq_len=16", "model.vocab_size=200",
                    "train.batch_size=4", "train.threads=1"};
  args.ranks = 2;
  args.out = dir.str("hw.toml");
  LocalCommunicator world;
  run_plan_calibrate(args, world);
  const Hardware hw = load_hardware(args.out);
  EXPECT_GT(hw.gemm_gflops, 0);
  EXPECT_GT(hw.attention_gflops, 0);
  EXPECT_GT(hw.elementwise_gbs, 0);
  EXPECT_GT(hw.adamw_params_per_s, 0);
  EXPECT_GE(hw.gemm.size(), 5u) << "the linears of dp 1 and dp 2 micro-batches (and tp 2)";
  // One factor per micro-batch size (4 and 2 rows here), from the pass that was kept: entries of the
  // passes before it would come first and be the ones the time model reads.
  std::vector<int> rows;
  for (const auto& [r, f] : hw.in_step) rows.push_back(r);
  std::sort(rows.begin(), rows.end());
  EXPECT_EQ(rows, (std::vector<int>{2, 4}));
  EXPECT_EQ(hw.link_gbs, 0) << "one rank measures no collective";
  const Config cfg = load_config("", args.overrides);
  EXPECT_GT(predict_layout_time(cfg, hw, 1, 1, 1, 0).step_ms, 0);
  try {
    predict_layout_time(cfg, hw, 2, 1, 1, 0);
    ADD_FAILURE() << "two ranks planned without a link";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("mpiexec -n 2 meshtrain plan calibrate"), std::string::npos) << e.what();
  }
  try {
    run_plan_calibrate(args, world);
    ADD_FAILURE() << "overwrote " << args.out;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--overwrite"), std::string::npos) << e.what();
  }
}

}  // namespace time_model
}  // namespace meshtrain
