// The GPT model as a whole: parameter table and layout-invariant initialisation, a finite-difference
// check of the full backward pass, overfitting one batch, determinism, gradient accumulation, the
// learning-rate schedule and sampling.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <vector>

#include "core/rng.h"
#include "core/threads.h"
#include "model/gpt.h"
#include "model/optimizer.h"
#include "model/sampler.h"
#include "core/communicator.h"
#include "test_util.h"

using namespace meshtrain;

namespace {

GptConfig tiny_config() {
  GptConfig c;
  c.n_layer = 2;
  c.n_head = 2;
  c.n_embd = 16;
  c.seq_len = 8;
  c.vocab_size = 37;  // padded to 128
  return c;
}

std::vector<int32_t> random_tokens(size_t n, int vocab, uint64_t seed) {
  CounterRng rng(seed, 3);
  std::vector<int32_t> t(n);
  for (auto& x : t) x = static_cast<int32_t>(rng.below(vocab));
  return t;
}

}  // namespace

TEST(Params, TableMatchesConfigCount) {
  GptConfig c = tiny_config();
  ParameterTable table(c);
  EXPECT_EQ(table.total(), c.num_params());
  EXPECT_EQ(table.get("wte").shape, (Shape{128, 16}));
  EXPECT_EQ(table.get("h.1.attn.c_attn.weight").shape, (Shape{48, 16}));
  EXPECT_EQ(table.get("h.0.mlp.c_proj.weight").shape, (Shape{16, 64}));
  EXPECT_TRUE(table.get("h.0.mlp.c_fc.weight").decay);
  EXPECT_FALSE(table.get("h.0.mlp.c_fc.bias").decay);
  EXPECT_THROW(table.get("h.9.nothing"), Error);
}

TEST(Params, InitialisationIsGpt2Like) {
  GptConfig c = tiny_config();
  c.n_embd = 64;
  c.n_head = 4;
  ParameterTable table(c);
  std::vector<float> p(table.total());
  table.initialize(p.data(), 5);
  auto stats = [&](const std::string& name, int64_t rows = -1) {
    const auto& s = table.get(name);
    int64_t n = rows < 0 ? s.numel : rows * s.shape[1];
    double sum = 0, sq = 0;
    for (int64_t i = 0; i < n; ++i) {
      sum += p[s.offset + i];
      sq += p[s.offset + i] * p[s.offset + i];
    }
    return std::pair{sum / n, std::sqrt(sq / n - (sum / n) * (sum / n))};
  };
  EXPECT_NEAR(stats("h.0.mlp.c_fc.weight").second, 0.02, 0.002);
  EXPECT_NEAR(stats("h.0.mlp.c_proj.weight").second, 0.02 / std::sqrt(4.0), 0.002);
  EXPECT_NEAR(stats("wte", 37).second, 0.02, 0.003);
  const auto& wte = table.get("wte");
  for (int64_t i = 37 * 64; i < wte.numel; ++i) ASSERT_EQ(p[wte.offset + i], 0.0f) << "padded row not zero";
  EXPECT_EQ(p[table.get("h.1.ln_2.weight").offset], 1.0f);
  EXPECT_EQ(p[table.get("h.1.ln_2.bias").offset], 0.0f);
}

TEST(Params, ShardOfATensorGetsTheSameValuesAsTheWhole) {
  std::vector<float> whole(1000), part(300);
  fill_normal(whole.data(), 1000, 99, "h.0.attn.c_attn.weight", 0, 0.02f);
  fill_normal(part.data(), 300, 99, "h.0.attn.c_attn.weight", 450, 0.02f);
  for (int i = 0; i < 300; ++i) ASSERT_EQ(part[i], whole[450 + i]);
  std::vector<float> other(300);
  fill_normal(other.data(), 300, 99, "h.0.attn.c_proj.weight", 450, 0.02f);
  EXPECT_NE(other[0], part[0]) << "different names must give different values";
}

