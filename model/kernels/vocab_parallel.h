// The vocabulary-parallel pieces of tensor parallelism (Megatron-LM's scheme), as kernels between
// which the model runs its tensor-parallel all-reduces. Each tp rank holds rows [v0, v0 + Vl) of
// the token embedding (tied with the LM head), so its logits are the columns [v0, v0 + Vl) of the
// full logits; only global columns < V are real (the rest is padding). The full logits are never
// gathered: the ranks agree per row on the maximum (all-reduce max), then on the sum of
// exponentials and the target's logit (all-reduce sum), which is all a softmax cross-entropy needs.
//
//   embedding:      vocab_embedding_rows -> all-reduce sum -> add_positions
//   cross-entropy:  vocab_xent_max -> all-reduce max -> vocab_xent_sums -> all-reduce sum -> vocab_xent_finish
//
// Activations, weights and gradients are in the model's dtype (float, or Bf16 for the CUDA twins);
// the row statistics (max: N floats; sums: 2N floats, the sums of exponentials then the target
// logits) and losses are fp32. Targets < 0 are ignored (loss 0, zero gradient row).
#pragma once

#include <cstdint>

#include "core/bf16.h"

namespace meshtrain {

/// out[i,:] = wte_local[tokens[i] - v0] when this rank holds that row, else 0 (BT rows of C).
void vocab_embedding_rows_cpu(float* out, const int32_t* tokens, const float* wte_local, int64_t BT, int C,
                              int64_t v0, int64_t Vl);
/// out[b,t,:] += wpe[t,:].
void add_positions_cpu(float* out, const float* wpe, int B, int T, int C);
/// dwte_local rows of this rank's tokens and all of dwpe (unless null) are accumulated into (+=), in a fixed order
/// (deterministic whatever the thread count).
void vocab_embedding_backward_cpu(float* dwte_local, float* dwpe, const float* dout, const int32_t* tokens, int B,
                                  int T, int C, int64_t v0, int64_t Vl);
/// mx[i] = max over this rank's real columns of row i (-inf when it has none).
void vocab_xent_max_cpu(float* mx, const float* logits, int N, int64_t Vl, int64_t V, int64_t v0);
/// sums[i] = sum of exp(x - mx[i]) over this rank's real columns; sums[N + i] = the target's logit
/// when this rank holds it, else 0.
void vocab_xent_sums_cpu(float* sums, const float* logits, const int32_t* targets, const float* mx, int N, int64_t Vl,
                         int64_t V, int64_t v0);
/// losses[i] = log(sum) + max - target logit (from the all-reduced statistics); with dlogits (may
/// alias logits) writes (softmax - onehot) * dloss for this rank's columns, 0 in padded ones.
void vocab_xent_finish_cpu(float* losses, float* dlogits, const float* logits, const int32_t* targets, const float* mx,
                           const float* sums, int N, int64_t Vl, int64_t V, int64_t v0, float dloss);

// CUDA twins (vocab_parallel.cu) on device pointers, fp32 and bf16; stream is a cudaStream_t.
void vocab_embedding_rows_cuda(float* out, const int32_t* tokens, const float* wte_local, int64_t BT, int C, int64_t v0,
                               int64_t Vl, void* stream);
void vocab_embedding_rows_cuda(Bf16* out, const int32_t* tokens, const Bf16* wte_local, int64_t BT, int C, int64_t v0,
                               int64_t Vl, void* stream);
void add_positions_cuda(float* out, const float* wpe, int B, int T, int C, void* stream);
void add_positions_cuda(Bf16* out, const Bf16* wpe, int B, int T, int C, void* stream);
void vocab_embedding_backward_cuda(float* dwte_local, float* dwpe, const float* dout, const int32_t* tokens, int B,
                                   int T, int C, int64_t v0, int64_t Vl, void* stream);
void vocab_embedding_backward_cuda(Bf16* dwte_local, Bf16* dwpe, const Bf16* dout, const int32_t* tokens, int B, int T,
                                   int C, int64_t v0, int64_t Vl, void* stream);
void vocab_xent_max_cuda(float* mx, const float* logits, int N, int64_t Vl, int64_t V, int64_t v0, void* stream);
void vocab_xent_max_cuda(float* mx, const Bf16* logits, int N, int64_t Vl, int64_t V, int64_t v0, void* stream);
void vocab_xent_sums_cuda(float* sums, const float* logits, const int32_t* targets, const float* mx, int N, int64_t Vl,
                          int64_t V, int64_t v0, void* stream);
void vocab_xent_sums_cuda(float* sums, const Bf16* logits, const int32_t* targets, const float* mx, int N, int64_t Vl,
                          int64_t V, int64_t v0, void* stream);
void vocab_xent_finish_cuda(float* losses, float* dlogits, const float* logits, const int32_t* targets, const float* mx,
                            const float* sums, int N, int64_t Vl, int64_t V, int64_t v0, float dloss, void* stream);
void vocab_xent_finish_cuda(float* losses, Bf16* dlogits, const Bf16* logits, const int32_t* targets, const float* mx,
                            const float* sums, int N, int64_t Vl, int64_t V, int64_t v0, float dloss, void* stream);

}  // namespace meshtrain
