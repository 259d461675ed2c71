// The answers about activation sizes that hold for a backend whether or not its device is present.
#include "model/backend.h"

#include "model/kernels/flash_attention.h"

namespace meshtrain {

bool ActivationSizing::uses_flash(int head_size) const {
  return device == Device::cuda && attention == AttentionKind::flash && flash_attention_supports(head_size);
}

int64_t ActivationSizing::attention_saved(int B, int T, int C, int NH) const {
  const int64_t rows = int64_t{B} * NH * T;
  return uses_flash(C / NH) ? rows : rows * T;
}

}  // namespace meshtrain