void expect_backward_matches_finite_differences(const GptConfig& c) {
  LocalCommunicator comm;
  Gpt model(c, comm);
  model.initialize(11);
  // Larger weights than GPT-2's 0.02 make every path carry a measurable gradient.
  CounterRng r(1, 1);
  float* p = model.params().f32();
  for (const auto& s : model.table().specs()) {
    int64_t rows = s.name == "wte" ? c.vocab_size * s.shape[1] : s.numel;
    for (int64_t i = 0; i < rows; ++i) p[s.offset + i] += 0.3f * (r.uniform() - 0.5f);
  }
  const int B = 2, T = 6;
  auto inp = random_tokens(B * T, c.vocab_size, 1), tgt = random_tokens(B * T, c.vocab_size, 2);
  tgt[3] = -1;  // one ignored position
  model.zero_grad();
  model.forward(inp.data(), tgt.data(), B, T, true, 1.0f);
  model.backward();
  std::vector<float> analytic(model.grads().f32(), model.grads().f32() + model.grads().numel());

  int checked = 0;
  double worst = 0.0;
  for (const auto& s : model.table().specs()) {
    for (int k = 0; k < 3; ++k) {
      int64_t i = s.offset + static_cast<int64_t>(r.below(s.name == "wte" ? c.vocab_size * s.shape[1] : s.numel));
      float saved = p[i];
      const float eps = 1e-2f;
      p[i] = saved + eps;
      double lp = model.forward(inp.data(), tgt.data(), B, T);
      p[i] = saved - eps;
      double lm = model.forward(inp.data(), tgt.data(), B, T);
      p[i] = saved;
      double numeric = (lp - lm) / (2.0 * eps);
      double err = std::fabs(numeric - analytic[i]) / std::max(1e-2, std::fabs(numeric) + std::fabs(analytic[i]));
      worst = std::max(worst, err);
      EXPECT_LT(err, 3e-2) << s.name << " element " << i - s.offset << ": analytic " << analytic[i] << " numeric "
                           << numeric;
      ++checked;
    }
  }
  EXPECT_GT(checked, 50);
  ::testing::Test::RecordProperty("worst_relative_error", std::to_string(worst));
}

TEST(Gpt, FullBackwardMatchesFiniteDifferences) { expect_backward_matches_finite_differences(tiny_config()); }

GptConfig rope_config() {
  GptConfig c = tiny_config();
  c.pos_embedding = "rope";
  c.rope_theta = 100.0;  // turns fast enough over 8 positions for every pair to matter
  return c;
}

TEST(Gpt, RopeModelHasNoPositionTableAndItsBackwardMatchesFiniteDifferences) {
  const GptConfig c = rope_config();
  ParameterTable table(c);
  EXPECT_EQ(table.find("wpe"), nullptr);
  EXPECT_EQ(table.total(), c.num_params());
  EXPECT_EQ(c.num_params(), tiny_config().num_params() - c.seq_len * c.n_embd);
  expect_backward_matches_finite_differences(c);
}

TEST(Gpt, RopeChangesTheModelAndRejectsOddHeads) {
  // Same weights (RoPE only drops wpe): the logits must differ from position 1 on, not at 0.
  GptConfig c = rope_config();
  LocalCommunicator comm;
  Gpt rope(c, comm), plain(tiny_config(), comm);
  plain.initialize(3);
  std::vector<float> p(plain.table().total());
  plain.get_params(p.data());
  std::vector<float> q(rope.table().total());
  for (const auto& s : rope.table().specs())
    std::memcpy(q.data() + s.offset, p.data() + plain.table().get(s.name).offset, s.numel * sizeof(float));
  rope.set_params(q.data());
  // Zero the position table so the only positional signal left is RoPE's.
  std::memset(plain.param("wpe").f32(), 0, plain.param("wpe").nbytes());
  auto tokens = random_tokens(6, c.vocab_size, 4);
  plain.forward(tokens.data(), nullptr, 1, 6);
  rope.forward(tokens.data(), nullptr, 1, 6);
  EXPECT_EQ(std::memcmp(plain.logits_row(0), rope.logits_row(0), 128 * sizeof(float)), 0) << "position 0 is not turned";
  float diff = 0.0f;
  for (int v = 0; v < c.vocab_size; ++v) diff = std::max(diff, std::fabs(plain.logits_row(5)[v] - rope.logits_row(5)[v]));
  EXPECT_GT(diff, 1e-4f);
  c.n_embd = 18;
  c.n_head = 2;  // head size 9
  EXPECT_THROW(c.validate(), Error);
  c = rope_config();
  c.pos_embedding = "alibi";
  EXPECT_THROW(c.validate(), Error);
}

