// Single-process tests of the mesh maths, of Mesh construction over simulated worlds (one thread
// per rank, with a split that behaves like MPI_Comm_split), of LocalCommunicator, and of launcher
// detection. The multi-rank versions over MPI are in comm_test.cpp.
#include "parallel/mesh.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <barrier>
#include <cstdlib>
#include <map>
#include <numeric>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "parallel/mpi_runtime.h"
#include "test_util.h"

namespace meshtrain {
namespace {

constexpr MeshAxis kAxes[] = {MeshAxis::dp, MeshAxis::tp, MeshAxis::pp};

std::vector<MeshShape> factorisations(int n) {
  std::vector<MeshShape> shapes;
  for (int dp = 1; dp <= n; ++dp)
    for (int tp = 1; tp <= n; ++tp)
      if (n % (dp * tp) == 0) shapes.push_back({dp, tp, n / (dp * tp)});
  return shapes;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(MeshMaths, RankAndCoordinateRoundTripWithTpFastest) {
  MeshShape s{2, 3, 2};  // dp 2, tp 3, pp 2
  EXPECT_EQ(Mesh::rank_of(s, {0, 0, 0}), 0);
  EXPECT_EQ(Mesh::rank_of(s, {0, 1, 0}), 1);  // tp varies fastest
  EXPECT_EQ(Mesh::rank_of(s, {1, 0, 0}), 3);  // then dp
  EXPECT_EQ(Mesh::rank_of(s, {0, 0, 1}), 6);  // then pp
  EXPECT_EQ(Mesh::rank_of(s, {1, 2, 1}), 11);
  EXPECT_EQ(Mesh::coord_of(s, 5), (MeshCoord{1, 2, 0}));
  for (int n = 1; n <= 24; ++n)
    for (MeshShape shape : factorisations(n))
      for (int r = 0; r < n; ++r) {
        MeshCoord c = Mesh::coord_of(shape, r);
        ASSERT_EQ(Mesh::rank_of(shape, c), r) << n << " ranks, dp " << shape.dp << " tp " << shape.tp;
        ASSERT_EQ(r, (c.pp * shape.dp + c.dp) * shape.tp + c.tp);
      }
  EXPECT_NE(error_of([&] { Mesh::coord_of(s, 12); }).find("[mesh] rank 12 outside"), std::string::npos);
  EXPECT_NE(error_of([&] { Mesh::rank_of(s, {2, 0, 0}); }).find("[mesh] coordinate"), std::string::npos);
}

TEST(MeshMaths, ShapeMustMultiplyToTheWorldSize) {
  EXPECT_NO_THROW(Mesh::check_shape({2, 2, 1}, 4));
  std::string message = error_of([] { Mesh::check_shape({2, 2, 1}, 3); });
  EXPECT_NE(message.find("[mesh] parallel.dp x parallel.tp x parallel.pp = 2 x 2 x 1 = 4 must equal the number of "
                         "ranks (3)"),
            std::string::npos)
      << message;
  EXPECT_NE(error_of([] { Mesh::check_shape({0, 1, 1}, 0); }).find("at least 1"), std::string::npos);
  EXPECT_NE(error_of([] { Mesh::check_shape({2, -1, -2}, 4); }).find("at least 1"), std::string::npos);
}

// For every shape up to 24 ranks: the color of each axis groups exactly the ranks that share the
// other two coordinates, keys within a group are its 0..n-1 coordinates, and group_ranks agrees.
TEST(MeshMaths, SplitColorsPartitionEachAxis) {
  for (int n = 1; n <= 24; ++n)
    for (MeshShape s : factorisations(n))
      for (MeshAxis axis : kAxes) {
        std::map<int, std::set<int>> groups;  // color -> world ranks
        for (int r = 0; r < n; ++r) groups[Mesh::split_color(s, axis, r)].insert(r);
        ASSERT_EQ(static_cast<int>(groups.size()), n / Mesh::axis_size(s, axis));
        for (int r = 0; r < n; ++r) {
          std::vector<int> group = Mesh::group_ranks(s, axis, r);
          ASSERT_EQ(static_cast<int>(group.size()), Mesh::axis_size(s, axis));
          ASSERT_EQ(std::set<int>(group.begin(), group.end()), groups[Mesh::split_color(s, axis, r)]);
          for (int i = 0; i < static_cast<int>(group.size()); ++i) {
            ASSERT_EQ(Mesh::split_key(s, axis, group[i]), i);
            MeshCoord a = Mesh::coord_of(s, r), b = Mesh::coord_of(s, group[i]);
            // Only the coordinate along the axis may differ.
            ASSERT_TRUE(axis == MeshAxis::dp || a.dp == b.dp);
            ASSERT_TRUE(axis == MeshAxis::tp || a.tp == b.tp);
            ASSERT_TRUE(axis == MeshAxis::pp || a.pp == b.pp);
          }
        }
      }
}

// ---- a simulated world: one thread per rank, split() meets at a barrier like MPI_Comm_split ----

class SimWorld {
 public:
  explicit SimWorld(int size) : size_(size), args_(size), sync_(size) {}
  int size() const { return size_; }
  /// Called by every rank at once; returns the world ranks of rank's new group in (key, rank) order.
  std::vector<int> split(int rank, int color, int key) {
    args_[rank] = {color, key};
    sync_.arrive_and_wait();
    std::vector<std::pair<int, int>> members;  // (key, world rank)
    for (int r = 0; r < size_; ++r)
      if (color >= 0 && args_[r].first == color) members.push_back({args_[r].second, r});
    std::sort(members.begin(), members.end());
    sync_.arrive_and_wait();  // nobody overwrites args_ before everyone has read it
    std::vector<int> group;
    for (auto& m : members) group.push_back(m.second);
    return group;
  }

 private:
  int size_;
  std::vector<std::pair<int, int>> args_;
  std::barrier<> sync_;
};

// Knows its rank, size and the world ranks of its members; only split() does anything.
class SimComm final : public Communicator {
 public:
  SimComm(SimWorld* world, std::vector<int> members, int rank)
      : Communicator("sim"), world_(world), members_(std::move(members)), rank_(rank) {}
  int rank() const override { return rank_; }
  int size() const override { return static_cast<int>(members_.size()); }
  const std::vector<int>& members() const { return members_; }
  std::unique_ptr<Communicator> split(int color, int key) override {
    MT_CHECK(world_ && size() == world_->size(), "[split] the simulation splits only the world");
    std::vector<int> group = world_->split(rank_, color, key);
    if (group.empty()) return nullptr;
    int me = static_cast<int>(std::find(group.begin(), group.end(), rank_) - group.begin());
    return std::make_unique<SimComm>(nullptr, group, me);
  }
  void all_reduce(Tensor&, ReduceOp) override { unsupported(); }
  std::unique_ptr<Work> all_reduce_async(Tensor&, ReduceOp) override { unsupported(); }
  void reduce_scatter(const Tensor&, Tensor&, ReduceOp) override { unsupported(); }
  std::unique_ptr<Work> reduce_scatter_async(const Tensor&, Tensor&, ReduceOp) override { unsupported(); }
  void all_gather(const Tensor&, Tensor&) override { unsupported(); }
  std::unique_ptr<Work> all_gather_async(const Tensor&, Tensor&) override { unsupported(); }
  void broadcast(Tensor&, int) override { unsupported(); }
  void send(const Tensor&, int, int) override { unsupported(); }
  void recv(Tensor&, int, int) override { unsupported(); }
  std::unique_ptr<Work> isend(const Tensor&, int, int) override { unsupported(); }
  std::unique_ptr<Work> irecv(Tensor&, int, int) override { unsupported(); }
  void barrier() override { unsupported(); }
  [[noreturn]] void abort(int) override { unsupported(); }

 private:
  [[noreturn]] static void unsupported() { MT_FAIL("[sim] not simulated"); }
  SimWorld* world_;
  std::vector<int> members_;
  int rank_;
};

TEST(MeshOverSimulatedWorld, EveryFactorisationGivesTheRightGroups) {
  for (int n : {1, 2, 3, 4, 6, 8, 12}) {
    for (MeshShape shape : factorisations(n)) {
      SimWorld world(n);
      std::vector<std::string> failures(n);
      std::vector<std::thread> ranks;
      for (int r = 0; r < n; ++r) {
        ranks.emplace_back([&, r] {
          try {
            std::vector<int> everyone(n);
            std::iota(everyone.begin(), everyone.end(), 0);
            SimComm comm(&world, everyone, r);
            comm.set_name("sim world");
            Mesh mesh(comm, shape);
            std::string& f = failures[r];
            if (!(mesh.coord() == Mesh::coord_of(shape, r))) f += "coordinate; ";
            for (MeshAxis axis : kAxes) {
              auto& c = static_cast<SimComm&>(mesh.axis(axis));
              if (c.members() != Mesh::group_ranks(shape, axis, r))
                f += std::string("members of ") + mesh_axis_name(axis) + "; ";
              if (c.name() != std::string("sim world/") + mesh_axis_name(axis)) f += "name " + c.name() + "; ";
            }
            if (&mesh.dp() != &mesh.axis(MeshAxis::dp) || &mesh.world() != &comm) f += "accessors; ";
          } catch (const std::exception& e) {
            failures[r] = e.what();
          }
        });
      }
      for (auto& t : ranks) t.join();
      for (int r = 0; r < n; ++r)
        EXPECT_EQ(failures[r], "") << n << " ranks, dp " << shape.dp << " tp " << shape.tp << " pp " << shape.pp
                                   << ", rank " << r;
    }
  }
}

// A split that pairs ranks differently from the maths must be caught, not silently used.
TEST(MeshOverSimulatedWorld, RejectsACommunicatorWhoseSplitDisagrees) {
  class ReversingComm final : public Communicator {
   public:
    ReversingComm() : Communicator("odd") {}
    int rank() const override { return 0; }
    int size() const override { return 1; }
    std::unique_ptr<Communicator> split(int, int) override {
      // Claims a group of 2 where the mesh expects 1.
      return std::make_unique<SimComm>(nullptr, std::vector<int>{0, 0}, 1);
    }
    void all_reduce(Tensor&, ReduceOp) override {}
    std::unique_ptr<Work> all_reduce_async(Tensor&, ReduceOp) override { return nullptr; }
    void reduce_scatter(const Tensor&, Tensor&, ReduceOp) override {}
    std::unique_ptr<Work> reduce_scatter_async(const Tensor&, Tensor&, ReduceOp) override { return nullptr; }
    void all_gather(const Tensor&, Tensor&) override {}
    std::unique_ptr<Work> all_gather_async(const Tensor&, Tensor&) override { return nullptr; }
    void broadcast(Tensor&, int) override {}
    void send(const Tensor&, int, int) override {}
    void recv(Tensor&, int, int) override {}
    std::unique_ptr<Work> isend(const Tensor&, int, int) override { return nullptr; }
    std::unique_ptr<Work> irecv(Tensor&, int, int) override { return nullptr; }
    void barrier() override {}
    [[noreturn]] void abort(int code) override { std::_Exit(code); }
  } odd;
  std::string message = error_of([&] { Mesh mesh(odd, {1, 1, 1}); });
  EXPECT_NE(message.find("[mesh] odd rank 0: splitting the dp axis gave rank 1 of 2, expected rank 0 of 1"),
            std::string::npos)
      << message;
}

// ---- LocalCommunicator ----

TEST(LocalCommunicator, CollectivesKeepOrCopyValues) {
  LocalCommunicator comm;
  EXPECT_EQ(comm.rank(), 0);
  EXPECT_EQ(comm.size(), 1);
  EXPECT_EQ(comm.name(), "local");
  std::vector<float> values = testing::random_floats(37, 5);
  Tensor t = Tensor::empty({37});
  std::copy(values.begin(), values.end(), t.f32());
  for (ReduceOp op : {ReduceOp::sum, ReduceOp::avg, ReduceOp::max}) {
    comm.all_reduce(t, op);
    comm.all_reduce_async(t, op)->wait();
  }
  comm.broadcast(t, 0);
  for (int i = 0; i < 37; ++i) ASSERT_EQ(t.f32()[i], values[i]);

  Tensor out = Tensor::empty({37});
  std::fill(out.f32(), out.f32() + 37, -7.0f);
  comm.reduce_scatter(t, out, ReduceOp::sum);
  for (int i = 0; i < 37; ++i) ASSERT_EQ(out.f32()[i], values[i]);
  std::fill(out.f32(), out.f32() + 37, -7.0f);
  auto work = comm.all_gather_async(t, out);
  EXPECT_TRUE(work->test());
  for (int i = 0; i < 37; ++i) ASSERT_EQ(out.f32()[i], values[i]);
  comm.barrier();
}

TEST(LocalCommunicator, MisuseThrowsLikeARealOne) {
  LocalCommunicator comm;
  Tensor f = Tensor::empty({4}), i = Tensor::empty({4}, DType::i32), big = Tensor::empty({5});
  EXPECT_NE(error_of([&] { comm.all_reduce(i, ReduceOp::avg); }).find("[all_reduce] local rank 0 of 1: avg"),
            std::string::npos);
  EXPECT_NE(error_of([&] { comm.reduce_scatter(big, f, ReduceOp::sum); }).find("[reduce_scatter]"), std::string::npos);
  EXPECT_NE(
      error_of([&] { comm.all_gather(f, i); }).find("[all_gather] local rank 0 of 1: input is f32 but output is i32"),
      std::string::npos);
  EXPECT_NE(error_of([&] { comm.broadcast(f, 1); }).find("[broadcast] local rank 0 of 1: root 1"), std::string::npos);
  EXPECT_NE(error_of([&] { comm.send(f, 0, 0); }).find("[send]"), std::string::npos);
  EXPECT_NE(error_of([&] { comm.recv(f, 1, 0); }).find("[recv]"), std::string::npos);
  EXPECT_NE(error_of([&] { comm.isend(f, 0, 0); }).find("[isend] local rank 0 of 1: not supported"), std::string::npos);
  EXPECT_NE(error_of([&] { comm.irecv(f, 0, 0); }).find("[irecv] local rank 0 of 1: not supported"), std::string::npos);
  Tensor undefined;
  EXPECT_NE(error_of([&] { comm.all_reduce(undefined, ReduceOp::sum); }).find("undefined"), std::string::npos);
}

TEST(LocalCommunicator, SplitAndMesh) {
  LocalCommunicator comm;
  auto child = comm.split(3, 0);
  ASSERT_NE(child, nullptr);
  EXPECT_EQ(child->size(), 1);
  EXPECT_EQ(comm.split(-1, 0), nullptr);
  Mesh mesh(comm, {});
  EXPECT_EQ(mesh.dp().size() * mesh.tp().size() * mesh.pp().size(), 1);
  EXPECT_EQ(mesh.tp().name(), "local/tp");
  EXPECT_NE(error_of([&] {
              Mesh bad(comm, {2, 1, 1});
            }).find("= 2 must equal the number of ranks (1)"),
            std::string::npos);
}

TEST(LocalCommunicatorDeathTest, AbortEndsTheProcessWithTheCode) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  LocalCommunicator comm;
  EXPECT_EXIT(comm.abort(7), ::testing::ExitedWithCode(7), "");
}

// ---- launcher detection and the world communicator without MPI ----

// Sets environment variables for one test and puts the old values back afterwards.
class ScopedEnv {
 public:
  void set(const char* name, const char* value) {
    remember(name);
    if (value)
      setenv(name, value, 1);
    else
      unsetenv(name);
  }
  ~ScopedEnv() {
    for (auto& [name, old] : saved_) {
      if (old)
        setenv(name.c_str(), old->c_str(), 1);
      else
        unsetenv(name.c_str());
    }
  }

