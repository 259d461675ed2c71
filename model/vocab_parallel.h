// The vocabulary-parallel pieces of tensor parallelism: each tp rank holds rows [v0, v0 + Vl) of the
// token embedding (tied with the LM head), so its logits are the columns [v0, v0 + Vl) of the full
// logits. The embedding lookup and the softmax cross-entropy combine ranks with all-reduces of a few
// numbers per position; the full logits are never gathered.
#pragma once

#include <cstdint>

namespace meshtrain {

class Communicator;

/// out[b,t,:] = wte[tok] + wpe[t]: the rank owning tok contributes its row, an all-reduce sums.
void vocab_parallel_embedding_forward(float* out, const int32_t* tokens, const float* wte_local, const float* wpe,
                                      int B, int T, int C, int64_t v0, int64_t Vl, Communicator& tp);
/// dwte_local rows of this rank's tokens and all of dwpe are accumulated into (+=), in a fixed order.
void vocab_parallel_embedding_backward(float* dwte_local, float* dwpe, const float* dout, const int32_t* tokens,
                                       int B, int T, int C, int64_t v0, int64_t Vl);
/// Softmax cross-entropy over logits split by columns: logits (N, Vl) hold global columns
/// [v0, v0 + Vl); only global columns < V are real. losses (N) are the full losses on every rank;
/// with dlogits (may alias logits) it writes (softmax - onehot) * dloss for this rank's columns.
/// Targets < 0 are ignored.
void vocab_parallel_crossentropy(float* losses, float* dlogits, const float* logits, const int32_t* targets, int N,
                                 int64_t V, int64_t Vl, int64_t v0, float dloss, Communicator& tp);

}  // namespace meshtrain
