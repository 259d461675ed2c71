// The tokenizer files loader (Tokenizer::load): the input is split at its first NUL byte into
// encoder.json and vocab.bpe. Damaged files must be a meshtrain::Error; a vocabulary that loads must
// round-trip text.
#include <algorithm>

#include "core/error.h"
#include "model/text/tokenizer.h"
#include "tests/fuzz/fuzz_common.h"

using namespace meshtrain;

extern "C" int LLVMFuzzerInitialize(int*, char***) { return 0; }

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const uint8_t* nul = std::find(data, data + size, uint8_t{0});
  const size_t first = static_cast<size_t>(nul - data);
  const auto dir = fuzz::scratch() / "tok";
  std::filesystem::create_directories(dir);
  fuzz::write_file("tok/encoder.json", data, first);
  fuzz::write_file("tok/vocab.bpe", first < size ? nul + 1 : data, first < size ? size - first - 1 : 0);
  try {
    Tokenizer t = Tokenizer::load(dir.string());
    const std::string text = "hello world, héllo wörld 123 <|endoftext|>";
    if (t.decode(t.encode(text)) != text) fuzz::fail("a loaded vocabulary does not round-trip text");
  } catch (const Error&) {
  }
  return 0;
}
