// LayerNorm over the last dimension with fp32 statistics:
// out = (x - mean) * rstd * weight + bias, rstd = 1 / sqrt(var + 1e-5). mean and rstd (N values
// each) are saved for backward. Also the residual add fused with the LayerNorm that follows it.
#pragma once

#include "core/bf16.h"

namespace meshtrain {

void layernorm_forward_cpu(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                           const float* bias, int N, int C);
/// dinp, dweight and dbias are accumulated into (+=).
void layernorm_backward_cpu(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                            const float* weight, const float* mean, const float* rstd, int N, int C);
/// Fused residual add + LayerNorm: residual = a + b; out = layernorm(residual). Bit-identical to
/// residual_forward_cpu followed by layernorm_forward_cpu. residual may alias a or b.
void residual_layernorm_forward_cpu(float* residual, float* out, float* mean, float* rstd, const float* a,
                                    const float* b, const float* weight, const float* bias, int N, int C);

// CUDA twins (layernorm.cu) on device pointers; stream is a cudaStream_t (nullptr: the default stream).
void layernorm_forward_cuda(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                            const float* bias, int N, int C, void* stream);
/// dinp, dweight and dbias are accumulated into (+=); dweight and dbias deterministically (no atomics).
void layernorm_backward_cuda(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                             const float* weight, const float* mean, const float* rstd, int N, int C, void* stream);
/// One pass over each row; the same results as residual_forward_cuda then layernorm_forward_cuda.
/// residual may alias a or b.
void residual_layernorm_forward_cuda(float* residual, float* out, float* mean, float* rstd, const float* a,
                                     const float* b, const float* weight, const float* bias, int N, int C,
                                     void* stream);

// bf16 storage with fp32 statistics and math; mean and rstd stay fp32.
void layernorm_forward_cuda(Bf16* out, float* mean, float* rstd, const Bf16* inp, const Bf16* weight, const Bf16* bias,
                            int N, int C, void* stream);
/// dinp, dweight and dbias are accumulated into (+=): fp32 sums, each added once into the bf16
/// gradient; dweight and dbias deterministically (no atomics).
void layernorm_backward_cuda(Bf16* dinp, Bf16* dweight, Bf16* dbias, const Bf16* dout, const Bf16* inp,
                             const Bf16* weight, const float* mean, const float* rstd, int N, int C, void* stream);
/// The LayerNorm normalises the bf16-rounded residual, so the results equal residual_forward_cuda
/// then layernorm_forward_cuda in bf16 (bit for bit when every buffer is 16-byte aligned, as device
/// allocations are: alignment picks the width of the loads, hence the summation order). residual
/// may alias a or b.
void residual_layernorm_forward_cuda(Bf16* residual, Bf16* out, float* mean, float* rstd, const Bf16* a, const Bf16* b,
                                     const Bf16* weight, const Bf16* bias, int N, int C, void* stream);

}  // namespace meshtrain
