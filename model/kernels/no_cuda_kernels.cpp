// The CUDA kernel launchers when meshtrain is built without CUDA (MESHTRAIN_CUDA=OFF): each throws a
// named error, so callers can reference the *_cuda entry points unconditionally and fail clearly.
#include <cstdint>

#include "core/error.h"
#include "model/kernels/adamw.h"
#include "model/kernels/convert.h"
#include "model/kernels/crossentropy.h"
#include "model/kernels/encoder.h"
#include "model/kernels/gelu.h"
#include "model/kernels/kv_cache.h"
#include "model/kernels/layernorm.h"
#include "model/kernels/residual.h"
#include "model/kernels/rope.h"
#include "model/kernels/vocab_parallel.h"

namespace meshtrain {

#define MT_NO_CUDA(op) MT_FAIL("[cuda] not built: {} needs a build with -DMESHTRAIN_CUDA=ON", op)

void encoder_forward_cuda(float*, const int32_t*, const float*, const float*, int, int, int, void*) {
  MT_NO_CUDA("encoder_forward_cuda");
}
void encoder_backward_cuda(float*, float*, const float*, const int32_t*, int, int, int, void*) {
  MT_NO_CUDA("encoder_backward_cuda");
}
void encoder_backward_rows_cuda(float*, float*, const float*, const int32_t*, int, int, int, int64_t, int64_t, void*) {
  MT_NO_CUDA("encoder_backward_rows_cuda");
}
void layernorm_forward_cuda(float*, float*, float*, const float*, const float*, const float*, int, int, void*) {
  MT_NO_CUDA("layernorm_forward_cuda");
}
void layernorm_backward_cuda(float*, float*, float*, const float*, const float*, const float*, const float*,
                             const float*, int, int, void*) {
  MT_NO_CUDA("layernorm_backward_cuda");
}
void gelu_forward_cuda(float*, const float*, int64_t, void*) { MT_NO_CUDA("gelu_forward_cuda"); }
void gelu_backward_cuda(float*, const float*, const float*, int64_t, void*) { MT_NO_CUDA("gelu_backward_cuda"); }
void residual_forward_cuda(float*, const float*, const float*, int64_t, void*) { MT_NO_CUDA("residual_forward_cuda"); }
void residual_accumulate_cuda(float*, const float*, int64_t, void*, float) { MT_NO_CUDA("residual_accumulate_cuda"); }
void softmax_crossentropy_cuda(float*, float*, const float*, const int32_t*, int, int, int, float, void*) {
  MT_NO_CUDA("softmax_crossentropy_cuda");
}
void adamw_update_cuda(float*, const float*, float*, float*, int64_t, float, float, float, float, float, int, float,
                       void*) {
  MT_NO_CUDA("adamw_update_cuda");
}
double sum_squares_cuda(const float*, int64_t, void*) { MT_NO_CUDA("sum_squares_cuda"); }

// bf16 kernels, the fused residual + LayerNorm and the graph-capturable optimizer step.
void encoder_forward_cuda(Bf16*, const int32_t*, const Bf16*, const Bf16*, int, int, int, void*) {
  MT_NO_CUDA("encoder_forward_cuda");
}
void encoder_backward_cuda(Bf16*, Bf16*, const Bf16*, const int32_t*, int, int, int, void*) {
  MT_NO_CUDA("encoder_backward_cuda");
}
void encoder_backward_rows_cuda(Bf16*, Bf16*, const Bf16*, const int32_t*, int, int, int, int64_t, int64_t, void*) {
  MT_NO_CUDA("encoder_backward_rows_cuda");
}
void layernorm_forward_cuda(Bf16*, float*, float*, const Bf16*, const Bf16*, const Bf16*, int, int, void*) {
  MT_NO_CUDA("layernorm_forward_cuda");
}
void layernorm_backward_cuda(Bf16*, Bf16*, Bf16*, const Bf16*, const Bf16*, const Bf16*, const float*, const float*,
                             int, int, void*) {
  MT_NO_CUDA("layernorm_backward_cuda");
}
void residual_layernorm_forward_cuda(float*, float*, float*, float*, const float*, const float*, const float*,
                                     const float*, int, int, void*) {
  MT_NO_CUDA("residual_layernorm_forward_cuda");
}
void residual_layernorm_forward_cuda(Bf16*, Bf16*, float*, float*, const Bf16*, const Bf16*, const Bf16*, const Bf16*,
                                     int, int, void*) {
  MT_NO_CUDA("residual_layernorm_forward_cuda");
}
void gelu_forward_cuda(Bf16*, const Bf16*, int64_t, void*) { MT_NO_CUDA("gelu_forward_cuda"); }
void gelu_backward_cuda(Bf16*, const Bf16*, const Bf16*, int64_t, void*) { MT_NO_CUDA("gelu_backward_cuda"); }
void residual_forward_cuda(Bf16*, const Bf16*, const Bf16*, int64_t, void*) { MT_NO_CUDA("residual_forward_cuda"); }
void residual_accumulate_cuda(Bf16*, const Bf16*, int64_t, void*, float) { MT_NO_CUDA("residual_accumulate_cuda"); }
void softmax_crossentropy_cuda(float*, Bf16*, const Bf16*, const int32_t*, int, int, int, float, void*) {
  MT_NO_CUDA("softmax_crossentropy_cuda");
}
void convert_cuda(Bf16*, const float*, int64_t, void*) { MT_NO_CUDA("convert_cuda"); }
void convert_cuda(float*, const Bf16*, int64_t, void*) { MT_NO_CUDA("convert_cuda"); }
void sum_squares_async_cuda(double*, double*, const float*, int64_t, void*) { MT_NO_CUDA("sum_squares_async_cuda"); }
void sum_squares_async_cuda(double*, double*, const Bf16*, int64_t, void*) { MT_NO_CUDA("sum_squares_async_cuda"); }
void clip_scale_cuda(AdamWScalars*, const double*, float, void*) { MT_NO_CUDA("clip_scale_cuda"); }
void adamw_update_cuda(float*, const float*, float*, float*, int64_t, const AdamWScalars*, float, float, float, float,
                       void*) {
  MT_NO_CUDA("adamw_update_cuda");
}
void adamw_update_cuda(Bf16*, float*, const Bf16*, float*, float*, int64_t, const AdamWScalars*, float, float, float,
                       float, void*) {
  MT_NO_CUDA("adamw_update_cuda");
}

void clip_scale_cuda(AdamWScalars*, const double*, int, float, void*) { MT_NO_CUDA("clip_scale_cuda"); }
void sum_to_float_cuda(float*, const double*, int, void*) { MT_NO_CUDA("sum_to_float_cuda"); }
void float_to_sum_cuda(double*, const float*, void*) { MT_NO_CUDA("float_to_sum_cuda"); }
void vocab_embedding_rows_cuda(float*, const int32_t*, const float*, int64_t, int, int64_t, int64_t, void*) {
  MT_NO_CUDA("vocab_embedding_rows_cuda");
}
void vocab_embedding_rows_cuda(Bf16*, const int32_t*, const Bf16*, int64_t, int, int64_t, int64_t, void*) {
  MT_NO_CUDA("vocab_embedding_rows_cuda");
}
void add_positions_cuda(float*, const float*, int, int, int, void*) { MT_NO_CUDA("add_positions_cuda"); }
void add_positions_cuda(Bf16*, const Bf16*, int, int, int, void*) { MT_NO_CUDA("add_positions_cuda"); }
void vocab_embedding_backward_cuda(float*, float*, const float*, const int32_t*, int, int, int, int64_t, int64_t,
                                   void*) {
  MT_NO_CUDA("vocab_embedding_backward_cuda");
}
void vocab_embedding_backward_cuda(Bf16*, Bf16*, const Bf16*, const int32_t*, int, int, int, int64_t, int64_t, void*) {
  MT_NO_CUDA("vocab_embedding_backward_cuda");
}
void vocab_xent_max_cuda(float*, const float*, int, int64_t, int64_t, int64_t, void*) { MT_NO_CUDA("vocab_xent_max_cuda"); }
void vocab_xent_max_cuda(float*, const Bf16*, int, int64_t, int64_t, int64_t, void*) { MT_NO_CUDA("vocab_xent_max_cuda"); }
void vocab_xent_sums_cuda(float*, const float*, const int32_t*, const float*, int, int64_t, int64_t, int64_t, void*) {
  MT_NO_CUDA("vocab_xent_sums_cuda");
}
void vocab_xent_sums_cuda(float*, const Bf16*, const int32_t*, const float*, int, int64_t, int64_t, int64_t, void*) {
  MT_NO_CUDA("vocab_xent_sums_cuda");
}
void vocab_xent_finish_cuda(float*, float*, const float*, const int32_t*, const float*, const float*, int, int64_t,
                            int64_t, int64_t, float, void*) {
  MT_NO_CUDA("vocab_xent_finish_cuda");
}
void vocab_xent_finish_cuda(float*, Bf16*, const Bf16*, const int32_t*, const float*, const float*, int, int64_t,
                            int64_t, int64_t, float, void*) {
  MT_NO_CUDA("vocab_xent_finish_cuda");
}

void rope_cuda(float*, const float*, int, int, int, int, int, bool, void*) { MT_NO_CUDA("rope_cuda"); }
void rope_cuda(Bf16*, const float*, int, int, int, int, int, bool, void*) { MT_NO_CUDA("rope_cuda"); }
void attention_cached_cuda(float*, float*, float*, const float*, int, int, int, int, void*) {
  MT_NO_CUDA("attention_cached_cuda");
}
void attention_cached_cuda(Bf16*, Bf16*, Bf16*, const Bf16*, int, int, int, int, void*) {
  MT_NO_CUDA("attention_cached_cuda");
}

#undef MT_NO_CUDA

}  // namespace meshtrain
