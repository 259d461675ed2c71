// The attention launchers (attention.h, flash_attention.h) when meshtrain is built without CUDA
// (MESHTRAIN_CUDA=OFF): each throws a named error, so callers can reference them unconditionally and
// fail clearly. flash_attention_supports still answers for the head sizes the fused kernels handle.
#include "core/error.h"
#include "model/kernels/attention.h"
#include "model/kernels/flash_attention.h"

namespace meshtrain {

#define MT_NO_CUDA(op) MT_FAIL("[cuda] not built: {} needs a build with -DMESHTRAIN_CUDA=ON", op)

void attention_forward_cuda(float*, float*, const float*, int, int, int, int, void*) {
  MT_NO_CUDA("attention_forward_cuda");
}
void attention_forward_cuda(Bf16*, float*, const Bf16*, int, int, int, int, void*) {
  MT_NO_CUDA("attention_forward_cuda");
}
void attention_backward_cuda(float*, float*, const float*, const float*, const float*, int, int, int, int, void*) {
  MT_NO_CUDA("attention_backward_cuda");
}
void attention_backward_cuda(Bf16*, float*, const Bf16*, const Bf16*, const float*, int, int, int, int, void*) {
  MT_NO_CUDA("attention_backward_cuda");
}

void flash_attention_forward_cuda(float*, float*, const float*, int, int, int, int, void*) {
  MT_NO_CUDA("flash_attention_forward_cuda");
}
void flash_attention_forward_cuda(Bf16*, float*, const Bf16*, int, int, int, int, void*) {
  MT_NO_CUDA("flash_attention_forward_cuda");
}
void flash_attention_backward_cuda(float*, float*, const float*, const float*, const float*, const float*, int, int,
                                   int, int, void*) {
  MT_NO_CUDA("flash_attention_backward_cuda");
}
void flash_attention_backward_cuda(Bf16*, float*, const Bf16*, const Bf16*, const Bf16*, const float*, int, int, int,
                                   int, void*) {
  MT_NO_CUDA("flash_attention_backward_cuda");
}
bool flash_attention_supports(int head_size) {
  return head_size == 16 || head_size == 32 || head_size == 64 || head_size == 128;
}

#undef MT_NO_CUDA

}  // namespace meshtrain
