// Residual add: out = a + b. Its backward is the identity into both inputs, which callers do by
// accumulating the same gradient twice; residual_accumulate_cpu is that += .
#pragma once

#include <cstdint>

#include "core/bf16.h"

namespace meshtrain {

void residual_forward_cpu(float* out, const float* a, const float* b, int64_t N);
/// dst += scale * src (scale 1: the residual's backward; others: LoRA's scaled branch).
void residual_accumulate_cpu(float* dst, const float* src, int64_t N, float scale = 1.0f);

// CUDA twins (residual.cu) on device pointers; stream is a cudaStream_t (nullptr: the default stream).
void residual_forward_cuda(float* out, const float* a, const float* b, int64_t N, void* stream);
/// dst += scale * src.
void residual_accumulate_cuda(float* dst, const float* src, int64_t N, void* stream, float scale = 1.0f);
/// bf16 storage, fp32 sum, rounded once to bf16.
void residual_forward_cuda(Bf16* out, const Bf16* a, const Bf16* b, int64_t N, void* stream);
/// dst += scale * src in bf16 storage: fp32 sum, rounded once to bf16.
void residual_accumulate_cuda(Bf16* dst, const Bf16* src, int64_t N, void* stream, float scale = 1.0f);

}  // namespace meshtrain
