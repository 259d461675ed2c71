// CUDA fused causal attention (flash_attention.h); attention_cpu.cpp is the specification. No T x T
// matrix ever reaches global memory: scores live one tile at a time in shared memory.
//
// Tiling. One block of 128 threads per (batch, head) and tile of rows. Forward takes a tile of Br
// query rows, keeps Q, a running output O (fp32) and per-row max m and sum l, and walks the key/value
// tiles of Bc = Br rows from the first to the diagonal one (tiles above it are skipped; the diagonal
// tile is masked key <= query): S = Q K^T into shared memory, an online softmax per row (in log2
// units: exp2f of scores prescaled by log2(e)/sqrt(hs)) rescales O by exp2(m_old - m_new) and turns S
// into P, then O += P V. At the end out = O / l and lse = ln(2) (m + log2 l), the natural log-sum-exp.
// Backward recomputes P = exp(S - lse) from the saved lse in three steps: (a) one warp per query row
// computes D = rowsum(dout * out) into scratch; (b) a block per key/value tile of Bc rows walks the
// query tiles from its diagonal to the end: S = Q K^T, dP = dO V^T, dS = P (dP - D), then dV += P^T dO
// and dK += dS^T Q, accumulated in shared memory; (c) a block per query tile of Br rows walks the key
// tiles up to its diagonal, recomputes S, dP and dS the same way and accumulates dQ += dS K. Each block
// adds its finished accumulator once into dqkv (dQ and dK scaled by 1/sqrt(hs)). Tile sizes (Tiles):
// 64 x 64 in bf16 (backward Bc = 32 at head size 128), 64 or 32 in fp32, to fit shared memory.
//
// Threads. The matrix products are block-wide (block_mm). fp32 runs them on the FMA units, each
// thread owning a strided grid of outputs that it sums over k in order; bf16 runs them on Tensor Cores
// through WMMA 16x16x16 (bf16 in, fp32 accumulate), each warp owning whole 16x16 output tiles that it
// loads from, multiplies into and stores back to fp32 shared memory, so no code depends on the
// undocumented register layout of fragments. The softmax and the elementwise steps are plain fp32
// code on shared memory; in forward a group of 128 / Br neighbouring lanes shares a query row and
// reduces by shuffles within the group. Rows past T (T is any value >= 1) load as zeros and are
// masked out of the softmax; nothing is stored for them.
//
// Determinism. Every value is produced by one thread, or one warp's WMMA, in a fixed order, and each
// output element is written to global memory by one block, once; there are no atomics, so reruns are
// bit-identical.
//
// Memory. Global tiles move 16 bytes per access when every pointer is 16-byte aligned (row strides and
// head offsets always are), element by element otherwise. Shared-memory tiles are padded (fp32: odd
// row strides for conflict-free column reads; bf16: the multiples of 16 bytes that WMMA requires) and
// exceed 48 KB, so the first launch of each kernel raises its dynamic shared-memory limit.
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <set>
#include <type_traits>
#include <utility>

#include "core/cuda_check.h"
#include "model/kernels/convert.cuh"
#include "model/kernels/flash_attention.h"