// Logits of every position through the key/value cache (prefill, then one token at a time) equal a
// full forward's, and the cache refuses to pass seq_len without changing what it holds.
void expect_cache_matches_full_forward(const GptConfig& c, Recompute recompute) {
  LocalCommunicator comm;
  Gpt model(c, comm);
  model.initialize(21);
  model.set_recompute(recompute);
  const int T = c.seq_len, V = c.padded_vocab();
  auto tokens = random_tokens(T, c.vocab_size, 9);
  model.forward(tokens.data(), nullptr, 1, T);
  std::vector<float> full(static_cast<size_t>(T) * V);
  for (int t = 0; t < T; ++t) std::memcpy(full.data() + t * V, model.logits_row(t), V * sizeof(float));
  double worst = 0.0;
  for (int prefill : {1, 3}) {
    model.reset_cache();
    const float* l = model.forward_cached_logits(tokens.data(), prefill);
    for (int t = prefill - 1; t < T; ++t) {
      if (t >= prefill) l = model.forward_cached_logits(tokens.data() + t, 1);
      for (int v = 0; v < c.vocab_size; ++v) {
        worst = std::max(worst, static_cast<double>(std::fabs(l[v] - full[t * V + v])));
        ASSERT_NEAR(l[v], full[t * V + v], 1e-5) << "position " << t << " token " << v << " prefill " << prefill;
      }
    }
    EXPECT_EQ(model.cached_positions(), T);
  }
  try {
    model.forward_cached_logits(tokens.data(), 1);
    ADD_FAILURE() << "a token past seq_len went into the cache";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("key/value cache holds model.seq_len = 8 positions"), std::string::npos)
        << e.what();
  }
  EXPECT_EQ(model.cached_positions(), T);
  ::testing::Test::RecordProperty("worst_logit_difference", std::to_string(worst));
}

TEST(Gpt, KeyValueCacheLogitsMatchFullForwardAtEveryPosition) {
  expect_cache_matches_full_forward(tiny_config(), Recompute::none);
  expect_cache_matches_full_forward(rope_config(), Recompute::none);
  expect_cache_matches_full_forward(rope_config(), Recompute::full);  // blocks share one activation set
}

TEST(Gpt, PaddedVocabularyGetsNoGradient) {
  GptConfig c = tiny_config();
  LocalCommunicator comm;
  Gpt model(c, comm);
  model.initialize(3);
  auto inp = random_tokens(16, c.vocab_size, 5), tgt = random_tokens(16, c.vocab_size, 6);
  model.zero_grad();
  model.forward(inp.data(), tgt.data(), 2, 8, true, 1.0f);
  model.backward();
  Tensor g = model.grad("wte");
  for (int64_t i = c.vocab_size * c.n_embd; i < g.numel(); ++i) ASSERT_EQ(g.f32()[i], 0.0f);
}

TEST(Gpt, TinyModelOverfitsOneBatch) {
  GptConfig c = tiny_config();
  c.n_embd = 32;
  LocalCommunicator comm;
  Gpt model(c, comm);
  model.initialize(7);
  AdamWConfig oc;
  oc.weight_decay = 0.0f;
  AdamW opt(model.table(), oc);
  auto inp = random_tokens(32, c.vocab_size, 8), tgt = random_tokens(32, c.vocab_size, 9);
  float first = 0, loss = 0;
  for (int step = 0; step < 150; ++step) {
    model.zero_grad();
    loss = model.forward(inp.data(), tgt.data(), 4, 8, true, 1.0f);
    if (step == 0) first = loss;
    model.backward();
    opt.step(model.params(), model.grads(), 1e-2f);
  }
  EXPECT_NEAR(first, std::log(37.0f), 0.3f);
  EXPECT_LT(loss, 0.1f) << "a tiny model should memorise one batch";
}

TEST(Gpt, SameSeedGivesBitIdenticalLosses) {
  auto run = [] {
    GptConfig c = tiny_config();
    LocalCommunicator comm;
    Gpt model(c, comm);
    model.initialize(21);
    AdamW opt(model.table(), AdamWConfig{});
    std::vector<float> losses;
    for (int step = 0; step < 5; ++step) {
      auto inp = random_tokens(16, c.vocab_size, 100 + step), tgt = random_tokens(16, c.vocab_size, 200 + step);
      model.zero_grad();
      losses.push_back(model.forward(inp.data(), tgt.data(), 2, 8, true, 1.0f));
      model.backward();
      opt.step(model.params(), model.grads(), 3e-3f);
    }
    return losses;
  };
  auto a = run(), b = run();
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i], b[i]) << "step " << i;
  EXPECT_NE(a.front(), a.back());
}

