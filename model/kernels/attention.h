// Causal multi-head self-attention on a packed qkv tensor (B, T, 3C) laid out [q | k | v], each C
// wide and split into NH heads of C/NH channels. Scores are scaled by 1/sqrt(head size); att
// (B, NH, T, T) keeps the softmax probabilities for backward (entries above the diagonal are 0).
#pragma once

#include "core/bf16.h"

namespace meshtrain {

void attention_forward_cpu(float* out, float* att, const float* qkv, int B, int T, int C, int NH);
/// dqkv is accumulated into (+=). scratch holds B*NH*T*T floats (overwritten).
void attention_backward_cpu(float* dqkv, float* scratch, const float* dout, const float* qkv, const float* att, int B,
                            int T, int C, int NH);

// CUDA twins (attention.cu) on device pointers; stream is a cudaStream_t (nullptr: the default stream).
// They keep the same T x T buffers (see flash_attention.h for the fused kernels that do not). bf16
// storage for qkv, out, dout and dqkv; att, scratch and all arithmetic stay fp32.
/// att (B, NH, T, T) receives the softmax probabilities (0 above the diagonal), as the CPU twin.
void attention_forward_cuda(float* out, float* att, const float* qkv, int B, int T, int C, int NH, void* stream);
void attention_forward_cuda(Bf16* out, float* att, const Bf16* qkv, int B, int T, int C, int NH, void* stream);
/// dqkv is accumulated into (+=), deterministically (no atomics). scratch holds B*NH*T*T floats (overwritten).
void attention_backward_cuda(float* dqkv, float* scratch, const float* dout, const float* qkv, const float* att, int B,
                             int T, int C, int NH, void* stream);
void attention_backward_cuda(Bf16* dqkv, float* scratch, const Bf16* dout, const Bf16* qkv, const float* att, int B,
                             int T, int C, int NH, void* stream);

}  // namespace meshtrain
