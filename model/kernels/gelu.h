// GELU, tanh approximation (as GPT-2): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
#pragma once

#include <cstdint>

namespace meshtrain {

void gelu_forward_cpu(float* out, const float* inp, int64_t N);
/// dinp is accumulated into (+=).
void gelu_backward_cpu(float* dinp, const float* inp, const float* dout, int64_t N);

}  // namespace meshtrain
