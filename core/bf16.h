// bfloat16 <-> float on the host. A bf16 is the top 16 bits of an IEEE float; narrowing rounds to
// nearest, ties to even, so sums done in float and rounded back match what GPUs and NCCL produce.
// (memcpy rather than std::bit_cast: CUDA sources include this header and nvcc compiles them as C++17.)
#pragma once

#include <cstdint>
#include <cstring>

namespace meshtrain {

/// One bfloat16 value as stored (the top 16 bits of a float). Host code only moves these around; the
/// CUDA kernels reinterpret them as __nv_bfloat16, which has the same size and layout.
struct Bf16 {
  uint16_t bits;
};

/// The float whose top 16 bits are b (exact: every bf16 is a float).
inline float bf16_to_float(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

/// f rounded to the nearest bf16, ties to even; NaN stays a (quiet) NaN, infinities stay infinite.
inline uint16_t float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  // Rounding would carry a NaN's mantissa into the exponent (or clear it); keep it a quiet NaN instead.
  // Both results are computed and one chosen, without a branch, so loops over arrays vectorise.
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const uint32_t quiet_nan = (u >> 16) | 0x0040u;
  return static_cast<uint16_t>((u & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded);
}

}  // namespace meshtrain