namespace meshtrain {
namespace {

constexpr int kWarp = 32;
constexpr int kThreads = 128;  // per block of the tiled kernels
constexpr int kWarps = kThreads / kWarp;
constexpr int kRowsPerBlock = 8;     // warps per block of the D kernel (one warp per row)
constexpr size_t kMaxSmem = 166912;  // the per-block shared-memory opt-in limit of sm_80 (163 KB)
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// Tile shapes and paddings per element type and head size.
template <class E, int HS>
struct Tiles {
  static constexpr bool kMma = std::is_same_v<E, __nv_bfloat16>;  // Tensor Cores for bf16, FMA for fp32
  static constexpr int kFwd = kMma || HS <= 64 ? 64 : 32;         // forward: Br = Bc
  static constexpr int kBwdRows = kMma ? 64 : 32;                 // backward: query rows per tile (Br)
  static constexpr int kBwdCols = kMma && HS < 128 ? 64 : 32;     // backward: key rows per tile (Bc)
  static constexpr int kPadE = kMma ? 8 : 1;                      // row padding of E tiles, in elements
  static constexpr int kPadF = kMma ? 4 : 1;                      // row padding of fp32 tiles
};

constexpr size_t smem_round(size_t bytes) { return (bytes + 127) / 128 * 128; }

// Shared-memory layouts (byte offsets into the dynamic buffer, each region 128-byte aligned). In fp32
// the E-typed P / dS tiles alias the fp32 S / dP tiles they are computed from, element for element.
template <class E, int HS>
struct ForwardSmem {
  using Sh = Tiles<E, HS>;
  static constexpr int kRows = Sh::kFwd;
  static constexpr int kLdE = HS + Sh::kPadE;                       // Q, K, V (E)
  static constexpr int kLdS = kRows + Sh::kPadF;                    // S (fp32)
  static constexpr int kLdP = Sh::kMma ? kRows + Sh::kPadE : kLdS;  // P (E)
  static constexpr int kLdO = HS + Sh::kPadF;                       // O (fp32)
  static constexpr size_t kQ = 0;
  static constexpr size_t kK = kQ + smem_round(sizeof(E) * kRows * kLdE);
  static constexpr size_t kV = kK + smem_round(sizeof(E) * kRows * kLdE);
  static constexpr size_t kS = kV + smem_round(sizeof(E) * kRows * kLdE);
  static constexpr size_t kP = Sh::kMma ? kS + smem_round(sizeof(float) * kRows * kLdS) : kS;
  static constexpr size_t kO = kP + smem_round(Sh::kMma ? sizeof(E) * kRows * kLdP : sizeof(float) * kRows * kLdS);
  static constexpr size_t kInvL = kO + smem_round(sizeof(float) * kRows * kLdO);
  static constexpr size_t kBytes = kInvL + smem_round(sizeof(float) * kRows);
  static_assert(kBytes <= kMaxSmem, "forward tiles exceed the shared memory of sm_80");
};

// Backward: both kernels hold Q, dO (Br rows), K, V (Bc rows), S and dP (fp32), dS (E), the per-row
// lse (log2 units) and D, and their fp32 accumulators: dK and dV (Bc rows, with P in E), or dQ (Br rows).
template <class E, int HS, bool kKeyTile>
struct BackwardSmem {
  using Sh = Tiles<E, HS>;
  static constexpr int kRows = Sh::kBwdRows, kCols = Sh::kBwdCols;
  static constexpr int kLdE = HS + Sh::kPadE;
  static constexpr int kLdS = kCols + Sh::kPadF;
  static constexpr int kLdP = Sh::kMma ? kCols + Sh::kPadE : kLdS;
  static constexpr int kLdO = HS + Sh::kPadF;
  static constexpr size_t kFloatTile = smem_round(sizeof(float) * kRows * kLdS);
  static constexpr size_t kETile = Sh::kMma ? smem_round(sizeof(E) * kRows * kLdP) : 0;
  static constexpr size_t kAccRows = kKeyTile ? kCols : kRows;
  static constexpr size_t kQ = 0;
  static constexpr size_t kDo = kQ + smem_round(sizeof(E) * kRows * kLdE);
  static constexpr size_t kK = kDo + smem_round(sizeof(E) * kRows * kLdE);
  static constexpr size_t kV = kK + smem_round(sizeof(E) * kCols * kLdE);
  static constexpr size_t kS = kV + smem_round(sizeof(E) * kCols * kLdE);
  static constexpr size_t kDp = kS + kFloatTile;
  static constexpr size_t kP = Sh::kMma ? kDp + kFloatTile : kS;                // dK/dV kernel only
  static constexpr size_t kDs = Sh::kMma ? kP + (kKeyTile ? kETile : 0) : kDp;  // E
  static constexpr size_t kAcc = (Sh::kMma ? kDs + kETile : kDp + kFloatTile);  // dK then dV, or dQ
  static constexpr size_t kLse = kAcc + (kKeyTile ? 2 : 1) * smem_round(sizeof(float) * kAccRows * kLdO);
  static constexpr size_t kD = kLse + smem_round(sizeof(float) * kRows);
  static constexpr size_t kBytes = kD + smem_round(sizeof(float) * kRows);
  static_assert(kBytes <= kMaxSmem, "backward tiles exceed the shared memory of sm_80");
};

template <int kGroup>
__device__ __forceinline__ float group_max(float v) {
#pragma unroll
  for (int offset = kGroup / 2; offset > 0; offset /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

template <int kGroup>
__device__ __forceinline__ float group_sum(float v) {
#pragma unroll
  for (int offset = kGroup / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// dst[r][c] = src[(row0 + r) * stride + c] for r < kRows, c < HS; zeros for rows at or past T. packed:
// 16 bytes per global load (the caller checked alignment), and per shared store in bf16, whose tile
// strides are multiples of 8 elements (fp32 tiles have odd strides, so they are stored element-wise).
template <int kRows, int HS, class E>
__device__ __forceinline__ void load_tile(E* dst, int ld, const E* __restrict__ src, int64_t stride, int row0, int T,
                                          bool packed) {
  if (packed) {
    constexpr int kW = kPack<E>, kPerRow = HS / kW;
    for (int i = threadIdx.x; i < kRows * kPerRow; i += kThreads) {
      const int r = i / kPerRow, c = i % kPerRow * kW;
      Packed<E, kW> p;
      if (row0 + r < T) {
        p = *reinterpret_cast<const Packed<E, kW>*>(src + (row0 + r) * stride + c);
      } else {
#pragma unroll
        for (int k = 0; k < kW; ++k) p.v[k] = from_float<E>(0.0f);
      }
      if constexpr (sizeof(E) == 2) {
        *reinterpret_cast<Packed<E, kW>*>(dst + r * ld + c) = p;
      } else {
#pragma unroll
        for (int k = 0; k < kW; ++k) dst[r * ld + c + k] = p.v[k];
      }
    }
    return;
  }
  for (int i = threadIdx.x; i < kRows * HS; i += kThreads) {
    const int r = i / HS, c = i % HS;
    dst[r * ld + c] = row0 + r < T ? src[(row0 + r) * stride + c] : from_float<E>(0.0f);
  }
}

// dst[(row0 + r) * stride + c] (+)= acc[r][c] * (row_scale ? row_scale[r] : scale) for the rows before T:
// forward's out = O / l (accumulate false), backward's dqkv += scale * dX (accumulate true).
template <int kRows, int HS, class E>
__device__ __forceinline__ void store_tile(E* __restrict__ dst, int64_t stride, int row0, int T, const float* acc,
                                           int ld, float scale, const float* row_scale, bool accumulate, bool packed) {
  const int w = packed ? kPack<E> : 1;
  const int per_row = HS / w;
  for (int i = threadIdx.x; i < kRows * per_row; i += kThreads) {
    const int r = i / per_row, c = i % per_row * w;
    if (row0 + r >= T) continue;
    const float f = row_scale != nullptr ? row_scale[r] : scale;
    E* at = dst + (row0 + r) * stride + c;
    if (packed) {
      float v[kPack<E>] = {};
      if (accumulate) load_floats(v, at);
#pragma unroll
      for (int k = 0; k < kPack<E>; ++k) v[k] = (accumulate ? v[k] : 0.0f) + f * acc[r * ld + c + k];
      store_floats(at, v);
    } else {
      *at = from_float<E>((accumulate ? to_float(*at) : 0.0f) + f * acc[r * ld + c]);
    }
  }
}

__device__ __forceinline__ void zero_tile(float* dst, int n) {
  for (int i = threadIdx.x; i < n; i += kThreads) dst[i] = 0.0f;
}

// Block-wide product on shared memory: C (M x N, fp32, row stride ldc) = A B, plus C when accumulate.
// A(m, k) = kTransA ? A[k * lda + m] : A[m * lda + k];  B(k, n) = kTransB ? B[n * ldb + k] : B[k * ldb + n].
// No barrier inside: callers synchronise before (inputs written) and after (C read by others).
// fp32: thread (ty, tx) of an 8 x 16 grid owns outputs (ty + 8i, tx + 16j) and sums k in order.
template <int M, int N, int K, bool kTransA, bool kTransB>
__device__ __forceinline__ void block_mm(float* C, int ldc, const float* A, int lda, const float* B, int ldb,
                                         bool accumulate) {
  constexpr int kTx = 16, kTy = kThreads / kTx;
  static_assert(M % kTy == 0 && N % kTx == 0, "block_mm tile shape");
  constexpr int kRm = M / kTy, kRn = N / kTx;
  const int tx = threadIdx.x % kTx, ty = threadIdx.x / kTx;
  float acc[kRm][kRn];
#pragma unroll
  for (int i = 0; i < kRm; ++i)
#pragma unroll
    for (int j = 0; j < kRn; ++j) acc[i][j] = accumulate ? C[(ty + kTy * i) * ldc + tx + kTx * j] : 0.0f;
#pragma unroll 4
  for (int k = 0; k < K; ++k) {
    float a[kRm], b[kRn];
#pragma unroll
    for (int i = 0; i < kRm; ++i) a[i] = kTransA ? A[k * lda + ty + kTy * i] : A[(ty + kTy * i) * lda + k];
#pragma unroll
    for (int j = 0; j < kRn; ++j) b[j] = kTransB ? B[(tx + kTx * j) * ldb + k] : B[k * ldb + tx + kTx * j];
#pragma unroll
    for (int i = 0; i < kRm; ++i)
#pragma unroll
      for (int j = 0; j < kRn; ++j) acc[i][j] += a[i] * b[j];
  }
#pragma unroll
  for (int i = 0; i < kRm; ++i)
#pragma unroll
    for (int j = 0; j < kRn; ++j) C[(ty + kTy * i) * ldc + tx + kTx * j] = acc[i][j];
}

// bf16: warp w owns the 16 x 16 output tiles w, w + 4, ... (row-major order) and runs WMMA over k.
// A transposed is read as a col_major fragment of the stored matrix, likewise B; every fragment
// pointer is 32-byte aligned because regions are 128-byte aligned and strides are multiples of 8.
template <int M, int N, int K, bool kTransA, bool kTransB>
__device__ __forceinline__ void block_mm(float* C, int ldc, const __nv_bfloat16* A, int lda, const __nv_bfloat16* B,
                                         int ldb, bool accumulate) {
  using namespace nvcuda;
  using LayoutA = std::conditional_t<kTransA, wmma::col_major, wmma::row_major>;
  using LayoutB = std::conditional_t<kTransB, wmma::col_major, wmma::row_major>;
  static_assert(M % 16 == 0 && N % 16 == 0 && K % 16 == 0, "block_mm tile shape");
  constexpr int kTilesN = N / 16, kTiles = (M / 16) * kTilesN;
  for (int tile = threadIdx.x / kWarp; tile < kTiles; tile += kWarps) {
    const int m0 = tile / kTilesN * 16, n0 = tile % kTilesN * 16;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
    if (accumulate)
      wmma::load_matrix_sync(acc, C + m0 * ldc + n0, ldc, wmma::mem_row_major);
    else
      wmma::fill_fragment(acc, 0.0f);
#pragma unroll
    for (int k0 = 0; k0 < K; k0 += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, LayoutA> a;
      wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, LayoutB> b;
      wmma::load_matrix_sync(a, kTransA ? A + k0 * lda + m0 : A + m0 * lda + k0, lda);
      wmma::load_matrix_sync(b, kTransB ? B + n0 * ldb + k0 : B + k0 * ldb + n0, ldb);
      wmma::mma_sync(acc, a, b, acc);
    }
    wmma::store_matrix_sync(C + m0 * ldc + n0, acc, ldc, wmma::mem_row_major);
  }
}

// Grid (query tiles, B*NH); the last query tiles (the most key tiles) are scheduled first.
template <class E, int HS>
__global__ void __launch_bounds__(kThreads)
    flash_forward_kernel(E* __restrict__ out, float* __restrict__ lse, const E* __restrict__ qkv, int T, int C, int NH,
                         float scale_log2, bool packed) {
  using L = ForwardSmem<E, HS>;
  constexpr int kRows = L::kRows;
  constexpr int kGroup = kThreads / kRows;  // lanes sharing one query row in the softmax
  constexpr int kPerLane = kRows / kGroup;  // score columns per lane
  static_assert(kGroup <= kWarp && kWarp % kGroup == 0, "a row group must sit inside one warp");
  extern __shared__ __align__(128) unsigned char smem[];
  E* q_s = reinterpret_cast<E*>(smem + L::kQ);
  E* k_s = reinterpret_cast<E*>(smem + L::kK);
  E* v_s = reinterpret_cast<E*>(smem + L::kV);
  float* s_s = reinterpret_cast<float*>(smem + L::kS);
  E* p_s = reinterpret_cast<E*>(smem + L::kP);
  float* o_s = reinterpret_cast<float*>(smem + L::kO);
  float* inv_l_s = reinterpret_cast<float*>(smem + L::kInvL);

  const int q0 = (gridDim.x - 1 - blockIdx.x) * kRows;
  const int bh = blockIdx.y, b = bh / NH, h = bh % NH;
  const int64_t stride = 3 * int64_t{C};
  const E* q_src = qkv + int64_t{b} * T * stride + h * HS;
  load_tile<kRows, HS>(q_s, L::kLdE, q_src, stride, q0, T, packed);
  zero_tile(o_s, kRows * L::kLdO);

  const int row = threadIdx.x / kGroup, lane = threadIdx.x % kGroup;
  const int q = q0 + row;
  float m = -INFINITY, l = 0.0f;  // running max (log2 units) and sum of this row
  const int kv_tiles = (min(q0 + kRows, T) + kRows - 1) / kRows;
  for (int j = 0; j < kv_tiles; ++j) {
    const int kv0 = j * kRows;
    __syncthreads();  // the previous tile's K, V and P are no longer read
    load_tile<kRows, HS>(k_s, L::kLdE, q_src + C, stride, kv0, T, packed);
    load_tile<kRows, HS>(v_s, L::kLdE, q_src + 2 * C, stride, kv0, T, packed);
    __syncthreads();
    block_mm<kRows, kRows, HS, false, true>(s_s, L::kLdS, q_s, L::kLdE, k_s, L::kLdE, false);
    __syncthreads();

    float s[kPerLane];
    float mx = -INFINITY;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      const int key = kv0 + lane + kGroup * i;
      s[i] = key <= q && key < T ? s_s[row * L::kLdS + lane + kGroup * i] * scale_log2 : -INFINITY;
      mx = fmaxf(mx, s[i]);
    }
    const float m_new = fmaxf(m, group_max<kGroup>(mx));
    const float base = m_new == -INFINITY ? 0.0f : m_new;  // a row that has seen no key yet stays empty
    const float alpha = exp2f(m - base);
    float sum = 0.0f;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      const float p = exp2f(s[i] - base);
      p_s[row * L::kLdP + lane + kGroup * i] = from_float<E>(p);
      sum += p;
    }
    l = l * alpha + group_sum<kGroup>(sum);
    m = m_new;
    for (int c = lane; c < HS; c += kGroup) o_s[row * L::kLdO + c] *= alpha;
    __syncthreads();
    block_mm<kRows, HS, kRows, false, false>(o_s, L::kLdO, p_s, L::kLdP, v_s, L::kLdE, true);
  }

  // Every row has seen key 0, so l > 0 (padding rows included).
  if (lane == 0) {
    inv_l_s[row] = 1.0f / l;
    if (q < T) lse[int64_t{bh} * T + q] = (m + log2f(l)) * kLn2;
  }
  __syncthreads();
  store_tile<kRows, HS>(out + int64_t{b} * T * C + h * HS, C, q0, T, o_s, L::kLdO, 1.0f, inv_l_s, false, packed);
}

// One warp per (batch, head, query row), rows = B*NH*T: D = sum_c dout * out over the head's channels.
template <class E>
__global__ void flash_backward_dot_kernel(float* __restrict__ D, const E* __restrict__ dout, const E* __restrict__ out,
                                          int T, int C, int NH, int hs, int64_t rows) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (row >= rows) return;  // whole warps exit together
  const int64_t bh = row / T;
  const int t = static_cast<int>(row % T), b = static_cast<int>(bh / NH), h = static_cast<int>(bh % NH);
  const int64_t off = (int64_t{b} * T + t) * C + int64_t{h} * hs;
  float sum = 0.0f;
  for (int c = lane; c < hs; c += kWarp) sum += to_float(dout[off + c]) * to_float(out[off + c]);
  sum = group_sum<kWarp>(sum);
  if (lane == 0) D[row] = sum;
}

// The lse (to log2 units) and D of query rows [q0, q0 + kRows); zeros past T (those rows are masked).
template <int kRows>
__device__ __forceinline__ void load_row_stats(float* lse_s, float* d_s, const float* __restrict__ lse,
                                               const float* __restrict__ D, int q0, int T) {
  for (int r = threadIdx.x; r < kRows; r += kThreads) {
    const bool in = q0 + r < T;
    lse_s[r] = in ? lse[q0 + r] * kLog2e : 0.0f;
    d_s[r] = in ? D[q0 + r] : 0.0f;
  }
}

// P = exp2(S * scale_log2 - lse) where key <= query < T (0 elsewhere) and dS = P (dP - D), for one
// kRows x kCols tile; P is stored only when p_s is given (the dK/dV kernel).
template <int kRows, int kCols, class E>
__device__ __forceinline__ void softmax_grad_tile(E* p_s, E* ds_s, int ldp, const float* s_s, const float* dp_s,
                                                  int lds, const float* lse_s, const float* d_s, int q0, int kv0, int T,
                                                  float scale_log2) {
  for (int i = threadIdx.x; i < kRows * kCols; i += kThreads) {
    const int r = i / kCols, c = i % kCols;
    const int q = q0 + r, key = kv0 + c;
    const float p = q < T && key <= q ? exp2f(s_s[r * lds + c] * scale_log2 - lse_s[r]) : 0.0f;
    const float ds = p * (dp_s[r * lds + c] - d_s[r]);
    if (p_s != nullptr) p_s[r * ldp + c] = from_float<E>(p);
    ds_s[r * ldp + c] = from_float<E>(ds);
  }
}

// Grid (key tiles, B*NH): dK and dV of Bc key rows from every query tile at or after the diagonal.
// Key tile 0 sees the most query tiles and is scheduled first.
template <class E, int HS>
__global__ void __launch_bounds__(kThreads)
    flash_backward_dkdv_kernel(E* __restrict__ dqkv, const E* __restrict__ dout, const E* __restrict__ qkv,
                               const float* __restrict__ lse, const float* __restrict__ D, int T, int C, int NH,
                               float scale, float scale_log2, bool packed) {
  using L = BackwardSmem<E, HS, true>;
  constexpr int kRows = L::kRows, kCols = L::kCols;
  extern __shared__ __align__(128) unsigned char smem[];
  E* q_s = reinterpret_cast<E*>(smem + L::kQ);
  E* do_s = reinterpret_cast<E*>(smem + L::kDo);
  E* k_s = reinterpret_cast<E*>(smem + L::kK);
  E* v_s = reinterpret_cast<E*>(smem + L::kV);
  float* s_s = reinterpret_cast<float*>(smem + L::kS);
  float* dp_s = reinterpret_cast<float*>(smem + L::kDp);
  E* p_s = reinterpret_cast<E*>(smem + L::kP);
  E* ds_s = reinterpret_cast<E*>(smem + L::kDs);
  float* dk_s = reinterpret_cast<float*>(smem + L::kAcc);
  float* dv_s = dk_s + kCols * L::kLdO;
  float* lse_s = reinterpret_cast<float*>(smem + L::kLse);
  float* d_s = reinterpret_cast<float*>(smem + L::kD);

  const int kv0 = blockIdx.x * kCols;
  const int bh = blockIdx.y, b = bh / NH, h = bh % NH;
  const int64_t stride = 3 * int64_t{C};
  const E* q_src = qkv + int64_t{b} * T * stride + h * HS;
  const E* do_src = dout + int64_t{b} * T * C + h * HS;
  load_tile<kCols, HS>(k_s, L::kLdE, q_src + C, stride, kv0, T, packed);
  load_tile<kCols, HS>(v_s, L::kLdE, q_src + 2 * C, stride, kv0, T, packed);
  zero_tile(dk_s, 2 * kCols * L::kLdO);

  const int q_tiles = (T + kRows - 1) / kRows;
  for (int i = kv0 / kRows; i < q_tiles; ++i) {
    const int q0 = i * kRows;
    __syncthreads();  // the previous tile's Q, dO, P and dS are no longer read
    load_tile<kRows, HS>(q_s, L::kLdE, q_src, stride, q0, T, packed);
    load_tile<kRows, HS>(do_s, L::kLdE, do_src, C, q0, T, packed);
    load_row_stats<kRows>(lse_s, d_s, lse + int64_t{bh} * T, D + int64_t{bh} * T, q0, T);
    __syncthreads();
    block_mm<kRows, kCols, HS, false, true>(s_s, L::kLdS, q_s, L::kLdE, k_s, L::kLdE, false);
    block_mm<kRows, kCols, HS, false, true>(dp_s, L::kLdS, do_s, L::kLdE, v_s, L::kLdE, false);
    __syncthreads();
    softmax_grad_tile<kRows, kCols>(p_s, ds_s, L::kLdP, s_s, dp_s, L::kLdS, lse_s, d_s, q0, kv0, T, scale_log2);
    __syncthreads();
    block_mm<kCols, HS, kRows, true, false>(dv_s, L::kLdO, p_s, L::kLdP, do_s, L::kLdE, true);
    block_mm<kCols, HS, kRows, true, false>(dk_s, L::kLdO, ds_s, L::kLdP, q_s, L::kLdE, true);
  }

  __syncthreads();
  E* dk_dst = dqkv + int64_t{b} * T * stride + h * HS + C;
  store_tile<kCols, HS>(dk_dst, stride, kv0, T, dk_s, L::kLdO, scale, nullptr, true, packed);
  store_tile<kCols, HS>(dk_dst + C, stride, kv0, T, dv_s, L::kLdO, 1.0f, nullptr, true, packed);
}

// Grid (query tiles, B*NH): dQ of Br query rows from every key tile up to the diagonal. The last
// query tiles (the most key tiles) are scheduled first.
template <class E, int HS>
__global__ void __launch_bounds__(kThreads)
    flash_backward_dq_kernel(E* __restrict__ dqkv, const E* __restrict__ dout, const E* __restrict__ qkv,
                             const float* __restrict__ lse, const float* __restrict__ D, int T, int C, int NH,
                             float scale, float scale_log2, bool packed) {
  using L = BackwardSmem<E, HS, false>;
  constexpr int kRows = L::kRows, kCols = L::kCols;
  extern __shared__ __align__(128) unsigned char smem[];
  E* q_s = reinterpret_cast<E*>(smem + L::kQ);
  E* do_s = reinterpret_cast<E*>(smem + L::kDo);
  E* k_s = reinterpret_cast<E*>(smem + L::kK);
  E* v_s = reinterpret_cast<E*>(smem + L::kV);
  float* s_s = reinterpret_cast<float*>(smem + L::kS);
  float* dp_s = reinterpret_cast<float*>(smem + L::kDp);
  E* ds_s = reinterpret_cast<E*>(smem + L::kDs);
  float* dq_s = reinterpret_cast<float*>(smem + L::kAcc);
  float* lse_s = reinterpret_cast<float*>(smem + L::kLse);
  float* d_s = reinterpret_cast<float*>(smem + L::kD);

  const int q0 = (gridDim.x - 1 - blockIdx.x) * kRows;
  const int bh = blockIdx.y, b = bh / NH, h = bh % NH;
  const int64_t stride = 3 * int64_t{C};
  const E* q_src = qkv + int64_t{b} * T * stride + h * HS;
  load_tile<kRows, HS>(q_s, L::kLdE, q_src, stride, q0, T, packed);
  load_tile<kRows, HS>(do_s, L::kLdE, dout + int64_t{b} * T * C + h * HS, C, q0, T, packed);
  load_row_stats<kRows>(lse_s, d_s, lse + int64_t{bh} * T, D + int64_t{bh} * T, q0, T);
  zero_tile(dq_s, kRows * L::kLdO);

  const int kv_tiles = (min(q0 + kRows, T) + kCols - 1) / kCols;
  for (int j = 0; j < kv_tiles; ++j) {
    const int kv0 = j * kCols;
    __syncthreads();  // the previous tile's K and dS are no longer read
    load_tile<kCols, HS>(k_s, L::kLdE, q_src + C, stride, kv0, T, packed);
    load_tile<kCols, HS>(v_s, L::kLdE, q_src + 2 * C, stride, kv0, T, packed);
    __syncthreads();
    block_mm<kRows, kCols, HS, false, true>(s_s, L::kLdS, q_s, L::kLdE, k_s, L::kLdE, false);
    block_mm<kRows, kCols, HS, false, true>(dp_s, L::kLdS, do_s, L::kLdE, v_s, L::kLdE, false);
    __syncthreads();
    softmax_grad_tile<kRows, kCols>(static_cast<E*>(nullptr), ds_s, L::kLdP, s_s, dp_s, L::kLdS, lse_s, d_s, q0, kv0, T,
                                    scale_log2);
    __syncthreads();
    block_mm<kRows, HS, kCols, false, false>(dq_s, L::kLdO, ds_s, L::kLdP, k_s, L::kLdE, true);
  }

  __syncthreads();
  store_tile<kRows, HS>(dqkv + int64_t{b} * T * stride + h * HS, stride, q0, T, dq_s, L::kLdO, scale, nullptr, true,
                        packed);
}

void check_shape(const char* op, int B, int T, int C, int NH) {
  MT_CHECK(B >= 1 && T >= 1 && C >= 1 && NH >= 1, "[{}] B={}, T={}, C={}, NH={}: every dimension must be at least 1",
           op, B, T, C, NH);
  MT_CHECK(C % NH == 0, "[{}] C={} is not divisible by NH={}; the head size must be C / NH", op, C, NH);
  MT_CHECK(flash_attention_supports(C / NH),
           "[{}] head size {} (C={} / NH={}) is not supported (16, 32, 64 or 128); use the materialised kernels", op,
           C / NH, C, NH);
  MT_CHECK(int64_t{B} * NH <= 65535, "[{}] B*NH={} (batch times heads) exceeds the 65535 the grid allows", op,
           int64_t{B} * NH);
}

unsigned ceil_div(int n, int d) { return static_cast<unsigned>((n + d - 1) / d); }

// Calls f(std::integral_constant<int, hs>) for a supported head size.
template <class F>
void with_head_size(int hs, F&& f) {
  switch (hs) {
    case 16:
      return f(std::integral_constant<int, 16>{});
    case 32:
      return f(std::integral_constant<int, 32>{});
    case 64:
      return f(std::integral_constant<int, 64>{});
    case 128:
      return f(std::integral_constant<int, 128>{});
    default:
      MT_FAIL("[flash_attention] head size {} is not supported", hs);
  }
}

// Raises a kernel's dynamic shared memory limit, once per kernel: the first (eager) call does it, so
// a later CUDA graph capture of the same launches makes no attribute calls.
template <class Kernel>
void allow_smem(Kernel* kernel, size_t bytes) {
  static std::mutex mu;
  static std::set<std::pair<const void*, size_t>> done;
  std::lock_guard<std::mutex> lock(mu);
  if (!done.insert({reinterpret_cast<const void*>(kernel), bytes}).second) return;
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

template <class E>
void forward(E* out, float* lse, const E* qkv, int B, int T, int C, int NH, void* stream) {
  check_shape("flash_attention_forward_cuda", B, T, C, NH);
  auto s = static_cast<cudaStream_t>(stream);
  with_head_size(C / NH, [&](auto hs) {
    constexpr int HS = decltype(hs)::value;
    using L = ForwardSmem<E, HS>;
    auto* kernel = flash_forward_kernel<E, HS>;
    allow_smem(kernel, L::kBytes);
    const float scale_log2 = kLog2e / std::sqrt(static_cast<float>(HS));
    kernel<<<dim3(ceil_div(T, L::kRows), B * NH), kThreads, L::kBytes, s>>>(out, lse, qkv, T, C, NH, scale_log2,
                                                                            can_pack<E>(C, out, qkv));
    CUDA_CHECK(cudaGetLastError());
  });
}

template <class E>
void backward(E* dqkv, float* scratch, const E* dout, const E* qkv, const E* out, const float* lse, int B, int T, int C,
              int NH, void* stream) {
  check_shape("flash_attention_backward_cuda", B, T, C, NH);
  auto s = static_cast<cudaStream_t>(stream);
  const int64_t rows = int64_t{B} * NH * T;
  flash_backward_dot_kernel<E>
      <<<static_cast<unsigned>((rows + kRowsPerBlock - 1) / kRowsPerBlock), kRowsPerBlock * kWarp, 0, s>>>(
          scratch, dout, out, T, C, NH, C / NH, rows);
  CUDA_CHECK(cudaGetLastError());
  with_head_size(C / NH, [&](auto hs) {
    constexpr int HS = decltype(hs)::value;
    using KeyL = BackwardSmem<E, HS, true>;
    using QueryL = BackwardSmem<E, HS, false>;
    const float scale = 1.0f / std::sqrt(static_cast<float>(HS));
    const float scale_log2 = scale * kLog2e;
    const bool packed = can_pack<E>(C, dqkv, dout, qkv);
    auto* dkdv = flash_backward_dkdv_kernel<E, HS>;
    allow_smem(dkdv, KeyL::kBytes);
    dkdv<<<dim3(ceil_div(T, KeyL::kCols), B * NH), kThreads, KeyL::kBytes, s>>>(dqkv, dout, qkv, lse, scratch, T, C, NH,
                                                                                scale, scale_log2, packed);
    CUDA_CHECK(cudaGetLastError());
    auto* dq = flash_backward_dq_kernel<E, HS>;
    allow_smem(dq, QueryL::kBytes);
    dq<<<dim3(ceil_div(T, QueryL::kRows), B * NH), kThreads, QueryL::kBytes, s>>>(dqkv, dout, qkv, lse, scratch, T, C,
                                                                                  NH, scale, scale_log2, packed);
    CUDA_CHECK(cudaGetLastError());
  });
}

}  // namespace

bool flash_attention_supports(int head_size) {
  return head_size == 16 || head_size == 32 || head_size == 64 || head_size == 128;
}

void flash_attention_forward_cuda(float* out, float* lse, const float* qkv, int B, int T, int C, int NH, void* stream) {
  forward(out, lse, qkv, B, T, C, NH, stream);
}

void flash_attention_forward_cuda(Bf16* out, float* lse, const Bf16* qkv, int B, int T, int C, int NH, void* stream) {
  forward(cuda_bf16(out), lse, cuda_bf16(qkv), B, T, C, NH, stream);
}

void flash_attention_backward_cuda(float* dqkv, float* scratch, const float* dout, const float* qkv, const float* out,
                                   const float* lse, int B, int T, int C, int NH, void* stream) {
  backward(dqkv, scratch, dout, qkv, out, lse, B, T, C, NH, stream);
}

void flash_attention_backward_cuda(Bf16* dqkv, float* scratch, const Bf16* dout, const Bf16* qkv, const Bf16* out,
                                   const float* lse, int B, int T, int C, int NH, void* stream) {
  backward(cuda_bf16(dqkv), scratch, cuda_bf16(dout), cuda_bf16(qkv), cuda_bf16(out), lse, B, T, C, NH, stream);
}

}  // namespace meshtrain
