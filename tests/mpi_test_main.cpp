// gtest main for multi-rank test binaries run under mpiexec: initialises MPI, lets only rank 0 print
// the usual progress, tags every failure with the rank it happened on, and makes a failure on any
// rank fail every rank's exit code (so mpiexec and CTest report it whichever rank failed).
#include <gtest/gtest.h>

#include <cstdio>
#include <string>

#include "parallel/mpi_runtime.h"

namespace {

// Prints each failed assertion as "[rank r] Suite.Test file:line: message" on stderr.
class RankTagger : public ::testing::EmptyTestEventListener {
 public:
  explicit RankTagger(int rank) : rank_(rank) {}
  // The test's name is kept here because gtest holds its own lock while reporting a result, so
  // asking UnitTest for the current test from OnTestPartResult would deadlock.
  void OnTestStart(const ::testing::TestInfo& info) override {
    test_ = std::string(info.test_suite_name()) + "." + info.name();
  }
  void OnTestEnd(const ::testing::TestInfo&) override { test_ = "(outside a test)"; }
  void OnTestPartResult(const ::testing::TestPartResult& result) override {
    if (!result.failed()) return;
    std::fprintf(stderr, "[rank %d] %s %s:%d: %s\n", rank_, test_.c_str(),
                 result.file_name() ? result.file_name() : "?", result.line_number(), result.message());
    std::fflush(stderr);
  }

 private:
  int rank_;
  std::string test_ = "(outside a test)";
};

int run(meshtrain::MpiRuntime& runtime) {
  auto world = meshtrain::world_communicator(&runtime);
  auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
  if (world->rank() != 0) delete listeners.Release(listeners.default_result_printer());
  listeners.Append(new RankTagger(world->rank()));
  int failed_here = RUN_ALL_TESTS() != 0 ? 1 : 0;

  // Every rank learns which ranks failed; rank 0 says so, since it may have passed itself.
  using meshtrain::DType, meshtrain::Tensor;
  Tensor mine = Tensor::empty({1}, DType::i32), all = Tensor::empty({world->size()}, DType::i32);
  mine.data<int32_t>()[0] = failed_here;
  world->all_gather(mine, all);
  std::string failed_ranks;
  for (int r = 0; r < world->size(); ++r)
    if (all.data<int32_t>()[r]) failed_ranks += (failed_ranks.empty() ? "" : ", ") + std::to_string(r);
  if (world->rank() == 0 && !failed_ranks.empty()) {
    std::fprintf(stderr, "[rank 0] tests failed on rank(s) %s of %d\n", failed_ranks.c_str(), world->size());
  }
  return failed_ranks.empty() ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  meshtrain::MpiRuntime runtime(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  return run(runtime);
}
