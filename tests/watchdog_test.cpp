// The communication watchdog (core/watchdog.h): its background thread reads the state that every
// blocking call's Guard writes, so these tests also run under ThreadSanitizer (scripts/test_tsan.sh).
// A wait past the timeout ends the process, so those cases are death tests ("threadsafe" style: the
// child re-runs this binary instead of forking a process that already has threads).
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "core/watchdog.h"

namespace meshtrain {
namespace {

class Watchdog : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { GTEST_FLAG_SET(death_test_style, "threadsafe"); }
  void TearDown() override { CommWatchdog::configure(0.0, 0, ""); }
};

std::string where() { return "dp group of 4"; }

TEST_F(Watchdog, AWaitPastTheTimeoutEndsTheProcessNamingRankHostAndOperation) {
  EXPECT_EXIT(
      {
        CommWatchdog::configure(0.3, 3, "node-a");
        CommWatchdog::Guard g("all_reduce", where);
        ::sleep(10);
      },
      ::testing::ExitedWithCode(1),
      R"(rank 3 on node-a\): \[watchdog\] waited [0-9.]+ s in all_reduce \(dp group of 4\) for the other ranks \(parallel\.timeout_s = 0\.3\): one of them died)");
}

TEST_F(Watchdog, TheOutermostWaitIsTheOneTimedAndNamed) {
  // A wait inside a blocking collective (depth 2) neither restarts the clock nor renames the operation.
  EXPECT_EXIT(
      {
        CommWatchdog::configure(0.5, 0, "h");
        CommWatchdog::Guard outer("send_recv", [] { return std::string("pp group"); });
        for (;;) {
          CommWatchdog::Guard inner("wait", [] { return std::string("inner"); });
          ::usleep(20000);
        }
      },
      ::testing::ExitedWithCode(1), R"(in send_recv \(pp group\))");
}

TEST_F(Watchdog, ATimeoutRunsTheAbortHooksAndAHostWaitForTheGpuNamesTheLastCollective) {
  // What a GPU rank does: the collective is queued on a stream, then the host waits for the stream.
  EXPECT_EXIT(
      {
        CommWatchdog::configure(0.3, 1, "gpu-node");
        const int kept = CommWatchdog::add_abort_hook([] { std::fputs("hook: aborted nccl tp\n", stderr); });
        const int gone = CommWatchdog::add_abort_hook([] { std::fputs("hook: removed, never runs\n", stderr); });
        CommWatchdog::remove_abort_hook(gone);
        (void)kept;
        CommWatchdog::note_queued("all_reduce", [] { return std::string("nccl tp rank 1 of 2"); });
        const auto g = CommWatchdog::Guard::gpu_wait("a wait for the GPU's stream");
        ::sleep(10);
      },
      ::testing::ExitedWithCode(1),
      R"(rank 1 on gpu-node\): \[watchdog\] waited [0-9.]+ s in a wait for the GPU's stream \(the last collective )"
      R"(queued: all_reduce \(nccl tp rank 1 of 2\)\) for this rank's GPU .*: the collective did not finish: )"
      R"(another rank died.*hook: aborted nccl tp.*communicators aborted)");
}

TEST_F(Watchdog, AWaitForTheGpuWithNoCollectiveQueuedBlamesAKernelNotThePeers) {
  EXPECT_EXIT(
      {
        CommWatchdog::configure(0.2, 0, "gpu-node");
        const auto g = CommWatchdog::Guard::gpu_wait("a device synchronize");
        ::sleep(10);
      },
      ::testing::ExitedWithCode(1),
      R"(waited [0-9.]+ s in a device synchronize \(no collective was queued on a GPU stream\) for this rank's GPU )"
      R"(\(parallel.timeout_s = 0.2\): no collective was in flight, so a kernel on this GPU never ended)");
}

TEST_F(Watchdog, AnAbortHookThatHangsDoesNotKeepTheProcessAlive) {
  const auto start = std::chrono::steady_clock::now();
  EXPECT_EXIT(
      {
        CommWatchdog::configure(0.2, 0, "h");
        CommWatchdog::add_abort_hook([] { ::sleep(1000); });
        CommWatchdog::Guard g("all_reduce", where);
        ::sleep(100);
      },
      ::testing::ExitedWithCode(1), R"(did not finish in time; exiting anyway)");
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_LT(took, 0.2 + CommWatchdog::kAbortSeconds + 5.0) << "the timeout plus the hooks' bound, and start-up";
}

TEST_F(Watchdog, NothingQueuedIsSaidSo) {
  CommWatchdog::configure(5.0, 0, "h");  // (configuring starts a new watch: nothing queued yet)
  EXPECT_EQ(CommWatchdog::last_queued(), "no collective was queued on a GPU stream");
  CommWatchdog::note_queued("broadcast", [] { return std::string("nccl dp rank 0 of 4"); });
  EXPECT_EQ(CommWatchdog::last_queued(), "the last collective queued: broadcast (nccl dp rank 0 of 4)");
}

TEST_F(Watchdog, ShortWaitsFromManyThreadsNeverTrigger) {
  // Four threads enter and leave guards as fast as they can while the watchdog thread checks every
  // 100 ms: each wait is far below the timeout, so the process lives, and TSan sees the shared state.
  CommWatchdog::configure(2.0, 0, "h");
  ASSERT_TRUE(CommWatchdog::on());
  std::atomic<long> guards{0};
  std::vector<std::thread> threads;
  const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(600);
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&] {
      while (std::chrono::steady_clock::now() < until) {
        CommWatchdog::Guard g("all_reduce", where);
        guards.fetch_add(1, std::memory_order_relaxed);
      }
    });
  for (auto& t : threads) t.join();
  EXPECT_GT(guards.load(), 1000);
}

