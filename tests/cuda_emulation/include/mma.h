// CUDA emulation: the WMMA fragments flash attention uses (16x16x16, bf16 inputs, fp32
// accumulator). On a GPU a fragment's elements are spread over the warp's lanes in an unspecified
// layout; here every lane holds the whole 16x16 tile, loads and stores all of it and multiplies all
// of it, so results are exact products summed in fp32 (the tensor cores' order of additions is not
// reproduced). Loads and stores are warp-collective, as on the GPU: a warp barrier before and after
// each, so no lane stores a tile before every lane has loaded what it overwrites.
#pragma once

#include <type_traits>

#include "cuda_bf16.h"

namespace nvcuda::wmma {

struct row_major {};
struct col_major {};
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
enum layout_t { mem_row_major, mem_col_major };

template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
  static constexpr int rows = std::is_same_v<Use, matrix_b> ? K : M;
  static constexpr int cols = std::is_same_v<Use, matrix_a> ? K : N;
  static constexpr int num_elements = rows * cols;
  T x[num_elements];  // row-major whatever the memory layout
};

namespace detail {
inline float widen(float v) { return v; }
inline float widen(__nv_bfloat16 v) { return __bfloat162float(v); }
}  // namespace detail

template <class Use, int M, int N, int K, class T, class Layout>
void fill_fragment(fragment<Use, M, N, K, T, Layout>& f, T v) {
  for (auto& e : f.x) e = v;
}

/// matrix_a / matrix_b: the layout is the fragment's (row_major: element (r, c) at p[r * ld + c]).
template <class Use, int M, int N, int K, class T, class Layout, class P>
void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f, const P* p, unsigned ld) {
  using F = fragment<Use, M, N, K, T, Layout>;
  __syncwarp();
  for (int r = 0; r < F::rows; ++r)
    for (int c = 0; c < F::cols; ++c)
      f.x[r * F::cols + c] = std::is_same_v<Layout, col_major> ? p[c * ld + r] : p[r * ld + c];
  __syncwarp();
}

/// The accumulator: the layout is given at the call.
template <int M, int N, int K>
void load_matrix_sync(fragment<accumulator, M, N, K, float>& f, const float* p, unsigned ld, layout_t layout) {
  __syncwarp();
  for (int r = 0; r < M; ++r)
    for (int c = 0; c < N; ++c) f.x[r * N + c] = layout == mem_row_major ? p[r * ld + c] : p[c * ld + r];
  __syncwarp();
}

template <int M, int N, int K>
void store_matrix_sync(float* p, const fragment<accumulator, M, N, K, float>& f, unsigned ld, layout_t layout) {
  __syncwarp();
  for (int r = 0; r < M; ++r)
    for (int c = 0; c < N; ++c) (layout == mem_row_major ? p[r * ld + c] : p[c * ld + r]) = f.x[r * N + c];
  __syncwarp();
}

/// d = a * b + c, products exact, sums in fp32. Only the lane's own fragments are touched (never
/// shared or global memory), so ThreadSanitizer has nothing to check here: uninstrumented, the
/// emulated tensor-core work no longer dominates the kernel tests under TSan.
template <int M, int N, int K, class TA, class LA, class TB, class LB>
__attribute__((no_sanitize("thread"))) void mma_sync(fragment<accumulator, M, N, K, float>& d,
                                                     const fragment<matrix_a, M, N, K, TA, LA>& a,
                                                     const fragment<matrix_b, M, N, K, TB, LB>& b,
                                                     const fragment<accumulator, M, N, K, float>& c) {
  float out[M * N];
  for (int r = 0; r < M; ++r)
    for (int col = 0; col < N; ++col) {
      float s = c.x[r * N + col];
      for (int k = 0; k < K; ++k) s += detail::widen(a.x[r * K + k]) * detail::widen(b.x[k * N + col]);
      out[r * N + col] = s;
    }
  for (int i = 0; i < M * N; ++i) d.x[i] = out[i];
}

}  // namespace nvcuda::wmma
