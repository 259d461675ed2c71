// bfloat16 <-> float on the host. A bf16 is the top 16 bits of an IEEE float; narrowing rounds to
// nearest, ties to even, so sums done in float and rounded back match what GPUs and NCCL produce.
#pragma once

#include <bit>
#include <cstdint>

namespace meshtrain {

/// The float whose top 16 bits are b (exact: every bf16 is a float).
inline float bf16_to_float(uint16_t b) { return std::bit_cast<float>(static_cast<uint32_t>(b) << 16); }

/// f rounded to the nearest bf16, ties to even; NaN stays a (quiet) NaN, infinities stay infinite.
inline uint16_t float_to_bf16(float f) {
  uint32_t u = std::bit_cast<uint32_t>(f);
  // Rounding would carry a NaN's mantissa into the exponent (or clear it); keep it a quiet NaN instead.
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

}  // namespace meshtrain
