// Causal multi-head self-attention on a packed qkv tensor (B, T, 3C) laid out [q | k | v], each C
// wide and split into NH heads of C/NH channels. Scores are scaled by 1/sqrt(head size); att
// (B, NH, T, T) keeps the softmax probabilities for backward (entries above the diagonal are 0).
#pragma once

namespace meshtrain {

void attention_forward_cpu(float* out, float* att, const float* qkv, int B, int T, int C, int NH);
/// dqkv is accumulated into (+=). scratch holds B*NH*T*T floats (overwritten).
void attention_backward_cpu(float* dqkv, float* scratch, const float* dout, const float* qkv, const float* att, int B,
                            int T, int C, int NH);

}  // namespace meshtrain
