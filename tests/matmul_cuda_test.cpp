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
#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "core/bf16.h"
#include "core/device.h"
#include "core/tensor.h"
#include "model/kernels/gelu.h"
#include "model/kernels/matmul.h"
#include "tests/cuda_test_util.h"

namespace meshtrain {
namespace {

using Vec = std::vector<float>;
using testing::device_as;
using testing::kNaN;
using testing::poisoned;
using testing::random_floats;
using testing::rel_error;
using testing::rounded;
using testing::same_floats;
using testing::to_host;

constexpr int64_t kGuard = 16;  // NaN elements after every output, which no launch may touch

#define MT_REQUIRE_GPU() MT_REQUIRE_GPU_FOR("the cuBLASLt matmul tests")

struct Shape3 {
  int N, C, OC;
};
// Not multiples of 8 or 16, multiples of 8 but not of tiles, GPT-2's qkv, and a classifier's.
// Under ThreadSanitizer (testing::small_shapes()) the last two shrink: a qkv-like 96×256×768 and a
// classifier-like 16×64×4100; the rest stay.
const std::vector<Shape3>& shapes() {
  static const std::vector<Shape3> full = {{37, 19, 23}, {64, 48, 144}, {130, 96, 200}, {256, 768, 2304}, {64, 64, 50304}};
  static const std::vector<Shape3> small = {{37, 19, 23}, {64, 48, 144}, {130, 96, 200}, {96, 256, 768}, {16, 64, 4100}};
  return testing::small_shapes() ? small : full;
}

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
Vec representable(const Vec& v) {
  if constexpr (std::is_same_v<T, Bf16>)
    return rounded(v);
  else
    return v;
}

// rel_error on the first want.size() elements of got; the kGuard elements after them must still be NaN.
double guarded_rel_error(const Vec& got, const Vec& want) {
  EXPECT_EQ(got.size(), want.size() + kGuard);
  for (size_t i = want.size(); i < got.size(); ++i) {
    if (!std::isnan(got[i])) {
      ADD_FAILURE() << "guard element " << i - want.size() << " after the output was overwritten";
      break;
    }
  }
  const Vec head(got.begin(), got.begin() + static_cast<std::ptrdiff_t>(std::min(got.size(), want.size())));
  return rel_error(head, want);
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

  Tensor d_inp = device_as<T>(inp), d_weight = device_as<T>(weight, param_offset),
         d_bias = device_as<T>(bias, param_offset);
  Tensor d_out = poisoned<T>(NOC + kGuard), d_pre = poisoned<T>(NOC + kGuard);  // outputs and their guards
  mm.forward(d_out.data<T>(), d_inp.data<T>(), d_weight.data<T>(), with_bias ? d_bias.data<T>() : nullptr, s.N, s.C,
             s.OC, with_gelu ? d_pre.data<T>() : nullptr);
  EXPECT_LE(guarded_rel_error(to_host(d_out), out_ref), tolerance<T>());
  if (with_gelu) {
    EXPECT_LE(guarded_rel_error(to_host(d_pre), pre_ref), tolerance<T>());
  }
}

// Backward against the CPU, accumulating into random starting values, twice (bit-identical); dweight
// and dbias sit param_offset elements into their buffers. With overwrite_dinp, dinp starts as NaN and
// must be overwritten (accumulate_dinp = false, the model's use).
template <class T>
void check_backward(CudaMatmul& mm, Shape3 s, bool with_dinp, bool with_dbias, int64_t param_offset,
                    bool overwrite_dinp = false) {
  SCOPED_TRACE(::testing::Message() << dtype_name(dtype_of<T>()) << " N=" << s.N << " C=" << s.C << " OC=" << s.OC
                                    << " dinp=" << with_dinp << " dbias=" << with_dbias << " offset=" << param_offset
                                    << " overwrite=" << overwrite_dinp);
  const size_t NC = size_t(s.N) * s.C, NOC = size_t(s.N) * s.OC, W = size_t(s.OC) * s.C;
  const uint64_t seed = 2000 * uint64_t(s.OC) + s.C;
  const Vec inp = representable<T>(random_floats(NC, seed + 1));
  const Vec weight = representable<T>(random_floats(W, seed + 2));
  const Vec dout = representable<T>(random_floats(NOC, seed + 3));
  const Vec dinp0 = overwrite_dinp ? Vec(NC, kNaN) : representable<T>(random_floats(NC, seed + 4));
  const Vec dweight0 = representable<T>(random_floats(W, seed + 5));
  const Vec dbias0 = representable<T>(random_floats(s.OC, seed + 6));

  Vec dinp_ref = overwrite_dinp ? Vec(NC, 0.0f) : dinp0, dweight_ref = dweight0, dbias_ref = dbias0;
  matmul_backward_cpu(with_dinp ? dinp_ref.data() : nullptr, dweight_ref.data(),
                      with_dbias ? dbias_ref.data() : nullptr, dout.data(), inp.data(), weight.data(), s.N, s.C, s.OC);

  Tensor d_inp = device_as<T>(inp), d_weight = device_as<T>(weight, param_offset), d_dout = device_as<T>(dout);
  Vec first_dinp, first_dweight, first_dbias;
  for (int run = 0; run < 2; ++run) {
    Tensor d_dinp = device_as<T>(dinp0, 0, kGuard), d_dweight = device_as<T>(dweight0, param_offset, kGuard),
           d_dbias = device_as<T>(dbias0, param_offset, kGuard);
    mm.backward(with_dinp ? d_dinp.data<T>() : nullptr, d_dweight.data<T>(), with_dbias ? d_dbias.data<T>() : nullptr,
                d_dout.data<T>(), d_inp.data<T>(), d_weight.data<T>(), s.N, s.C, s.OC, !overwrite_dinp);
    const Vec got_dinp = to_host(d_dinp), got_dweight = to_host(d_dweight), got_dbias = to_host(d_dbias);
    // A skipped gradient is left as it was (dinp_ref / dbias_ref are the starting values then).
    EXPECT_LE(guarded_rel_error(got_dinp, dinp_ref), tolerance<T>());
    EXPECT_LE(guarded_rel_error(got_dweight, dweight_ref), tolerance<T>());
    EXPECT_LE(guarded_rel_error(got_dbias, dbias_ref), tolerance<T>());
    if (run == 0) {
      first_dinp = got_dinp;
      first_dweight = got_dweight;
      first_dbias = got_dbias;
    } else {
      EXPECT_TRUE(same_floats(first_dinp, got_dinp)) << "dinp differs between two identical runs";
      EXPECT_TRUE(same_floats(first_dweight, got_dweight)) << "dweight differs between two identical runs";
      EXPECT_TRUE(same_floats(first_dbias, got_dbias)) << "dbias differs between two identical runs";
    }
  }
}

template <class T>
void check_all_forward() {
  CudaMatmul mm(nullptr);
  for (const Shape3& s : shapes()) {
    check_forward<T>(mm, s, true, false, 0);
    check_forward<T>(mm, s, false, false, 0);
    check_forward<T>(mm, s, true, true, 0);
    check_forward<T>(mm, s, false, true, 0);
  }
  // Second calls of a shape reuse the cached plan.
  check_forward<T>(mm, shapes()[1], true, true, 0);
}

template <class T>
void check_all_backward() {
  CudaMatmul mm(nullptr);
  for (const Shape3& s : shapes()) check_backward<T>(mm, s, true, true, 0);
  check_backward<T>(mm, shapes()[0], false, true, 0);
  check_backward<T>(mm, shapes()[2], true, false, 0);
  check_backward<T>(mm, shapes()[3], false, false, 0);
  check_backward<T>(mm, shapes()[0], true, true, 0, /*overwrite_dinp=*/true);
  check_backward<T>(mm, shapes()[3], true, true, 0, /*overwrite_dinp=*/true);
}

// Weight, bias and their gradients one element into their buffers: 4-byte (fp32) or 2-byte (bf16)
// aligned; also three elements in, for a different misalignment.
template <class T>
void check_misaligned_parameters() {
  CudaMatmul mm(nullptr);
  for (int64_t offset : {int64_t{1}, int64_t{3}}) {
    for (const Shape3& s : {shapes()[1], shapes()[3]}) {
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
  Tensor buf = device_as<float>(Vec(64, 1.0f));
  float* p = buf.f32();
  EXPECT_THROW(mm.forward(p, p, p, nullptr, 0, 4, 4), Error);
  EXPECT_THROW(mm.forward(p, p, p, nullptr, 4, 4, -1), Error);
  EXPECT_THROW(mm.forward(p, nullptr, p, nullptr, 4, 4, 4), Error);
  EXPECT_THROW(mm.forward(p, p, p, nullptr, 4, 4, 4, p), Error);  // pre_gelu aliasing out
  EXPECT_THROW(mm.backward(p, p, p, nullptr, p, p, 4, 4, 4), Error);  // no dout
  EXPECT_THROW(mm.backward(p, p, p, p, nullptr, p, 4, 4, 4), Error);  // dweight without the input
  EXPECT_THROW(mm.backward(p, p, p, p, p, nullptr, 4, 4, 4), Error);  // dinp without the weight
  EXPECT_NO_THROW(mm.backward(p, nullptr, nullptr, p, nullptr, p, 4, 4, 4));  // a frozen weight: dinp only
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
