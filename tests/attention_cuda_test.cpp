// Tests of the CUDA attention kernels (attention.cu materialised, flash_attention.cu fused) against the
// CPU twin attention_forward_cpu / attention_backward_cpu, in fp32 and bf16 (inputs rounded to bf16
// first, so both sides see the same values): fresh random inputs, head sizes 16 to 128 and sequence
// lengths that are not multiples of any tile, outputs and scratch poisoned with NaN, the += semantics of
// backward (dqkv starts from random values) and bit-identical reruns of every backward.
// Without a GPU (or in a build without CUDA) the kernel tests skip, saying so.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <type_traits>
#include <vector>

#include "core/bf16.h"
#include "core/device.h"
#include "core/error.h"
#include "core/tensor.h"
#include "model/kernels/attention.h"
#include "model/kernels/flash_attention.h"
#include "tests/cuda_test_util.h"

namespace meshtrain {
namespace {

using Vec = std::vector<float>;
using testing::device_as;
using testing::poisoned;
using testing::random_floats;
using testing::rel_error;
using testing::rounded;
using testing::to_host;

constexpr double kTol = 1e-4;         // fp32, relative to the largest reference magnitude
constexpr double kTolBf16 = 2e-2;     // bf16 storage of out and dqkv
constexpr double kTolLseBf16 = 1e-3;  // lse is fp32 math on exact bf16 products

#define MT_REQUIRE_GPU() MT_REQUIRE_GPU_FOR("attention kernel tests")

double max_abs(const Vec& v) {
  double m = 0.0;
  for (float x : v) m = std::max(m, std::fabs(static_cast<double>(x)));
  return m;
}

struct Shape {
  int B, T, C, NH;
};

// Head sizes 16, 32, 64, 128, and 32 again at T = 1; no T is a multiple of a tile (32 or 64 rows).
constexpr Shape kFullShapes[] = {{2, 37, 64, 4}, {1, 129, 128, 4}, {2, 200, 256, 4}, {1, 70, 256, 2}, {1, 1, 64, 2}};
// The same head sizes, one sequence each, two or three tiles long (testing::small_shapes(): under TSan).
constexpr Shape kSmallShapes[] = {{1, 37, 64, 4}, {1, 70, 128, 4}, {1, 70, 256, 4}, {1, 70, 256, 2}, {1, 1, 64, 2}};

std::vector<Shape> shapes() {
  if (testing::small_shapes()) return {std::begin(kSmallShapes), std::end(kSmallShapes)};
  return {std::begin(kFullShapes), std::end(kFullShapes)};
}

::testing::Message describe(const Shape& s) {
  return ::testing::Message() << "B=" << s.B << " T=" << s.T << " C=" << s.C << " NH=" << s.NH << " (head size "
                              << s.C / s.NH << ")";
}

// Inputs of one shape (bf16-exact when bf16) and the CPU twin's results on them.
struct Case {
  Shape s;
  Vec qkv, dout, dqkv0;     // dqkv0: what dqkv holds before backward adds into it
  Vec out, att, lse, grad;  // grad: backward from zeros
  size_t n_out() const { return static_cast<size_t>(s.B) * s.T * s.C; }
  size_t n_rows() const { return static_cast<size_t>(s.B) * s.NH * s.T; }
  size_t n_square() const { return n_rows() * s.T; }
};

Case make_case(const Shape& s, bool bf16, uint64_t seed) {
  Case c{s, {}, {}, {}, {}, {}, {}, {}};
  const int B = s.B, T = s.T, C = s.C, NH = s.NH, hs = C / NH;
  const size_t n_qkv = static_cast<size_t>(B) * T * 3 * C;
  // Scores of a few units: the softmax is neither flat nor one-hot.
  c.qkv = random_floats(n_qkv, seed, -2.0f, 2.0f);
  c.dout = random_floats(c.n_out(), seed + 1);
  if (bf16) c.qkv = rounded(c.qkv), c.dout = rounded(c.dout);

  c.out.resize(c.n_out());
  c.att.resize(c.n_square());
  attention_forward_cpu(c.out.data(), c.att.data(), c.qkv.data(), B, T, C, NH);
  c.grad.assign(n_qkv, 0.0f);
  Vec scratch(c.n_square());
  attention_backward_cpu(c.grad.data(), scratch.data(), c.dout.data(), c.qkv.data(), c.att.data(), B, T, C, NH);

  // lse from the scores, in double: log sum_{u <= t} exp(q_t . k_u / sqrt(hs)).
  c.lse.resize(c.n_rows());
  const double scale = 1.0 / std::sqrt(static_cast<double>(hs));
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < NH; ++h)
      for (int t = 0; t < T; ++t) {
        const float* q = c.qkv.data() + (static_cast<size_t>(b) * T + t) * 3 * C + h * hs;
        std::vector<double> z(static_cast<size_t>(t) + 1);
        for (int u = 0; u <= t; ++u) {
          const float* k = c.qkv.data() + (static_cast<size_t>(b) * T + u) * 3 * C + C + h * hs;
          double dot = 0.0;
          for (int i = 0; i < hs; ++i) dot += static_cast<double>(q[i]) * k[i];
          z[static_cast<size_t>(u)] = dot * scale;
        }
        const double mx = *std::max_element(z.begin(), z.end());
        double sum = 0.0;
        for (double x : z) sum += std::exp(x - mx);
        c.lse[(static_cast<size_t>(b) * NH + h) * T + t] = static_cast<float>(mx + std::log(sum));
      }

