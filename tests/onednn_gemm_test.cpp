// The CPU GEMMs through oneDNN (core/gemm_onednn.h) against a double-precision reference, fp32 and
// bf16 (inputs rounded to bf16 first, so both sides multiply the same numbers and only fp32
// accumulation separates them), on odd shapes (1 x N, N x 1, sizes not divisible by 16), every
// transpose, padded strides and beta 0, 1 and 0.5; primitives are created once per shape. A build
// without oneDNN must say "[bf16-cpu] not built".
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "core/bf16.h"
#include "core/error.h"
#include "core/gemm_onednn.h"
#include "model/backend.h"

namespace meshtrain {
namespace {

struct Shape {
  int M, N, K;
};
const Shape kShapes[] = {{1, 37, 19}, {29, 1, 23}, {17, 13, 1}, {13, 17, 19}, {33, 65, 17}, {64, 48, 144}, {5, 300, 70}};

std::vector<float> random_values(size_t n, uint64_t seed) {
  std::vector<float> v(n);
  uint64_t s = seed * 6364136223846793005ULL + 1442695040888963407ULL;
  for (float& x : v) {
    s = s * 6364136223846793005ULL + 1442695040888963407ULL;
    x = static_cast<float>(static_cast<double>(s >> 11) / 9007199254740992.0 * 2.0 - 1.0);
  }
  return v;
}

/// Runs one case and returns the error relative to the largest reference magnitude.
double run_case(GemmType type, const Shape& s, bool ta, bool tb, float beta, int pad, uint64_t seed) {
  const int lda = (ta ? s.M : s.K) + pad, ldb = (tb ? s.K : s.N) + pad, ldc = s.N + pad;
  const size_t a_rows = ta ? s.K : s.M, b_rows = tb ? s.N : s.K;
  std::vector<float> A = random_values(a_rows * lda, seed), B = random_values(b_rows * ldb, seed + 1),
                     C = random_values(size_t(s.M) * ldc, seed + 2);
  std::vector<uint16_t> A16(A.size()), B16(B.size());
  if (type == GemmType::bf16) {  // both sides see the bf16 values
    for (size_t i = 0; i < A.size(); ++i) A16[i] = float_to_bf16(A[i]), A[i] = bf16_to_float(A16[i]);
    for (size_t i = 0; i < B.size(); ++i) B16[i] = float_to_bf16(B[i]), B[i] = bf16_to_float(B16[i]);
  }
  std::vector<double> want(size_t(s.M) * s.N);
  double scale = 1e-30;
  for (int i = 0; i < s.M; ++i)
    for (int j = 0; j < s.N; ++j) {
      double acc = 0;
      for (int k = 0; k < s.K; ++k)
        acc += double(ta ? A[size_t(k) * lda + i] : A[size_t(i) * lda + k]) *
               double(tb ? B[size_t(j) * ldb + k] : B[size_t(k) * ldb + j]);
      want[size_t(i) * s.N + j] = acc + double(beta) * C[size_t(i) * ldc + j];
      scale = std::max(scale, std::fabs(want[size_t(i) * s.N + j]));
    }
  std::vector<float> got = C;
  const void* a = type == GemmType::bf16 ? static_cast<const void*>(A16.data()) : A.data();
  const void* b = type == GemmType::bf16 ? static_cast<const void*>(B16.data()) : B.data();
  gemm_onednn(type, ta, tb, s.M, s.N, s.K, a, lda, b, ldb, beta, got.data(), ldc);
  double err = 0;
  for (int i = 0; i < s.M; ++i) {
    for (int j = 0; j < s.N; ++j) err = std::max(err, std::fabs(got[size_t(i) * ldc + j] - want[size_t(i) * s.N + j]));
    for (int j = s.N; j < ldc; ++j)  // the padding after each row is not C's: left as it was
      if (got[size_t(i) * ldc + j] != C[size_t(i) * ldc + j]) return INFINITY;
  }
  return err / scale;
}

TEST(OnednnGemm, MatchesTheReferenceOnOddShapesEveryTransposeAndBeta) {
  if (!onednn_built()) {
    try {
      float c = 0;
      gemm_onednn(GemmType::f32, false, false, 1, 1, 1, &c, 1, &c, 1, 0.0f, &c, 1);
      ADD_FAILURE() << "a build without oneDNN ran a oneDNN GEMM";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("[bf16-cpu] not built"), std::string::npos) << e.what();
    }
    return;
  }
  uint64_t seed = 1;
  if (!onednn_bf16_matmuls()) {  // a CPU without AVX-512: bf16 is one clear error, fp32 still runs
    uint16_t x = 0;
    float c = 0;
    try {
      gemm_onednn(GemmType::bf16, false, false, 1, 1, 1, &x, 1, &x, 1, 0.0f, &c, 1);
      ADD_FAILURE() << "a bf16 GEMM ran although oneDNN said it has none for this CPU";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("[bf16-cpu] oneDNN has no matmul for 1 x 1 x 1 (bf16)"), std::string::npos)
          << e.what();
    }
  }
  for (GemmType type : {GemmType::f32, GemmType::bf16}) {
    if (type == GemmType::bf16 && !onednn_bf16_matmuls()) continue;
    const double tol = 2e-5;  // fp32 accumulation of exact products, either way
    for (const Shape& s : kShapes)
      for (bool ta : {false, true})
        for (bool tb : {false, true})
          for (float beta : {0.0f, 1.0f, 0.5f}) {
            const int pad = (s.M + s.N) % 3;  // strides wider than the rows now and then
            SCOPED_TRACE(::testing::Message() << (type == GemmType::bf16 ? "bf16 " : "fp32 ") << s.M << "x" << s.N
                                              << "x" << s.K << " ta " << ta << " tb " << tb << " beta " << beta
                                              << " pad " << pad);
            EXPECT_LE(run_case(type, s, ta, tb, beta, pad, seed++), tol);
          }
  }
}

