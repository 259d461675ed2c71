// Residual add: out = a + b. Its backward is the identity into both inputs, which callers do by
// accumulating the same gradient twice; residual_accumulate_cpu is that += .
#pragma once

#include <cstdint>

namespace meshtrain {

void residual_forward_cpu(float* out, const float* a, const float* b, int64_t N);
/// dst += src.
void residual_accumulate_cpu(float* dst, const float* src, int64_t N);

// CUDA twins (residual.cu) on device pointers; stream is a cudaStream_t (nullptr: the default stream).
void residual_forward_cuda(float* out, const float* a, const float* b, int64_t N, void* stream);
/// dst += src.
void residual_accumulate_cuda(float* dst, const float* src, int64_t N, void* stream);

}  // namespace meshtrain