// The device-side entry points a captured CUDA graph uses (tokens and targets already in the model's
// buffers, losses left in losses()) compute exactly what forward() does; on the CPU backend too.
TEST(Gpt, QueuedForwardMatchesForward) {
  GptConfig c = tiny_config();
  LocalCommunicator comm;
  Gpt a(c, comm), b(c, comm);
  a.initialize(8);
  b.initialize(8);
  const int B = 2, T = 8, BT = B * T;
  auto inp = random_tokens(BT, c.vocab_size, 40), tgt = random_tokens(BT, c.vocab_size, 41);
  a.zero_grad();
  const float la = a.forward(inp.data(), tgt.data(), B, T, true, 0.5f);
  a.backward();
  b.zero_grad();
  std::copy(inp.begin(), inp.end(), b.input_tokens(B, T).data<int32_t>());
  std::copy(tgt.begin(), tgt.end(), b.input_targets(B, T).data<int32_t>());
  b.forward_queued(B, T, true, true, 0.5f / BT);
  b.backward();
  Tensor losses = b.losses();
  ASSERT_EQ(losses.numel(), BT);
  double sum = 0.0;
  for (int i = 0; i < BT; ++i) sum += losses.f32()[i];
  EXPECT_EQ(la, static_cast<float>(sum / BT));
  ASSERT_EQ(a.grads().numel(), b.grads().numel());
  EXPECT_EQ(0, std::memcmp(a.grads().raw(), b.grads().raw(), a.grads().nbytes()));
}

TEST(Gpt, GradientAccumulationMatchesOneBigBatch) {
  GptConfig c = tiny_config();
  LocalCommunicator comm;
  Gpt big(c, comm), acc(c, comm);
  big.initialize(4);
  acc.initialize(4);
  auto inp = random_tokens(32, c.vocab_size, 30), tgt = random_tokens(32, c.vocab_size, 31);
  big.zero_grad();
  float lbig = big.forward(inp.data(), tgt.data(), 4, 8, true, 1.0f);
  big.backward();
  acc.zero_grad();
  float l1 = acc.forward(inp.data(), tgt.data(), 2, 8, true, 0.5f);
  acc.backward();
  float l2 = acc.forward(inp.data() + 16, tgt.data() + 16, 2, 8, true, 0.5f);
  acc.backward();
  EXPECT_NEAR(lbig, 0.5f * (l1 + l2), 1e-5f);
  const float* gb = big.grads().f32();
  const float* ga = acc.grads().f32();
  double num = 0, den = 0;
  for (int64_t i = 0; i < big.grads().numel(); ++i) {
    num += (gb[i] - ga[i]) * (gb[i] - ga[i]);
    den += gb[i] * gb[i];
  }
  EXPECT_LT(std::sqrt(num / den), 1e-5);
}

TEST(Gpt, RejectsOutOfRangeTokensAndContexts) {
  GptConfig c = tiny_config();
  LocalCommunicator comm;
  Gpt model(c, comm);
  model.initialize(1);
  std::vector<int32_t> bad(8, 0), tgt(8, 1);
  bad[5] = 37;
  EXPECT_THROW(model.forward(bad.data(), tgt.data(), 1, 8), Error);
  std::vector<int32_t> longer(9, 1);
  EXPECT_THROW(model.forward(longer.data(), longer.data(), 1, 9), Error);
}

TEST(Schedule, WarmupThenCosineToMinLr) {
  EXPECT_FLOAT_EQ(lr_at(0, 10, 100, 1.0f, 0.1f), 0.1f);
  EXPECT_FLOAT_EQ(lr_at(9, 10, 100, 1.0f, 0.1f), 1.0f);
  EXPECT_FLOAT_EQ(lr_at(10, 10, 100, 1.0f, 0.1f), 1.0f);
  EXPECT_NEAR(lr_at(99, 10, 100, 1.0f, 0.1f), 0.1f, 1e-6f);
  float mid = lr_at(55, 10, 100, 1.0f, 0.1f);
  EXPECT_GT(mid, 0.5f);
  EXPECT_LT(mid, 0.6f);
  for (int s = 11; s < 100; ++s) EXPECT_LE(lr_at(s, 10, 100, 1.0f, 0.1f), lr_at(s - 1, 10, 100, 1.0f, 0.1f));
}