// The CPU backend with bf16 GEMMs (train.precision = bf16 on the CPU) against the fp32 backend: a
// linear layer forward (with and without bias, with the fused GELU) and backward (dinp overwritten,
// dweight and dbias accumulated), on shapes of one token, one input, one output and sizes not
// divisible by 16, within bf16's 2e-2 of the largest value.
TEST(OnednnGemm, CpuBackendWithBf16GemmsMatchesFp32) {
  if (!onednn_built() || onednn_bf16_isa().empty()) {
    try {
      make_cpu_backend(true);
      ADD_FAILURE() << "bf16 GEMMs accepted without oneDNN or bf16 instructions";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("[bf16-cpu]"), std::string::npos) << e.what();
    }
    return;
  }
  auto fp32 = make_cpu_backend(false), bf16 = make_cpu_backend(true);
  auto rel = [](const std::vector<float>& got, const std::vector<float>& want) {
    double err = 0, scale = 1e-30;
    for (size_t i = 0; i < want.size(); ++i) {
      err = std::max(err, double(std::fabs(got[i] - want[i])));
      scale = std::max(scale, double(std::fabs(want[i])));
    }
    return err / scale;
  };
  uint64_t seed = 100;
  for (const Shape& s : {Shape{1, 37, 19}, Shape{29, 1, 23}, Shape{17, 13, 1}, Shape{33, 65, 17}, Shape{70, 48, 144}}) {
    const int N = s.M, OC = s.N, C = s.K;
    SCOPED_TRACE(::testing::Message() << "N " << N << " C " << C << " OC " << OC);
    const auto inp = random_values(size_t(N) * C, seed++), w = random_values(size_t(OC) * C, seed++),
               bias = random_values(size_t(OC), seed++), dout = random_values(size_t(N) * OC, seed++),
               dw0 = random_values(size_t(OC) * C, seed++), db0 = random_values(size_t(OC), seed++);
    for (bool with_bias : {false, true})
      for (bool gelu : {false, true}) {
        std::vector<float> o32(size_t(N) * OC), o16(o32.size()), p32(o32.size()), p16(o32.size());
        fp32->matmul_forward(o32.data(), inp.data(), w.data(), with_bias ? bias.data() : nullptr, N, C, OC,
                             gelu ? p32.data() : nullptr);
        bf16->matmul_forward(o16.data(), inp.data(), w.data(), with_bias ? bias.data() : nullptr, N, C, OC,
                             gelu ? p16.data() : nullptr);
        EXPECT_LE(rel(o16, o32), 2e-2) << "forward, bias " << with_bias << " gelu " << gelu;
      }
    std::vector<float> di32(size_t(N) * C, 7.0f), di16 = di32, dw32 = dw0, dw16 = dw0, db32 = db0, db16 = db0;
    fp32->matmul_backward(di32.data(), dw32.data(), db32.data(), dout.data(), inp.data(), w.data(), N, C, OC);
    bf16->matmul_backward(di16.data(), dw16.data(), db16.data(), dout.data(), inp.data(), w.data(), N, C, OC);
    EXPECT_LE(rel(di16, di32), 2e-2) << "dinp (overwritten: the 7s must be gone)";
    EXPECT_LE(rel(dw16, dw32), 2e-2) << "dweight (accumulated)";
    EXPECT_LE(rel(db16, db32), 1e-6) << "dbias (fp32 either way)";
  }
}

