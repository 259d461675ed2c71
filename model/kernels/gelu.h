// GELU, tanh approximation (as GPT-2): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
#pragma once

#include <cstdint>

#include "core/bf16.h"

namespace meshtrain {

void gelu_forward_cpu(float* out, const float* inp, int64_t N);
/// dinp is accumulated into (+=).
void gelu_backward_cpu(float* dinp, const float* inp, const float* dout, int64_t N);

// CUDA twins (gelu.cu) on device pointers; stream is a cudaStream_t (nullptr: the default stream).
void gelu_forward_cuda(float* out, const float* inp, int64_t N, void* stream);
/// dinp is accumulated into (+=).
void gelu_backward_cuda(float* dinp, const float* inp, const float* dout, int64_t N, void* stream);
/// bf16 storage, fp32 math, each output rounded once to bf16.
void gelu_forward_cuda(Bf16* out, const Bf16* inp, int64_t N, void* stream);
/// dinp is accumulated into (+=) in fp32 and rounded once to bf16.
void gelu_backward_cuda(Bf16* dinp, const Bf16* inp, const Bf16* dout, int64_t N, void* stream);

}  // namespace meshtrain