TEST(Optimizer, ClipsByGlobalNorm) {
  GptConfig c = tiny_config();
  ParameterTable table(c);
  AdamWConfig oc;
  oc.grad_clip = 1.0f;
  AdamW opt(table, oc);
  Tensor p = Tensor::zeros({table.total()}), g = Tensor::empty({table.total()});
  for (int64_t i = 0; i < g.numel(); ++i) g.f32()[i] = 0.5f;
  float norm = opt.step(p, g, 0.1f);
  EXPECT_NEAR(norm, 0.5 * std::sqrt(static_cast<double>(table.total())), 1e-2);
  // First Adam step moves every parameter by about lr whatever the scale.
  EXPECT_NEAR(p.f32()[table.get("ln_f.bias").offset], -0.1f, 1e-4f);
}

TEST(Sampler, GreedyTopKAndNoPaddedIds) {
  std::vector<float> logits = {0.1f, 2.0f, -1.0f, 1.5f, 9.0f /* a padded column */};
  CounterRng rng(1, 0);
  EXPECT_EQ(sample_token(logits.data(), 4, 0.0f, 0, rng), 1);
  EXPECT_EQ(sample_token(logits.data(), 4, 1.0f, 1, rng), 1);
  std::vector<int> counts(5, 0);
  for (int i = 0; i < 2000; ++i) counts[sample_token(logits.data(), 4, 1.0f, 2, rng)]++;
  EXPECT_EQ(counts[4], 0);
  EXPECT_EQ(counts[0] + counts[2], 0) << "top-2 sampling drew outside the top 2";
  EXPECT_GT(counts[1], counts[3]);
  EXPECT_GT(counts[3], 300);
}

TEST(Sampler, TopPKeepsTheNucleusAndRepetitionPenaltyFollowsCtrl) {
  // Probabilities at temperature 1: about 0.64, 0.24, 0.09, 0.03.
  std::vector<float> logits = {3.0f, 2.0f, 1.0f, 0.0f};
  CounterRng rng(2, 0);
  SamplingParams p;
  p.temperature = 1.0f;
  p.top_k = 0;
  p.top_p = 0.5f;  // the first token alone reaches it
  for (int i = 0; i < 200; ++i) ASSERT_EQ(sample_token(logits.data(), 4, p, {}, rng), 0);
  p.top_p = 0.8f;  // the first two
  std::vector<int> counts(4, 0);
  for (int i = 0; i < 2000; ++i) counts[sample_token(logits.data(), 4, p, {}, rng)]++;
  EXPECT_EQ(counts[2] + counts[3], 0) << "top-p 0.8 drew outside the two likeliest";
  EXPECT_GT(counts[1], 300);
  // Penalty 4 on token 0 (seen twice, applied once): 3 / 4 = 0.75 < 2, so greedy picks token 1;
  // a negative logit is multiplied instead: -1 * 4 keeps token 2 below token 3 at 0.
  p.temperature = 0.0f;
  p.repetition_penalty = 4.0f;
  EXPECT_EQ(sample_token(logits.data(), 4, p, {0, 0}, rng), 1);
  std::vector<float> neg = {-1.0f, -1.5f};
  EXPECT_EQ(sample_token(neg.data(), 2, p, {0}, rng), 1);
  EXPECT_EQ(logits[0], 3.0f) << "the caller's logits were modified";
  p.top_p = 0.0f;
  EXPECT_THROW(check_sampling(p), Error);
  p.top_p = 1.0f;
  p.repetition_penalty = 0.0f;
  EXPECT_THROW(check_sampling(p), Error);
}

TEST(Optimizer, SplitRangesUpdateExactlyLikeTheWholeBuffer) {
  GptConfig c = tiny_config();
  ParameterTable table(c);
  const int64_t n = table.total(), cut1 = n / 3 + 5, cut2 = 2 * n / 3 + 1;  // cuts inside parameters
  AdamW whole(table, AdamWConfig{});
  AdamW lo(table, AdamWConfig{}, {{0, cut1}, {cut2, n}}), hi(table, AdamWConfig{}, {{cut1, cut2}});
  EXPECT_EQ(lo.m().numel() + hi.m().numel(), n);
  Tensor p1 = Tensor::empty({n}), p2 = Tensor::empty({n}), g = Tensor::empty({n});
  table.initialize(p1.f32(), 3);
  p2.copy_from(p1);
  auto rnd = meshtrain::testing::random_floats(n, 17);
  std::copy(rnd.begin(), rnd.end(), g.f32());
  for (int step = 0; step < 3; ++step) {
    whole.update(p1, g, 1e-2f, 0.5f);
    lo.update(p2, g, 1e-2f, 0.5f);
    hi.update(p2, g, 1e-2f, 0.5f);
  }
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(p1.f32()[i], p2.f32()[i]) << "element " << i;
  EXPECT_NEAR(lo.sum_squares(g) + hi.sum_squares(g), whole.sum_squares(g), 1e-9 * whole.sum_squares(g));
}

