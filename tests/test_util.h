// Helpers shared by the tests: where the shared data lives, scratch directories, random inputs.
#pragma once

#include <gtest/gtest.h>

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "core/rng.h"

namespace meshtrain::testing {

/// The shared data folder (MESHTRAIN_SHARED_DATA or ../shared/data beside the checkout), or "" if absent.
inline std::string shared_data_dir() {
  if (const char* env = std::getenv("MESHTRAIN_SHARED_DATA")) {
    return std::filesystem::is_directory(env) ? std::string(env) : std::string();
  }
  std::filesystem::path p = std::filesystem::path(MESHTRAIN_SOURCE_DIR).parent_path() / "shared" / "data";
  return std::filesystem::is_directory(p) ? p.string() : std::string();
}

/// Skips the current test, saying why, when the shared data folder is missing.
#define MT_REQUIRE_SHARED_DATA(dir)                                                              \
  std::string dir = ::meshtrain::testing::shared_data_dir();                                     \
  if (dir.empty()) GTEST_SKIP() << "shared data not found (../shared/data beside the checkout, " \
                                   "or set MESHTRAIN_SHARED_DATA); skipping"

/// A fresh empty directory under the system temp dir, removed when the object goes away.
class ScratchDir {
 public:
  explicit ScratchDir(const std::string& tag) {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::string name = tag + "_" + (info ? std::string(info->name()) : "x") + "_" + std::to_string(::getpid());
    path_ = std::filesystem::temp_directory_path() / ("meshtrain_test_" + name);
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~ScratchDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::filesystem::path& path() const { return path_; }
  std::string str(const std::string& child = "") const { return child.empty() ? path_.string() : (path_ / child).string(); }

 private:
  std::filesystem::path path_;
};

/// n uniform values in [lo, hi) from a counter-based stream (never zeros).
inline std::vector<float> random_floats(size_t n, uint64_t seed, float lo = -1.0f, float hi = 1.0f) {
  CounterRng rng(seed, 7);
  std::vector<float> v(n);
  for (auto& x : v) x = lo + (hi - lo) * rng.uniform();
  return v;
}

}  // namespace meshtrain::testing
