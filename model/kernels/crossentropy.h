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

/// The same loss, with the gradient written as bf16 (rounded to nearest, ties to even) into dlogits16
/// (N x Vp), for a CPU whose next GEMMs read bf16: the values equal softmax_crossentropy_cpu's dlogits
/// rounded afterwards, bit for bit. logits is scratch: each row's exponentials are parked there.
void softmax_crossentropy_bf16_grad_cpu(float* losses, uint16_t* dlogits16, float* logits, const int32_t* targets,
                                        int N, int V, int Vp, float dloss);

/// CUDA twin (crossentropy.cu) on device pointers; stream is a cudaStream_t (nullptr: the default
/// stream). Targets are not validated on the device: a row whose target is >= V gets a NaN loss.
void softmax_crossentropy_cuda(float* losses, float* dlogits, const float* logits, const int32_t* targets, int N, int V,
                               int Vp, float dloss, void* stream);
/// bf16 logits and dlogits (which may alias), fp32 losses and fp32 math within each row.
void softmax_crossentropy_cuda(float* losses, Bf16* dlogits, const Bf16* logits, const int32_t* targets, int N, int V,
                               int Vp, float dloss, void* stream);

}  // namespace meshtrain
