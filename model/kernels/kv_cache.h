// Attention over a key/value cache, for generation one token at a time (KV-cache decoding).
//
// A training forward recomputes every key and value of the context for each new token: O(T)
// projections and O(T^2) attention per token generated. With a cache, each layer keeps the keys
// and values of the positions already seen; a step projects only its new rows, appends their k and
// v to the cache and attends from the new queries to every cached position: O(T) per token.
//
// kcache and vcache are (capacity, C) row-major (one sequence, all of this rank's heads side by
// side, as in qkv). qkv holds the T new rows (T, 3C) [q | k | v] of positions [pos0, pos0 + T), q
// and k already rotated when the model uses RoPE. The call writes their k and v at rows
// [pos0, pos0 + T) of the caches, then new row t attends causally to positions [0, pos0 + t]:
//   out[t, head] = softmax_j( q_t . k_j / sqrt(hs) ) v_j,  j <= pos0 + t.
// The result equals the materialised attention's rows pos0.. of the whole sequence (same scaling,
// max-subtracted softmax with expf, fp32 sums), so logits match a full recompute to rounding.
#pragma once

#include "core/bf16.h"

namespace meshtrain {

/// out is (T, C); the caches must hold pos0 + T rows.
void attention_cached_cpu(float* out, float* kcache, float* vcache, const float* qkv, int T, int pos0, int C, int NH);

// CUDA twins (kv_cache.cu) on device pointers; stream is a cudaStream_t. bf16 storage (caches in
// bf16 too), fp32 arithmetic. The scores of one query row live in shared memory, which bounds the
// cache at kMaxCachedPositions rows.
constexpr int kMaxCachedPositions = 8192;
void attention_cached_cuda(float* out, float* kcache, float* vcache, const float* qkv, int T, int pos0, int C, int NH,
                           void* stream);
void attention_cached_cuda(Bf16* out, Bf16* kcache, Bf16* vcache, const Bf16* qkv, int T, int pos0, int C, int NH,
                           void* stream);

}  // namespace meshtrain
