// Helpers shared by the CUDA tests: host values to and from device tensors (fp32 and bf16), NaN-poisoned
// outputs, the infinity-norm relative error that results are judged by, random token ids, AdamW step scalars.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "core/bf16.h"
#include "core/device.h"
#include "core/tensor.h"
#include "model/kernels/adamw.h"
#include "tests/test_util.h"

/// Skips the current test, saying so, when no CUDA device is visible; what names the tests that need one.
#define MT_REQUIRE_GPU_FOR(what) \
  if (::meshtrain::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device: " << (what) << " need a GPU"

namespace meshtrain::testing {

/// Whether MESHTRAIN_TEST_SMALL_SHAPES is set (the emulation-tsan test preset sets it): kernel tests then
/// run the same template instances on shapes small enough for ThreadSanitizer, which slows the
/// emulated threads some 50 times; a race between the threads of a block shows at any problem size
/// that spans more than one tile.
inline bool small_shapes() {
  const char* v = std::getenv("MESHTRAIN_TEST_SMALL_SHAPES");
  return v != nullptr && *v != '\0' && *v != '0';
}

/// The poison written into outputs before a launch: any element a kernel fails to write stays NaN.
inline constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

/// A device copy of host values; kernels run on the default stream, which cudaMemcpy orders after.
template <class T>
Tensor to_device(const std::vector<T>& host) {
  Tensor t = Tensor::empty({static_cast<int64_t>(host.size())}, dtype_of<T>(), Device::cuda);
  Tensor h = Tensor::empty({static_cast<int64_t>(host.size())}, dtype_of<T>(), Device::cpu);
  std::copy(host.begin(), host.end(), h.data<T>());
  t.copy_from(h);
  return t;
}

/// v rounded to bf16 (nearest, ties to even).
inline std::vector<Bf16> to_bf16(const std::vector<float>& v) {
  std::vector<Bf16> b(v.size());
  for (size_t i = 0; i < v.size(); ++i) b[i].bits = float_to_bf16(v[i]);
  return b;
}

/// bf16 values as floats (exact).
inline std::vector<float> widen(const std::vector<Bf16>& b) {
  std::vector<float> v(b.size());
  for (size_t i = 0; i < b.size(); ++i) v[i] = bf16_to_float(b[i].bits);
  return v;
}

/// v rounded to bf16 and back: what the GPU sees of a bf16 input.
inline std::vector<float> rounded(const std::vector<float>& v) { return widen(to_bf16(v)); }

/// Host floats stored on the device as T (float, or Bf16 rounded to nearest even), offset elements into
/// a buffer that holds NaN before them and guard NaNs after them. The tensor returned views the values
/// and the guard; offset and guard give parameters odd alignments and catch writes past an output's end.
template <class T>
Tensor device_as(const std::vector<float>& values, int64_t offset = 0, int64_t guard = 0) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, Bf16>, "device_as stores float or Bf16");
  const size_t n = values.size() + static_cast<size_t>(guard);
  std::vector<float> padded(static_cast<size_t>(offset) + n, kNaN);
  std::copy(values.begin(), values.end(), padded.begin() + offset);
  Tensor t;
  if constexpr (std::is_same_v<T, Bf16>)
    t = to_device(to_bf16(padded));
  else
    t = to_device(padded);
  return t.view(offset, {static_cast<int64_t>(n)});
}

/// n NaNs on the device as T: an output buffer in which every element the kernel leaves unwritten shows.
template <class T = float>
Tensor poisoned(size_t n) {
  return device_as<T>(std::vector<float>(n, kNaN));
}

/// The raw values of a bf16 device tensor.
inline std::vector<Bf16> bits_of(const Tensor& t) {
  Tensor h = Tensor::empty(t.shape(), DType::bf16, Device::cpu);
  h.copy_from(t);
  return std::vector<Bf16>(h.data<Bf16>(), h.data<Bf16>() + h.numel());
}

/// The values of an f32 or bf16 device tensor, as floats (bf16 widened exactly).
inline std::vector<float> to_host(const Tensor& t) {
  if (t.dtype() == DType::bf16) return widen(bits_of(t));
  Tensor h = Tensor::empty(t.shape(), DType::f32, Device::cpu);
  h.copy_from(t);
  return std::vector<float>(h.f32(), h.f32() + h.numel());
}

/// Whether a and b hold the same floats, bit for bit.
inline bool same_floats(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

/// Max |got - want| over max(max |want|, floor): the infinity-norm relative error. Any NaN in got, or a
/// size that differs from want's (a failure of its own), makes it infinite.
inline double rel_error(const std::vector<float>& got, const std::vector<float>& want, double floor = 1e-30) {
  EXPECT_EQ(got.size(), want.size());
  if (got.size() != want.size()) return std::numeric_limits<double>::infinity();
  double diff = 0.0, scale = floor;
  for (size_t i = 0; i < want.size(); ++i) {
    if (!std::isfinite(got[i])) return std::numeric_limits<double>::infinity();
    diff = std::max(diff, std::fabs(static_cast<double>(got[i]) - want[i]));
    scale = std::max(scale, std::fabs(static_cast<double>(want[i])));
  }
  return diff / scale;
}

/// n token ids uniform in [0, limit).
inline std::vector<int32_t> random_ids(size_t n, int32_t limit, uint64_t seed) {
  const std::vector<float> u = random_floats(n, seed, 0.0f, 1.0f);
  std::vector<int32_t> ids(n);
  for (size_t i = 0; i < n; ++i) ids[i] = std::min(limit - 1, static_cast<int32_t>(u[i] * limit));
  return ids;
}

/// The host side of step t's AdamWScalars, bias corrections in double as adamw_cpu.cpp; grad_norm NaN.
inline AdamWScalars step_scalars(float lr, float beta1, float beta2, int t, float grad_scale) {
  return {lr, adamw_bias_correction(beta1, t), adamw_bias_correction(beta2, t), grad_scale, kNaN};
}

/// AdamWScalars in device memory (poisoned at first), written and read through a float tensor of its five fields.
struct DeviceScalars {
  static_assert(sizeof(AdamWScalars) == 5 * sizeof(float));
  DeviceScalars() : t(poisoned(5)) {}
  AdamWScalars* get() const { return static_cast<AdamWScalars*>(t.raw()); }
  void set(const AdamWScalars& s) {
    std::vector<float> v(5);
    std::memcpy(v.data(), &s, sizeof(s));
    t.copy_from(to_device(v));
  }
  AdamWScalars value() const {
    const std::vector<float> v = to_host(t);
    AdamWScalars s;
    std::memcpy(&s, v.data(), sizeof(s));
    return s;
  }
  Tensor t;
};

}  // namespace meshtrain::testing
