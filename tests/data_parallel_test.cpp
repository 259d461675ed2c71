// Multi-rank tests of DataParallel (overlapped bucket reductions, ZeRO-1), run by CTest under mpiexec -n 2
// and 4 (main: tests/mpi_test_main.cpp). Every rank draws the same global batch, trains on its slice,
// and computes the one-process reference (a Gpt over a LocalCommunicator on the whole batch) itself.
#include "parallel/data_parallel.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include "core/rng.h"
#include "core/timer.h"
#include "model/gpt.h"
#include "model/optimizer.h"
#include "parallel/mesh.h"
#include "parallel/mpi_communicator.h"
#include "test_util.h"

namespace meshtrain {
namespace {

constexpr uint64_t kInitSeed = 20240611;
constexpr uint64_t kDataSeed = 777;
constexpr int kGlobalRows = 4;            // divides over 1, 2 and 4 ranks
constexpr double kSmallBucketMb = 0.002;  // ~512 floats: dozens of buckets for the tiny model
constexpr float kLr = 1e-3f;

GptConfig tiny_config() {
  GptConfig c;
  c.n_layer = 2;
  c.n_head = 2;
  c.n_embd = 32;
  c.seq_len = 16;
  c.vocab_size = 97;
  return c;
}

// The global batch of step `step`: the same on every rank, never all one token.
struct Batch {
  std::vector<int32_t> inp, tgt;
};

Batch global_batch(int step) {
  const GptConfig c = tiny_config();
  CounterRng rng(kDataSeed, static_cast<uint64_t>(step));
  Batch b;
  const size_t n = static_cast<size_t>(kGlobalRows) * c.seq_len;
  b.inp.resize(n);
  b.tgt.resize(n);
  for (size_t i = 0; i < n; ++i) {
    b.inp[i] = static_cast<int32_t>(rng.below(c.vocab_size));
    b.tgt[i] = static_cast<int32_t>(rng.below(c.vocab_size));
  }
  return b;
}

// ||a - b|| / ||b|| over n floats, in double.
double rel_error(const float* a, const float* b, int64_t n) {
  double diff = 0.0, ref = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    diff += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
    ref += static_cast<double>(b[i]) * b[i];
  }
  return ref > 0.0 ? std::sqrt(diff / ref) : std::sqrt(diff);
}

double norm(const float* a, int64_t n) {
  double s = 0.0;
  for (int64_t i = 0; i < n; ++i) s += static_cast<double>(a[i]) * a[i];
  return std::sqrt(s);
}

// A model and its DataParallel over the dp group, initialised identically on every rank.
struct Replica {
  Gpt model;
  DataParallel ddp;
  Replica(Communicator& dp, int zero, double bucket_mb)
      : model(tiny_config(), dp), ddp(model, dp, DataParallelConfig{zero, bucket_mb}, AdamWConfig{}) {
    model.initialize(kInitSeed);
  }
};

// When backward of one data-parallel step ran (now_seconds() clock).
struct BackwardSpan {
  double begin = 0, end = 0;
};

// Forward and backward of this rank's slice of global batch `step`, with the reduction armed as in
// launch/train/train.cpp (one micro-batch, so arm() comes before it), then finish(): gradients are averaged.
BackwardSpan reduce_step(Replica& r, Communicator& dp, int step) {
  const int T = tiny_config().seq_len, rows = kGlobalRows / dp.size();
  const Batch b = global_batch(step);
  const size_t first = static_cast<size_t>(dp.rank()) * rows * T;
  r.model.zero_grad();
  r.ddp.arm();
  r.model.forward(b.inp.data() + first, b.tgt.data() + first, rows, T, true, 1.0f);
  BackwardSpan span;
  span.begin = now_seconds();
  r.model.backward();
  span.end = now_seconds();
  r.ddp.finish();
  return span;
}

// Gradients of the whole global batch `step` in one process (the reference every layout must match).
Tensor reference_grads(int step) {
  LocalCommunicator local;
  Gpt ref(tiny_config(), local);
  ref.initialize(kInitSeed);
  const Batch b = global_batch(step);
  ref.zero_grad();
  ref.forward(b.inp.data(), b.tgt.data(), kGlobalRows, tiny_config().seq_len, true, 1.0f);
  ref.backward();
  Tensor g = Tensor::empty({ref.table().total()});
  g.copy_from(ref.grads().view(0, {ref.table().total()}));
  return g;
}

// Largest |p - p_rank0| over the group (0 when every rank holds rank 0's parameters bit for bit).
float max_divergence_from_rank0(Gpt& model, Communicator& dp) {
  const Tensor& p = model.params();
  Tensor root = Tensor::empty({p.numel()});
  root.copy_from(p);
  dp.broadcast(root, 0);
  Tensor worst = Tensor::zeros({1});
  for (int64_t i = 0; i < p.numel(); ++i)
    worst.f32()[0] = std::max(worst.f32()[0], std::fabs(p.f32()[i] - root.f32()[i]));
  // A NaN on any rank must not hide behind max (NaN compares false): report it as infinite.
  for (int64_t i = 0; i < p.numel(); ++i)
    if (std::isnan(p.f32()[i])) worst.f32()[0] = INFINITY;
  dp.all_reduce(worst, ReduceOp::max);
  return worst.f32()[0];
}

class DataParallelTest : public ::testing::TestWithParam<int> {
 protected:
  void SetUp() override {
    world_ = std::make_unique<MpiCommunicator>(MPI_COMM_WORLD, "mpi world");
    if (world_->size() == 1) GTEST_SKIP() << "needs mpiexec -n 2 or more (nothing to reduce over one rank)";
    mesh_ = std::make_unique<Mesh>(*world_, MeshShape{world_->size(), 1, 1});
  }
  Communicator& dp() { return mesh_->dp(); }
  int zero() const { return GetParam(); }

