// Tests of the CPU reference kernels (model/kernels): forward results against naive loops, every
// backward against central finite differences of its forward, += accumulation, outputs poisoned with
// NaN and fenced by guard zones, and thread-count independence where a kernel promises it.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <numbers>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "core/threads.h"
#include "model/kernels/adamw.h"
#include "model/kernels/attention.h"
#include "model/kernels/crossentropy.h"
#include "model/kernels/encoder.h"
#include "model/kernels/gelu.h"
#include "model/kernels/kv_cache.h"
#include "model/kernels/layernorm.h"
#include "model/kernels/matmul.h"
#include "model/kernels/residual.h"
#include "model/kernels/rope.h"
#include "tests/test_util.h"

extern "C" int openblas_get_num_threads(void);

namespace meshtrain {
namespace {

using Vec = std::vector<float>;
using testing::random_floats;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// A kernel output with guard zones: its elements start as `fill` (NaN by default, so an element the
// kernel forgets to write shows up) and are fenced by sentinels (so a write out of bounds shows up).
class Buffer {
 public:
  explicit Buffer(size_t n, float fill = kNaN) : raw_(n + 2 * kGuard, kSentinel), n_(n) {
    std::fill(data(), data() + n, fill);
  }
  explicit Buffer(const Vec& init) : Buffer(init.size()) { std::copy(init.begin(), init.end(), data()); }
  float* data() { return raw_.data() + kGuard; }
  const float* data() const { return raw_.data() + kGuard; }
  float operator[](size_t i) const { return data()[i]; }
  Vec values() const { return Vec(data(), data() + n_); }
  bool guards_intact() const {
    for (size_t i = 0; i < kGuard; ++i) {
      if (raw_[i] != kSentinel || raw_[kGuard + n_ + i] != kSentinel) return false;
    }
    return true;
  }
  size_t count_nonfinite() const {
    return static_cast<size_t>(std::count_if(data(), data() + n_, [](float x) { return !std::isfinite(x); }));
  }

 private:
  static constexpr size_t kGuard = 64;
  static constexpr float kSentinel = -12345.5f;
  Vec raw_;
  size_t n_;
};

// Every element written, nothing written outside.
void expect_fully_written(const Buffer& b, const char* what) {
  EXPECT_EQ(b.count_nonfinite(), 0u) << what << ": elements left unwritten (still NaN) or non-finite";
  EXPECT_TRUE(b.guards_intact()) << what << ": write outside the buffer";
}

// Runs a test body with OpenMP and OpenBLAS set to n threads, then restores the previous count.
class ThreadCountScope {
 public:
  explicit ThreadCountScope(int n) : saved_(num_threads()) { set_num_threads(n); }
  ~ThreadCountScope() { set_num_threads(saved_); }

