// The answers about activation sizes that hold for a backend whether or not its device is present.
#include "model/backend.h"

#include "core/error.h"
#include "model/kernels/flash_attention.h"

namespace meshtrain {

bool ActivationSizing::uses_flash(int head_size) const {
  return device == Device::cuda && attention == AttentionKind::flash && flash_attention_supports(head_size);
}

int64_t ActivationSizing::attention_saved(int B, int T, int C, int NH) const {
  const int64_t rows = int64_t{B} * NH * T;
  return uses_flash(C / NH) ? rows : rows * T;
}

void Backend::classifier_crossentropy(float* /*losses*/, void* /*space*/, const void* /*inp*/, const void* /*weight*/,
                                      const int32_t* /*targets*/, int /*N*/, int /*C*/, int /*V*/, int /*Vp*/,
                                      float /*dloss*/, Profiler* /*prof*/) {
  MT_FAIL("[backend] {} has no fused classifier + cross-entropy (check fuses_classifier_crossentropy first)",
          describe());
}

void Backend::classifier_backward(void* /*dinp*/, void* /*dweight*/, const void* /*space*/, const void* /*inp*/,
                                  const void* /*weight*/, int /*N*/, int /*C*/, int /*Vp*/) {
  MT_FAIL("[backend] {} has no fused classifier + cross-entropy (check fuses_classifier_crossentropy first)",
          describe());
}

}  // namespace meshtrain