TEST(Gpt, GradReadyHookReportsFinalSuffixesInOrder) {
  GptConfig c = tiny_config();
  LocalCommunicator comm;
  Gpt model(c, comm);
  model.initialize(8);
  auto inp = random_tokens(16, c.vocab_size, 40), tgt = random_tokens(16, c.vocab_size, 41);
  std::vector<std::pair<int64_t, std::vector<float>>> snapshots;
  model.set_grad_ready_hook([&](int64_t from) {
    const float* g = model.grads().f32();
    snapshots.push_back({from, std::vector<float>(g + from, g + model.grads().numel())});
  });
  model.zero_grad();
  model.forward(inp.data(), tgt.data(), 2, 8, true, 1.0f);
  model.backward();
  ASSERT_EQ(snapshots.size(), static_cast<size_t>(c.n_layer + 2));
  EXPECT_EQ(snapshots.back().first, 0);
  for (size_t i = 1; i < snapshots.size(); ++i) EXPECT_LT(snapshots[i].first, snapshots[i - 1].first);
  const float* final_g = model.grads().f32();
  for (const auto& [from, snap] : snapshots)
    for (size_t i = 0; i < snap.size(); ++i) ASSERT_EQ(snap[i], final_g[from + i]) << "gradient changed after ready";
}

TEST(Params, TensorParallelShardsTileTheWholeTensorAndInitialiseAsIt) {
  GptConfig c = tiny_config();  // vocab 37 -> 128 padded, so some vocabulary shards are all padding
  c.n_head = 4;
  ParameterTable whole(c);
  std::vector<float> w(whole.total());
  whole.initialize(w.data(), 13);
  for (int t : {2, 4}) {
    for (const auto& s : whole.specs()) {
      std::vector<int> covered(s.numel, 0);
      for (int r = 0; r < t; ++r) {
        ParameterTable shard(c, t, r);
        const ParamSpec& ss = shard.get(s.name);
        std::vector<float> p(shard.total());
        shard.initialize(p.data(), 13);
        for (int64_t i = 0; i < ParameterTable::shard_rows(ss); ++i) {
          RowSlice slice = shard.shard_row(ss, r, i);
          for (int64_t j = 0; j < slice.len; ++j) {
            ASSERT_EQ(p[ss.offset + i * slice.len + j], w[s.offset + slice.global_offset + j])
                << s.name << " tp " << t << " rank " << r;
            if (ss.shard != ShardKind::replicated) covered[slice.global_offset + j]++;
          }
        }
      }
      if (t > 1 && s.name != "wpe" && s.name.find("ln_") == std::string::npos &&
          s.name.find("c_proj.bias") == std::string::npos) {
        for (int64_t i = 0; i < s.numel; ++i) ASSERT_EQ(covered[i], 1) << s.name << " element " << i;
      }
    }
  }
  EXPECT_THROW(ParameterTable(c, 3, 0), Error) << "4 heads do not split over 3 ranks";
}

TEST(Gpt, RecomputationGivesBitIdenticalGradientsWithLessMemory) {
  GptConfig c = tiny_config();
  c.n_layer = 3;
  auto inp = random_tokens(16, c.vocab_size, 50), tgt = random_tokens(16, c.vocab_size, 51);
  auto run = [&](Recompute mode, size_t* bytes) {
    LocalCommunicator comm;
    Gpt model(c, comm);
    model.set_recompute(mode);
    model.initialize(12);
    model.zero_grad();
    float loss = model.forward(inp.data(), tgt.data(), 2, 8, true, 1.0f);
    model.backward();
    *bytes = model.activation_bytes();
    std::vector<float> g(model.grads().f32(), model.grads().f32() + model.grads().numel());
    g.push_back(loss);
    return g;
  };
  size_t none_bytes = 0, sel_bytes = 0, full_bytes = 0;
  auto none = run(Recompute::none, &none_bytes);
  auto sel = run(Recompute::selective, &sel_bytes);
  auto full = run(Recompute::full, &full_bytes);
  ASSERT_EQ(none.size(), sel.size());
  for (size_t i = 0; i < none.size(); ++i) {
    ASSERT_EQ(none[i], sel[i]) << "selective, element " << i;
    ASSERT_EQ(none[i], full[i]) << "full, element " << i;
  }
  EXPECT_LT(sel_bytes, none_bytes);
  EXPECT_LT(full_bytes, sel_bytes);
  EXPECT_THROW(parse_recompute("some"), Error);
}

