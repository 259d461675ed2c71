// Rotary position embeddings (RoPE, Su et al. 2021, "RoFormer") in the half-split convention of
// GPT-NeoX and Llama ("rotate_half"): within a head of hs channels, channel i pairs with channel
// i + hs/2 (not with its neighbour, as in the original paper and GPT-J), and the pair at position p
// turns by the angle p * theta^(-2i/hs):
//   x[i]        <- x[i] cos - x[i + hs/2] sin
//   x[i + hs/2] <- x[i + hs/2] cos + x[i] sin
// Applied to q and k (not v) after the QKV projection, the score q_m . k_n then depends on the
// positions only through m - n. A rotation's transpose is its inverse, so backward is the same
// kernel turning the other way on dq and dk.
#pragma once

#include <vector>

#include "core/bf16.h"

namespace meshtrain {

/// cos and sin of every (position, pair) for positions [0, T) and heads of hs channels:
/// table[(t * hs/2 + i) * 2] = cos(t * theta^(-2i/hs)), the next float its sin. Computed in double
/// and rounded once, so the CPU and a GPU rotate by the same numbers.
std::vector<float> rope_table(int T, int hs, double theta);

/// Rotates the q and k parts of qkv (B, T, 3C) laid out [q | k | v], NH heads of C/NH channels,
/// in place: row t by position pos0 + t (table must cover pos0 + T positions). inverse turns by
/// minus the angle: applied to the gradient of the rotated q and k, it gives theirs before rotation.
void rope_cpu(float* qkv, const float* table, int B, int T, int C, int NH, int pos0, bool inverse);

// CUDA twins (rope.cu) on device pointers (table on the device too); stream is a cudaStream_t.
// bf16 storage, fp32 arithmetic, rounded once.
void rope_cuda(float* qkv, const float* table, int B, int T, int C, int NH, int pos0, bool inverse, void* stream);
void rope_cuda(Bf16* qkv, const float* table, int B, int T, int C, int NH, int pos0, bool inverse, void* stream);

}  // namespace meshtrain
