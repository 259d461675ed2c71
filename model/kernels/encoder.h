// Token + position embedding. out[b,t,:] = wte[tok[b,t],:] + wpe[t,:]; a null wpe (dwpe in
// backward) means no position table, as in a model with rotary embeddings (rope.h).
// Backward scatters dout into the rows of wte that were used and into wpe; it runs in a fixed order
// so gradients are bit-identical run to run.
#pragma once

#include <cstdint>

#include "core/bf16.h"

namespace meshtrain {

void encoder_forward_cpu(float* out, const int32_t* tokens, const float* wte, const float* wpe, int B, int T, int C);
/// dwte and dwpe are accumulated into (+=).
void encoder_backward_cpu(float* dwte, float* dwpe, const float* dout, const int32_t* tokens, int B, int T, int C);

// CUDA twins (encoder.cu) on device pointers; stream is a cudaStream_t (nullptr: the default
// stream). Token ids are not validated on the device: callers pass ids in [0, V).
void encoder_forward_cuda(float* out, const int32_t* tokens, const float* wte, const float* wpe, int B, int T, int C,
                          void* stream);
/// dwte and dwpe are accumulated into (+=), bit-identical run to run (no float atomics).
void encoder_backward_cuda(float* dwte, float* dwpe, const float* dout, const int32_t* tokens, int B, int T, int C,
                           void* stream);
/// bf16 storage, fp32 sum, rounded once to bf16.
void encoder_forward_cuda(Bf16* out, const int32_t* tokens, const Bf16* wte, const Bf16* wpe, int B, int T, int C,
                          void* stream);
/// dwte and dwpe are accumulated into (+=), bit-identical run to run: each element's contributions
/// are summed in fp32 in a fixed order, then added once into the bf16 gradient.
void encoder_backward_cuda(Bf16* dwte, Bf16* dwpe, const Bf16* dout, const int32_t* tokens, int B, int T, int C,
                           void* stream);
/// The backward over one shard of the table's rows, the vocabulary-parallel embedding's
/// (vocab_parallel.h): tokens in [v0, v0 + Vl) add into dwte_local[token - v0], the others into dwpe
/// only (a null dwpe: none). Same order and precision as encoder_backward_cuda.
void encoder_backward_rows_cuda(float* dwte_local, float* dwpe, const float* dout, const int32_t* tokens, int B, int T,
                                int C, int64_t v0, int64_t Vl, void* stream);
void encoder_backward_rows_cuda(Bf16* dwte_local, Bf16* dwpe, const Bf16* dout, const int32_t* tokens, int B, int T,
                                int C, int64_t v0, int64_t Vl, void* stream);

}  // namespace meshtrain
