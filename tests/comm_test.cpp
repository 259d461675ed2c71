// Multi-rank tests of MpiCommunicator, MpiRuntime and the Mesh, run by CTest under mpiexec -n 2, 3
// and 4 (tests/mpi_test_main.cpp is the main). As in nccl-tests, every input is seeded from (case,
// rank), so each rank computes every other rank's input, and hence the expected result, by itself.
#include <gtest/gtest.h>

#include <climits>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "core/bf16.h"
#include "core/device.h"
#include "core/rng.h"
#include "collective_values.h"
#include "parallel/mesh.h"
#include "parallel/mpi_communicator.h"
#include "parallel/mpi_runtime.h"

namespace meshtrain {
namespace {

using testing::get;
using testing::input_value;
using testing::set;

constexpr DType kDtypes[] = {DType::f32, DType::bf16, DType::i32, DType::u16, DType::u8};
constexpr ReduceOp kOps[] = {ReduceOp::sum, ReduceOp::max, ReduceOp::avg};

bool floating(DType dt) { return dt == DType::f32 || dt == DType::bf16; }

// Element first + i of rank's input, for i in [0, n).
Tensor make_input(DType dt, int64_t n, uint64_t id, int rank, int64_t first = 0) {
  Tensor t = Tensor::empty({n}, dt);
  for (int64_t i = 0; i < n; ++i) set(t, i, input_value(dt, id, rank, first + i));
  return t;
}

// A tensor of n elements inside a bigger buffer, everything poisoned, so writes outside it show.
struct Guarded {
  static constexpr int64_t kGuard = 16;
  Tensor whole, view;
  Guarded(DType dt, int64_t n) : whole(Tensor::empty({n + 2 * kGuard}, dt)), view(whole.view(kGuard, {n})) {
    std::memset(whole.raw(), 0xA5, whole.nbytes());
  }
  bool guards_intact() const {
    size_t es = dtype_size(whole.dtype()), g = kGuard * es;
    auto* p = static_cast<const unsigned char*>(whole.raw());
    for (size_t b = 0; b < g; ++b)
      if (p[b] != 0xA5 || p[whole.nbytes() - 1 - b] != 0xA5) return false;
    return true;
  }
};

// What a reduction over all ranks' element i gives in dt's arithmetic.
double reduce_expected(DType dt, ReduceOp op, uint64_t id, int size, int64_t i) {
  double acc = op == ReduceOp::max ? -INFINITY : 0.0;
  for (int r = 0; r < size; ++r) {
    double v = input_value(dt, id, r, i);
    acc = op == ReduceOp::max ? std::max(acc, v) : acc + v;
  }
  if (op == ReduceOp::max) return acc;
  if (dt == DType::u8) acc = std::fmod(acc, 256.0);
  if (dt == DType::u16) acc = std::fmod(acc, 65536.0);
  if (op == ReduceOp::avg) {
    float mean = static_cast<float>(acc) / static_cast<float>(size);
    return dt == DType::bf16 ? bf16_to_float(float_to_bf16(mean)) : mean;
  }
  return acc;
}

// Checks every element of t against expected(i); f32 sums may differ by the order of additions.
void expect_values(const Tensor& t, const std::function<double(int64_t)>& expected, const std::string& what) {
  double tol = t.dtype() == DType::f32 ? 1e-5 : 0.0;
  int64_t bad = 0, first_bad = -1;
  for (int64_t i = 0; i < t.numel(); ++i) {
    if (std::fabs(get(t, i) - expected(i)) > tol) {
      if (bad++ == 0) first_bad = i;
    }
  }
  EXPECT_EQ(bad, 0) << what << ": " << bad << " of " << t.numel() << " elements wrong; first at " << first_bad
                    << ": got " << (first_bad >= 0 ? get(t, first_bad) : 0) << ", want "
                    << (first_bad >= 0 ? expected(first_bad) : 0);
}

std::string describe(const char* op, DType dt, int64_t n, bool async, ReduceOp reduce = ReduceOp::sum) {
  return fmt::format("{}{} {} {} x{}", op, async ? "_async" : "", reduce_op_name(reduce), dtype_name(dt), n);
}

// Expects f to throw meshtrain::Error whose message contains every one of parts.
void expect_error(const std::function<void()>& f, std::initializer_list<const char*> parts) {
  try {
    f();
    ADD_FAILURE() << "expected an error mentioning " << *parts.begin();
  } catch (const Error& e) {
    for (const char* part : parts) EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
  }
}

// ---- collective checks, usable on any communicator ----

void check_all_reduce(Communicator& c, std::initializer_list<int64_t> counts, uint64_t seed) {
  uint64_t id = seed;
  for (DType dt : kDtypes)
    for (ReduceOp op : kOps) {
      if (op == ReduceOp::avg && !floating(dt)) continue;
      for (int64_t n : counts)
        for (bool async : {false, true}) {
          ++id;
          Tensor t = make_input(dt, n, id, c.rank());
          if (async)
            c.all_reduce_async(t, op)->wait();
          else
            c.all_reduce(t, op);
          expect_values(
              t, [&](int64_t i) { return reduce_expected(dt, op, id, c.size(), i); },
              describe("all_reduce", dt, n, async, op));
        }
    }
}

void check_reduce_scatter(Communicator& c, std::initializer_list<int64_t> counts, uint64_t seed) {
  uint64_t id = seed;
  int me = c.rank(), size = c.size();
  for (DType dt : kDtypes)
    for (ReduceOp op : kOps) {
      if (op == ReduceOp::avg && !floating(dt)) continue;
      for (int64_t m : counts)
        for (int mode = 0; mode < 3; ++mode) {  // blocking, async, in place (out = chunk me of in)
          ++id;
          Tensor in = make_input(dt, m * size, id, me);
          Guarded out(dt, m);
          Tensor target = mode == 2 ? in.view(me * m, {m}) : out.view;
          if (mode == 1)
            c.reduce_scatter_async(in, target, op)->wait();
          else
            c.reduce_scatter(in, target, op);
          expect_values(
              target, [&](int64_t i) { return reduce_expected(dt, op, id, size, me * m + i); },
              describe(mode == 2 ? "reduce_scatter_in_place" : "reduce_scatter", dt, m, mode == 1, op));
          EXPECT_TRUE(out.guards_intact()) << describe("reduce_scatter", dt, m, mode == 1, op);
        }
    }
}

void check_all_gather(Communicator& c, std::initializer_list<int64_t> counts, uint64_t seed) {
  uint64_t id = seed;
  int me = c.rank(), size = c.size();
  for (DType dt : kDtypes)
    for (int64_t m : counts)
      for (int mode = 0; mode < 3; ++mode) {  // blocking, async, in place (in = chunk me of out)
        ++id;
        Guarded out(dt, m * size);
        Tensor in = make_input(dt, m, id, me);
        if (mode == 2) {
          out.view.view(me * m, {m}).copy_from(in);
          in = out.view.view(me * m, {m});
        }
        if (mode == 1)
          c.all_gather_async(in, out.view)->wait();
        else
          c.all_gather(in, out.view);
        expect_values(
            out.view, [&](int64_t i) { return input_value(dt, id, static_cast<int>(i / m), i % m); },
            describe(mode == 2 ? "all_gather_in_place" : "all_gather", dt, m, mode == 1));
        EXPECT_TRUE(out.guards_intact()) << describe("all_gather", dt, m, mode == 1);
      }
}

void check_broadcast(Communicator& c, std::initializer_list<int64_t> counts, uint64_t seed) {
  uint64_t id = seed;
  for (DType dt : kDtypes)
    for (int64_t n : counts)
      for (int root = 0; root < c.size(); ++root) {
        ++id;
        Guarded t(dt, n);
        if (c.rank() == root) t.view.copy_from(make_input(dt, n, id, root));
        c.broadcast(t.view, root);
        expect_values(
            t.view, [&](int64_t i) { return input_value(dt, id, root, i); },
            fmt::format("broadcast from {} {} x{}", root, dtype_name(dt), n));
        EXPECT_TRUE(t.guards_intact());
      }
}

// Blocking ring (even ranks send first, odd ranks receive first), then both directions at once
// with isend/irecv on two tags, then a message to oneself.
void check_point_to_point(Communicator& c, std::initializer_list<int64_t> counts, uint64_t seed) {
  uint64_t id = seed;
  int me = c.rank(), size = c.size(), next = (me + 1) % size, prev = (me + size - 1) % size;
  for (DType dt : kDtypes)
    for (int64_t n : counts) {
      ++id;
      Tensor mine = make_input(dt, n, id, me);
      Guarded got(dt, n);
      if (size == 1) {
        got.view.copy_from(mine);  // a blocking ring of one rank would be a send to oneself
      } else if (me % 2 == 0) {
        c.send(mine, next, 3);
        c.recv(got.view, prev, 3);
      } else {
        c.recv(got.view, prev, 3);
        c.send(mine, next, 3);
      }
      expect_values(
          got.view, [&](int64_t i) { return input_value(dt, id, prev, i); },
          fmt::format("send/recv ring {} x{}", dtype_name(dt), n));
      EXPECT_TRUE(got.guards_intact());

      Guarded from_prev(dt, n), from_next(dt, n), from_self(dt, n);
      auto r1 = c.irecv(from_prev.view, prev, 1);
      auto r2 = c.irecv(from_next.view, next, 2);
      auto r3 = c.irecv(from_self.view, me, 4);
      auto s1 = c.isend(mine, next, 1);
      auto s2 = c.isend(mine, prev, 2);
      auto s3 = c.isend(mine, me, 4);
      r2->wait();
      r1->wait();
      r3->wait();
      s1->wait();
      s2->wait();
      s3->wait();
      std::string what = fmt::format("isend/irecv {} x{}", dtype_name(dt), n);
      expect_values(
          from_prev.view, [&](int64_t i) { return input_value(dt, id, prev, i); }, what + " from prev");
      expect_values(
          from_next.view, [&](int64_t i) { return input_value(dt, id, next, i); }, what + " from next");
      expect_values(
          from_self.view, [&](int64_t i) { return input_value(dt, id, me, i); }, what + " from self");
      EXPECT_TRUE(from_prev.guards_intact() && from_next.guards_intact() && from_self.guards_intact()) << what;
    }
}

// ---- tests over the world, whole messages and messages cut into many MPI calls ----

class Collectives : public ::testing::TestWithParam<int64_t> {
 protected:
  void SetUp() override {
    world_ = std::make_unique<MpiCommunicator>(MPI_COMM_WORLD, "mpi world");
    world_->set_max_message_elements(GetParam());
  }
  std::unique_ptr<MpiCommunicator> world_;
};

TEST_P(Collectives, AllReduceEveryDtypeOpAndCount) { check_all_reduce(*world_, {1, 7, 1001, 65537}, 1000); }
TEST_P(Collectives, ReduceScatterEveryDtypeOpAndCount) { check_reduce_scatter(*world_, {1, 7, 333}, 2000); }
TEST_P(Collectives, AllGatherEveryDtypeAndCount) { check_all_gather(*world_, {1, 7, 333}, 3000); }
TEST_P(Collectives, BroadcastFromEveryRoot) { check_broadcast(*world_, {1, 7, 1001}, 4000); }
TEST_P(Collectives, SendRecvRingAndNonBlocking) { check_point_to_point(*world_, {1, 7, 1001}, 5000); }

TEST_P(Collectives, EmptyTensors) {
  Tensor t = Tensor::empty({0}, DType::f32), out = Tensor::empty({0}, DType::f32);
  world_->all_reduce(t, ReduceOp::sum);
  world_->all_gather(t, out);
  world_->reduce_scatter(out, t, ReduceOp::avg);
  world_->broadcast(t, 0);
  EXPECT_EQ(t.numel(), 0);
}

INSTANTIATE_TEST_SUITE_P(Messages, Collectives, ::testing::Values(int64_t{INT_MAX}, int64_t{64}),
                         [](const auto& info) { return info.param == INT_MAX ? "whole" : "chunked"; });

class Comm : public ::testing::Test {
 protected:
  void SetUp() override { world_ = std::make_unique<MpiCommunicator>(MPI_COMM_WORLD, "mpi world"); }
  std::unique_ptr<MpiCommunicator> world_;
};

TEST_F(Comm, WorkTestPollsToCompletionAndDestructorWaits) {
  int n = 100003, size = world_->size();
  Tensor a = make_input(DType::f32, n, 11, world_->rank()), b = make_input(DType::f32, n, 12, world_->rank());
  auto work = world_->all_reduce_async(a, ReduceOp::sum);
  while (!work->test()) {
  }
  EXPECT_TRUE(work->test());
  work->wait();  // a no-op once complete
  expect_values(
      a, [&](int64_t i) { return reduce_expected(DType::f32, ReduceOp::sum, 11, size, i); }, "polled");
  { auto dropped = world_->all_reduce_async(b, ReduceOp::max); }
  expect_values(
      b, [&](int64_t i) { return reduce_expected(DType::f32, ReduceOp::max, 12, size, i); }, "dropped");
}

TEST_F(Comm, ManyOutstandingAsyncCollectivesFinishInAnyOrder) {
  // Like gradient buckets: start several all-reduces, then wait for them last to first.
  int size = world_->size();
  std::vector<Tensor> buckets;
  std::vector<std::unique_ptr<Work>> works;
  for (int b = 0; b < 6; ++b) {
    buckets.push_back(make_input(DType::bf16, 513 + b, 20 + b, world_->rank()));
    works.push_back(world_->all_reduce_async(buckets.back(), ReduceOp::avg));
  }
  for (int b = 5; b >= 0; --b) {
    works[b]->wait();
    expect_values(
        buckets[b], [&](int64_t i) { return reduce_expected(DType::bf16, ReduceOp::avg, 20 + b, size, i); },
        fmt::format("bucket {}", b));
  }
}

TEST_F(Comm, SplitByParityAndByHalves) {
  int me = world_->rank(), size = world_->size();
  auto parity = world_->split(me % 2, me);
  ASSERT_NE(parity, nullptr);
  EXPECT_EQ(parity->size(), (size + 1 - me % 2) / 2);
  EXPECT_EQ(parity->rank(), me / 2);
  EXPECT_EQ(parity->name(), "mpi world/split");
  Tensor mine = Tensor::empty({1}, DType::i32);
  mine.data<int32_t>()[0] = me;
  Tensor members = Tensor::empty({parity->size()}, DType::i32);
  parity->all_gather(mine, members);
  for (int i = 0; i < parity->size(); ++i) EXPECT_EQ(members.data<int32_t>()[i], 2 * i + me % 2);
  check_all_reduce(*parity, {1, 7}, 6000);

  // Halves, ordered backwards by key: the sub-communicator ranks follow the keys, not world ranks.
  int half = size / 2, lower = me < half;
  auto halves = world_->split(lower ? 0 : 1, -me);
  ASSERT_NE(halves, nullptr);
  int first = lower ? 0 : half, count = lower ? half : size - half;
  EXPECT_EQ(halves->size(), count);
  EXPECT_EQ(halves->rank(), first + count - 1 - me);
  Tensor copy = Tensor::empty({1}, DType::i32);
  copy.copy_from(mine);
  halves->all_reduce(copy, ReduceOp::sum);
  EXPECT_EQ(copy.data<int32_t>()[0], count * first + count * (count - 1) / 2);
  check_reduce_scatter(*halves, {3}, 6100);

  // A negative color leaves a rank out; a split of a split works like any other.
  auto without_last = world_->split(me == size - 1 ? -1 : 0, 0);
  EXPECT_EQ(without_last == nullptr, me == size - 1);
  if (without_last) {
    EXPECT_EQ(without_last->size(), size - 1);
  }
  auto single = parity->split(parity->rank(), 0);
  ASSERT_NE(single, nullptr);
  EXPECT_EQ(single->size(), 1);
  check_all_gather(*single, {5}, 6200);
}

// Every (dp, tp, pp) whose product is the world size.
std::vector<MeshShape> factorisations(int n) {
  std::vector<MeshShape> shapes;
  for (int dp = 1; dp <= n; ++dp)
    for (int tp = 1; tp <= n; ++tp)
      if (n % (dp * tp) == 0) shapes.push_back({dp, tp, n / (dp * tp)});
  return shapes;
}

TEST_F(Comm, MeshForEveryFactorisation) {
  int me = world_->rank();
  for (MeshShape shape : factorisations(world_->size())) {
    std::string what = fmt::format("mesh dp {} tp {} pp {}", shape.dp, shape.tp, shape.pp);
    Mesh mesh(*world_, shape);
    EXPECT_EQ(mesh.coord(), Mesh::coord_of(shape, me)) << what;
    EXPECT_EQ(Mesh::rank_of(shape, mesh.coord()), me) << what;
    for (MeshAxis axis : {MeshAxis::dp, MeshAxis::tp, MeshAxis::pp}) {
      Communicator& c = mesh.axis(axis);
      std::string where = what + " axis " + mesh_axis_name(axis);
      EXPECT_EQ(c.size(), Mesh::axis_size(shape, axis)) << where;
      EXPECT_EQ(c.rank(), Mesh::axis_coord(mesh.coord(), axis)) << where;
      EXPECT_EQ(c.name(), std::string("mpi world/") + mesh_axis_name(axis)) << where;
      std::vector<int> group = Mesh::group_ranks(shape, axis, me);
      Tensor mine = Tensor::empty({1}, DType::i32), all = Tensor::empty({c.size()}, DType::i32);
      mine.data<int32_t>()[0] = me;
      c.all_gather(mine, all);
      for (int i = 0; i < c.size(); ++i) EXPECT_EQ(all.data<int32_t>()[i], group[i]) << where;
      Tensor sum = Tensor::empty({3}, DType::f32);
      for (int i = 0; i < 3; ++i) sum.f32()[i] = static_cast<float>(me * (i + 1));
      c.all_reduce(sum, ReduceOp::sum);
      double want = 0;
      for (int r : group) want += r;
      for (int i = 0; i < 3; ++i) EXPECT_EQ(sum.f32()[i], want * (i + 1)) << where;
    }
    EXPECT_EQ(&mesh.dp(), &mesh.axis(MeshAxis::dp));
    EXPECT_EQ(&mesh.world(), world_.get());
  }
}

TEST_F(Comm, MisuseThrowsNamedErrors) {
  int me = world_->rank(), size = world_->size();
  std::string where = fmt::format("mpi world rank {} of {}", me, size);
  Tensor f = Tensor::empty({6}, DType::f32), i = Tensor::empty({6}, DType::i32), u = Tensor::empty({6}, DType::u8);
  expect_error([&] { world_->all_reduce(i, ReduceOp::avg); }, {"[all_reduce]", where.c_str(), "avg", "i32"});
  expect_error([&] { world_->all_reduce_async(u, ReduceOp::avg); }, {"[all_reduce]", "avg", "u8"});
  Tensor undefined;
  expect_error([&] { world_->all_reduce(undefined, ReduceOp::sum); }, {"[all_reduce]", "undefined"});
  Tensor small = Tensor::empty({5}, DType::f32);
  Tensor big = Tensor::empty({6 * size + 1}, DType::f32);
  expect_error([&] { world_->reduce_scatter(big, f, ReduceOp::sum); }, {"[reduce_scatter]", where.c_str(), "elements"});
  expect_error([&] { world_->reduce_scatter_async(f, i, ReduceOp::sum); }, {"[reduce_scatter]", "f32", "i32"});
  expect_error([&] { world_->all_gather(f, small); }, {"[all_gather]", where.c_str(), "elements"});
  expect_error([&] { world_->all_gather_async(i, big); }, {"[all_gather]", "i32", "f32"});
  expect_error([&] { world_->broadcast(f, -1); }, {"[broadcast]", "root -1"});
  expect_error([&] { world_->broadcast(f, size); }, {"[broadcast]", fmt::format("root {}", size).c_str()});
  expect_error([&] { world_->send(f, me, 0); }, {"[send]", "this rank"});
  expect_error([&] { world_->recv(f, size, 0); }, {"[recv]", "not a rank"});
  expect_error([&] { world_->isend(f, (me + 1) % size, -2); }, {"[isend]", "negative"});
  int* tag_ub = nullptr;
  int has_tag_ub = 0;
  MPI_Comm_get_attr(world_->native(), MPI_TAG_UB, &tag_ub, &has_tag_ub);
  if (has_tag_ub && *tag_ub < INT_MAX) {
    expect_error([&] { world_->irecv(f, 0, *tag_ub + 1); }, {"[irecv]", "largest tag"});
  }
  expect_error([&] { world_->set_max_message_elements(0); }, {"max_message_elements"});

  MeshShape wrong = size == 4 ? MeshShape{3, 1, 1} : MeshShape{2, 2, 1};
  std::string product = fmt::format(
      "parallel.dp x parallel.tp x parallel.pp = {} x {} x {} = {} must equal the "
      "number of ranks ({})",
      wrong.dp, wrong.tp, wrong.pp, wrong.size(), size);
  expect_error([&] { Mesh mesh(*world_, wrong); }, {"[mesh]", product.c_str()});

  // Receives that disagree with the sender on the element count: shorter, longer, non-blocking.
  if (me == 0 && size > 1) {
    world_->send(make_input(DType::i32, 5, 31, me), 1, 7);
    world_->send(make_input(DType::i32, 7, 32, me), 1, 8);
    world_->isend(make_input(DType::i32, 9, 33, me), 1, 9)->wait();
  } else if (me == 1) {
    Tensor seven = Tensor::empty({7}, DType::i32), five = Tensor::empty({5}, DType::i32);
    expect_error([&] { world_->recv(seven, 0, 7); }, {"[recv]", "received 5 elements"});
    expect_error([&] { world_->recv(five, 0, 8); }, {"[recv]", "longer than the 5 elements"});
    expect_error([&] { world_->irecv(seven, 0, 9)->wait(); }, {"[irecv]", "longer than the 7 elements"});
  }
  world_->barrier();
}

TEST_F(Comm, CudaTensorsAreStagedThroughHostMemory) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device (or CUDA not built): device staging not exercised";
  int me = world_->rank(), size = world_->size(), n = 1001;
  auto on_device = [](const Tensor& host) {
    Tensor d = Tensor::empty(host.shape(), host.dtype(), Device::cuda);
    d.copy_from(host);
    return d;
  };
  auto on_host = [](const Tensor& device) {
    Tensor h = Tensor::empty(device.shape(), device.dtype());
    h.copy_from(device);
    return h;
  };
  Tensor t = on_device(make_input(DType::bf16, n, 41, me));
  world_->all_reduce_async(t, ReduceOp::avg)->wait();
  expect_values(
      on_host(t), [&](int64_t i) { return reduce_expected(DType::bf16, ReduceOp::avg, 41, size, i); },
      "cuda all_reduce");
  Tensor gathered = Tensor::empty({int64_t{n} * size}, DType::f32, Device::cuda);
  world_->all_gather(on_device(make_input(DType::f32, n, 42, me)), gathered);
  expect_values(
      on_host(gathered), [&](int64_t i) { return input_value(DType::f32, 42, static_cast<int>(i / n), i % n); },
      "cuda all_gather");
  Tensor scattered = Tensor::empty({n}, DType::i32, Device::cuda);
  world_->reduce_scatter(on_device(make_input(DType::i32, int64_t{n} * size, 43, me)), scattered, ReduceOp::sum);
  expect_values(
      on_host(scattered), [&](int64_t i) { return reduce_expected(DType::i32, ReduceOp::sum, 43, size, me * n + i); },
      "cuda reduce_scatter");
  Tensor received = Tensor::empty({n}, DType::u8, Device::cuda);
  auto r = world_->irecv(received, (me + size - 1) % size, 0);
  world_->isend(on_device(make_input(DType::u8, n, 44, me)), (me + 1) % size, 0)->wait();
  r->wait();
  expect_values(
      on_host(received), [&](int64_t i) { return input_value(DType::u8, 44, (me + size - 1) % size, i); },
      "cuda isend/irecv");
}

TEST(MpiRuntime, DetectsTheLaunchAndTheNode) {
  int size = 0, rank = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  EXPECT_TRUE(MpiRuntime::launched_by_mpi() || size == 1);  // a singleton when run without mpiexec
  {
    MpiRuntime again;  // MPI is initialised already: this one must neither re-init nor finalize
    EXPECT_GE(again.thread_level(), MPI_THREAD_FUNNELED);
    EXPECT_EQ(again.world_size(), size);
    EXPECT_EQ(again.world_rank(), rank);
    // One node: local ranks are world ranks.
    EXPECT_EQ(again.local_rank(), rank);
    EXPECT_EQ(again.local_size(), size);
    if (std::getenv("OMPI_COMM_WORLD_LOCAL_RANK")) {  // Open MPI's mpiexec (not a singleton)
      EXPECT_EQ(MpiRuntime::local_rank_from_env(), rank);
    }
    EXPECT_GE(again.threads_per_rank(), 1);
    auto world = world_communicator(&again);
    EXPECT_NE(dynamic_cast<MpiCommunicator*>(world.get()), nullptr);
    EXPECT_EQ(world->size(), size);
  }
  // Without the launcher's node-local variables the runtime asks MPI which ranks share the node.
  const char* env_rank = std::getenv("OMPI_COMM_WORLD_LOCAL_RANK");
  const char* env_size = std::getenv("OMPI_COMM_WORLD_LOCAL_SIZE");
  if (!env_rank || !env_size) GTEST_SKIP() << "not launched by Open MPI's mpiexec; the fallback is already covered";
  std::string saved_rank = env_rank, saved_size = env_size;
  unsetenv("OMPI_COMM_WORLD_LOCAL_RANK");
  unsetenv("OMPI_COMM_WORLD_LOCAL_SIZE");
  {
    MpiRuntime from_mpi;
    EXPECT_EQ(from_mpi.local_rank(), rank);
    EXPECT_EQ(from_mpi.local_size(), size);
  }
  setenv("OMPI_COMM_WORLD_LOCAL_RANK", saved_rank.c_str(), 1);
  setenv("OMPI_COMM_WORLD_LOCAL_SIZE", saved_size.c_str(), 1);
  int finalized = 1;
  MPI_Finalized(&finalized);
  EXPECT_FALSE(finalized);
}

// Checks the harness itself (mpi_test_main.cpp): run by the CTest entry comm_test_failure_propagates
// with MESHTRAIN_TEST_FAIL_RANK set, which expects the whole run to fail and name that rank.
TEST(Harness, FailsOnTheChosenRankOnly) {
  const char* fail_rank = std::getenv("MESHTRAIN_TEST_FAIL_RANK");
  if (!fail_rank) GTEST_SKIP() << "set MESHTRAIN_TEST_FAIL_RANK=r to check that a failure on rank r fails every rank";
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  EXPECT_NE(rank, std::atoi(fail_rank)) << "deliberate failure";
}

TEST(Bf16, RoundsToNearestEvenAndKeepsSpecials) {
  auto narrow = [](uint32_t float_bits) { return int{float_to_bf16(std::bit_cast<float>(float_bits))}; };
  EXPECT_EQ(narrow(0x3f800000u), 0x3f80);  // 1.0
  EXPECT_EQ(narrow(0x3f808000u), 0x3f80);  // tie: stays even
  EXPECT_EQ(narrow(0x3f818000u), 0x3f82);  // tie: up to even
  EXPECT_EQ(narrow(0x3f808001u), 0x3f81);  // above half: up
  EXPECT_EQ(narrow(0x3f807fffu), 0x3f80);  // below half: down
  EXPECT_EQ(narrow(0xbf818000u), 0xbf82);  // negative tie: magnitude to even
  EXPECT_EQ(narrow(0x7f7fffffu), 0x7f80);  // FLT_MAX rounds to inf
  EXPECT_EQ(narrow(0x7f800000u), 0x7f80);  // inf
  EXPECT_EQ(narrow(0xff800000u), 0xff80);  // -inf
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(std::bit_cast<float>(0x7fffffffu)))));
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(std::bit_cast<float>(0x7f800001u)))));  // would round to inf
  int wrong = 0;
  for (uint32_t b = 0; b < 0x10000; ++b) {
    float f = bf16_to_float(static_cast<uint16_t>(b));
    if (!std::isnan(f) && float_to_bf16(f) != b) ++wrong;
  }
  EXPECT_EQ(wrong, 0) << "bf16 values that do not survive bf16 -> float -> bf16";
}

}  // namespace
}  // namespace meshtrain