TEST_F(Watchdog, OffNeverEndsALongWait) {
  CommWatchdog::configure(0.2, 0, "h");
  CommWatchdog::configure(0.0, 0, "h");
  EXPECT_FALSE(CommWatchdog::on());
  CommWatchdog::Guard g("barrier", where);
  std::this_thread::sleep_for(std::chrono::milliseconds(500));  // past the earlier 0.2 s: still alive
  SUCCEED();
}

int threads_of_this_process() {
  int n = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator("/proc/self/task")) ++n;
  return n;
}

TEST_F(Watchdog, ConfiguringAgainStartsNoSecondWatcher) {
  CommWatchdog::configure(0.0, 0, "h");
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // an earlier test's watcher has ended
  const int before = threads_of_this_process();
  CommWatchdog::configure(5.0, 0, "h");
  const int watching = threads_of_this_process();
  EXPECT_EQ(watching, before + 1);
  CommWatchdog::configure(5.0, 0, "h");
  CommWatchdog::configure(0.0, 0, "h");
  CommWatchdog::configure(5.0, 0, "h");  // before the watcher woke to see the stop: it carries on
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_EQ(threads_of_this_process(), watching);
  CommWatchdog::configure(0.0, 0, "h");
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_EQ(threads_of_this_process(), before);
}

TEST_F(Watchdog, ReconfiguringKeepsOneWatcherAndTheNewTimeout) {
  // Turned on, off and on again with a longer timeout: a wait past the old timeout but within the new
  // one lives; past the new one it ends the process.
  EXPECT_EXIT(
      {
        CommWatchdog::configure(0.2, 1, "h");
        CommWatchdog::configure(0.0, 1, "h");
        CommWatchdog::configure(1.0, 1, "h");
        CommWatchdog::configure(1.0, 1, "h");
        const auto start = std::chrono::steady_clock::now();
        {
          CommWatchdog::Guard g("barrier", where);
          std::this_thread::sleep_for(std::chrono::milliseconds(500));
        }
        std::fprintf(stderr, "alive after %.1f s\n",
                     std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
        CommWatchdog::Guard g("all_gather", where);
        ::sleep(10);
      },
      ::testing::ExitedWithCode(1), R"(alive after 0\.[5-9] s(.|\n)*waited 1\.[0-9] s in all_gather)");
}

}  // namespace
}  // namespace meshtrain
