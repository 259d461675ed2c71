// The Hugging Face safetensors reader of `ckpt convert --from safetensors` (JSON header, then the
// tensors' bytes): any file is a model or a meshtrain::Error.
#include "core/error.h"
#include "launch/ckpt/ckpt_tools.h"
#include "tests/fuzz/fuzz_common.h"

using namespace meshtrain;

extern "C" int LLVMFuzzerInitialize(int*, char***) { return 0; }

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = fuzz::write_file("model.safetensors", data, size);
  try {
    ModelWeights w = read_safetensors(path, 2);
    check_model_weights(w, path);
  } catch (const Error&) {
  }
  return 0;
}
