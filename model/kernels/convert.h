// Element type conversion between fp32 and bf16 on the device: the bf16 activations and parameters
// of mixed-precision training are made from, and read back into, fp32 buffers through these.
#pragma once

#include <cstdint>

#include "core/bf16.h"

namespace meshtrain {

// CUDA only (convert.cu) on device pointers; stream is a cudaStream_t (nullptr: the default stream).
// The host twins are float_to_bf16 / bf16_to_float in core/bf16.h.
/// dst[i] = src[i] rounded to the nearest bf16, ties to even.
void convert_cuda(Bf16* dst, const float* src, int64_t n, void* stream);
/// dst[i] = src[i] (exact: every bf16 is a float).
void convert_cuda(float* dst, const Bf16* src, int64_t n, void* stream);

}  // namespace meshtrain
