// `meshtrain plan`'s memory model: the activation bytes it predicts are the bytes the model
// allocates (one plan, two callers), parameters and optimizer state follow the layout, and layouts
// that cannot run say why.
#include <gtest/gtest.h>

#include <vector>

#include "core/communicator.h"
#include "launch/config.h"
#include "launch/plan.h"
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
      const int64_t predicted = Gpt::slot_bytes(Gpt::activation_shape(c.cfg, c.B, c.T, 1, c.pp, c.stage, mode, *cpu));
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
  const auto bytes = [&](Recompute m) { return Gpt::slot_bytes(Gpt::activation_shape(cfg, 4, 64, 1, 1, 0, m, *cpu)); };
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
