// Shared by the fuzz targets (tests/fuzz/fuzz_*.cpp): a private scratch folder per process, writing
// the input to a file there, and the rule every target enforces: bad input may throw
// meshtrain::Error (a clear message), and nothing else may escape: another exception type, a crash,
// a sanitizer report or a hang is a finding.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

namespace meshtrain::fuzz {

/// A folder of this process's own, created once and removed at exit.
inline const std::filesystem::path& scratch() {
  static const std::filesystem::path dir = [] {
    auto d = std::filesystem::temp_directory_path() / ("meshtrain_fuzz_" + std::to_string(::getpid()));
    std::filesystem::create_directories(d);
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(std::filesystem::temp_directory_path() /
                                      ("meshtrain_fuzz_" + std::to_string(::getpid())),
                                  ec);
    });
    return d;
  }();
  return dir;
}

/// Writes bytes to scratch()/name and returns the path.
inline std::string write_file(const std::string& name, const uint8_t* data, size_t size) {
  const auto path = (scratch() / name).string();
  std::ofstream(path, std::ios::binary | std::ios::trunc).write(reinterpret_cast<const char*>(data),
                                                                static_cast<std::streamsize>(size));
  return path;
}

/// A property the target checks failed: report and abort, so the fuzzer keeps the input.
[[noreturn]] inline void fail(const char* what) {
  std::fprintf(stderr, "[fuzz] property violated: %s\n", what);
  std::abort();
}

}  // namespace meshtrain::fuzz
