// AdamW (Loshchilov & Hutter) with decoupled weight decay, over a flat range of parameters:
// m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;  p -= lr (m_hat / (sqrt(v_hat) + eps) + wd p),
// with g = grads * grad_scale (how global-norm clipping is applied) and bias corrections for step t
// (t starts at 1). Also the sum of squares used for the global gradient norm.
#pragma once

#include <cmath>
#include <cstdint>

#include "core/bf16.h"

namespace meshtrain {

/// Adam's bias correction 1 - beta^t for step t (from 1), computed in double: beta2^t for beta2 near 1
/// loses digits in float over many steps.
inline float adamw_bias_correction(float beta, int64_t t) {
  return static_cast<float>(1.0 - std::pow(static_cast<double>(beta), static_cast<double>(t)));
}

void adamw_update_cpu(float* params, const float* grads, float* m, float* v, int64_t n, float lr, float beta1,
                      float beta2, float eps, float weight_decay, int t, float grad_scale);
/// Sum of x[i]^2 accumulated in double, in a fixed order independent of the thread count.
double sum_squares_cpu(const float* x, int64_t n);

// CUDA twins (adamw.cu) on device pointers; stream is a cudaStream_t (nullptr: the default stream).
void adamw_update_cuda(float* params, const float* grads, float* m, float* v, int64_t n, float lr, float beta1,
                       float beta2, float eps, float weight_decay, int t, float grad_scale, void* stream);
/// Sum of x[i]^2 in double, in a fixed order (two-stage reduction); waits for the stream to return it.
double sum_squares_cuda(const float* x, int64_t n, void* stream);

// ---- Graph-capturable step: no host synchronisation, no allocation, per-step values on the device.

/// Scalars of one optimizer step, read by the kernels from DEVICE memory so that a captured CUDA graph
/// replays with each step's values. The host writes lr, bias_corr1 = 1 - beta1^t, bias_corr2 = 1 - beta2^t
/// (adamw_bias_correction); clip_scale_cuda writes grad_norm and grad_scale.
struct AdamWScalars {
  float lr, bias_corr1, bias_corr2, grad_scale, grad_norm;
};

/// Elements of x per stage-one partial of the device sum of squares.
inline constexpr int64_t kSumSquaresChunk = 4096;
/// Doubles of partials scratch that sum_squares_async_cuda needs for n elements.
inline int64_t sum_squares_partials(int64_t n) { return (n + kSumSquaresChunk - 1) / kSumSquaresChunk; }

/// Sum of squares into *out (device double), no host synchronisation (graph-capturable): stage-one partials
/// into partials (device, at least sum_squares_partials(n) doubles), then a fixed-order final sum. Same
/// summation order as sum_squares_cuda.
void sum_squares_async_cuda(double* out, double* partials, const float* x, int64_t n, void* stream);
/// The bf16 version: each element is converted to fp32, then squared and summed in double.
void sum_squares_async_cuda(double* out, double* partials, const Bf16* x, int64_t n, void* stream);
/// grad_norm = sqrt(*sumsq); grad_scale = grad_clip > 0 && norm > grad_clip ? grad_clip / norm : 1
/// (AdamW::clip_scale in model/optimizer.cpp, bit for bit), on the device. sumsq is a device double.
void clip_scale_cuda(AdamWScalars* scalars, const double* sumsq, float grad_clip, void* stream);
/// The same with the sum of squares given as count pieces (device doubles), added in order first.
void clip_scale_cuda(AdamWScalars* scalars, const double* pieces, int count, float grad_clip, void* stream);

/// *out = (float) (pieces[0] + ... + pieces[count - 1]), and *sum = (double) *in, on the device: the
/// global norm's partial sum crosses ranks as one float (device memory, graph-capturable).
void sum_to_float_cuda(float* out, const double* pieces, int count, void* stream);
void float_to_sum_cuda(double* sum, const float* in, void* stream);

// CPU twins of the device-scalar step, so one optimizer drives either device.
void sum_to_float_cpu(float* out, const double* pieces, int count);
/// clip_scale_cuda on host memory.
void clip_scale_cpu(AdamWScalars* scalars, const double* pieces, int count, float grad_clip);
/// adamw_update_cpu reading lr, bias corrections and grad_scale from scalars (the formula of the
/// device-scalar CUDA kernel).
void adamw_update_cpu(float* params, const float* grads, float* m, float* v, int64_t n, const AdamWScalars& scalars,
                      float beta1, float beta2, float eps, float weight_decay);
/// AdamW reading lr, bias corrections and grad_scale from scalars (device), same formula as adamw_update_cpu.
void adamw_update_cuda(float* params, const float* grads, float* m, float* v, int64_t n, const AdamWScalars* scalars,
                       float beta1, float beta2, float eps, float weight_decay, void* stream);
/// Mixed precision: master (fp32) is updated; params (bf16) receives the rounded master; grads are bf16.
void adamw_update_cuda(Bf16* params, float* master, const Bf16* grads, float* m, float* v, int64_t n,
                       const AdamWScalars* scalars, float beta1, float beta2, float eps, float weight_decay,
                       void* stream);

}  // namespace meshtrain
