// Error handling shared by every layer: library code throws meshtrain::Error, only launch/ catches.
// MT_CHECK guards invariants in every build type; messages start with the operation's name.
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace meshtrain {

/// The one exception type the library throws; what() carries "[op] message (file:line)".
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

[[noreturn]] void throw_error(const char* file, int line, const std::string& message);

}  // namespace meshtrain

/// Throws meshtrain::Error with a fmt-formatted message when cond is false.
#define MT_CHECK(cond, ...)                                                     \
  do {                                                                          \
    if (!(cond)) ::meshtrain::throw_error(__FILE__, __LINE__, fmt::format(__VA_ARGS__)); \
  } while (0)

/// Throws meshtrain::Error unconditionally.
#define MT_FAIL(...) ::meshtrain::throw_error(__FILE__, __LINE__, fmt::format(__VA_ARGS__))