  // dqkv starts at the gradients' own magnitude, so a kernel that overwrote or dropped its part shows.
  const float gmax = static_cast<float>(max_abs(c.grad));
  c.dqkv0 = random_floats(n_qkv, seed + 2, -0.5f * gmax, 0.5f * gmax);
  if (bf16) c.dqkv0 = rounded(c.dqkv0);
  return c;
}

// Runs backward (into a fresh copy of dqkv0, with poisoned scratch) twice: what it added must match
// the CPU gradient for q, k and v separately, and the second run must reproduce the first bit for bit.
// Each part is compared at its own scale, but never below 1% of the whole gradient's: at T = 1 the
// exact dq and dk are zero and a kernel's are rounding noise.
template <class T>
void check_backward(const Case& c, size_t n_scratch, double tol,
                    const std::function<void(T* dqkv, float* scratch)>& backward) {
  Vec first;
  for (int run = 0; run < 2; ++run) {
    Tensor dqkv = device_as<T>(c.dqkv0), scratch = poisoned(n_scratch);
    backward(dqkv.data<T>(), scratch.f32());
    const Vec got = to_host(dqkv);
    if (run == 0) {
      const int C = c.s.C;
      Vec added[3], want[3];
      for (size_t i = 0; i < got.size(); ++i) {
        const size_t part = i % (3 * static_cast<size_t>(C)) / C;
        added[part].push_back(got[i] - c.dqkv0[i]);
        want[part].push_back(c.grad[i]);
      }
      const double floor = 1e-2 * max_abs(c.grad);
      EXPECT_LE(rel_error(added[0], want[0], floor), tol) << "dq";
      EXPECT_LE(rel_error(added[1], want[1], floor), tol) << "dk";
      EXPECT_LE(rel_error(added[2], want[2], floor), tol) << "dv";
      first = got;
    } else {
      EXPECT_EQ(0, std::memcmp(first.data(), got.data(), got.size() * sizeof(float)))
          << "backward is not deterministic";
    }
  }
}

template <class T>
void check_flash(const Shape& s, uint64_t seed) {
  SCOPED_TRACE(describe(s));
  constexpr bool bf16 = std::is_same_v<T, Bf16>;
  const double tol = bf16 ? kTolBf16 : kTol;
  const Case c = make_case(s, bf16, seed);
  Tensor qkv = device_as<T>(c.qkv), dout = device_as<T>(c.dout);
  Tensor out = poisoned<T>(c.n_out()), lse = poisoned(c.n_rows());
  flash_attention_forward_cuda(out.data<T>(), lse.f32(), qkv.data<T>(), s.B, s.T, s.C, s.NH, nullptr);
  EXPECT_LE(rel_error(to_host(out), c.out), tol) << "out";
  EXPECT_LE(rel_error(to_host(lse), c.lse), bf16 ? kTolLseBf16 : kTol) << "lse";
  check_backward<T>(c, c.n_rows(), tol, [&](T* dqkv, float* scratch) {
    flash_attention_backward_cuda(dqkv, scratch, dout.data<T>(), qkv.data<T>(), out.data<T>(), lse.f32(), s.B, s.T, s.C,
                                  s.NH, nullptr);
  });
}

template <class T>
void check_materialised(const Shape& s, uint64_t seed) {
  SCOPED_TRACE(describe(s));
  constexpr bool bf16 = std::is_same_v<T, Bf16>;
  const double tol = bf16 ? kTolBf16 : kTol;
  const Case c = make_case(s, bf16, seed);
  Tensor qkv = device_as<T>(c.qkv), dout = device_as<T>(c.dout);
  Tensor out = poisoned<T>(c.n_out()), att = poisoned(c.n_square());
  attention_forward_cuda(out.data<T>(), att.f32(), qkv.data<T>(), s.B, s.T, s.C, s.NH, nullptr);
  EXPECT_LE(rel_error(to_host(out), c.out), tol) << "out";
  EXPECT_LE(rel_error(to_host(att), c.att), tol) << "att";
  check_backward<T>(c, c.n_square(), tol, [&](T* dqkv, float* scratch) {
    attention_backward_cuda(dqkv, scratch, dout.data<T>(), qkv.data<T>(), att.f32(), s.B, s.T, s.C, s.NH, nullptr);
  });
}

TEST(FlashAttentionCuda, SupportsTheTemplatedHeadSizes) {
  for (int hs : {16, 32, 64, 128}) EXPECT_TRUE(flash_attention_supports(hs)) << hs;
  for (int hs : {1, 8, 24, 48, 96, 256}) EXPECT_FALSE(flash_attention_supports(hs)) << hs;
}

TEST(FlashAttentionCuda, RejectsUnsupportedHeadSizeWithANamedError) {
  // Head size 48: checked before anything touches the device (a CUDA-off build throws "[cuda] not built").
  EXPECT_THROW(flash_attention_forward_cuda(static_cast<float*>(nullptr), nullptr, nullptr, 1, 4, 96, 2, nullptr),
               Error);
}

TEST(FlashAttentionCuda, Fp32MatchesCpu) {
  MT_REQUIRE_GPU();
  uint64_t seed = 100;
  for (const Shape& s : shapes()) check_flash<float>(s, seed += 10);
}

TEST(FlashAttentionCuda, Bf16MatchesCpu) {
  MT_REQUIRE_GPU();
  uint64_t seed = 200;
  for (const Shape& s : shapes()) check_flash<Bf16>(s, seed += 10);
}

TEST(AttentionCuda, Fp32MatchesCpu) {
  MT_REQUIRE_GPU();
  uint64_t seed = 300;
  for (const Shape& s : shapes()) check_materialised<float>(s, seed += 10);
}

TEST(AttentionCuda, Bf16MatchesCpu) {
  MT_REQUIRE_GPU();
  uint64_t seed = 400;
  for (const Shape& s : shapes()) check_materialised<Bf16>(s, seed += 10);
}

TEST(AttentionCuda, MaterialisedHandlesHeadSizesFlashDoesNot) {
  MT_REQUIRE_GPU();
  check_materialised<float>({2, 45, 72, 3}, 500);  // head size 24
  check_materialised<Bf16>({1, 33, 48, 1}, 510);   // head size 48
}

}  // namespace
}  // namespace meshtrain
