// The checkpoint reader, structure-aware: a small valid checkpoint is written at start-up and each
// input is a list of edits to it (first byte odd: cut the file at the position in bytes 1-4; then
// every 5 bytes: a 32-bit position and a byte to xor there). The damaged file is opened, listed,
// read tensor by tensor and verified (`ckpt verify`): any outcome but meshtrain::Error or the saved
// values is a finding.
#include <cstring>
#include <fstream>
#include <iterator>

#include "core/error.h"
#include "launch/ckpt/ckpt_tools.h"
#include "parallel/checkpoint.h"
#include "tests/fuzz/fuzz_common.h"

using namespace meshtrain;

namespace {
std::string pristine;
}

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  std::vector<CheckpointEntry> entries;
  int seed = 1;
  for (auto [name, shape] : {std::pair{"model/wte", Shape{12, 4}}, std::pair{"model/h.0.ln_1.weight", Shape{4}},
                             std::pair{"optim/m/wte", Shape{12, 4}}}) {
    Tensor t = Tensor::empty(shape);
    for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = 0.25f * static_cast<float>((i * 7 + seed) % 13) - 1.5f;
    entries.push_back({name, t});
    ++seed;
  }
  CheckpointMeta meta;
  meta.ints = {{"step", 10}, {"seed", 1337}};
  meta.strings = {{"config", "[model]\nn_layer = 1\n"}, {"layout", "single process"}};
  const auto path = (fuzz::scratch() / "pristine.h5").string();
  save_checkpoint(path, entries, meta);
  std::ifstream in(path, std::ios::binary);
  pristine.assign(std::istreambuf_iterator<char>(in), {});
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string file = pristine;
  size_t i = 0;
  if (size >= 5 && (data[0] & 1)) {
    uint32_t cut;
    std::memcpy(&cut, data + 1, 4);
    file.resize(cut % (file.size() + 1));
    i = 5;
  }
  for (; i + 5 <= size && !file.empty(); i += 5) {
    uint32_t pos;
    std::memcpy(&pos, data + i, 4);
    file[pos % file.size()] = static_cast<char>(file[pos % file.size()] ^ data[i + 4]);
  }
  const auto path = fuzz::write_file("damaged.h5", reinterpret_cast<const uint8_t*>(file.data()), file.size());
  try {
    CheckpointReader r(path);
    for (const auto& name : r.list()) {
      Tensor t = Tensor::empty(r.shape(name));
      r.read(name, t);
    }
    verify_checkpoint(path);
  } catch (const Error&) {
  }
  return 0;
}
