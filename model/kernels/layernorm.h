// LayerNorm over the last dimension with fp32 statistics:
// out = (x - mean) * rstd * weight + bias, rstd = 1 / sqrt(var + 1e-5). mean and rstd (N values
// each) are saved for backward.
#pragma once

namespace meshtrain {

void layernorm_forward_cpu(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                           const float* bias, int N, int C);
/// dinp, dweight and dbias are accumulated into (+=).
void layernorm_backward_cpu(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                            const float* weight, const float* mean, const float* rstd, int N, int C);

// CUDA twins (layernorm.cu) on device pointers; stream is a cudaStream_t (nullptr: the default stream).
void layernorm_forward_cuda(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                            const float* bias, int N, int C, void* stream);
/// dinp, dweight and dbias are accumulated into (+=); dweight and dbias deterministically (no atomics).
void layernorm_backward_cuda(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                             const float* weight, const float* mean, const float* rstd, int N, int C, void* stream);

}  // namespace meshtrain
