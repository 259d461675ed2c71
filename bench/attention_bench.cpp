// Benchmark of the CUDA attention kernels at GPT-2 124M shapes (bf16, B 8, NH 12, head size 64, C 768)
// for T = 1024 and 2048: fused (flash_attention.h) against materialised (attention.h), forward and
// forward + backward. Prints the median of 15 cudaEvent-timed runs after 3 warm-up runs, the achieved
// TFLOP/s of causal attention (forward 4 B NH T^2 hs / 2, backward 2.5x that) and the global memory
// each needs beyond q, k, v and out, as a markdown table. `--T N` and `--B N` override the shape.
// A plain program: without a GPU it says so and exits 0, and it never fails on a slow machine.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <vector>

#include "core/bf16.h"
#include "core/cuda_check.h"
#include "core/device.h"
#include "core/error.h"
#include "core/rng.h"
#include "core/tensor.h"
#include "model/kernels/attention.h"
#include "model/kernels/flash_attention.h"

namespace meshtrain {
namespace {

constexpr int kNH = 12, kHS = 64, kC = kNH * kHS;
constexpr int kWarmup = 3, kRuns = 15;

// A start/stop event pair on the default stream, destroyed with the object.
class EventTimer {
 public:
  EventTimer() {
    CUDA_CHECK(cudaEventCreate(&start_));
    CUDA_CHECK(cudaEventCreate(&stop_));
  }
  ~EventTimer() {
    cudaEventDestroy(start_);
    cudaEventDestroy(stop_);
  }
  EventTimer(const EventTimer&) = delete;
  EventTimer& operator=(const EventTimer&) = delete;

  /// Median milliseconds of f over kRuns timed runs, after kWarmup untimed ones.
  double median_ms(const std::function<void()>& f) {
    for (int i = 0; i < kWarmup; ++i) f();
    std::vector<float> ms(kRuns);
    for (auto& m : ms) {
      CUDA_CHECK(cudaEventRecord(start_, nullptr));
      f();
      CUDA_CHECK(cudaEventRecord(stop_, nullptr));
      CUDA_CHECK(cudaEventSynchronize(stop_));
      CUDA_CHECK(cudaEventElapsedTime(&m, start_, stop_));
    }
    std::sort(ms.begin(), ms.end());
    return ms[ms.size() / 2];
  }

 private:
  cudaEvent_t start_ = nullptr, stop_ = nullptr;
};

// n uniform values in [-1, 1) as bf16, on the device.
Tensor random_bf16(int64_t n, uint64_t seed) {
  Tensor h = Tensor::empty({n}, DType::bf16, Device::cpu);
  CounterRng rng(seed);
  Bf16* p = h.data<Bf16>();
  for (int64_t i = 0; i < n; ++i) p[i].bits = float_to_bf16(2.0f * rng.uniform() - 1.0f);
  Tensor d = Tensor::empty({n}, DType::bf16, Device::cuda);
  d.copy_from(h);
  return d;
}

struct Row {
  const char* kind;
  double fwd_ms, step_ms, extra_bytes;
};

void print_row(int T, const Row& r, double fwd_flops) {
  const double step_flops = 3.5 * fwd_flops;
  std::printf("| %d | %s | %.3f | %.1f | %.3f | %.1f | %.1f MiB |\n", T, r.kind, r.fwd_ms, fwd_flops / r.fwd_ms * 1e-9,
              r.step_ms, step_flops / r.step_ms * 1e-9, r.extra_bytes / (1024.0 * 1024.0));
}

void bench_shape(int B, int T, EventTimer& timer) {
  const int64_t n_qkv = int64_t{B} * T * 3 * kC, n_out = int64_t{B} * T * kC, rows = int64_t{B} * kNH * T;
  Tensor qkv = random_bf16(n_qkv, 1), dout = random_bf16(n_out, 2), dqkv = random_bf16(n_qkv, 3);
  Tensor out = Tensor::empty({n_out}, DType::bf16, Device::cuda);
  Bf16 *q = qkv.data<Bf16>(), *o = out.data<Bf16>(), *dy = dout.data<Bf16>(), *dq = dqkv.data<Bf16>();
  const double fwd_flops = 4.0 * B * kNH * static_cast<double>(T) * T * kHS / 2.0;

  {
    Tensor lse = Tensor::empty({rows}, DType::f32, Device::cuda),
           scratch = Tensor::empty({rows}, DType::f32, Device::cuda);
    float *l = lse.f32(), *s = scratch.f32();
    auto fwd = [&] { flash_attention_forward_cuda(o, l, q, B, T, kC, kNH, nullptr); };
    Row r{"flash", timer.median_ms(fwd), 0.0, 2.0 * rows * sizeof(float)};
    r.step_ms = timer.median_ms([&] {
      fwd();
      flash_attention_backward_cuda(dq, s, dy, q, o, l, B, T, kC, kNH, nullptr);
    });
    print_row(T, r, fwd_flops);
  }
  try {
    Tensor att = Tensor::empty({rows * T}, DType::f32, Device::cuda);
    Tensor scratch = Tensor::empty({rows * T}, DType::f32, Device::cuda);
    float *a = att.f32(), *s = scratch.f32();
    auto fwd = [&] { attention_forward_cuda(o, a, q, B, T, kC, kNH, nullptr); };
    Row r{"materialised", timer.median_ms(fwd), 0.0, 2.0 * rows * T * sizeof(float)};
    r.step_ms = timer.median_ms([&] {
      fwd();
      attention_backward_cuda(dq, s, dy, q, a, B, T, kC, kNH, nullptr);
    });
    print_row(T, r, fwd_flops);
  } catch (const Error& e) {  // the T x T buffers may not fit a small GPU
    std::printf("| %d | materialised | skipped: %s | | | | %.1f MiB |\n", T, e.what(),
                2.0 * rows * T * sizeof(float) / (1024.0 * 1024.0));
  }
}

int run(int argc, char** argv) {
  int B = 8;
  std::vector<int> Ts = {1024, 2048};
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--T") == 0)
      Ts = {std::atoi(argv[i + 1])};
    else if (std::strcmp(argv[i], "--B") == 0)
      B = std::atoi(argv[i + 1]);
    else
      std::fprintf(stderr, "attention_bench: ignoring unknown option %s\n", argv[i]);
  }
  if (cuda_device_count() == 0) {
    std::printf("attention_bench: no CUDA device; skipped\n");
    return 0;
  }
  cudaDeviceProp prop{};
  CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("attention_bench on %s: bf16, B=%d, NH=%d, head size %d, C=%d; median of %d runs\n\n", prop.name, B, kNH,
              kHS, kC, kRuns);
  std::printf("| T | attention | forward ms | forward TFLOP/s | fwd+bwd ms | fwd+bwd TFLOP/s | extra memory |\n");
  std::printf("|---|---|---|---|---|---|---|\n");
  EventTimer timer;
  for (int T : Ts) bench_shape(B, T, timer);
  return 0;
}

}  // namespace
}  // namespace meshtrain

int main(int argc, char** argv) {
  try {
    return meshtrain::run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "attention_bench: %s\n", e.what());
    return 1;
  }
}
