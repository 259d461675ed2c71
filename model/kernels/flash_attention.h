// Fused ("flash") causal multi-head self-attention on the packed qkv tensor of attention.h: the same
// results as attention_forward_cpu / attention_backward_cpu without the T x T probability matrix.
// Forward saves only lse (B, NH, T), the natural log-sum-exp of each query row's scaled scores
// (lse_t = log sum_{t2 <= t} exp(q_t . k_t2 / sqrt(hs))), from which backward recomputes the
// probabilities. CUDA only (flash_attention.cu); device pointers, stream is a cudaStream_t (nullptr:
// the default stream). bf16 storage for qkv, out, dout and dqkv; lse, scratch and all arithmetic fp32.
#pragma once

#include "core/bf16.h"

namespace meshtrain {

/// out (B, T, C) and lse (B, NH, T). Never writes a T x T matrix to global memory.
void flash_attention_forward_cuda(float* out, float* lse, const float* qkv, int B, int T, int C, int NH, void* stream);
void flash_attention_forward_cuda(Bf16* out, float* lse, const Bf16* qkv, int B, int T, int C, int NH, void* stream);
/// dqkv is accumulated into (+=), deterministically (no atomics). out and lse are forward's results;
/// scratch holds B*NH*T floats (overwritten: D_t = sum_c dout_tc * out_tc per head).
void flash_attention_backward_cuda(float* dqkv, float* scratch, const float* dout, const float* qkv, const float* out,
                                   const float* lse, int B, int T, int C, int NH, void* stream);
void flash_attention_backward_cuda(Bf16* dqkv, float* scratch, const Bf16* dout, const Bf16* qkv, const Bf16* out,
                                   const float* lse, int B, int T, int C, int NH, void* stream);
/// True when the fused kernels support this head size (16, 32, 64 or 128); callers fall back to the
/// materialised kernels of attention.h otherwise.
bool flash_attention_supports(int head_size);

}  // namespace meshtrain
