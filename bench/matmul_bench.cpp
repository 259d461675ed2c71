// The cuBLASLt linear layer (CudaMatmul) at GPT-2 124M's shapes in bf16 with N = B*T = 16384 rows:
// forward (fc with the fused bias + GELU epilogue) and backward (dinp, dweight, dbias) in TFLOP/s, as
// a markdown table. Prints numbers and never fails on a slow machine; without a GPU it prints one skip
// line. Usage: matmul_bench [--iters N]
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "core/bf16.h"
#include "core/device.h"
#include "core/rng.h"
#include "core/tensor.h"
#include "core/timer.h"
#include "model/kernels/matmul_cuda.h"

using namespace meshtrain;

namespace {

constexpr int kN = 16384;  // B 16 x T 1024, or B 64 x T 256

struct Layer {
  const char* name;
  int C, OC;
  bool bias, gelu;
};
const Layer kLayers[] = {{"qkv", 768, 2304, true, false},
                         {"attproj", 768, 768, true, false},
                         {"fc (+GELU)", 768, 3072, true, true},
                         {"fcproj", 3072, 768, true, false},
                         {"classifier", 768, 50304, false, false}};

// A bf16 device tensor of n values in [-1, 1): a 1 Mi-element random block, copied over and over.
Tensor random_bf16(int64_t n, uint64_t seed) {
  Tensor t = Tensor::empty({n}, DType::bf16, Device::cuda);
  const int64_t block = std::min<int64_t>(n, int64_t{1} << 20);
  std::vector<Bf16> host(static_cast<size_t>(block));
  CounterRng rng(seed);
  for (auto& x : host) x = Bf16{float_to_bf16(2.0f * rng.uniform() - 1.0f)};
  for (int64_t off = 0; off < n; off += block) {
    const int64_t len = std::min(block, n - off);
    device_copy(t.data<Bf16>() + off, Device::cuda, host.data(), Device::cpu, static_cast<size_t>(len) * sizeof(Bf16));
  }
  return t;
}

// Seconds per call of fn, after warm-up calls, with the default stream drained around the timed loop.
template <class F>
double seconds_per_call(int iters, F&& fn) {
  for (int i = 0; i < 3; ++i) fn();
  stream_synchronize(nullptr);
  const double t0 = now_seconds();
  for (int i = 0; i < iters; ++i) fn();
  stream_synchronize(nullptr);
  return (now_seconds() - t0) / iters;
}

}  // namespace

int main(int argc, char** argv) {
  int iters = 20;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--iters" && i + 1 < argc) {
      iters = std::stoi(argv[++i]);
    } else {
      std::fprintf(stderr, "usage: %s [--iters N]\n", argv[0]);
      return 2;
    }
  }
  if (cuda_device_count() == 0) {
    std::printf("matmul_bench: no CUDA device; skipping\n");
    return 0;
  }
  std::printf("cuBLASLt linear layers, bf16, N = %d rows, %d iterations, on %s\n\n", kN, iters,
              cuda_device_description().c_str());
  std::printf("| layer | C -> OC | forward ms | forward TFLOP/s | backward ms | backward TFLOP/s |\n");
  std::printf("|---|---|---:|---:|---:|---:|\n");
  CudaMatmul mm(nullptr);
  double total_fwd = 0.0, total_bwd = 0.0, total_flops = 0.0;
  uint64_t seed = 1;
  for (const Layer& l : kLayers) {
    const int64_t NC = int64_t{kN} * l.C, NOC = int64_t{kN} * l.OC, W = int64_t{l.OC} * l.C;
    Tensor inp = random_bf16(NC, seed++), weight = random_bf16(W, seed++), bias = random_bf16(l.OC, seed++);
    Tensor dout = random_bf16(NOC, seed++);
    Tensor out = Tensor::empty({NOC}, DType::bf16, Device::cuda);
    Tensor pre = l.gelu ? Tensor::empty({NOC}, DType::bf16, Device::cuda) : Tensor();
    Tensor dinp = Tensor::zeros({NC}, DType::bf16, Device::cuda),
           dweight = Tensor::zeros({W}, DType::bf16, Device::cuda);
    Tensor dbias = Tensor::zeros({l.OC}, DType::bf16, Device::cuda);
    const Bf16* b = l.bias ? bias.data<Bf16>() : nullptr;
    Bf16* pre_gelu = l.gelu ? pre.data<Bf16>() : nullptr;
    Bf16* db = l.bias ? dbias.data<Bf16>() : nullptr;

    const double fwd = seconds_per_call(iters, [&] {
      mm.forward(out.data<Bf16>(), inp.data<Bf16>(), weight.data<Bf16>(), b, kN, l.C, l.OC, pre_gelu);
    });
    const double bwd = seconds_per_call(iters, [&] {
      mm.backward(dinp.data<Bf16>(), dweight.data<Bf16>(), db, dout.data<Bf16>(), inp.data<Bf16>(), weight.data<Bf16>(),
                  kN, l.C, l.OC);
    });
    const double flops = 2.0 * kN * l.C * l.OC;  // forward; backward is two such GEMMs
    std::printf("| %s | %d -> %d | %.3f | %.1f | %.3f | %.1f |\n", l.name, l.C, l.OC, fwd * 1e3, flops / fwd * 1e-12,
                bwd * 1e3, 2.0 * flops / bwd * 1e-12);
    total_fwd += fwd;
    total_bwd += bwd;
    total_flops += flops;
  }
  std::printf("| all (one layer each) | | %.3f | %.1f | %.3f | %.1f |\n", total_fwd * 1e3,
              total_flops / total_fwd * 1e-12, total_bwd * 1e3, 2.0 * total_flops / total_bwd * 1e-12);
  return 0;
}