// The fused head of the bf16 CPU backend (rows in chunks, the gradient kept in bf16) against its
// three separate calls on the same backend: the same losses, input and weight gradients, for batches
// of one chunk, several chunks and a last partial one, odd widths, padded vocabularies and an
// ignored row; both parts show up in the profiler.
TEST(OnednnGemm, FusedHeadEqualsTheSeparateCalls) {
  if (!onednn_built() || onednn_bf16_isa().empty()) GTEST_SKIP() << "needs bf16 GEMMs (the test above checks the refusal)";
  auto be = make_cpu_backend(true);
  EXPECT_FALSE(be->fuses_classifier_crossentropy(1)) << "one row has no room for a chunk";
  EXPECT_FALSE(make_cpu_backend(false)->fuses_classifier_crossentropy(64)) << "fp32 keeps the separate calls";
  auto max_abs = [](const std::vector<float>& v) {
    double m = 1e-30;
    for (float x : v) m = std::max(m, double(std::fabs(x)));
    return m;
  };
  auto max_diff = [](const std::vector<float>& a, const std::vector<float>& b) {
    double m = 0;
    for (size_t i = 0; i < a.size(); ++i) m = std::max(m, double(std::fabs(a[i] - b[i])));
    return m;
  };
  uint64_t seed = 300;
  struct Head {
    int N, C, V, Vp;
  };
  for (const Head h : {Head{2, 19, 50, 64}, Head{5, 64, 300, 320}, Head{257, 48, 333, 384}, Head{300, 32, 1000, 1024}}) {
    ASSERT_TRUE(be->fuses_classifier_crossentropy(h.N));
    SCOPED_TRACE(::testing::Message() << "N " << h.N << " C " << h.C << " V " << h.V << " Vp " << h.Vp);
    const auto inp = random_values(size_t(h.N) * h.C, seed++), w = random_values(size_t(h.Vp) * h.C, seed++),
               dw0 = random_values(size_t(h.Vp) * h.C, seed++);
    std::vector<int32_t> targets(size_t(h.N));
    for (int i = 0; i < h.N; ++i) targets[size_t(i)] = (i * 7919) % h.V;
    targets[1] = -1;
    const float dloss = 1.0f / h.N;

    std::vector<float> logits(size_t(h.N) * h.Vp), loss_ref(size_t(h.N)), dinp_ref(size_t(h.N) * h.C), dw_ref = dw0;
    be->matmul_forward(logits.data(), inp.data(), w.data(), nullptr, h.N, h.C, h.Vp);
    be->crossentropy(loss_ref.data(), logits.data(), logits.data(), targets.data(), h.N, h.V, h.Vp, dloss);
    be->matmul_backward(dinp_ref.data(), dw_ref.data(), nullptr, logits.data(), inp.data(), w.data(), h.N, h.C, h.Vp);

    std::vector<float> space(size_t(h.N) * h.Vp, std::nanf("")), loss(size_t(h.N), -1.0f),
        dinp(size_t(h.N) * h.C, 7.0f), dw = dw0;
    Profiler prof;
    be->classifier_crossentropy(loss.data(), space.data(), inp.data(), w.data(), targets.data(), h.N, h.C, h.V, h.Vp,
                                dloss, &prof);
    be->classifier_backward(dinp.data(), dw.data(), space.data(), inp.data(), w.data(), h.N, h.C, h.Vp);
    EXPECT_LE(max_diff(loss, loss_ref), 1e-5 * max_abs(loss_ref)) << "losses";
    EXPECT_EQ(loss[1], 0.0f) << "the ignored row";
    EXPECT_LE(max_diff(dinp, dinp_ref), 1e-3 * max_abs(dinp_ref)) << "dinp (overwritten)";
    EXPECT_LE(max_diff(dw, dw_ref), 1e-3 * max_abs(dw_ref)) << "dweight (accumulated onto dw0)";
    EXPECT_GT(prof.totals().count("classifier"), 0u);
    EXPECT_GT(prof.totals().count("crossentropy"), 0u);
  }
}

