// GELU, tanh approximation (as GPT-2): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
#pragma once

#include <cstdint>

namespace meshtrain {

void gelu_forward_cpu(float* out, const float* inp, int64_t N);
/// dinp is accumulated into (+=).
void gelu_backward_cpu(float* dinp, const float* inp, const float* dout, int64_t N);

// CUDA twins (gelu.cu) on device pointers; stream is a cudaStream_t (nullptr: the default stream).
void gelu_forward_cuda(float* out, const float* inp, int64_t N, void* stream);
/// dinp is accumulated into (+=).
void gelu_backward_cuda(float* dinp, const float* inp, const float* dout, int64_t N, void* stream);

}  // namespace meshtrain