  std::unique_ptr<MpiCommunicator> world_;
  std::unique_ptr<Mesh> mesh_;
};

TEST_P(DataParallelTest, BucketsLaunchDuringBackwardLastBucketFirst) {
  Replica r(dp(), zero(), kSmallBucketMb);
  ASSERT_GE(r.ddp.num_buckets(), 8) << "the small bucket size should cut the tiny model into many buckets";
  int early_steps = 0;
  const int steps = 5;
  for (int step = 0; step < steps; ++step) {
    const BackwardSpan bwd = reduce_step(r, dp(), step);
    const auto& t = r.ddp.last_timings();
    ASSERT_EQ(static_cast<int64_t>(t.size()), r.ddp.num_buckets());
    double first_launch = INFINITY;
    for (size_t i = 0; i < t.size(); ++i) {
      EXPECT_GT(t[i].launched, 0.0) << "bucket " << i << " never launched";
      EXPECT_GE(t[i].completed, t[i].launched) << "bucket " << i;
      first_launch = std::min(first_launch, t[i].launched);
      // Launched last bucket first: a bucket at a lower offset never starts before one above it.
      if (i + 1 < t.size()) {
        EXPECT_LT(t[i].begin, t[i + 1].begin);
        EXPECT_GE(t[i].launched, t[i + 1].launched) << "bucket " << i << " launched before bucket " << i + 1;
      }
    }
    // Some reduction was started by backward itself, not left for finish().
    EXPECT_LT(first_launch, bwd.end) << "step " << step << ": no bucket launched before backward returned";
    // The buckets of the head and last layer start well before backward is over (it still has to go
    // through the layers below), which is what makes the overlap worth having.
    if (first_launch - bwd.begin < 0.5 * (bwd.end - bwd.begin)) ++early_steps;
  }
  EXPECT_GT(early_steps, 0) << "in none of " << steps
                            << " steps did the first bucket launch in the first half of backward";
}

TEST_P(DataParallelTest, AveragedGradientsEqualOneProcessOnTheGlobalBatch) {
  Replica r(dp(), zero(), kSmallBucketMb);
  const Tensor ref = reference_grads(0);
  const int64_t n = ref.numel();
  ASSERT_GT(norm(ref.f32(), n), 0.0);

  // Before the reduction this rank's gradients are those of its slice only: clearly not the reference.
  const int T = tiny_config().seq_len, rows = kGlobalRows / dp().size();
  const Batch b = global_batch(0);
  const size_t first = static_cast<size_t>(dp().rank()) * rows * T;
  r.model.zero_grad();
  r.ddp.arm();
  r.model.forward(b.inp.data() + first, b.tgt.data() + first, rows, T, true, 1.0f);
  r.model.backward();
  Tensor local = Tensor::empty({n});
  local.copy_from(r.model.grads().view(0, {n}));
  EXPECT_GT(rel_error(local.f32(), ref.f32(), n), 1e-3) << "a slice's gradient should differ from the batch's";
  r.ddp.finish();

  const float* got = r.model.grads().f32();
  if (zero() == 0) {
    EXPECT_LT(rel_error(got, ref.f32(), n), 1e-6);
  } else {
    // ZeRO-1 leaves the average only in this rank's chunks (the ranges its optimizer owns).
    const FlatRanges& owned = r.ddp.optimizer().ranges();
    ASSERT_FALSE(owned.empty());
    double diff = 0.0, size = 0.0;
    int64_t covered = 0;
    for (const auto& [lo, hi] : owned) {
      const int64_t end = std::min(hi, n);  // the padding after the table has no reference
      for (int64_t i = lo; i < end; ++i) {
        diff += (static_cast<double>(got[i]) - ref.f32()[i]) * (static_cast<double>(got[i]) - ref.f32()[i]);
        size += static_cast<double>(ref.f32()[i]) * ref.f32()[i];
      }
      covered += hi - lo;
    }
    EXPECT_EQ(covered * dp().size(), r.model.grads().numel()) << "chunks should split the buffer evenly";
    ASSERT_GT(size, 0.0);
    EXPECT_LT(std::sqrt(diff / size), 1e-6);
  }
}

TEST_P(DataParallelTest, EveryRankEndsWithIdenticalParameters) {
  Replica r(dp(), zero(), kSmallBucketMb);
  Tensor before = Tensor::empty({r.model.params().numel()});
  before.copy_from(r.model.params());
  for (int step = 0; step < 3; ++step) {
    reduce_step(r, dp(), step);
    r.ddp.step(kLr);
  }
  EXPECT_GT(rel_error(r.model.params().f32(), before.f32(), before.numel()), 1e-5) << "the steps changed nothing";
  EXPECT_EQ(max_divergence_from_rank0(r.model, dp()), 0.0f);
}

INSTANTIATE_TEST_SUITE_P(Zero, DataParallelTest, ::testing::Values(0, 1),
                         [](const ::testing::TestParamInfo<int>& info) { return "zero" + std::to_string(info.param); });

class ZeroOneTest : public DataParallelTest {};

TEST_P(ZeroOneTest, SameParametersAsZeroZeroWithAFractionOfTheState) {
  const double bucket_mb = GetParam() ? kSmallBucketMb : 4.0;  // many buckets, or one
  Replica z0(dp(), 0, bucket_mb), z1(dp(), 1, bucket_mb);
  for (int step = 0; step < 3; ++step) {
    reduce_step(z0, dp(), step);
    z0.ddp.step(kLr);
    reduce_step(z1, dp(), step);
    z1.ddp.step(kLr);
  }
  const Tensor& p0 = z0.model.params();
  const Tensor& p1 = z1.model.params();
  ASSERT_EQ(p0.numel(), p1.numel());
  EXPECT_LT(rel_error(p1.f32(), p0.f32(), p0.numel()), 1e-6);

  // Moments: zero 0 keeps them for the table, ZeRO-1 for 1/dp of the padded buffer.
  const size_t s0 = z0.ddp.optimizer().state_bytes(), s1 = z1.ddp.optimizer().state_bytes();
  const size_t n = static_cast<size_t>(dp().size());
  EXPECT_EQ(s0, 2 * sizeof(float) * static_cast<size_t>(z0.model.table().total()));
  EXPECT_GE(s1 * n, s0);
  EXPECT_LT(s1 * n - s0, 2 * sizeof(float) * n) << "ZeRO-1 state " << s1 << " bytes x " << n << " ranks vs " << s0;
}

TEST_P(ZeroOneTest, GatherThenScatterMomentsRoundTripsBitExact) {
  const double bucket_mb = GetParam() ? kSmallBucketMb : 4.0;
  Replica z0(dp(), 0, bucket_mb), z1(dp(), 1, bucket_mb);
  for (int step = 0; step < 2; ++step) {
    reduce_step(z0, dp(), step);
    z0.ddp.step(kLr);
    reduce_step(z1, dp(), step);
    z1.ddp.step(kLr);
  }
  const int64_t total = z1.model.params().numel();
  Tensor m = Tensor::empty({total}), v = Tensor::empty({total});
  z1.ddp.gather_moments(m, v);
  // The gathered whole moments are those of zero 0 (same numbers, up to reduction order).
  Tensor m0 = Tensor::empty({total}), v0 = Tensor::empty({total});
  z0.ddp.gather_moments(m0, v0);
  EXPECT_LT(rel_error(m.f32(), m0.f32(), total), 1e-5);
  EXPECT_LT(rel_error(v.f32(), v0.f32(), total), 1e-5);

  AdamW& opt = z1.ddp.optimizer();
  Tensor keep_m = Tensor::empty({opt.m().numel()}), keep_v = Tensor::empty({opt.v().numel()});
  keep_m.copy_from(opt.m());
  keep_v.copy_from(opt.v());
  ASSERT_GT(norm(keep_m.f32(), keep_m.numel()), 0.0);
  // Poison this rank's shard so a scatter that writes nothing (or the wrong chunk) shows.
  const auto noise = testing::random_floats(static_cast<size_t>(opt.m().numel()), 99 + dp().rank());
  std::memcpy(opt.m().f32(), noise.data(), noise.size() * sizeof(float));
  std::memcpy(opt.v().f32(), noise.data(), noise.size() * sizeof(float));
  z1.ddp.scatter_moments(m, v);
  EXPECT_EQ(std::memcmp(opt.m().f32(), keep_m.f32(), keep_m.nbytes()), 0) << "first moment changed by the round trip";
  EXPECT_EQ(std::memcmp(opt.v().f32(), keep_v.f32(), keep_v.nbytes()), 0) << "second moment changed by the round trip";
}

INSTANTIATE_TEST_SUITE_P(Buckets, ZeroOneTest, ::testing::Values(0, 1), [](const ::testing::TestParamInfo<int>& info) {
  return info.param ? std::string("many") : std::string("one");
});

}  // namespace
}  // namespace meshtrain