TEST(OnednnGemm, APrimitiveIsCreatedOncePerShape) {
  if (!onednn_built()) GTEST_SKIP() << "this build has no oneDNN (the test above checks it says so)";
  const Shape s{24, 40, 56};
  const GemmType type = onednn_bf16_matmuls() ? GemmType::bf16 : GemmType::f32;  // the same cache either way
  run_case(type, s, false, true, 0.0f, 0, 7);
  const int64_t after_first = onednn_primitives_created();
  for (int i = 0; i < 3; ++i) run_case(type, s, false, true, 0.0f, 0, 8 + i);
  EXPECT_EQ(onednn_primitives_created(), after_first);
  run_case(type, s, true, true, 0.0f, 0, 20);  // another layout: another primitive
  EXPECT_EQ(onednn_primitives_created(), after_first + 1);
}

TEST(OnednnGemm, BadSizesAndStridesSayWhat) {
  if (!onednn_built()) GTEST_SKIP() << "this build has no oneDNN (the first test checks it says so)";
  float x[16] = {};
  EXPECT_THROW(gemm_onednn(GemmType::f32, false, false, 0, 4, 4, x, 4, x, 4, 0.0f, x, 4), Error);
  try {
    gemm_onednn(GemmType::f32, false, false, 2, 4, 4, x, 3, x, 4, 0.0f, x, 4);  // lda 3 < K 4
    ADD_FAILURE() << "accepted lda < K";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("strides too small"), std::string::npos) << e.what();
  }
}

TEST(OnednnGemm, NamesTheBf16InstructionsOfThisCpu) {
  if (!onednn_built()) GTEST_SKIP() << "this build has no oneDNN (the first test checks it says so)";
  const std::string isa = onednn_bf16_isa();
  EXPECT_TRUE(isa.empty() || isa == "AMX" || isa == "AVX512_BF16") << isa;
  EXPECT_TRUE(isa.empty() || onednn_bf16_matmuls()) << "bf16 instructions, yet no bf16 matmul";
  std::printf("[onednn] bf16 matmuls on this CPU: %s\n",
              !isa.empty() ? isa.c_str() : onednn_bf16_matmuls() ? "emulated (AVX-512 without bf16)" : "none (no AVX-512)");
}

}  // namespace
}  // namespace meshtrain