 private:
  int saved_;
};

std::vector<int32_t> random_tokens(size_t n, int vocab, uint64_t seed) {
  CounterRng rng(seed, 3);
  std::vector<int32_t> t(n);
  for (auto& x : t) x = static_cast<int32_t>(rng.below(static_cast<uint64_t>(vocab)));
  return t;
}

// sum(out * r) in double: the scalar loss whose gradient with respect to out is r.
double weighted_sum(const float* out, const Vec& r) {
  double s = 0.0;
  for (size_t i = 0; i < r.size(); ++i) s += static_cast<double>(out[i]) * r[i];
  return s;
}

// Compares analytic with central differences of loss() at up to max_checks elements of x spread
// evenly (all of them for small x). Relative error per element, with a floor of 1% of the largest
// gradient so that components that are zero up to rounding compare absolutely.
void expect_gradient(const char* what, Vec& x, const Vec& analytic, const std::function<double()>& loss, float eps,
                     double tol = 1e-2, size_t max_checks = 400) {
  ASSERT_EQ(x.size(), analytic.size()) << what;
  double largest = 0.0;
  for (float a : analytic) largest = std::max(largest, static_cast<double>(std::fabs(a)));
  ASSERT_GT(largest, 0.0) << what << ": analytic gradient is all zero";
  const double floor = 1e-2 * largest;
  const size_t checks = std::min(max_checks, x.size());
  double worst = 0.0;
  size_t worst_i = 0;
  double worst_num = 0.0;
  for (size_t j = 0; j < checks; ++j) {
    const size_t i = j * x.size() / checks;
    const float orig = x[i], up = orig + eps, down = orig - eps;
    x[i] = up;
    const double lp = loss();
    x[i] = down;
    const double lm = loss();
    x[i] = orig;
    const double num = (lp - lm) / (static_cast<double>(up) - down);
    const double a = analytic[i];
    const double err = std::fabs(num - a) / std::max({std::fabs(num), std::fabs(a), floor});
    if (err > worst) {
      worst = err;
      worst_i = i;
      worst_num = num;
    }
  }
  EXPECT_LT(worst, tol) << what << ": element " << worst_i << " analytic " << analytic[worst_i] << " numeric "
                        << worst_num << " (" << checks << " elements checked)";
}

// result - before: the part a += kernel added to a pre-filled buffer.
Vec added(const Buffer& result, const Vec& before) {
  Vec d(before.size());
  for (size_t i = 0; i < d.size(); ++i) d[i] = result[i] - before[i];
  return d;
}

// ---------------------------------------------------------------------------------------------- encoder

TEST(Encoder, ForwardGathersTokenAndPositionRows) {
  const int B = 2, T = 5, C = 20, V = 7;
  auto tokens = random_tokens(B * T, V, 1);
  Vec wte = random_floats(V * C, 2), wpe = random_floats(T * C, 3);
  Buffer out(B * T * C);
  encoder_forward_cpu(out.data(), tokens.data(), wte.data(), wpe.data(), B, T, C);
  expect_fully_written(out, "out");
  for (int bt = 0; bt < B * T; ++bt) {
    for (int c = 0; c < C; ++c) ASSERT_EQ(out[bt * C + c], wte[tokens[bt] * C + c] + wpe[(bt % T) * C + c]);
  }
}

TEST(Encoder, BackwardMatchesFiniteDifferencesAndAccumulates) {
  const int B = 3, T = 4, C = 10, V = 5;  // 12 positions over 5 tokens: rows of wte are shared
  auto tokens = random_tokens(B * T, V, 4);
  Vec wte = random_floats(V * C, 5), wpe = random_floats(T * C, 6), r = random_floats(B * T * C, 7);
  Vec dwte0 = random_floats(V * C, 8), dwpe0 = random_floats(T * C, 9);
  Buffer dwte(dwte0), dwpe(dwpe0);
  encoder_backward_cpu(dwte.data(), dwpe.data(), r.data(), tokens.data(), B, T, C);
  expect_fully_written(dwte, "dwte");
  expect_fully_written(dwpe, "dwpe");
  Vec out(B * T * C);
  auto loss = [&] {
    encoder_forward_cpu(out.data(), tokens.data(), wte.data(), wpe.data(), B, T, C);
    return weighted_sum(out.data(), r);
  };
  expect_gradient("dwte", wte, added(dwte, dwte0), loss, 1e-2f);
  expect_gradient("dwpe", wpe, added(dwpe, dwpe0), loss, 1e-2f);
}

TEST(Encoder, BackwardIsBitIdenticalWithOneAndTwoThreads) {
  const int B = 4, T = 64, C = 100, V = 16;
  auto tokens = random_tokens(B * T, V, 10);
  Vec dout = random_floats(B * T * C, 11), dwte0 = random_floats(V * C, 12), dwpe0 = random_floats(T * C, 13);
  Vec dwte1 = dwte0, dwpe1 = dwpe0, dwte2 = dwte0, dwpe2 = dwpe0;
  {
    ThreadCountScope threads(1);
    encoder_backward_cpu(dwte1.data(), dwpe1.data(), dout.data(), tokens.data(), B, T, C);
  }
  {
    ThreadCountScope threads(2);
    encoder_backward_cpu(dwte2.data(), dwpe2.data(), dout.data(), tokens.data(), B, T, C);
  }
  EXPECT_NE(dwte1, dwte0);
  EXPECT_EQ(0, std::memcmp(dwte1.data(), dwte2.data(), dwte1.size() * sizeof(float)));
  EXPECT_EQ(0, std::memcmp(dwpe1.data(), dwpe2.data(), dwpe1.size() * sizeof(float)));
}

TEST(Encoder, RejectsNegativeTokens) {
  std::vector<int32_t> tokens = {0, -1};
  Vec wte(2 * 4, 1.0f), wpe(2 * 4, 1.0f), out(2 * 4);
  EXPECT_THROW(encoder_forward_cpu(out.data(), tokens.data(), wte.data(), wpe.data(), 1, 2, 4), Error);
}

// -------------------------------------------------------------------------------------------- layernorm

// Double-precision layernorm of one row; returns {mean, rstd}.
std::pair<double, double> layernorm_ref(double* out, const float* x, const float* w, const float* b, int C) {
  double m = 0.0, v = 0.0;
  for (int c = 0; c < C; ++c) m += x[c];
  m /= C;
  for (int c = 0; c < C; ++c) v += (x[c] - m) * (x[c] - m);
  const double s = 1.0 / std::sqrt(v / C + 1e-5);
  for (int c = 0; c < C; ++c) out[c] = (x[c] - m) * s * w[c] + b[c];
  return {m, s};
}

TEST(LayerNorm, ForwardMatchesDoubleReference) {
  const int N = 9, C = 20;
  Vec x = random_floats(N * C, 20, -2.0f, 3.0f), w = random_floats(C, 21), b = random_floats(C, 22);
  Buffer out(N * C), mean(N), rstd(N);
  layernorm_forward_cpu(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C);
  expect_fully_written(out, "out");
  expect_fully_written(mean, "mean");
  expect_fully_written(rstd, "rstd");
  std::vector<double> ref(C);
  for (int n = 0; n < N; ++n) {
    auto [m, s] = layernorm_ref(ref.data(), &x[n * C], w.data(), b.data(), C);
    EXPECT_NEAR(mean[n], m, 1e-6);
    EXPECT_NEAR(rstd[n], s, 1e-5 * s);
    for (int c = 0; c < C; ++c) EXPECT_NEAR(out[n * C + c], ref[c], 1e-5);
  }
}

TEST(LayerNorm, VarianceIsAccurateWhenTheMeanDominates) {
  // std ~ 0.06 around a mean of 1000: E[x^2] - E[x]^2 in fp32 would be off by more than the variance.
  const int N = 4, C = 256;
  Vec x = random_floats(N * C, 23, 999.9f, 1000.1f), w = random_floats(C, 24), b = random_floats(C, 25);
  Buffer out(N * C), mean(N), rstd(N);
  layernorm_forward_cpu(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C);
  std::vector<double> ref(C);
  for (int n = 0; n < N; ++n) {
    auto [m, s] = layernorm_ref(ref.data(), &x[n * C], w.data(), b.data(), C);
    EXPECT_NEAR(rstd[n], s, 1e-3 * s) << "row " << n;
    for (int c = 0; c < C; ++c) ASSERT_NEAR(out[n * C + c], ref[c], 2e-2) << "row " << n << " channel " << c;
  }
}

TEST(LayerNorm, BackwardMatchesFiniteDifferencesAndAccumulates) {
  const int N = 5, C = 12;
  Vec x = random_floats(N * C, 30, -2.0f, 2.0f), w = random_floats(C, 31, 0.5f, 1.5f), b = random_floats(C, 32);
  Vec r = random_floats(N * C, 33);
  Vec out(N * C), mean(N), rstd(N);
  layernorm_forward_cpu(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C);
  Vec dx0 = random_floats(N * C, 34), dw0 = random_floats(C, 35), db0 = random_floats(C, 36);
  Buffer dx(dx0), dw(dw0), db(db0);
  layernorm_backward_cpu(dx.data(), dw.data(), db.data(), r.data(), x.data(), w.data(), mean.data(), rstd.data(), N, C);
  expect_fully_written(dx, "dinp");
  expect_fully_written(dw, "dweight");
  expect_fully_written(db, "dbias");
  auto loss = [&] {
    layernorm_forward_cpu(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C);
    return weighted_sum(out.data(), r);
  };
  expect_gradient("dinp", x, added(dx, dx0), loss, 1e-2f);
  expect_gradient("dweight", w, added(dw, dw0), loss, 1e-2f);
  expect_gradient("dbias", b, added(db, db0), loss, 1e-2f);
}

TEST(LayerNorm, FusedResidualIsBitIdenticalToTheUnfusedPair) {
  const int N = 7, C = 37;
  const Vec a = random_floats(N * C, 37, -2.0f, 3.0f), b = random_floats(N * C, 38);
  const Vec w = random_floats(C, 39, 0.5f, 1.5f), bias = random_floats(C, 40);
  Buffer res(N * C), out(N * C), mean(N), rstd(N);
  residual_layernorm_forward_cpu(res.data(), out.data(), mean.data(), rstd.data(), a.data(), b.data(), w.data(),
                                 bias.data(), N, C);
  for (const auto* buf : {&res, &out, &mean, &rstd}) expect_fully_written(*buf, "fused output");
  Vec res_ref(N * C), out_ref(N * C), mean_ref(N), rstd_ref(N);
  residual_forward_cpu(res_ref.data(), a.data(), b.data(), N * C);
  layernorm_forward_cpu(out_ref.data(), mean_ref.data(), rstd_ref.data(), res_ref.data(), w.data(), bias.data(), N, C);
  EXPECT_EQ(res.values(), res_ref);
  EXPECT_EQ(out.values(), out_ref);
  EXPECT_EQ(mean.values(), mean_ref);
  EXPECT_EQ(rstd.values(), rstd_ref);
  // In place: the residual stream overwritten by itself plus the branch.
  Buffer stream(a), out2(N * C), mean2(N), rstd2(N);
  residual_layernorm_forward_cpu(stream.data(), out2.data(), mean2.data(), rstd2.data(), stream.data(), b.data(),
                                 w.data(), bias.data(), N, C);
  EXPECT_EQ(stream.values(), res_ref);
  EXPECT_EQ(out2.values(), out_ref);
}

// ----------------------------------------------------------------------------------------------- matmul

// out[n, o] = sum_c inp[n, c] w[o, c] + bias[o], in double.
std::vector<double> matmul_ref(const Vec& inp, const Vec& w, const float* bias, int N, int C, int OC) {
  std::vector<double> out(static_cast<size_t>(N) * OC);
  for (int n = 0; n < N; ++n) {
    for (int o = 0; o < OC; ++o) {
      double s = bias ? bias[o] : 0.0;
      for (int c = 0; c < C; ++c) s += static_cast<double>(inp[n * C + c]) * w[o * C + c];
      out[n * OC + o] = s;
    }
  }
  return out;
}

TEST(Matmul, ForwardMatchesNaiveLoops) {
  // Odd shapes, one large enough for OpenBLAS to use several threads, and single rows (the
  // matrix-vector path generation takes).
  for (auto [N, C, OC] : {std::array<int, 3>{13, 20, 11}, std::array<int, 3>{70, 72, 130},
                          std::array<int, 3>{1, 37, 29}, std::array<int, 3>{1, 256, 1000}}) {
    Vec inp = random_floats(N * C, 40), w = random_floats(OC * C, 41), bias = random_floats(OC, 42);
    for (const float* bp : {static_cast<const float*>(bias.data()), static_cast<const float*>(nullptr)}) {
      Buffer out(N * OC);
      matmul_forward_cpu(out.data(), inp.data(), w.data(), bp, N, C, OC);
      expect_fully_written(out, bp ? "out (bias)" : "out (no bias)");
      auto ref = matmul_ref(inp, w, bp, N, C, OC);
      for (size_t i = 0; i < ref.size(); ++i) ASSERT_NEAR(out[i], ref[i], 1e-5 * (1.0 + std::fabs(ref[i]))) << i;
    }
  }
}

TEST(Matmul, BackwardMatchesFiniteDifferencesAndAccumulates) {
  const int N = 7, C = 20, OC = 9;
  Vec inp = random_floats(N * C, 43), w = random_floats(OC * C, 44), bias = random_floats(OC, 45);
  Vec r = random_floats(N * OC, 46);
  Vec dinp0 = random_floats(N * C, 47), dw0 = random_floats(OC * C, 48), db0 = random_floats(OC, 49);
  Buffer dinp(dinp0), dw(dw0), db(db0);
  matmul_backward_cpu(dinp.data(), dw.data(), db.data(), r.data(), inp.data(), w.data(), N, C, OC);
  expect_fully_written(dinp, "dinp");
  expect_fully_written(dw, "dweight");
  expect_fully_written(db, "dbias");
  Vec out(N * OC);
  auto loss = [&] {
    matmul_forward_cpu(out.data(), inp.data(), w.data(), bias.data(), N, C, OC);
    return weighted_sum(out.data(), r);
  };
  expect_gradient("dinp", inp, added(dinp, dinp0), loss, 1e-2f);
  expect_gradient("dweight", w, added(dw, dw0), loss, 1e-2f);
  expect_gradient("dbias", bias, added(db, db0), loss, 1e-2f);

  // Skipping dinp and dbias leaves dweight exactly as before.
  Buffer dw_only(dw0);
  matmul_backward_cpu(nullptr, dw_only.data(), nullptr, r.data(), inp.data(), w.data(), N, C, OC);
  EXPECT_EQ(dw_only.values(), dw.values());
}

// -------------------------------------------------------------------------------------------- attention

// Naive causal attention in double: out (B, T, C) and att (B, NH, T, T).
void attention_ref(std::vector<double>& out, std::vector<double>& att, const Vec& qkv, int B, int T, int C, int NH) {
  const int hs = C / NH;
  out.assign(static_cast<size_t>(B) * T * C, 0.0);
  att.assign(static_cast<size_t>(B) * NH * T * T, 0.0);
  for (int b = 0; b < B; ++b) {
    for (int h = 0; h < NH; ++h) {
      for (int t = 0; t < T; ++t) {
        const float* q = &qkv[(b * T + t) * 3 * C + h * hs];
        double* a = &att[((b * NH + h) * T + t) * T];
        double mx = -1e300, sum = 0.0;
        for (int t2 = 0; t2 <= t; ++t2) {
          const float* k = &qkv[(b * T + t2) * 3 * C + C + h * hs];
          double s = 0.0;
          for (int i = 0; i < hs; ++i) s += static_cast<double>(q[i]) * k[i];
          a[t2] = s / std::sqrt(static_cast<double>(hs));
          mx = std::max(mx, a[t2]);
        }
        for (int t2 = 0; t2 <= t; ++t2) sum += (a[t2] = std::exp(a[t2] - mx));
        for (int t2 = 0; t2 <= t; ++t2) {
          a[t2] /= sum;
          const float* v = &qkv[(b * T + t2) * 3 * C + 2 * C + h * hs];
          for (int i = 0; i < hs; ++i) out[(b * T + t) * C + h * hs + i] += a[t2] * v[i];
        }
      }
    }
  }
}

void expect_attention_matches_naive(int B, int T, int C, int NH, uint64_t seed) {
  Vec qkv = random_floats(static_cast<size_t>(B) * T * 3 * C, seed, -2.0f, 2.0f);
  Buffer out(B * T * C), att(B * NH * T * T);
  attention_forward_cpu(out.data(), att.data(), qkv.data(), B, T, C, NH);
  expect_fully_written(out, "out");
  expect_fully_written(att, "att");
  std::vector<double> out_ref, att_ref;
  attention_ref(out_ref, att_ref, qkv, B, T, C, NH);
  for (size_t i = 0; i < out_ref.size(); ++i) ASSERT_NEAR(out[i], out_ref[i], 1e-5) << "out " << i;
  for (size_t i = 0; i < att_ref.size(); ++i) {
    const size_t t = (i / T) % T, t2 = i % T;
    if (t2 > t) {
      ASSERT_EQ(att[i], 0.0f) << "att above the diagonal at " << i;
    }
    ASSERT_NEAR(att[i], att_ref[i], 1e-6) << "att " << i;
  }
}

TEST(Attention, ForwardMatchesNaiveLoops) { expect_attention_matches_naive(2, 7, 20, 4, 50); }

TEST(Attention, ForwardIsRightWithGemmsInsideTwoThreads) {
  // Per-head GEMMs issued from OpenMP threads must each run on one thread, and the OpenBLAS thread
  // count must come back afterwards.
  ThreadCountScope threads(2);
  const int blas_threads = openblas_get_num_threads();
  expect_attention_matches_naive(2, 64, 64, 4, 51);
  EXPECT_EQ(openblas_get_num_threads(), blas_threads);
}

TEST(Attention, BackwardMatchesFiniteDifferencesAndAccumulates) {
  const int B = 2, T = 5, C = 12, NH = 3;
  Vec qkv = random_floats(B * T * 3 * C, 52), r = random_floats(B * T * C, 53);
  Vec out(B * T * C), att(B * NH * T * T);
  attention_forward_cpu(out.data(), att.data(), qkv.data(), B, T, C, NH);
  Vec dqkv0 = random_floats(qkv.size(), 54);
  Buffer dqkv(dqkv0), scratch(att.size());  // NaN scratch must not leak into the gradient
  attention_backward_cpu(dqkv.data(), scratch.data(), r.data(), qkv.data(), att.data(), B, T, C, NH);
  expect_fully_written(dqkv, "dqkv");
  EXPECT_TRUE(scratch.guards_intact());
  auto loss = [&] {
    attention_forward_cpu(out.data(), att.data(), qkv.data(), B, T, C, NH);
    return weighted_sum(out.data(), r);
  };
  expect_gradient("dqkv", qkv, added(dqkv, dqkv0), loss, 1e-2f);
}

TEST(Attention, FutureTokensDoNotChangeEarlierOutputs) {
  const int B = 2, T = 9, C = 16, NH = 2, t0 = 5;
  Vec qkv = random_floats(B * T * 3 * C, 55);
  Vec out1(B * T * C), out2(B * T * C), att(B * NH * T * T);
  attention_forward_cpu(out1.data(), att.data(), qkv.data(), B, T, C, NH);
  for (int c = 0; c < 3 * C; ++c) qkv[(1 * T + t0) * 3 * C + c] += 0.5f;  // batch 1, position t0
  attention_forward_cpu(out2.data(), att.data(), qkv.data(), B, T, C, NH);
  for (int b = 0; b < B; ++b) {
    for (int t = 0; t < T; ++t) {
      const bool may_change = b == 1 && t >= t0;
      bool same = std::equal(&out1[(b * T + t) * C], &out1[(b * T + t) * C] + C, &out2[(b * T + t) * C]);
      if (!may_change) {
        EXPECT_TRUE(same) << "batch " << b << " position " << t << " changed";
      }
      if (b == 1 && t == t0) {
        EXPECT_FALSE(same) << "the perturbed position did not change";
      }
    }
  }
}

TEST(Attention, RejectsHeadsThatDoNotDivideChannels) {
  Vec qkv(3 * 10, 0.5f), out(10), att(1);
  EXPECT_THROW(attention_forward_cpu(out.data(), att.data(), qkv.data(), 1, 1, 10, 3), Error);
}

// ------------------------------------------------------------------------------------ rotary embeddings

TEST(Rope, TableAndForwardFollowTheHalfSplitFormula) {
  const int T = 6, C = 16, NH = 2, hs = C / NH, half = hs / 2;
  const double theta = 10000.0;
  const std::vector<float> table = rope_table(T, hs, theta);
  ASSERT_EQ(table.size(), static_cast<size_t>(T * half * 2));
  Vec qkv = random_floats(T * 3 * C, 70), before = qkv;
  rope_cpu(qkv.data(), table.data(), 1, T, C, NH, 0, false);
  for (int t = 0; t < T; ++t)
    for (int part = 0; part < 3; ++part)
      for (int h = 0; h < NH; ++h)
        for (int i = 0; i < half; ++i) {
          const int at = t * 3 * C + part * C + h * hs + i;
          if (part == 2) {  // v is never turned
            ASSERT_EQ(qkv[at], before[at]);
            ASSERT_EQ(qkv[at + half], before[at + half]);
            continue;
          }
          const double angle = t * std::pow(theta, -2.0 * i / hs);
          const double x1 = before[at], x2 = before[at + half];
          ASSERT_NEAR(qkv[at], x1 * std::cos(angle) - x2 * std::sin(angle), 1e-6) << t << " " << part << " " << i;
          ASSERT_NEAR(qkv[at + half], x2 * std::cos(angle) + x1 * std::sin(angle), 1e-6) << t << " " << part << " " << i;
        }
  rope_cpu(qkv.data(), table.data(), 1, T, C, NH, 0, true);  // and back
  for (size_t i = 0; i < qkv.size(); ++i) ASSERT_NEAR(qkv[i], before[i], 1e-6) << i;
}

TEST(Rope, ScoresDependOnlyOnTheOffset) {
  // q at position m and k at position n: q.k per head is the same for (m, n) and (m + 7, n + 7),
  // and differs for another offset.
  const int C = 32, NH = 4, hs = C / NH, T = 40;
  const std::vector<float> table = rope_table(T, hs, 10000.0);
  const Vec row = random_floats(3 * C, 71);
  auto turned = [&](int pos) {
    Vec r = row;
    rope_cpu(r.data(), table.data(), 1, 1, C, NH, pos, false);
    return r;
  };
  auto scores = [&](int m, int n) {
    const Vec q = turned(m), k = turned(n);
    Vec s(NH, 0.0f);
    for (int h = 0; h < NH; ++h)
      for (int d = 0; d < hs; ++d) s[h] += q[h * hs + d] * k[C + h * hs + d];
    return s;
  };
  for (auto [m, n] : std::vector<std::pair<int, int>>{{3, 1}, {10, 2}, {20, 20}, {5, 0}}) {
    const Vec a = scores(m, n), b = scores(m + 7, n + 7), other = scores(m + 1, n);
    for (int h = 0; h < NH; ++h) {
      EXPECT_NEAR(a[h], b[h], 1e-5) << "m=" << m << " n=" << n << " head " << h;
      EXPECT_GT(std::fabs(a[h] - other[h]), 1e-4) << "another offset should give another score";
    }
  }
}

TEST(Rope, BackwardIsTheTransposeByFiniteDifferences) {
  const int B = 2, T = 5, C = 12, NH = 2;
  const std::vector<float> table = rope_table(T + 3, C / NH, 500.0);
  Vec x = random_floats(B * T * 3 * C, 72), r = random_floats(B * T * 3 * C, 73);
  Vec grad = r;  // d(sum r * rope(x)) / dx = rope^T r = rope^-1 r
  rope_cpu(grad.data(), table.data(), B, T, C, NH, 3, true);
  auto loss = [&] {
    Vec y = x;
    rope_cpu(y.data(), table.data(), B, T, C, NH, 3, false);
    return weighted_sum(y.data(), r);
  };
  expect_gradient("dqkv", x, grad, loss, 1e-2f);
}

TEST(Rope, RejectsOddHeadSizes) {
  Vec qkv(3 * 6, 1.0f);
  const std::vector<float> table = rope_table(4, 2, 100.0);
  EXPECT_THROW(rope_cpu(qkv.data(), table.data(), 1, 1, 6, 2, 0, false), Error);
  EXPECT_THROW(rope_table(4, 3, 100.0), Error);
}

// ------------------------------------------------------------------------------------ key/value cache

TEST(KvCache, PrefillThenOneRowAtATimeMatchesFullAttention) {
  const int T = 11, C = 12, NH = 3, prefill = 4;
  Vec qkv = random_floats(T * 3 * C, 74);
  Vec full(T * C), att(NH * T * T);
  attention_forward_cpu(full.data(), att.data(), qkv.data(), 1, T, C, NH);
  Buffer kcache(T * C), vcache(T * C), out(T * C);
  attention_cached_cpu(out.data(), kcache.data(), vcache.data(), qkv.data(), prefill, 0, C, NH);
  for (int t = prefill; t < T; ++t)
    attention_cached_cpu(out.data() + t * C, kcache.data(), vcache.data(), qkv.data() + t * 3 * C, 1, t, C, NH);
  expect_fully_written(out, "out");
  expect_fully_written(kcache, "kcache");
  for (int i = 0; i < T * C; ++i) ASSERT_NEAR(out[i], full[i], 1e-6) << "row " << i / C;
  for (int t = 0; t < T; ++t)
    for (int c = 0; c < C; ++c) {
      ASSERT_EQ(kcache[t * C + c], qkv[t * 3 * C + C + c]);
      ASSERT_EQ(vcache[t * C + c], qkv[t * 3 * C + 2 * C + c]);
    }
}

// ------------------------------------------------------------------------------------ gelu and residual

double gelu_ref(double x) {
  return 0.5 * x * (1.0 + std::tanh(std::sqrt(2.0 / std::numbers::pi) * (x + 0.044715 * x * x * x)));
}

TEST(Gelu, ForwardMatchesFormula) {
  const int N = 1001;
  Vec x = random_floats(N, 60, -6.0f, 6.0f);
  Buffer out(N);
  gelu_forward_cpu(out.data(), x.data(), N);
  expect_fully_written(out, "out");
  for (int i = 0; i < N; ++i) ASSERT_NEAR(out[i], gelu_ref(x[i]), 2e-6 * (1.0 + std::fabs(x[i]))) << x[i];
}

TEST(Gelu, BackwardMatchesFiniteDifferencesAndAccumulates) {
  const int N = 301;
  Vec x = random_floats(N, 61, -4.0f, 4.0f), r = random_floats(N, 62), d0 = random_floats(N, 63);
  Buffer d(d0);
  gelu_backward_cpu(d.data(), x.data(), r.data(), N);
  expect_fully_written(d, "dinp");
  Vec out(N);
  auto loss = [&] {
    gelu_forward_cpu(out.data(), x.data(), N);
    return weighted_sum(out.data(), r);
  };
  expect_gradient("dinp", x, added(d, d0), loss, 1e-2f);
}

TEST(Residual, ForwardAddsAndAccumulateAdds) {
  const int N = 1003;
  Vec a = random_floats(N, 70), b = random_floats(N, 71);
  Buffer out(N);
  residual_forward_cpu(out.data(), a.data(), b.data(), N);
  expect_fully_written(out, "out");
  Buffer acc(a);
  residual_accumulate_cpu(acc.data(), b.data(), N);
  expect_fully_written(acc, "dst");
  for (int i = 0; i < N; ++i) {
    ASSERT_EQ(out[i], a[i] + b[i]);
    ASSERT_EQ(acc[i], a[i] + b[i]);
  }
}

// ----------------------------------------------------------------------------------------- crossentropy

struct CrossEntropyCase {
  int N, V, Vp;
  Vec logits;
  std::vector<int32_t> targets;
  CrossEntropyCase(int n, int v, int vp, uint64_t seed) : N(n), V(v), Vp(vp) {
    logits = random_floats(static_cast<size_t>(N) * Vp, seed, -3.0f, 3.0f);
    // Padding holds values that would dominate the softmax if they were ever read.
    for (int i = 0; i < N; ++i) std::fill(&logits[i * Vp + V], &logits[i * Vp] + Vp, 1e4f);
    targets = random_tokens(N, V, seed + 1);
    targets[1] = -1;  // ignored row
  }
};

TEST(CrossEntropy, LossMatchesNaiveLogSoftmaxAndIgnoresPaddingAndRows) {
  for (auto [N, V, Vp] : {std::array<int, 3>{6, 37, 48}, std::array<int, 3>{4, 50257, 50304}}) {
    CrossEntropyCase cs(N, V, Vp, 80);
    Buffer losses(N);
    softmax_crossentropy_cpu(losses.data(), nullptr, cs.logits.data(), cs.targets.data(), N, V, Vp, 1.0f);
    expect_fully_written(losses, "losses");
    for (int i = 0; i < N; ++i) {
      if (cs.targets[i] < 0) {
        EXPECT_EQ(losses[i], 0.0f);
        continue;
      }
      const float* x = &cs.logits[i * Vp];
      const double mx = *std::max_element(x, x + V);
      double sum = 0.0;
      for (int j = 0; j < V; ++j) sum += std::exp(x[j] - mx);
      EXPECT_NEAR(losses[i], mx + std::log(sum) - x[cs.targets[i]], 1e-5) << "row " << i << " V " << V;
    }
  }
}

TEST(CrossEntropy, GradientMatchesFiniteDifferences) {
  const int N = 6, V = 37, Vp = 48;
  const float dloss = 0.37f;
  CrossEntropyCase cs(N, V, Vp, 81);
  Buffer losses(N), dlogits(N * Vp);
  softmax_crossentropy_cpu(losses.data(), dlogits.data(), cs.logits.data(), cs.targets.data(), N, V, Vp, dloss);
  expect_fully_written(dlogits, "dlogits");
  for (int i = 0; i < N; ++i) {
    for (int j = 0; j < Vp; ++j) {
      if (cs.targets[i] < 0 || j >= V) {
        ASSERT_EQ(dlogits[i * Vp + j], 0.0f) << "row " << i << " column " << j;
      }
    }
  }
  // Finite differences over the real columns (the padding is constant 1e4, never perturbed).
  Vec real(N * V), analytic(N * V), l(N);
  for (int i = 0; i < N; ++i) {
    for (int j = 0; j < V; ++j) {
      real[i * V + j] = cs.logits[i * Vp + j];
      analytic[i * V + j] = dlogits[i * Vp + j];
    }
  }
  auto loss = [&] {
    for (int i = 0; i < N; ++i) std::copy(&real[i * V], &real[i * V] + V, &cs.logits[i * Vp]);
    softmax_crossentropy_cpu(l.data(), nullptr, cs.logits.data(), cs.targets.data(), N, V, Vp, dloss);
    double s = 0.0;
    for (float x : l) s += x;
    return dloss * s;
  };
  expect_gradient("dlogits", real, analytic, loss, 3e-2f);
}

TEST(CrossEntropy, InPlaceGradientEqualsSeparateBuffers) {
  const int N = 8, V = 300, Vp = 384;
  CrossEntropyCase cs(N, V, Vp, 82);
  Vec losses1(N), losses2(N), separate(N * Vp);
  softmax_crossentropy_cpu(losses1.data(), separate.data(), cs.logits.data(), cs.targets.data(), N, V, Vp, 0.5f);
  Vec inplace = cs.logits;
  softmax_crossentropy_cpu(losses2.data(), inplace.data(), inplace.data(), cs.targets.data(), N, V, Vp, 0.5f);
  EXPECT_EQ(losses1, losses2);
  EXPECT_EQ(separate, inplace);
}

// The bf16-gradient variant (the CPU's fused head with bf16 GEMMs) must give the same losses and the
// fp32 gradient rounded to bf16, bit for bit, ignored rows and padding included.
TEST(CrossEntropy, Bf16GradientIsTheFp32GradientRounded) {
  for (auto [N, V, Vp] : {std::array<int, 3>{8, 300, 384}, std::array<int, 3>{3, 50257, 50304}}) {
    CrossEntropyCase cs(N, V, Vp, 84);
    Vec losses32(N), losses16(N, -1.0f), grad32(static_cast<size_t>(N) * Vp), scratch = cs.logits;
    std::vector<uint16_t> grad16(static_cast<size_t>(N) * Vp, 0x7fc0);  // NaN until written
    softmax_crossentropy_cpu(losses32.data(), grad32.data(), cs.logits.data(), cs.targets.data(), N, V, Vp, 0.37f);
    softmax_crossentropy_bf16_grad_cpu(losses16.data(), grad16.data(), scratch.data(), cs.targets.data(), N, V, Vp,
                                       0.37f);
    EXPECT_EQ(losses16, losses32) << "V " << V;
    size_t differ = 0;
    for (size_t i = 0; i < grad32.size(); ++i) differ += grad16[i] != float_to_bf16(grad32[i]);
    EXPECT_EQ(differ, 0u) << "of " << grad32.size() << " gradient values, V " << V;
  }
}

TEST(CrossEntropy, RejectsTargetsInThePadding) {
  CrossEntropyCase cs(2, 10, 16, 83);
  cs.targets[0] = 12;
  Vec losses(2);
  EXPECT_THROW(softmax_crossentropy_cpu(losses.data(), nullptr, cs.logits.data(), cs.targets.data(), 2, 10, 16, 1.0f),
               Error);
}

// ---------------------------------------------------------------------------------------------- adamw

TEST(AdamW, OneStepMatchesHandComputation) {
  const int n = 37, t = 3;
  const float lr = 1e-2f, b1 = 0.9f, b2 = 0.95f, eps = 1e-8f, scale = 0.5f;
  Vec p0 = random_floats(n, 90), g = random_floats(n, 91), m0 = random_floats(n, 92, -0.1f, 0.1f);
  Vec v0 = random_floats(n, 93, 0.01f, 0.2f);
  for (float wd : {0.0f, 0.5f}) {
    Vec p = p0, m = m0, v = v0;
    adamw_update_cpu(p.data(), g.data(), m.data(), v.data(), n, lr, b1, b2, eps, wd, t, scale);
    for (int i = 0; i < n; ++i) {
      const double gi = static_cast<double>(g[i]) * scale;
      const double mi = b1 * static_cast<double>(m0[i]) + (1.0 - b1) * gi;
      const double vi = b2 * static_cast<double>(v0[i]) + (1.0 - b2) * gi * gi;
      const double mhat = mi / (1.0 - std::pow(b1, t)), vhat = vi / (1.0 - std::pow(b2, t));
      const double pi = p0[i] - lr * (mhat / (std::sqrt(vhat) + eps) + wd * p0[i]);
      EXPECT_NEAR(m[i], mi, 1e-6);
      EXPECT_NEAR(v[i], vi, 1e-6 * vi);
      EXPECT_NEAR(p[i], pi, 1e-6) << "wd " << wd << " element " << i;
    }
  }
}

TEST(AdamW, WeightDecayShrinksParamsAndLeavesMomentsAlone) {
  const int n = 1000;
  const float lr = 1e-2f, wd = 0.5f;
  Vec p0 = random_floats(n, 94), g = random_floats(n, 95);
  Vec p_plain = p0, m_plain(n, 0.0f), v_plain(n, 0.0f);
  Vec p_decay = p0, m_decay(n, 0.0f), v_decay(n, 0.0f);
  adamw_update_cpu(p_plain.data(), g.data(), m_plain.data(), v_plain.data(), n, lr, 0.9f, 0.999f, 1e-8f, 0.0f, 1, 1.0f);
  adamw_update_cpu(p_decay.data(), g.data(), m_decay.data(), v_decay.data(), n, lr, 0.9f, 0.999f, 1e-8f, wd, 1, 1.0f);
  EXPECT_EQ(m_plain, m_decay);
  EXPECT_EQ(v_plain, v_decay);
  for (int i = 0; i < n; ++i) {
    // First step from zero moments: m_hat / sqrt(v_hat) = sign(g), so each parameter moves by lr.
    ASSERT_NEAR(p0[i] - p_plain[i], lr * (g[i] > 0 ? 1.0 : -1.0), 1e-6);
    ASSERT_NEAR(p_plain[i] - p_decay[i], lr * wd * p0[i], 1e-6);
  }
}

TEST(AdamW, SumSquaresIsExactEnoughAndThreadCountIndependent) {
  const int64_t n = 300001;  // several fixed blocks and a ragged end
  Vec x = random_floats(n, 96, -2.0f, 2.0f);
  double ref = 0.0;
  for (float xi : x) ref += static_cast<double>(xi) * xi;
  double one = 0.0, two = 0.0;
  {
    ThreadCountScope threads(1);
    one = sum_squares_cpu(x.data(), n);
  }
  {
    ThreadCountScope threads(2);
    two = sum_squares_cpu(x.data(), n);
  }
  EXPECT_NEAR(one, ref, 1e-12 * ref);
  EXPECT_EQ(one, two);
  EXPECT_EQ(sum_squares_cpu(x.data(), 0), 0.0);
}

}  // namespace
}  // namespace meshtrain
