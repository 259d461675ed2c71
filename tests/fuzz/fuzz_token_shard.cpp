// The token-shard reader: opening (header, size), the vocabulary check at start-up and the data
// loader drawing batches from it. Damaged shards must be a meshtrain::Error.
#include <vector>

#include "core/error.h"
#include "model/text/data.h"
#include "tests/fuzz/fuzz_common.h"

using namespace meshtrain;

extern "C" int LLVMFuzzerInitialize(int*, char***) { return 0; }

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = fuzz::write_file("shard.bin", data, size);
  try {
    TokenShard shard(path);
    const int64_t n = check_shard_vocab({path}, 1000);
    if (n != shard.size()) fuzz::fail("check_shard_vocab counted another number of tokens");
    DataLoader loader({path}, 8, true, 1);
    std::vector<int32_t> batch(2 * 9);
    for (int i = 0; i < 3; ++i) {
      loader.next_batch(2, 0, 1, batch.data());
      for (int32_t t : batch)
        if (t < 0 || t >= 1000) fuzz::fail("the loader served a token the vocabulary check let through");
    }
  } catch (const Error&) {
  }
  return 0;
}
