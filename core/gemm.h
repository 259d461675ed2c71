// Row-major single-precision GEMM on the CPU through OpenBLAS:
// C[M,N] = alpha * op(A)[M,K] * op(B)[K,N] + beta * C, op = transpose when trans_* is true.
#pragma once

namespace meshtrain {

void gemm_cpu(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
              const float* B, int ldb, float beta, float* C, int ldc);

}  // namespace meshtrain