TEST(Gpt, FullRecomputationCutsActivationsOfATwelveLayerModelFourfold) {
  GptConfig c;
  c.n_layer = 12;
  c.n_head = 4;
  c.n_embd = 64;
  c.seq_len = 128;
  c.vocab_size = 512;
  auto tokens = random_tokens(2 * 128, c.vocab_size, 60);
  auto bytes = [&](Recompute mode) {
    LocalCommunicator comm;
    Gpt model(c, comm);
    model.set_recompute(mode);
    model.initialize(1);
    model.forward(tokens.data(), tokens.data(), 2, 128, true, 1.0f);
    return model.activation_bytes();
  };
  size_t none = bytes(Recompute::none), full = bytes(Recompute::full);
  RecordProperty("none_bytes", std::to_string(none));
  RecordProperty("full_bytes", std::to_string(full));
  EXPECT_GE(static_cast<double>(none) / static_cast<double>(full), 4.0) << none << " vs " << full;
}

// ---- LoRA --------------------------------------------------------------------------------------

namespace {
Tensor copy_of(const Tensor& t) {
  Tensor c = Tensor::empty(t.shape());
  c.copy_from(t);
  return c;
}

LoraConfig tiny_lora() {
  LoraConfig lc;
  lc.rank = 3;
  lc.alpha = 6.0;
  return lc;
}
}  // namespace

TEST(Lora, StartsAtTheBaseModelAndTrainsOnlyTheAdapters) {
  GptConfig c = tiny_config();
  LocalCommunicator comm;
  Gpt model(c, comm);
  model.initialize(11);
  const int B = 2, T = 8;
  auto inp = random_tokens(B * T, c.vocab_size, 1), tgt = random_tokens(B * T, c.vocab_size, 2);
  const float base_loss = model.forward(inp.data(), tgt.data(), B, T);
  Lora& lora = model.enable_lora(tiny_lora());
  lora.initialize(5);
  model.set_frozen(true);
  EXPECT_EQ(model.forward(inp.data(), tgt.data(), B, T), base_loss) << "B = 0 must leave the model unchanged";
  const std::vector<float> base(model.params().f32(), model.params().f32() + model.table().total());
  const std::vector<float> adapters0(lora.params().f32(), lora.params().f32() + lora.table().total());
  AdamWConfig oc;
  oc.weight_decay = 0.0f;
  AdamW opt(lora.table(), oc);
  float first = 0.0f, last = 0.0f;
  for (int step = 0; step < 20; ++step) {
    model.zero_grad();
    lora.zero_grad();
    last = model.forward(inp.data(), tgt.data(), B, T, true);
    if (step == 0) first = last;
    model.backward();
    if (step == 0) {  // a frozen model computes no gradients for its linear layers and embeddings
      for (const char* name : {"h.0.attn.c_attn.weight", "h.1.mlp.c_proj.weight", "wte", "wpe"}) {
        const Tensor g = model.grad(name);
        for (int64_t i = 0; i < g.numel(); ++i) ASSERT_EQ(g.f32()[i], 0.0f) << name << " gradient written";
      }
    }
    opt.step(lora.params(), lora.grads(), 1e-2f);
  }
  EXPECT_LT(last, first - 0.1f) << "the adapters did not learn";
  EXPECT_EQ(std::memcmp(base.data(), model.params().f32(), base.size() * sizeof(float)), 0) << "base weights moved";
  int changed = 0;
  for (int64_t i = 0; i < lora.table().total(); ++i) changed += lora.params().f32()[i] != adapters0[i];
  EXPECT_GT(changed, lora.table().total() / 2);
}

