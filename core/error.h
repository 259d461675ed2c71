// Error handling shared by every layer: library code throws meshtrain::Error, only launch/ catches.
// MT_CHECK guards invariants in every build type; messages start with the operation's name.
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>
#include <utility>

namespace meshtrain {

/// The one exception type the library throws; what() carries "[op] message (file:line)".
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
  /// what() = full; message() = the words alone, for a listing where the source line is noise.
  Error(const std::string& full, std::string message) : std::runtime_error(full), message_(std::move(message)) {}
  /// The message without the "(file:line)" that MT_CHECK adds (what() when there is none).
  std::string message() const { return message_.empty() ? what() : message_; }

 private:
  std::string message_;
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
