// The configuration: TOML text (up to the first NUL) over the defaults, then one `--set` override per
// following line, then validation. Bad input must be a meshtrain::Error; a configuration that passes
// must survive its own TOML (config_to_toml, parsed again, prints the same).
#include <algorithm>
#include <sstream>

#include "core/error.h"
#include "launch/config.h"
#include "tests/fuzz/fuzz_common.h"

using namespace meshtrain;

extern "C" int LLVMFuzzerInitialize(int*, char***) { return 0; }

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const uint8_t* nul = std::find(data, data + size, uint8_t{0});
  const std::string toml(reinterpret_cast<const char*>(data), static_cast<size_t>(nul - data));
  const std::string sets = nul < data + size ? std::string(reinterpret_cast<const char*>(nul + 1), data + size - nul - 1) : "";
  try {
    Config cfg = config_from_toml(toml, "fuzz input");
    std::istringstream lines(sets);
    for (std::string line; std::getline(lines, line);) apply_override(cfg, line);
    validate_config(cfg);
    const std::string once = config_to_toml(cfg);
    if (config_to_toml(config_from_toml(once, "round trip")) != once) fuzz::fail("config_to_toml does not round-trip");
  } catch (const Error&) {
  }
  return 0;
}