TEST(Lora, AdapterGradientsMatchFiniteDifferences) {
  GptConfig c = tiny_config();
  LocalCommunicator comm;
  Gpt model(c, comm);
  model.initialize(12);
  Lora& lora = model.enable_lora(tiny_lora());
  lora.initialize(6);
  model.set_frozen(true);
  CounterRng r(3, 1);
  float* p = lora.params().f32();
  for (int64_t i = 0; i < lora.table().total(); ++i) p[i] += 0.5f * (r.uniform() - 0.5f);  // B no longer zero
  const int B = 2, T = 6;
  auto inp = random_tokens(B * T, c.vocab_size, 3), tgt = random_tokens(B * T, c.vocab_size, 4);
  lora.zero_grad();
  model.forward(inp.data(), tgt.data(), B, T, true);
  model.backward();
  std::vector<float> analytic(lora.grads().f32(), lora.grads().f32() + lora.table().total());
  int checked = 0;
  for (const auto& s : lora.table().specs()) {
    for (int k = 0; k < 3; ++k) {
      const int64_t i = s.offset + static_cast<int64_t>(r.below(s.numel));
      const float saved = p[i], eps = 1e-2f;
      p[i] = saved + eps;
      const double lp = model.forward(inp.data(), tgt.data(), B, T);
      p[i] = saved - eps;
      const double lm = model.forward(inp.data(), tgt.data(), B, T);
      p[i] = saved;
      const double numeric = (lp - lm) / (2.0 * eps);
      const double err =
          std::fabs(numeric - analytic[i]) / std::max(1e-2, std::fabs(numeric) + std::fabs(analytic[i]));
      EXPECT_LT(err, 3e-2) << s.name << " element " << i - s.offset << ": analytic " << analytic[i] << " numeric "
                           << numeric;
      ++checked;
    }
  }
  EXPECT_EQ(checked, 3 * 2 * 4 * c.n_layer);
}

TEST(Lora, MergedWeightsGiveTheAdaptedModelsLogits) {
  GptConfig c = tiny_config();
  LocalCommunicator comm;
  Gpt adapted(c, comm), merged(c, comm);
  adapted.initialize(13);
  LoraConfig lc = tiny_lora();
  lc.targets = "qkv,fc_proj";
  Lora& lora = adapted.enable_lora(lc);
  lora.initialize(7);
  CounterRng r(4, 1);
  for (int64_t i = 0; i < lora.table().total(); ++i) lora.params().f32()[i] += 0.3f * (r.uniform() - 0.5f);
  // Whole tensors of both, merged on the host, into a plain model.
  std::map<std::string, Tensor> weights, adapters;
  for (const auto& s : adapted.table().specs()) weights[s.name] = copy_of(adapted.param(s.name));
  for (const auto& s : lora.table().specs()) adapters[s.name] = copy_of(lora.params().view(s.offset, s.shape));
  lora_merge(weights, adapters, c, lc);
  for (const auto& s : merged.table().specs()) merged.param(s.name).copy_from(weights.at(s.name));
  auto inp = random_tokens(2 * 8, c.vocab_size, 5);
  adapted.forward(inp.data(), nullptr, 2, 8);
  merged.forward(inp.data(), nullptr, 2, 8);
  float worst = 0.0f, moved = 0.0f;
  Gpt plain(c, comm);
  plain.initialize(13);
  plain.forward(inp.data(), nullptr, 2, 8);
  for (int row = 0; row < 16; ++row)
    for (int v = 0; v < c.vocab_size; ++v) {
      worst = std::max(worst, std::fabs(adapted.logits_row(row)[v] - merged.logits_row(row)[v]));
      moved = std::max(moved, std::fabs(adapted.logits_row(row)[v] - plain.logits_row(row)[v]));
    }
  EXPECT_LT(worst, 1e-5f);
  EXPECT_GT(moved, 1e-3f) << "the adapters should change the model";
}

TEST(Lora, OptimizerStateIsOverFiftyTimesSmallerThanFullFineTuning) {
  const GptConfig c;  // the benchmark model: L4 H4 C256, GPT-2's vocabulary
  const LoraConfig lc;  // rank 8 on all four layers
  AdamW full(ParameterTable(c), AdamWConfig{});
  AdamW adapters(ParameterTable(lora_specs(c, lc), 1, 0), AdamWConfig{});
  const double ratio = static_cast<double>(full.state_bytes()) / static_cast<double>(adapters.state_bytes());
  std::printf("optimizer state: full fine-tuning %zu bytes, LoRA rank %d %zu bytes: %.0fx smaller\n",
              full.state_bytes(), lc.rank, adapters.state_bytes(), ratio);
  EXPECT_GE(ratio, 50.0);
  ::testing::Test::RecordProperty("state_ratio", std::to_string(ratio));
}
