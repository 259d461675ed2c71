// AdamW (Loshchilov & Hutter) with decoupled weight decay, over a flat range of parameters:
// m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;  p -= lr (m_hat / (sqrt(v_hat) + eps) + wd p),
// with g = grads * grad_scale (how global-norm clipping is applied) and bias corrections for step t
// (t starts at 1). Also the sum of squares used for the global gradient norm.
#pragma once

#include <cstdint>

namespace meshtrain {

void adamw_update_cpu(float* params, const float* grads, float* m, float* v, int64_t n, float lr, float beta1,
                      float beta2, float eps, float weight_decay, int t, float grad_scale);
/// Sum of x[i]^2 accumulated in double, in a fixed order independent of the thread count.
double sum_squares_cpu(const float* x, int64_t n);

// CUDA twins (adamw.cu) on device pointers; stream is a cudaStream_t (nullptr: the default stream).
void adamw_update_cuda(float* params, const float* grads, float* m, float* v, int64_t n, float lr, float beta1,
                       float beta2, float eps, float weight_decay, int t, float grad_scale, void* stream);
/// Sum of x[i]^2 in double, in a fixed order (two-stage reduction); waits for the stream to return it.
double sum_squares_cuda(const float* x, int64_t n, void* stream);

}  // namespace meshtrain
