// Multi-rank tests of NcclCommunicator, run by CTest under mpiexec -n 2 (tests/mpi_test_main.cpp is
// the main). As in comm_test, every input is seeded from (case, rank), so each rank computes the
// expected results itself. Without a GPU only the factory's argument checks run; the rest skip.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/bf16.h"
#include "core/device.h"
#include "core/rng.h"
#include "collective_values.h"
#include "parallel/mpi_communicator.h"
#include "parallel/nccl_communicator.h"

namespace meshtrain {
namespace {

using testing::get;
using testing::input_value;
using testing::set;

constexpr DType kDtypes[] = {DType::f32, DType::bf16, DType::i32, DType::u8};  // u16: no NCCL type
constexpr ReduceOp kOps[] = {ReduceOp::sum, ReduceOp::max, ReduceOp::avg};
constexpr const char* kNoGpu = "no CUDA device: NCCL tests need a GPU";

bool floating(DType dt) { return dt == DType::f32 || dt == DType::bf16; }

Tensor to_device(const Tensor& host) {
  Tensor d = Tensor::empty(host.shape(), host.dtype(), Device::cuda);
  d.copy_from(host);
  return d;
}

Tensor to_host(const Tensor& device) {
  Tensor h = Tensor::empty(device.shape(), device.dtype());
  h.copy_from(device);
  return h;
}

Tensor host_input(DType dt, int64_t n, uint64_t id, int rank) {
  Tensor t = Tensor::empty({n}, dt);
  for (int64_t i = 0; i < n; ++i) set(t, i, input_value(dt, id, rank, i));
  return t;
}

// rank's input for case id, on the GPU.
Tensor make_input(DType dt, int64_t n, uint64_t id, int rank) { return to_device(host_input(dt, n, id, rank)); }

// A device tensor of n elements inside a bigger buffer, all poisoned, so writes outside it show.
struct Guarded {
  static constexpr int64_t kGuard = 16;
  Tensor whole, view;
  Guarded(DType dt, int64_t n)
      : whole(Tensor::empty({n + 2 * kGuard}, dt, Device::cuda)), view(whole.view(kGuard, {n})) {
    device_memset(whole.raw(), 0xA5, whole.nbytes());
  }
  bool guards_intact() const {
    Tensor h = to_host(whole);
    size_t g = kGuard * dtype_size(h.dtype());
    auto* p = static_cast<const unsigned char*>(h.raw());
    for (size_t b = 0; b < g; ++b)
      if (p[b] != 0xA5 || p[h.nbytes() - 1 - b] != 0xA5) return false;
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
  if (op == ReduceOp::avg) return static_cast<float>(acc) / static_cast<float>(size);
  return acc;
}

// Compares a device tensor with expected(i). f32 sums may differ by the order of additions; NCCL
// averages floats by scaling each input before the sum, so a bf16 mean may be one rounding off.
void expect_values(const Tensor& device, const std::function<double(int64_t)>& expected, const std::string& what,
                   ReduceOp op = ReduceOp::sum) {
  Tensor t = to_host(device);
  double tol = t.dtype() == DType::f32 ? 1e-5 : (t.dtype() == DType::bf16 && op == ReduceOp::avg ? 2e-2 : 0.0);
  int64_t bad = 0, first_bad = -1;
  for (int64_t i = 0; i < t.numel(); ++i)
    if (!(std::fabs(get(t, i) - expected(i)) <= tol) && bad++ == 0) first_bad = i;  // NaN is wrong too
  EXPECT_EQ(bad, 0) << what << ": " << bad << " of " << t.numel() << " elements wrong; first at " << first_bad
                    << ": got " << (first_bad >= 0 ? get(t, first_bad) : 0) << ", want "
                    << (first_bad >= 0 ? expected(first_bad) : 0);
}

std::string describe(const char* op, DType dt, int64_t n, int mode, ReduceOp reduce = ReduceOp::sum) {
  static const char* kModes[] = {"", "_async", "_in_place", "_overlapping"};
  return fmt::format("{}{} {} {} x{}", op, kModes[mode], reduce_op_name(reduce), dtype_name(dt), n);
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

// This rank's index among the ranks on its host, and how many share the host (and its GPUs).
std::pair<int, int> local_rank_and_size() {
  MPI_Comm node = MPI_COMM_NULL;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
  int rank = 0, size = 1;
  MPI_Comm_rank(node, &rank);
  MPI_Comm_size(node, &size);
  MPI_Comm_free(&node);
  return {rank, size};
}

// A non-blocking CUDA stream for one test.
struct TestStream {
  cudaStream_t s = nullptr;
  TestStream() { EXPECT_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess); }
  ~TestStream() {
    cudaStreamSynchronize(s);
    cudaStreamDestroy(s);
  }
};

// ---- the factory: runs with or without a GPU ----

TEST(NcclFactory, RejectsDevicesItCannotUseOnEveryRank) {
  EXPECT_TRUE(nccl_built());
  MpiCommunicator world(MPI_COMM_WORLD, "mpi world");
  int devices = cuda_device_count();
  if (devices == 0) {
    expect_error([&] { make_nccl_communicator(world, 0); }, {"[nccl] mpi world rank", "no CUDA device is visible"});
    return;
  }
  expect_error([&] { make_nccl_communicator(world, devices); }, {"[nccl]", "is not one of the"});
  // Every rank but the last asks for a real GPU: the others learn that the last one failed.
  int me = world.rank(), last = world.size() - 1;
  const auto [local_rank, local_size] = local_rank_and_size();
  const int device = local_rank % devices;
  if (world.size() > 1) {
    if (me == last) {
      expect_error([&] { make_nccl_communicator(world, -1); }, {"[nccl]", "device -1 is not one of"});
    } else {
      expect_error([&] { make_nccl_communicator(world, device); },
                   {"[nccl]", fmt::format("rank {} cannot use its GPU", last).c_str()});
    }
  }
  if (local_size > devices) {  // more ranks than GPUs on this host: NCCL would refuse them
    expect_error([&] { make_nccl_communicator(world, device); }, {"[nccl]", "both chose GPU"});
  }
}

// ---- operations, on a communicator made once for the suite ----

class Nccl : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (cuda_device_count() == 0) return;
    try {
      world_ = std::make_unique<MpiCommunicator>(MPI_COMM_WORLD, "mpi world");
      // NCCL refuses two ranks on one GPU. With more ranks than GPUs on a host (2 ranks on a
      // 1-GPU machine), the ranks form groups that each use distinct GPUs and test within those.
      auto [local_rank, local_size] = local_rank_and_size();
      int devices = cuda_device_count();
      group_ = world_->split(local_rank / devices, world_->rank());
      comm_ = make_nccl_communicator(*group_, local_rank % devices);
      if (world_->rank() == 0 && comm_->size() < world_->size())
        std::fprintf(stderr, "[nccl_test] %d ranks share %d GPU(s) per host: testing groups of %d rank(s)\n",
                     local_size, devices, comm_->size());
    } catch (const std::exception& e) {
      setup_error_ = e.what();
    }
  }
  static void TearDownTestSuite() {
    comm_.reset();
    group_.reset();
    world_.reset();
  }
  void SetUp() override {
    if (cuda_device_count() == 0) GTEST_SKIP() << kNoGpu;
    ASSERT_TRUE(setup_error_.empty()) << setup_error_;
  }