 private:
  void remember(const char* name) {
    if (saved_.count(name)) return;
    const char* v = std::getenv(name);
    saved_[name] = v ? std::optional<std::string>(v) : std::nullopt;
  }
  std::map<std::string, std::optional<std::string>> saved_;
};

TEST(MpiRuntime, DetectsLaunchersFromTheEnvironment) {
  ScopedEnv env;
  for (const char* name :
       {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE", "PMI_RANK", "MV2_COMM_WORLD_SIZE", "SLURM_NTASKS",
        "SLURM_PROCID", "OMPI_COMM_WORLD_LOCAL_RANK", "MV2_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"})
    env.set(name, nullptr);
  EXPECT_FALSE(MpiRuntime::launched_by_mpi());
  EXPECT_FALSE(MpiRuntime::local_rank_from_env().has_value());
  EXPECT_EQ(MpiRuntime::init_if_launched(), nullptr);  // and MPI stays uninitialised
  int initialized = 1;
  MPI_Initialized(&initialized);
  EXPECT_FALSE(initialized);
  auto world = world_communicator(nullptr);
  EXPECT_NE(dynamic_cast<LocalCommunicator*>(world.get()), nullptr);

  env.set("SLURM_NTASKS", "4");
  EXPECT_FALSE(MpiRuntime::launched_by_mpi());  // an allocation alone is not a launch
  env.set("SLURM_PROCID", "2");
  EXPECT_TRUE(MpiRuntime::launched_by_mpi());
  env.set("SLURM_NTASKS", nullptr);
  env.set("SLURM_PROCID", nullptr);
  env.set("OMPI_COMM_WORLD_SIZE", "2");
  EXPECT_TRUE(MpiRuntime::launched_by_mpi());
  env.set("OMPI_COMM_WORLD_SIZE", nullptr);
  env.set("PMIX_RANK", "0");
  EXPECT_TRUE(MpiRuntime::launched_by_mpi());
  env.set("PMIX_RANK", nullptr);
  env.set("PMI_SIZE", "3");
  EXPECT_FALSE(MpiRuntime::launched_by_mpi());
  env.set("PMI_RANK", "1");
  EXPECT_TRUE(MpiRuntime::launched_by_mpi());

  env.set("SLURM_LOCALID", "3");
  EXPECT_EQ(MpiRuntime::local_rank_from_env(), 3);
  env.set("OMPI_COMM_WORLD_LOCAL_RANK", "1");
  EXPECT_EQ(MpiRuntime::local_rank_from_env(), 1);
  env.set("OMPI_COMM_WORLD_LOCAL_RANK", "x1");
  EXPECT_EQ(MpiRuntime::local_rank_from_env(), 3);  // garbage is ignored
}

}  // namespace
}  // namespace meshtrain
