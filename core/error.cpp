// Out-of-line construction of meshtrain::Error so the macro expansion stays small.
#include "core/error.h"

#include <cstring>

namespace meshtrain {

void throw_error(const char* file, int line, const std::string& message) {
  const char* base = std::strrchr(file, '/');
  throw Error(fmt::format("{} ({}:{})", message, base ? base + 1 : file, line), message);
}

}  // namespace meshtrain
