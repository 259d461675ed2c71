// GEMMs on the CPU through oneDNN's matmul primitive (Debian's libdnnl-dev): fp32, and bf16 inputs
// with fp32 accumulation and output, which oneDNN runs on AMX or AVX512_BF16 where the CPU has them.
// Row-major, as gemm_cpu: C[M,N] = op(A)[M,K] op(B)[K,N] + beta C. One primitive per shape, strides
// and beta, created on first use and kept, so a training step creates none after its first.
// A build without oneDNN links core/no_onednn.cpp, whose calls throw "[bf16-cpu] not built".
#pragma once

#include <cstdint>
#include <string>

namespace meshtrain {

enum class GemmType { f32, bf16 };

/// Whether this build has oneDNN.
bool onednn_built();

/// What oneDNN runs bf16 matmuls with on this CPU: "AMX" (avx512_core_amx), "AVX512_BF16"
/// (avx512_core_bf16), or "" when the CPU has neither and bf16 would only be emulated.
std::string onednn_bf16_isa();

/// Whether oneDNN runs bf16 matmuls on this CPU at all: with the instructions above, or emulated on
/// AVX-512 without them. False on CPUs without AVX-512 (an AVX2-only EPYC, say), where a bf16 GEMM
/// fails with "[bf16-cpu] oneDNN has no matmul ...". fp32 matmuls run everywhere.
bool onednn_bf16_matmuls();

/// C = op(A) op(B) + beta C with A and B of `type` (bf16: the raw 16-bit values of core/bf16.h's
/// Bf16), C fp32. lda, ldb, ldc are row strides of A, B and C as stored (A is K x M when trans_a).
void gemm_onednn(GemmType type, bool trans_a, bool trans_b, int M, int N, int K, const void* A, int lda,
                 const void* B, int ldb, float beta, float* C, int ldc);

/// Primitives created so far (one per distinct shape, stride and beta): for tests and benchmarks.
int64_t onednn_primitives_created();

}  // namespace meshtrain
