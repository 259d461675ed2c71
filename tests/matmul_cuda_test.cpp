// Tests of the cuBLASLt linear layer (CudaMatmul, model/kernels/matmul_cuda.h) against the CPU twin
// (matmul_cpu.cpp, with gelu_cpu.cpp for the GELU epilogue), in fp32 (relative error 1e-4) and bf16
// (2e-2; inputs are rounded to bf16 first so both sides multiply the same numbers). Shapes include
// dimensions that are not multiples of 8 or 16, GPT-2's, and a classifier's; outputs are poisoned with
// NaN and followed by NaN guard elements that must survive; the backward's += semantics start from
// random values; reruns of the backward must be bit-identical; and parameters sitting at an odd element
// offset (4- or 2-byte aligned, as views into the flat parameter buffer may be) must still work.
// Without a GPU (or in a build without CUDA) every test skips, saying so.
#include "model/kernels/matmul_cuda.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "core/bf16.h"
#include "core/device.h"
#include "core/tensor.h"
#include "model/kernels/gelu.h"
#include "model/kernels/matmul.h"
#include "tests/test_util.h"

namespace meshtrain {
namespace {

using Vec = std::vector<float>;
using testing::random_floats;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr int64_t kGuard = 16;  // NaN elements after every output, which no launch may touch

#define MT_REQUIRE_GPU() \
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device: the cuBLASLt matmul tests need a GPU"

struct Shape3 {
  int N, C, OC;
};
// Not multiples of 8 or 16, multiples of 8 but not of tiles, GPT-2's qkv, and a classifier's.
const Shape3 kShapes[] = {{37, 19, 23}, {64, 48, 144}, {130, 96, 200}, {256, 768, 2304}, {64, 64, 50304}};

template <class T>
double tolerance();
template <>
double tolerance<float>() {
  return 1e-4;
}
template <>
double tolerance<Bf16>() {
  return 2e-2;
}

// v as the element type would hold it: rounded to bf16 for Bf16, unchanged for float.
template <class T>
Vec representable(Vec v) {
  if constexpr (std::is_same_v<T, Bf16>) {
    for (auto& x : v) x = bf16_to_float(float_to_bf16(x));
  }
  return v;
}

template <class T>
T from_float(float x) {
  if constexpr (std::is_same_v<T, Bf16>)
    return Bf16{float_to_bf16(x)};
  else
    return x;
}

template <class T>
float to_float(T x) {
  if constexpr (std::is_same_v<T, Bf16>)
    return bf16_to_float(x.bits);
  else
    return x;
}

// A device buffer of T holding values, starting offset elements into its storage (NaN before it), and
// followed by kGuard NaNs when guard is set. The returned view covers values (and the guard).
template <class T>
Tensor to_device(const Vec& values, int64_t offset = 0, bool guard = false) {
  const int64_t n = static_cast<int64_t>(values.size()) + (guard ? kGuard : 0);
  Tensor host = Tensor::empty({offset + n}, dtype_of<T>(), Device::cpu);
  T* h = host.data<T>();
  std::fill(h, h + offset + n, from_float<T>(kNaN));
  for (size_t i = 0; i < values.size(); ++i) h[offset + static_cast<int64_t>(i)] = from_float<T>(values[i]);
  Tensor dev = Tensor::empty({offset + n}, dtype_of<T>(), Device::cuda);
  dev.copy_from(host);
  return dev.view(offset, {n});
}

// An output buffer: n NaNs and the guard.
template <class T>
Tensor poisoned(size_t n, int64_t offset = 0) {
  return to_device<T>(Vec(n, kNaN), offset, true);
}

template <class T>
Vec to_host(const Tensor& t) {
  Tensor h = Tensor::empty(t.shape(), t.dtype(), Device::cpu);
  h.copy_from(t);
  Vec v(static_cast<size_t>(h.numel()));
  for (size_t i = 0; i < v.size(); ++i) v[i] = to_float(h.data<T>()[i]);
  return v;
}

// Max |got - want| over max |want| on the first want.size() elements (any NaN there: infinite); the
// kGuard elements after them must still be NaN.
double rel_error(const Vec& got, const Vec& want) {
  EXPECT_EQ(got.size(), want.size() + kGuard);
  for (size_t i = want.size(); i < got.size(); ++i) {
    if (!std::isnan(got[i])) {
      ADD_FAILURE() << "guard element " << i - want.size() << " after the output was overwritten";
      break;
    }
  }
  double diff = 0.0, scale = 0.0;
  for (size_t i = 0; i < want.size(); ++i) {
    if (!std::isfinite(got[i])) return std::numeric_limits<double>::infinity();
    diff = std::max(diff, std::fabs(static_cast<double>(got[i]) - want[i]));
    scale = std::max(scale, std::fabs(static_cast<double>(want[i])));
  }
  return diff / std::max(scale, 1e-30);
}

bool bit_identical(const Vec& a, const Vec& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// Forward against the CPU, with or without bias and GELU; weight and bias sit param_offset elements
// into their buffers.
template <class T>
void check_forward(CudaMatmul& mm, Shape3 s, bool with_bias, bool with_gelu, int64_t param_offset) {
  SCOPED_TRACE(::testing::Message() << dtype_name(dtype_of<T>()) << " N=" << s.N << " C=" << s.C << " OC=" << s.OC
                                    << " bias=" << with_bias << " gelu=" << with_gelu << " offset=" << param_offset);
  const size_t NC = size_t(s.N) * s.C, NOC = size_t(s.N) * s.OC;
  const uint64_t seed = 1000 * uint64_t(s.OC) + s.C;
  const Vec inp = representable<T>(random_floats(NC, seed + 1));
  const Vec weight = representable<T>(random_floats(size_t(s.OC) * s.C, seed + 2));
  const Vec bias = representable<T>(random_floats(s.OC, seed + 3));

  Vec pre_ref(NOC);
  matmul_forward_cpu(pre_ref.data(), inp.data(), weight.data(), with_bias ? bias.data() : nullptr, s.N, s.C, s.OC);
  Vec out_ref = pre_ref;
  if (with_gelu) gelu_forward_cpu(out_ref.data(), pre_ref.data(), static_cast<int64_t>(NOC));

  Tensor d_inp = to_device<T>(inp), d_weight = to_device<T>(weight, param_offset),
         d_bias = to_device<T>(bias, param_offset);
  Tensor d_out = poisoned<T>(NOC), d_pre = poisoned<T>(NOC);
  mm.forward(d_out.data<T>(), d_inp.data<T>(), d_weight.data<T>(), with_bias ? d_bias.data<T>() : nullptr, s.N, s.C,
             s.OC, with_gelu ? d_pre.data<T>() : nullptr);
  EXPECT_LE(rel_error(to_host<T>(d_out), out_ref), tolerance<T>());
  if (with_gelu) {
    EXPECT_LE(rel_error(to_host<T>(d_pre), pre_ref), tolerance<T>());
  }
}

// Backward against the CPU, accumulating into random starting values, twice (bit-identical); dweight
// and dbias sit param_offset elements into their buffers.
template <class T>
void check_backward(CudaMatmul& mm, Shape3 s, bool with_dinp, bool with_dbias, int64_t param_offset) {
  SCOPED_TRACE(::testing::Message() << dtype_name(dtype_of<T>()) << " N=" << s.N << " C=" << s.C << " OC=" << s.OC
                                    << " dinp=" << with_dinp << " dbias=" << with_dbias << " offset=" << param_offset);
  const size_t NC = size_t(s.N) * s.C, NOC = size_t(s.N) * s.OC, W = size_t(s.OC) * s.C;
  const uint64_t seed = 2000 * uint64_t(s.OC) + s.C;
  const Vec inp = representable<T>(random_floats(NC, seed + 1));
  const Vec weight = representable<T>(random_floats(W, seed + 2));
  const Vec dout = representable<T>(random_floats(NOC, seed + 3));
  const Vec dinp0 = representable<T>(random_floats(NC, seed + 4));
  const Vec dweight0 = representable<T>(random_floats(W, seed + 5));
  const Vec dbias0 = representable<T>(random_floats(s.OC, seed + 6));

  Vec dinp_ref = dinp0, dweight_ref = dweight0, dbias_ref = dbias0;
  matmul_backward_cpu(with_dinp ? dinp_ref.data() : nullptr, dweight_ref.data(),
                      with_dbias ? dbias_ref.data() : nullptr, dout.data(), inp.data(), weight.data(), s.N, s.C, s.OC);

  Tensor d_inp = to_device<T>(inp), d_weight = to_device<T>(weight, param_offset), d_dout = to_device<T>(dout);
  Vec first_dinp, first_dweight, first_dbias;
  for (int run = 0; run < 2; ++run) {
    Tensor d_dinp = to_device<T>(dinp0, 0, true), d_dweight = to_device<T>(dweight0, param_offset, true),
           d_dbias = to_device<T>(dbias0, param_offset, true);
    mm.backward(with_dinp ? d_dinp.data<T>() : nullptr, d_dweight.data<T>(), with_dbias ? d_dbias.data<T>() : nullptr,
                d_dout.data<T>(), d_inp.data<T>(), d_weight.data<T>(), s.N, s.C, s.OC);
    const Vec got_dinp = to_host<T>(d_dinp), got_dweight = to_host<T>(d_dweight), got_dbias = to_host<T>(d_dbias);
    // A skipped gradient is left as it was (dinp_ref / dbias_ref are the starting values then).
    EXPECT_LE(rel_error(got_dinp, dinp_ref), tolerance<T>());
    EXPECT_LE(rel_error(got_dweight, dweight_ref), tolerance<T>());
    EXPECT_LE(rel_error(got_dbias, dbias_ref), tolerance<T>());
    if (run == 0) {
      first_dinp = got_dinp;
      first_dweight = got_dweight;
      first_dbias = got_dbias;
    } else {
      EXPECT_TRUE(bit_identical(first_dinp, got_dinp)) << "dinp differs between two identical runs";
      EXPECT_TRUE(bit_identical(first_dweight, got_dweight)) << "dweight differs between two identical runs";
      EXPECT_TRUE(bit_identical(first_dbias, got_dbias)) << "dbias differs between two identical runs";
    }
  }
}

template <class T>
void check_all_forward() {
  CudaMatmul mm(nullptr);
  for (const Shape3& s : kShapes) {
    check_forward<T>(mm, s, true, false, 0);
    check_forward<T>(mm, s, false, false, 0);
    check_forward<T>(mm, s, true, true, 0);
    check_forward<T>(mm, s, false, true, 0);
  }
  // Second calls of a shape reuse the cached plan.
  check_forward<T>(mm, kShapes[1], true, true, 0);
}

template <class T>
void check_all_backward() {
  CudaMatmul mm(nullptr);
  for (const Shape3& s : kShapes) check_backward<T>(mm, s, true, true, 0);
  check_backward<T>(mm, kShapes[0], false, true, 0);
  check_backward<T>(mm, kShapes[2], true, false, 0);
  check_backward<T>(mm, kShapes[3], false, false, 0);
}

// Weight, bias and their gradients one element into their buffers: 4-byte (fp32) or 2-byte (bf16)
// aligned; also three elements in, for a different misalignment.
template <class T>
void check_misaligned_parameters() {
  CudaMatmul mm(nullptr);
  for (int64_t offset : {int64_t{1}, int64_t{3}}) {
    for (const Shape3& s : {kShapes[1], kShapes[3]}) {
      check_forward<T>(mm, s, true, false, offset);
      check_forward<T>(mm, s, true, true, offset);
      check_backward<T>(mm, s, true, true, offset);
    }
  }
}

TEST(MatmulCuda, ForwardF32MatchesCpu) {
  MT_REQUIRE_GPU();
  check_all_forward<float>();
}

TEST(MatmulCuda, ForwardBf16MatchesCpu) {
  MT_REQUIRE_GPU();
  check_all_forward<Bf16>();
}

TEST(MatmulCuda, BackwardF32AccumulatesDeterministically) {
  MT_REQUIRE_GPU();
  check_all_backward<float>();
}

TEST(MatmulCuda, BackwardBf16AccumulatesDeterministically) {
  MT_REQUIRE_GPU();
  check_all_backward<Bf16>();
}

TEST(MatmulCuda, MisalignedParametersF32) {
  MT_REQUIRE_GPU();
  check_misaligned_parameters<float>();
}

TEST(MatmulCuda, MisalignedParametersBf16) {
  MT_REQUIRE_GPU();
  check_misaligned_parameters<Bf16>();
}

TEST(MatmulCuda, RejectsBadArguments) {
  MT_REQUIRE_GPU();
  CudaMatmul mm(nullptr);
  EXPECT_EQ(mm.workspace_bytes(), size_t{32} << 20);
  Tensor buf = to_device<float>(Vec(64, 1.0f));
  float* p = buf.f32();
  EXPECT_THROW(mm.forward(p, p, p, nullptr, 0, 4, 4), Error);
  EXPECT_THROW(mm.forward(p, p, p, nullptr, 4, 4, -1), Error);
  EXPECT_THROW(mm.forward(p, nullptr, p, nullptr, 4, 4, 4), Error);
  EXPECT_THROW(mm.forward(p, p, p, nullptr, 4, 4, 4, p), Error);  // pre_gelu aliasing out
  EXPECT_THROW(mm.backward(p, nullptr, p, p, p, p, 4, 4, 4), Error);
  EXPECT_THROW(mm.backward(p, p, p, p, p, nullptr, 4, 4, 4), Error);  // dinp without the weight
  EXPECT_THROW(mm.backward(nullptr, p, nullptr, p, p, p, 4, 0, 4), Error);
}

TEST(MatmulCuda, StubThrowsWhenCudaIsNotBuilt) {
  if (cuda_built()) GTEST_SKIP() << "CUDA backend built: the stub is not linked";
  try {
    CudaMatmul mm(nullptr);
    FAIL() << "expected a [cuda] not built error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("[cuda] not built"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace meshtrain