  static std::unique_ptr<MpiCommunicator> world_;
  static std::unique_ptr<Communicator> group_;
  static std::unique_ptr<NcclCommunicator> comm_;
  static std::string setup_error_;
};

std::unique_ptr<MpiCommunicator> Nccl::world_;
std::unique_ptr<Communicator> Nccl::group_;
std::unique_ptr<NcclCommunicator> Nccl::comm_;
std::string Nccl::setup_error_;

void check_all_reduce(Communicator& c, std::initializer_list<int64_t> counts, uint64_t id) {
  for (DType dt : kDtypes)
    for (ReduceOp op : kOps) {
      if (op == ReduceOp::avg && !floating(dt)) continue;
      for (int64_t n : counts)
        for (int mode = 0; mode < 2; ++mode) {  // blocking, async
          ++id;
          Tensor t = make_input(dt, n, id, c.rank());
          if (mode == 1)
            c.all_reduce_async(t, op)->wait();
          else
            c.all_reduce(t, op);
          expect_values(
              t, [&](int64_t i) { return reduce_expected(dt, op, id, c.size(), i); },
              describe("all_reduce", dt, n, mode, op), op);
        }
    }
}

TEST_F(Nccl, AllReduceEveryDtypeOpAndOddCount) { check_all_reduce(*comm_, {1, 7, 1001, 65537}, 1000); }

TEST_F(Nccl, ReduceScatterSeparateInPlaceAndOverlapping) {
  uint64_t id = 2000;
  int me = comm_->rank(), size = comm_->size();
  for (DType dt : kDtypes)
    for (ReduceOp op : kOps) {
      if (op == ReduceOp::avg && !floating(dt)) continue;
      for (int64_t m : {1, 7, 333})
        for (int mode = 0; mode < 4; ++mode) {   // blocking, async, out = chunk me of in, misaligned overlap
          if (mode == 3 && size == 1) continue;  // one rank's only chunk is all of in
          ++id;
          Tensor in = make_input(dt, m * size, id, me);
          Guarded out(dt, m);
          Tensor target = out.view;
          if (mode == 2) target = in.view(me * m, {m});
          if (mode == 3) target = in.view(me * m + m < size * m ? me * m + 1 : me * m - 1, {m});
          if (mode == 1)
            comm_->reduce_scatter_async(in, target, op)->wait();
          else
            comm_->reduce_scatter(in, target, op);
          std::string what = describe("reduce_scatter", dt, m, mode, op);
          expect_values(
              target, [&](int64_t i) { return reduce_expected(dt, op, id, size, me * m + i); }, what, op);
          EXPECT_TRUE(out.guards_intact()) << what;
        }
    }
}

TEST_F(Nccl, AllGatherSeparateInPlaceAndOverlapping) {
  uint64_t id = 3000;
  int me = comm_->rank(), size = comm_->size();
  for (DType dt : kDtypes)
    for (int64_t m : {1, 7, 333})
      for (int mode = 0; mode < 4; ++mode) {  // blocking, async, in = chunk me of out, misaligned overlap
        if (mode == 3 && size == 1) continue;
        ++id;
        Guarded out(dt, m * size);
        Tensor in = make_input(dt, m, id, me);
        if (mode >= 2) {
          int64_t at = mode == 2 ? me * m : (me * m + m < size * m ? me * m + 1 : me * m - 1);
          out.view.view(at, {m}).copy_from(in);
          in = out.view.view(at, {m});
        }
        if (mode == 1)
          comm_->all_gather_async(in, out.view)->wait();
        else
          comm_->all_gather(in, out.view);
        std::string what = describe("all_gather", dt, m, mode);
        expect_values(
            out.view, [&](int64_t i) { return input_value(dt, id, static_cast<int>(i / m), i % m); }, what);
        EXPECT_TRUE(out.guards_intact()) << what;
      }
}

TEST_F(Nccl, BroadcastFromEveryRoot) {
  uint64_t id = 4000;
  for (DType dt : kDtypes)
    for (int64_t n : {1, 7, 1001})
      for (int root = 0; root < comm_->size(); ++root) {
        ++id;
        Guarded t(dt, n);
        if (comm_->rank() == root) t.view.copy_from(make_input(dt, n, id, root));
        comm_->broadcast(t.view, root);
        std::string what = fmt::format("broadcast from {} {} x{}", root, dtype_name(dt), n);
        expect_values(
            t.view, [&](int64_t i) { return input_value(dt, id, root, i); }, what);
        EXPECT_TRUE(t.guards_intact()) << what;
      }
}

// A blocking ring and a non-blocking one (even ranks send first, odd ranks receive first, as NCCL
// needs), then both directions at once through send_recv, which also works with oneself.
TEST_F(Nccl, SendRecvRingsAndGroupedExchange) {
  uint64_t id = 5000;
  int me = comm_->rank(), size = comm_->size(), next = (me + 1) % size, prev = (me + size - 1) % size;
  for (DType dt : kDtypes)
    for (int64_t n : {1, 7, 1001}) {
      ++id;
      Tensor mine = make_input(dt, n, id, me);
      for (bool async : {false, true}) {
        if (size == 1) break;  // a ring of one rank is a message to oneself: send_recv below
        Guarded got(dt, n);
        std::unique_ptr<Work> sent, received;
        auto send = [&] {
          if (async)
            sent = comm_->isend(mine, next, 3);
          else
            comm_->send(mine, next, 3);
        };
        auto recv = [&] {
          if (async)
            received = comm_->irecv(got.view, prev, 3);
          else
            comm_->recv(got.view, prev, 3);
        };
        if (me % 2 == 0) {
          send();
          recv();
        } else {
          recv();
          send();
        }
        if (async) {
          received->wait();
          sent->wait();
        }
        std::string what = fmt::format("{} ring {} x{}", async ? "isend/irecv" : "send/recv", dtype_name(dt), n);
        expect_values(
            got.view, [&](int64_t i) { return input_value(dt, id, prev, i); }, what);
        EXPECT_TRUE(got.guards_intact()) << what;
      }
      Guarded from_prev(dt, n), from_next(dt, n);
      auto forward = comm_->send_recv(mine, next, from_prev.view, prev);
      auto backward = comm_->send_recv(mine, prev, from_next.view, next);
      backward->wait();
      forward->wait();
      std::string what = fmt::format("send_recv {} x{}", dtype_name(dt), n);
      expect_values(
          from_prev.view, [&](int64_t i) { return input_value(dt, id, prev, i); }, what + " from prev");
      expect_values(
          from_next.view, [&](int64_t i) { return input_value(dt, id, next, i); }, what + " from next");
      EXPECT_TRUE(from_prev.guards_intact() && from_next.guards_intact()) << what;
    }
}

TEST_F(Nccl, SplitOrdersByKeyAndLeavesOutNegativeColors) {
  int me = comm_->rank(), size = comm_->size();
  auto members_of = [](Communicator& c, int value) {  // every member's value, in rank order
    Tensor mine = Tensor::empty({1}, DType::i32);
    mine.data<int32_t>()[0] = value;
    Tensor all = Tensor::empty({c.size()}, DType::i32, Device::cuda);
    c.all_gather(to_device(mine), all);
    Tensor h = to_host(all);
    return std::vector<int32_t>(h.data<int32_t>(), h.data<int32_t>() + c.size());
  };

  auto parity = comm_->split(me % 2, me);
  ASSERT_NE(parity, nullptr);
  EXPECT_EQ(parity->size(), (size + 1 - me % 2) / 2);
  EXPECT_EQ(parity->rank(), me / 2);
  EXPECT_EQ(parity->name(), "nccl/split");
  std::vector<int32_t> members = members_of(*parity, me);
  for (int i = 0; i < parity->size(); ++i) EXPECT_EQ(members[i], 2 * i + me % 2);
  check_all_reduce(*parity, {1, 7}, 6000);

  auto reversed = comm_->split(0, -me);  // everybody, ordered backwards by key
  ASSERT_NE(reversed, nullptr);
  EXPECT_EQ(reversed->size(), size);
  EXPECT_EQ(reversed->rank(), size - 1 - me);
  members = members_of(*reversed, me);
  for (int i = 0; i < size; ++i) EXPECT_EQ(members[i], size - 1 - i);
  check_all_reduce(*reversed, {3}, 6100);

  auto without_last = comm_->split(me == size - 1 ? -1 : 0, 0);
  EXPECT_EQ(without_last == nullptr, me == size - 1);
  if (without_last) {
    EXPECT_EQ(without_last->size(), size - 1);
  }
  auto single = parity->split(parity->rank(), 0);  // a split of a split
  ASSERT_NE(single, nullptr);
  EXPECT_EQ(single->size(), 1);
  check_all_reduce(*single, {5}, 6200);
}

// Collectives start after the work already queued on the compute stream, and Work::wait() puts
// the compute stream behind them. The stream is kept busy first, so a collective that did not wait
// for it would reduce the poison rather than the inputs.
TEST_F(Nccl, OrdersAfterAndBeforeTheComputeStream) {
  int me = comm_->rank(), size = comm_->size(), n = 100003;
  TestStream stream;
  comm_->set_compute_stream(stream.s);
  struct Restore {
    NcclCommunicator& c;
    ~Restore() { c.set_compute_stream(nullptr); }
  } restore{*comm_};
  EXPECT_EQ(comm_->compute_stream(), stream.s);

  // Pinned host buffers: copies from pageable memory may wait for the stream, hiding the ordering.
  float *input = nullptr, *result = nullptr;
  ASSERT_EQ(cudaMallocHost(&input, n * sizeof(float)), cudaSuccess);
  ASSERT_EQ(cudaMallocHost(&result, n * sizeof(float)), cudaSuccess);
  std::unique_ptr<float, cudaError_t (*)(void*)> free_input(input, cudaFreeHost), free_result(result, cudaFreeHost);
  Tensor busy = Tensor::empty({int64_t{64} << 20}, DType::f32, Device::cuda);
  Tensor t = Tensor::empty({n}, DType::f32, Device::cuda);
  for (int round = 0; round < 3; ++round) {  // blocking, async waited, async polled
    uint64_t id = 7000 + round;
    for (int64_t i = 0; i < n; ++i) input[i] = static_cast<float>(input_value(DType::f32, id, me, i));
    device_memset(t.raw(), 0xFF, t.nbytes());  // NaN poison, on the default stream
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    for (int k = 0; k < 20; ++k) ASSERT_EQ(cudaMemsetAsync(busy.raw(), k, busy.nbytes(), stream.s), cudaSuccess);
    ASSERT_EQ(cudaMemcpyAsync(t.raw(), input, t.nbytes(), cudaMemcpyHostToDevice, stream.s), cudaSuccess);
    std::unique_ptr<Work> work;
    if (round == 0) comm_->all_reduce(t, ReduceOp::sum);
    if (round > 0) work = comm_->all_reduce_async(t, ReduceOp::sum);
    if (round == 1) work->wait();
    while (round == 2 && !work->test()) {
    }
    ASSERT_EQ(cudaMemcpyAsync(result, t.raw(), t.nbytes(), cudaMemcpyDeviceToHost, stream.s), cudaSuccess);
    ASSERT_EQ(cudaStreamSynchronize(stream.s), cudaSuccess);
    if (work) {
      EXPECT_TRUE(work->test()) << "round " << round << ": the compute stream finished before the collective";
    }
    int64_t bad = 0;
    for (int64_t i = 0; i < n; ++i)
      if (!(std::fabs(result[i] - reduce_expected(DType::f32, ReduceOp::sum, id, size, i)) <= 1e-5)) ++bad;
    EXPECT_EQ(bad, 0) << "round " << round << ": elements not reduced from the compute stream's inputs";
  }
}

TEST_F(Nccl, OutstandingAndDroppedWorkComplete) {
  int size = comm_->size();
  std::vector<Tensor> buckets;
  std::vector<std::unique_ptr<Work>> works;
  for (int b = 0; b < 6; ++b) {  // like gradient buckets: start several, wait last to first
    buckets.push_back(make_input(DType::bf16, 513 + b, 8000 + b, comm_->rank()));
    works.push_back(comm_->all_reduce_async(buckets.back(), ReduceOp::avg));
  }
  for (int b = 5; b >= 0; --b) {
    works[b]->wait();
    expect_values(
        buckets[b], [&](int64_t i) { return reduce_expected(DType::bf16, ReduceOp::avg, 8000 + b, size, i); },
        fmt::format("bucket {}", b), ReduceOp::avg);
  }
  Tensor dropped = make_input(DType::i32, 4099, 8100, comm_->rank());
  comm_->all_reduce_async(dropped, ReduceOp::max);  // never waited: its destructor orders the stream
  expect_values(
      dropped, [&](int64_t i) { return reduce_expected(DType::i32, ReduceOp::max, 8100, size, i); }, "dropped");
  comm_->barrier();
  comm_->barrier();
}

TEST_F(Nccl, EmptyTensors) {
  Tensor t = Tensor::empty({0}, DType::f32, Device::cuda), out = Tensor::empty({0}, DType::f32, Device::cuda);
  comm_->all_reduce(t, ReduceOp::sum);
  comm_->all_gather_async(t, out)->wait();
  comm_->reduce_scatter(out, t, ReduceOp::avg);
  comm_->broadcast(t, 0);
  EXPECT_EQ(t.numel(), 0);
}

// Host tensors go through device memory: the results are those of the same operation on GPU tensors.
TEST_F(Nccl, HostTensorsAreStagedThroughTheGpu) {
  const int me = comm_->rank(), size = comm_->size();
  Tensor sum = host_input(DType::f32, 33, 9100, me);
  comm_->all_reduce_async(sum, ReduceOp::sum)->wait();
  Tensor want = Tensor::zeros({33});
  for (int64_t i = 0; i < 33; ++i) set(want, i, reduce_expected(DType::f32, ReduceOp::sum, 9100, size, i));
  for (int64_t i = 0; i < 33; ++i) EXPECT_NEAR(get(sum, i), get(want, i), 1e-5) << "all_reduce element " << i;
  Tensor mine = host_input(DType::i32, 5, 9200, me), all = Tensor::zeros({5 * size}, DType::i32);
  comm_->all_gather(mine, all);
  for (int r = 0; r < size; ++r)
    for (int64_t i = 0; i < 5; ++i) EXPECT_EQ(get(all, r * 5 + i), input_value(DType::i32, 9200, r, i));
  Tensor root = host_input(DType::bf16, 7, 9300, me);
  comm_->broadcast(root, size - 1);
  for (int64_t i = 0; i < 7; ++i) EXPECT_EQ(get(root, i), input_value(DType::bf16, 9300, size - 1, i));
  if (size > 1) {  // a ring of host tensors through send_recv
    Tensor out = host_input(DType::f32, 4, 9400, me), in = Tensor::zeros({4});
    comm_->send_recv(out, (me + 1) % size, in, (me + size - 1) % size)->wait();
    for (int64_t i = 0; i < 4; ++i) EXPECT_EQ(get(in, i), input_value(DType::f32, 9400, (me + size - 1) % size, i));
  }
}

TEST_F(Nccl, MisuseThrowsNamedErrors) {
  int me = comm_->rank(), size = comm_->size();
  std::string where = fmt::format("nccl rank {} of {}", me, size);
  Tensor f = make_input(DType::f32, 6, 9000, me);
  Tensor short_out = Tensor::empty({6 * size + 1}, DType::f32, Device::cuda);
  expect_error([&] { comm_->all_gather_async(f, short_out); }, {"[all_gather]", where.c_str(), "must have input's"});
  Tensor u16 = Tensor::zeros({6}, DType::u16, Device::cuda);
  expect_error([&] { comm_->all_reduce(u16, ReduceOp::max); }, {"[all_reduce]", "u16", "not supported"});
  expect_error([&] { comm_->broadcast(u16, 0); }, {"[broadcast]", "not supported"});
  Tensor i = make_input(DType::i32, 6, 9001, me);
  expect_error([&] { comm_->all_reduce_async(i, ReduceOp::avg); }, {"[all_reduce]", where.c_str(), "avg", "i32"});
  Tensor big = Tensor::empty({6 * size + 1}, DType::f32, Device::cuda);
  expect_error([&] { comm_->reduce_scatter(big, f, ReduceOp::sum); }, {"[reduce_scatter]", "elements"});
  expect_error([&] { comm_->broadcast(f, size); }, {"[broadcast]", fmt::format("root {}", size).c_str()});
  expect_error([&] { comm_->isend(f, me, 0); }, {"[isend]", "this rank", "send_recv"});
  expect_error([&] { comm_->recv(f, size, 0); }, {"[recv]", "not a rank"});
  expect_error([&] { comm_->send(f, (me + 1) % size, -1); }, {"[send]", "negative"});
  Tensor none;
  expect_error([&] { comm_->send_recv(f, me, none, (me + 1) % size); }, {"[send_recv]", "oneself"});
  comm_->barrier();  // still usable: argument errors never reach NCCL
}

}  // namespace
}  // namespace meshtrain
