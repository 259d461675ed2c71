// The BPE encoder and decoder on arbitrary bytes: decode(encode(x)) == x for every input (byte-level
// BPE covers invalid UTF-8 too), with and without special tokens; arbitrary ids decode or throw
// meshtrain::Error. The vocabulary is learned at start-up from a fixed text (model/text/bpe_trainer.cpp).
#include <cstring>
#include <vector>

#include "core/error.h"
#include "model/text/tokenizer.h"
#include "tests/fuzz/fuzz_common.h"

using namespace meshtrain;

namespace {
Tokenizer* tok = nullptr;
}

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  std::string text;
  for (int i = 0; i < 200; ++i)
    text += "The quick brown fox jumps over the lazy dog 12345. Ünïcödé, 日本語, ελληνικά! <|endoftext|>\n";
  const auto corpus = fuzz::write_file("corpus.txt", reinterpret_cast<const uint8_t*>(text.data()), text.size());
  const auto dir = (fuzz::scratch() / "tok").string();
  train_bpe({corpus}, 320, dir);
  tok = new Tokenizer(Tokenizer::load(dir));
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  for (bool special : {true, false}) {
    const auto ids = tok->encode(text, special);
    for (int32_t id : ids)
      if (id < 0 || id >= tok->vocab_size()) fuzz::fail("encode produced an id outside the vocabulary");
    if (tok->decode(ids) != text) fuzz::fail("decode(encode(x)) != x");
  }
  // The same bytes read as ids: in range they decode, out of range they are a clear error.
  std::vector<int32_t> ids(size / 4);
  if (!ids.empty()) std::memcpy(ids.data(), data, ids.size() * 4);
  try {
    tok->decode(ids);
  } catch (const Error&) {
  }
  return 0;
}
