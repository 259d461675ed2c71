// MESHTRAIN_TEST_FAULT parsing (fault.h).
#include "core/fault.h"

#include <cstdlib>
#include <string>

namespace meshtrain {

bool test_fault(const char* kind, int rank, int64_t step) {
  static const std::string spec = [] {
    const char* v = std::getenv("MESHTRAIN_TEST_FAULT");
    return std::string(v ? v : "");
  }();
  if (spec.empty()) return false;
  const auto a = spec.find(':');
  if (a == std::string::npos || spec.substr(0, a) != kind) return false;
  const auto b = spec.find(':', a + 1);
  const int want_rank = std::atoi(spec.substr(a + 1, b == std::string::npos ? std::string::npos : b - a - 1).c_str());
  if (want_rank != rank) return false;
  if (b == std::string::npos || step < 0) return true;
  return std::atoll(spec.substr(b + 1).c_str()) == step;
}

}  // namespace meshtrain
