// Linear layer: out[N,OC] = inp[N,C] @ weight[OC,C]^T + bias[OC] (weight stored as [out, in], as a
// PyTorch Linear). The GEMMs go through OpenBLAS; bias may be null.
#pragma once

namespace meshtrain {

void matmul_forward_cpu(float* out, const float* inp, const float* weight, const float* bias, int N, int C, int OC);
/// dinp, dweight and dbias are accumulated into (+=); any may be null to skip it (a frozen weight).
void matmul_backward_cpu(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                         const float* weight, int N, int C, int OC);

}  // namespace meshtrain
