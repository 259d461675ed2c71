// The server's request handling: a /v1/completions body (JSON) parsed and checked. Bad requests must
// be BadRequest (the server's 400 with a message and the field); nothing else may escape.
#include "launch/serve/serve.h"
#include "tests/fuzz/fuzz_common.h"

using namespace meshtrain;

extern "C" int LLVMFuzzerInitialize(int*, char***) { return 0; }

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string body(reinterpret_cast<const char*>(data), size);
  try {
    CompletionRequest r = parse_completion_request(body, 64);
    if (r.max_tokens < 1 || r.max_tokens > 64) fuzz::fail("max_tokens outside [1, seq_len]");
  } catch (const BadRequest&) {
  }
  return 0;
}
