// The linear layer on the GPU through cuBLASLt, in fp32 and bf16: the CUDA twin of matmul.h
// (matmul_cpu.cpp is the specification), plus the MLP's bias + GELU fused into the first GEMM.
// A pimpl keeps cuBLASLt and CUDA types out of host code; no_cuda_matmul.cpp stands in without CUDA.
#pragma once

#include <cstddef>
#include <memory>

#include "core/bf16.h"

namespace meshtrain {

/// cuBLASLt context for one stream: the handle, a 32 MiB workspace and the algorithm choice per
/// (shape, dtype, epilogue, pointer alignment), all set up once (algorithms on first use of a shape, then
/// cached). All pointers are device pointers; work is queued on the stream (a cudaStream_t, nullptr = the
/// default stream) without host synchronisation.
class CudaMatmul {
 public:
  explicit CudaMatmul(void* stream);
  ~CudaMatmul();
  CudaMatmul(const CudaMatmul&) = delete;
  CudaMatmul& operator=(const CudaMatmul&) = delete;

  /// out[N,OC] = inp[N,C] @ weight[OC,C]^T (+ bias[OC]; bias may be null). With pre_gelu non-null:
  /// pre_gelu = inp @ weight^T + bias and out = gelu(pre_gelu) (the tanh GELU of gelu.h). bf16 fuses this
  /// into the cuBLASLt epilogue (GELU_AUX[_BIAS]) when OC % 8 == 0; fp32, and bf16 otherwise, runs the GEMM
  /// and then an exact-tanhf GELU kernel, so fp32 stays within 1e-4 of the CPU.
  void forward(float* out, const float* inp, const float* weight, const float* bias, int N, int C, int OC,
               float* pre_gelu = nullptr);
  void forward(Bf16* out, const Bf16* inp, const Bf16* weight, const Bf16* bias, int N, int C, int OC,
               Bf16* pre_gelu = nullptr);
  /// dinp += dout @ weight (dinp = ... when accumulate_dinp is false: beta = 0 saves zeroing it first);
  /// dweight += dout^T @ inp (beta = 1 accumulation in the GEMM);
  /// dbias += column sums of dout, reduced in fp32 in a fixed order (own kernels; deterministic).
  /// dinp, dweight and dbias may each be null (weight is only read for dinp, inp only for dweight).
  void backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp, const float* weight,
                int N, int C, int OC, bool accumulate_dinp = true);
  void backward(Bf16* dinp, Bf16* dweight, Bf16* dbias, const Bf16* dout, const Bf16* inp, const Bf16* weight, int N,
                int C, int OC, bool accumulate_dinp = true);
  /// Bytes of the workspace (for memory reports).
  size_t workspace_bytes() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace meshtrain
