// CUDA emulation: __nv_bfloat16 as 16 bits with the conversions meshtrain's kernels use
// (round to nearest even, as __float2bfloat16_rn). Bit-exact with the hardware conversion.
#pragma once

#include <cstdint>
#include <cstring>

#include "cuda_runtime.h"

struct __nv_bfloat16 {
  uint16_t x;
};
struct __nv_bfloat162 {
  __nv_bfloat16 x, y;
};

inline float __bfloat162float(__nv_bfloat16 v) {
  const uint32_t bits = static_cast<uint32_t>(v.x) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  __nv_bfloat16 out;
  if ((bits & 0x7f800000u) == 0x7f800000u && (bits & 0x007fffffu)) {
    out.x = static_cast<uint16_t>((bits >> 16) | 0x40);  // NaN stays a quiet NaN
  } else {
    const uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);
    out.x = static_cast<uint16_t>((bits + rounding) >> 16);
  }
  return out;
}
inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }
