// Device-side helpers shared by the kernels that come in fp32 and bf16 (*.cu only; the host headers
// stay free of CUDA types). Kernels are templated on the element type T (float or __nv_bfloat16) and
// do all arithmetic in fp32: to_float widens a loaded element (exact), from_float<T> narrows a result
// (round to nearest even for bf16, the identity for float), so a float instantiation is the fp32
// kernel unchanged.
// Elementwise kernels move Pack<T> = 16 bytes per access (4 floats or 8 bf16) when every pointer is
// 16-byte aligned and the element count is a multiple of the pack (can_pack); otherwise they run the
// same code one element at a time (width 1).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "core/bf16.h"

namespace meshtrain {

static_assert(sizeof(Bf16) == sizeof(__nv_bfloat16) && alignof(Bf16) == alignof(__nv_bfloat16),
              "Bf16 must have the layout of __nv_bfloat16");

/// The CUDA view of host-side Bf16 pointers (same size and layout).
inline __nv_bfloat16* cuda_bf16(Bf16* p) { return reinterpret_cast<__nv_bfloat16*>(p); }
inline const __nv_bfloat16* cuda_bf16(const Bf16* p) { return reinterpret_cast<const __nv_bfloat16*>(p); }

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <class T>
__device__ __forceinline__ T from_float(float x) {
  if constexpr (std::is_same_v<T, float>) {
    return x;
  } else {
    static_assert(std::is_same_v<T, __nv_bfloat16>, "kernels are instantiated for float and __nv_bfloat16");
    return __float2bfloat16_rn(x);
  }
}

/// Elements of T in one 16-byte access.
template <class T>
constexpr int kPack = 16 / static_cast<int>(sizeof(T));

/// W consecutive elements, aligned so that one load or store moves up to 16 bytes of them (W = 1: a
/// plain element; W = 8 floats, as convert.cu uses: two 16-byte accesses).
template <class T, int W>
struct alignas(sizeof(T) * W < 16 ? sizeof(T) * W : 16) Packed {
  T v[W];
};

/// dst[k] = src[k] for k < W, widened to float; src must be aligned as Packed<T, W>.
template <int W, class T>
__device__ __forceinline__ void load_floats(float (&dst)[W], const T* src) {
  const Packed<T, W> p = *reinterpret_cast<const Packed<T, W>*>(src);
#pragma unroll
  for (int k = 0; k < W; ++k) dst[k] = to_float(p.v[k]);
}

/// dst[k] = src[k] for k < W, narrowed to T; dst must be aligned as Packed<T, W>.
template <int W, class T>
__device__ __forceinline__ void store_floats(T* dst, const float (&src)[W]) {
  Packed<T, W> p;
#pragma unroll
  for (int k = 0; k < W; ++k) p.v[k] = from_float<T>(src[k]);
  *reinterpret_cast<Packed<T, W>*>(dst) = p;
}

/// True when n elements of T can be moved in packs of kPack<T> through every pointer given.
template <class T, class... P>
bool can_pack(int64_t n, const P*... ptrs) {
  return n % kPack<T> == 0 && ((reinterpret_cast<uintptr_t>(ptrs) % 16 == 0) && ...);
}

}  // namespace meshtrain
