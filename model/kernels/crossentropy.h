// Fused softmax + cross-entropy over a padded vocabulary, one pass per row of logits.
// logits is (N, Vp); only the first V columns are real tokens, the padded columns never count.
// losses[i] = -log softmax(logits[i, :V])[targets[i]]; rows whose target is negative are ignored
// (loss 0, gradient 0). When dlogits is non-null it receives (softmax - onehot) * dloss for real
// columns and 0 for padded ones; dlogits may alias logits (written in place, no probabilities kept).
#pragma once

#include <cstdint>

#include "core/bf16.h"

namespace meshtrain {

void softmax_crossentropy_cpu(float* losses, float* dlogits, const float* logits, const int32_t* targets, int N, int V,
                              int Vp, float dloss);

/// CUDA twin (crossentropy.cu) on device pointers; stream is a cudaStream_t (nullptr: the default
/// stream). Targets are not validated on the device: a row whose target is >= V gets a NaN loss.
void softmax_crossentropy_cuda(float* losses, float* dlogits, const float* logits, const int32_t* targets, int N, int V,
                               int Vp, float dloss, void* stream);
/// bf16 logits and dlogits (which may alias), fp32 losses and fp32 math within each row.
void softmax_crossentropy_cuda(float* losses, Bf16* dlogits, const Bf16* logits, const int32_t* targets, int N, int V,
                               int Vp, float dloss, void* stream);

}  // namespace meshtrain
