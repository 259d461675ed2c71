// Tests of the bf16 CUDA kernels (model/kernels/*.cu) against their fp32 CPU twins run on the
// bf16-rounded inputs: inputs are rounded on the host with float_to_bf16, the twin runs on the rounded
// floats, and the GPU's bf16 outputs, widened back, must agree to 2e-2 (infinity-norm relative); fp32
// statistics and losses to 1e-3 or better. Shapes cover both the 16-byte (8 x bf16) path and the
// element path; outputs are poisoned with NaN; every backward accumulates into random gradients and
// reruns bit-identically; the mixed-precision AdamW keeps bf16 params equal to the rounded master.
// Without a GPU (or in a build without CUDA) every test skips, saying so.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <string>
#include <utility>
#include <vector>

#include "core/bf16.h"
#include "core/device.h"
#include "core/tensor.h"
#include "model/gpt_config.h"
#include "model/kernels/adamw.h"
#include "model/kernels/convert.h"
#include "model/kernels/crossentropy.h"
#include "model/kernels/encoder.h"
#include "model/kernels/gelu.h"
#include "model/kernels/layernorm.h"
#include "model/kernels/residual.h"
#include "model/kernels/vocab_parallel.h"
#include "model/optimizer.h"
#include "model/params.h"
#include "tests/cuda_test_util.h"

namespace meshtrain {
namespace {

using Vec = std::vector<float>;
using Bits = std::vector<Bf16>;
using testing::bits_of;
using testing::device_as;
using testing::DeviceScalars;
using testing::kNaN;
using testing::poisoned;
using testing::random_floats;
using testing::random_ids;
using testing::rel_error;
using testing::rounded;
using testing::same_floats;
using testing::step_scalars;
using testing::to_device;
using testing::to_host;

constexpr double kTolBf16 = 2e-2;   // bf16 outputs against the fp32 twin
constexpr double kTolStats = 1e-3;  // fp32 statistics and losses computed from bf16 inputs

#define MT_REQUIRE_GPU() MT_REQUIRE_GPU_FOR("bf16 kernel tests")

// n fresh random values in [lo, hi), already representable in bf16.
Vec random_bf16_values(size_t n, uint64_t seed, float lo = -1.0f, float hi = 1.0f) {
  return rounded(random_floats(n, seed, lo, hi));
}

bool same_bits(const Tensor& a, const Tensor& b) {
  const Bits x = bits_of(a), y = bits_of(b);
  return x.size() == y.size() && std::memcmp(x.data(), y.data(), x.size() * sizeof(Bf16)) == 0;
}

// Runs a bf16 embedding backward, launch(dwte, dwpe), twice from the gradients dwte0 and dwpe0: each
// run within kTolBf16 of the fp32 references, the second bit-identical to the first. Returns the
// first run's dwte.
template <class Launch>
Tensor expect_backward_matches_and_repeats(const Vec& dwte0, const Vec& dwpe0, const Vec& dwte_ref,
                                           const Vec& dwpe_ref, const Launch& launch) {
  Tensor first_dwte, first_dwpe;
  for (int run = 0; run < 2; ++run) {
    Tensor d_dwte = device_as<Bf16>(dwte0), d_dwpe = device_as<Bf16>(dwpe0);
    launch(d_dwte.data<Bf16>(), d_dwpe.data<Bf16>());
    EXPECT_LE(rel_error(to_host(d_dwte), dwte_ref), kTolBf16);
    EXPECT_LE(rel_error(to_host(d_dwpe), dwpe_ref), kTolBf16);
    if (run == 0) {
      first_dwte = d_dwte;
      first_dwpe = d_dwpe;
    } else {
      EXPECT_TRUE(same_bits(first_dwte, d_dwte)) << "dwte is not bit-identical run to run";
      EXPECT_TRUE(same_bits(first_dwpe, d_dwpe)) << "dwpe is not bit-identical run to run";
    }
  }
  return first_dwte;
}

// Device scratch of n doubles (a float tensor of 2n elements; device allocations are 256-byte aligned).
struct DeviceDoubles {
  explicit DeviceDoubles(int64_t n) : t(Tensor::empty({std::max<int64_t>(2 * n, 2)}, DType::f32, Device::cuda)) {}
  double* get() const { return static_cast<double*>(t.raw()); }
  double value() const {
    const Vec h = to_host(t);
    double d = 0.0;
    std::memcpy(&d, h.data(), sizeof(double));
    return d;
  }
  Tensor t;
};

// ------------------------------------------------------------------------------------------- convert

TEST(ConvertCuda, RoundsToNearestEvenAndRoundTripsExactly) {
  MT_REQUIRE_GPU();
  for (int64_t n : {1003, 4096}) {  // element path, 16-byte path
    SCOPED_TRACE(::testing::Message() << "n=" << n);
    Vec x = random_floats(n, 1, -3.0f, 3.0f);
    // Ties to even (down and up), the largest float (overflows to inf), inf, -0, a subnormal, NaN.
    const uint32_t special[] = {0x3F808000u, 0x3F818000u, 0xBF808000u, 0x7F7FFFFFu,
                                0x7F800000u, 0x80000000u, 0x00000401u, 0x7FC00001u};
    for (size_t i = 0; i < std::size(special); ++i) std::memcpy(&x[i * 97], &special[i], sizeof(float));
    const Tensor d_x = to_device(x);
    Tensor d_b = poisoned<Bf16>(n);
    convert_cuda(d_b.data<Bf16>(), d_x.f32(), n, nullptr);
    const Bits got = bits_of(d_b);
    for (int64_t i = 0; i < n; ++i) {
      if (std::isnan(x[i])) {
        EXPECT_TRUE(std::isnan(bf16_to_float(got[i].bits))) << "element " << i << ": NaN must stay NaN";
      } else {
        ASSERT_EQ(got[i].bits, float_to_bf16(x[i])) << "element " << i << " = " << x[i];
      }
    }

    // bf16 -> float is exact, and float -> bf16 of it gives the same bits back.
    Tensor d_f = poisoned(n), d_b2 = poisoned<Bf16>(n);
    convert_cuda(d_f.f32(), d_b.data<Bf16>(), n, nullptr);
    const Vec wide = to_host(d_f);
    for (int64_t i = 0; i < n; ++i) {
      if (std::isnan(x[i])) continue;
      ASSERT_EQ(wide[i], bf16_to_float(got[i].bits)) << "element " << i;
    }
    convert_cuda(d_b2.data<Bf16>(), d_f.f32(), n, nullptr);
    const Bits back = bits_of(d_b2);
    for (int64_t i = 0; i < n; ++i) {
      if (std::isnan(x[i])) continue;
      ASSERT_EQ(back[i].bits, got[i].bits) << "element " << i;
    }
  }
}

// ----------------------------------------------------------------------------------------- residual

TEST(ResidualBf16Cuda, ForwardAndAccumulateRoundTheFp32SumOnce) {
  MT_REQUIRE_GPU();
  for (int64_t N : {int64_t{37 * 100 + 5}, int64_t{4096}}) {
    SCOPED_TRACE(::testing::Message() << "N=" << N);
    const Vec a = random_bf16_values(N, 30), b = random_bf16_values(N, 31), dst0 = random_bf16_values(N, 32);
    Vec out_ref(N), dst_ref = dst0;
    residual_forward_cpu(out_ref.data(), a.data(), b.data(), N);
    residual_accumulate_cpu(dst_ref.data(), a.data(), N);
    Tensor d_a = device_as<Bf16>(a), d_b = device_as<Bf16>(b), d_out = poisoned<Bf16>(N), d_dst = device_as<Bf16>(dst0);
    residual_forward_cuda(d_out.data<Bf16>(), d_a.data<Bf16>(), d_b.data<Bf16>(), N, nullptr);
    residual_accumulate_cuda(d_dst.data<Bf16>(), d_a.data<Bf16>(), N, nullptr);
    EXPECT_LE(rel_error(to_host(d_out), out_ref), kTolBf16);
    EXPECT_LE(rel_error(to_host(d_dst), dst_ref), kTolBf16);
    // An fp32 sum of two bf16 values is the same on both sides, so the rounded results match exactly.
    const Bits out = bits_of(d_out), dst = bits_of(d_dst);
    for (int64_t i = 0; i < N; ++i) {
      ASSERT_EQ(out[i].bits, float_to_bf16(out_ref[i])) << "out element " << i;
      ASSERT_EQ(dst[i].bits, float_to_bf16(dst_ref[i])) << "dst element " << i;
    }
  }
}

// --------------------------------------------------------------------------------------------- gelu

TEST(GeluBf16Cuda, ForwardAndBackwardMatchCpu) {
  MT_REQUIRE_GPU();
  for (int64_t N : {int64_t{37 * 100 + 3}, int64_t{4096}}) {
    SCOPED_TRACE(::testing::Message() << "N=" << N);
    const Vec inp = random_bf16_values(N, 20, -4.0f, 4.0f), dout = random_bf16_values(N, 21);
    const Vec dinp0 = random_bf16_values(N, 22);
    Vec out_ref(N), dinp_ref = dinp0;
    gelu_forward_cpu(out_ref.data(), inp.data(), N);
    gelu_backward_cpu(dinp_ref.data(), inp.data(), dout.data(), N);
    Tensor d_inp = device_as<Bf16>(inp), d_out = poisoned<Bf16>(N), d_dout = device_as<Bf16>(dout);
    gelu_forward_cuda(d_out.data<Bf16>(), d_inp.data<Bf16>(), N, nullptr);
    EXPECT_LE(rel_error(to_host(d_out), out_ref), kTolBf16);
    Tensor first;
    for (int run = 0; run < 2; ++run) {
      Tensor d_dinp = device_as<Bf16>(dinp0);
      gelu_backward_cuda(d_dinp.data<Bf16>(), d_inp.data<Bf16>(), d_dout.data<Bf16>(), N, nullptr);
      EXPECT_LE(rel_error(to_host(d_dinp), dinp_ref), kTolBf16);
      if (run == 0)
        first = d_dinp;
      else
        EXPECT_TRUE(same_bits(first, d_dinp)) << "gelu backward is not bit-identical run to run";
    }
  }
}

// ------------------------------------------------------------------------------------------ encoder

TEST(EncoderBf16Cuda, ForwardAndDeterministicBackwardMatchCpu) {
  MT_REQUIRE_GPU();
  for (int C : {100, 64}) {  // element path, 16-byte path
    SCOPED_TRACE(::testing::Message() << "C=" << C);
    const int B = 3, T = 37, V = 29;  // few tokens: many positions share a dwte row
    const auto tokens = random_ids(static_cast<size_t>(B) * T, V, 1);
    const Vec wte = random_bf16_values(static_cast<size_t>(V) * C, 2);
    const Vec wpe = random_bf16_values(static_cast<size_t>(T) * C, 3);
    const Vec dout = random_bf16_values(static_cast<size_t>(B) * T * C, 4);
    const Vec dwte0 = random_bf16_values(wte.size(), 5), dwpe0 = random_bf16_values(wpe.size(), 6);

    Vec out_ref(dout.size());
    encoder_forward_cpu(out_ref.data(), tokens.data(), wte.data(), wpe.data(), B, T, C);
    Tensor d_tokens = to_device(tokens), d_wte = device_as<Bf16>(wte), d_wpe = device_as<Bf16>(wpe);
    Tensor d_out = poisoned<Bf16>(dout.size());
    encoder_forward_cuda(d_out.data<Bf16>(), d_tokens.data<int32_t>(), d_wte.data<Bf16>(), d_wpe.data<Bf16>(), B, T, C,
                         nullptr);
    EXPECT_LE(rel_error(to_host(d_out), out_ref), kTolBf16);

    Vec dwte_ref = dwte0, dwpe_ref = dwpe0;
    encoder_backward_cpu(dwte_ref.data(), dwpe_ref.data(), dout.data(), tokens.data(), B, T, C);
    Tensor d_dout = device_as<Bf16>(dout);
    expect_backward_matches_and_repeats(dwte0, dwpe0, dwte_ref, dwpe_ref, [&](Bf16* dwte, Bf16* dwpe) {
      encoder_backward_cuda(dwte, dwpe, d_dout.data<Bf16>(), d_tokens.data<int32_t>(), B, T, C, nullptr);
    });
  }
}

// The vocabulary-parallel embedding of two tp ranks (rows [0, 16) and [16, 32) of 29 tokens) in bf16:
// rows forward, and the backward (fp32 sums, rounded once) bit-identical run to run.
TEST(VocabParallelBf16Cuda, EmbeddingRowsAndBackwardMatchCpu) {
  MT_REQUIRE_GPU();
  const int B = 3, T = 37, C = 64, V = 29, Vl = 16;
  const int64_t BT = static_cast<int64_t>(B) * T;
  const auto tokens = random_ids(static_cast<size_t>(BT), V, 90);
  const Vec dout = random_bf16_values(static_cast<size_t>(BT) * C, 91), dwpe0 = random_bf16_values(size_t{T} * C, 92);
  Tensor d_tokens = to_device(tokens), d_dout = device_as<Bf16>(dout);
  for (const int64_t v0 : {int64_t{0}, int64_t{Vl}}) {
    SCOPED_TRACE(::testing::Message() << "rows from " << v0);
    const Vec wte_local = random_bf16_values(static_cast<size_t>(Vl) * C, 93 + v0);
    Vec emb_ref(dout.size());
    vocab_embedding_rows_cpu(emb_ref.data(), tokens.data(), wte_local.data(), BT, C, v0, Vl);
    Tensor d_wte = device_as<Bf16>(wte_local), d_emb = poisoned<Bf16>(dout.size());
    vocab_embedding_rows_cuda(d_emb.data<Bf16>(), d_tokens.data<int32_t>(), d_wte.data<Bf16>(), BT, C, v0, Vl, nullptr);
    EXPECT_EQ(to_host(d_emb), emb_ref);  // a copy of bf16 values, or zero

    const Vec dwte0 = random_bf16_values(wte_local.size(), 95 + v0);
    Vec dwte_ref = dwte0, dwpe_ref = dwpe0;
    vocab_embedding_backward_cpu(dwte_ref.data(), dwpe_ref.data(), dout.data(), tokens.data(), B, T, C, v0, Vl);
    const Tensor first_dwte =
        expect_backward_matches_and_repeats(dwte0, dwpe0, dwte_ref, dwpe_ref, [&](Bf16* dwte, Bf16* dwpe) {
          vocab_embedding_backward_cuda(dwte, dwpe, d_dout.data<Bf16>(), d_tokens.data<int32_t>(), B, T, C, v0, Vl,
                                        nullptr);
        });
    // Without a position table (rotary embeddings) the same dwte rows.
    Tensor d_dwte = device_as<Bf16>(dwte0);
    vocab_embedding_backward_cuda(d_dwte.data<Bf16>(), static_cast<Bf16*>(nullptr), d_dout.data<Bf16>(),
                                  d_tokens.data<int32_t>(), B, T, C, v0, Vl, nullptr);
    EXPECT_TRUE(same_bits(first_dwte, d_dwte)) << "dwte depends on whether there is a position table";
  }
}

// ---------------------------------------------------------------------------------------- layernorm

// Shapes with C % 8 != 0 (element path) and C % 8 == 0 (16-byte path, one with a ragged last step).
const std::pair<int, int> kLayerNormShapes[] = {{37, 100}, {300, 64}, {1, 1}, {19, 776}};

TEST(LayerNormBf16Cuda, ForwardAndBackwardMatchCpu) {
  MT_REQUIRE_GPU();
  for (auto [N, C] : kLayerNormShapes) {
    SCOPED_TRACE(::testing::Message() << "N=" << N << " C=" << C);
    const size_t NC = static_cast<size_t>(N) * C;
    Vec inp = random_floats(NC, 10, -2.0f, 2.0f);
    for (auto& x : inp) x += 3.0f;  // an offset mean exercises the two-pass variance
    inp = rounded(inp);
    const Vec weight = random_bf16_values(C, 11, 0.5f, 1.5f), bias = random_bf16_values(C, 12);
    Vec out_ref(NC), mean_ref(N), rstd_ref(N);
    layernorm_forward_cpu(out_ref.data(), mean_ref.data(), rstd_ref.data(), inp.data(), weight.data(), bias.data(), N,
                          C);
    Tensor d_inp = device_as<Bf16>(inp), d_w = device_as<Bf16>(weight), d_b = device_as<Bf16>(bias);
    Tensor d_out = poisoned<Bf16>(NC), d_mean = poisoned(N), d_rstd = poisoned(N);
    layernorm_forward_cuda(d_out.data<Bf16>(), d_mean.f32(), d_rstd.f32(), d_inp.data<Bf16>(), d_w.data<Bf16>(),
                           d_b.data<Bf16>(), N, C, nullptr);
    EXPECT_LE(rel_error(to_host(d_out), out_ref), kTolBf16);
    EXPECT_LE(rel_error(to_host(d_mean), mean_ref), kTolStats);
    EXPECT_LE(rel_error(to_host(d_rstd), rstd_ref), kTolStats);

    const Vec dout = random_bf16_values(NC, 13);
    const Vec dinp0 = random_bf16_values(NC, 14), dw0 = random_bf16_values(C, 15), db0 = random_bf16_values(C, 16);
    Vec dinp_ref = dinp0, dw_ref = dw0, db_ref = db0;
    layernorm_backward_cpu(dinp_ref.data(), dw_ref.data(), db_ref.data(), dout.data(), inp.data(), weight.data(),
                           mean_ref.data(), rstd_ref.data(), N, C);
    Tensor d_dout = device_as<Bf16>(dout), d_mean_ref = to_device(mean_ref), d_rstd_ref = to_device(rstd_ref);
    Tensor first_dinp, first_dw, first_db;
    for (int run = 0; run < 2; ++run) {
      Tensor d_dinp = device_as<Bf16>(dinp0), d_dw = device_as<Bf16>(dw0), d_db = device_as<Bf16>(db0);
      layernorm_backward_cuda(d_dinp.data<Bf16>(), d_dw.data<Bf16>(), d_db.data<Bf16>(), d_dout.data<Bf16>(),
                              d_inp.data<Bf16>(), d_w.data<Bf16>(), d_mean_ref.f32(), d_rstd_ref.f32(), N, C, nullptr);
      EXPECT_LE(rel_error(to_host(d_dinp), dinp_ref), kTolBf16);
      EXPECT_LE(rel_error(to_host(d_dw), dw_ref), kTolBf16);
      EXPECT_LE(rel_error(to_host(d_db), db_ref), kTolBf16);
      if (run == 0) {
        first_dinp = d_dinp;
        first_dw = d_dw;
        first_db = d_db;
      } else {
        EXPECT_TRUE(same_bits(first_dinp, d_dinp)) << "dinp is not bit-identical run to run";
        EXPECT_TRUE(same_bits(first_dw, d_dw)) << "dweight is not bit-identical run to run";
        EXPECT_TRUE(same_bits(first_db, d_db)) << "dbias is not bit-identical run to run";
      }
    }
  }
}

TEST(LayerNormBf16Cuda, FusedResidualEqualsTheUnfusedPairAndNormalisesTheRoundedSum) {
  MT_REQUIRE_GPU();
  for (auto [N, C] : kLayerNormShapes) {
    SCOPED_TRACE(::testing::Message() << "N=" << N << " C=" << C);
    const size_t NC = static_cast<size_t>(N) * C;
    Vec a = random_floats(NC, 40, -2.0f, 2.0f);
    for (auto& x : a) x += 3.0f;
    a = rounded(a);
    const Vec b = random_bf16_values(NC, 41);
    const Vec weight = random_bf16_values(C, 42, 0.5f, 1.5f), bias = random_bf16_values(C, 43);

    // The specification: the residual rounded to bf16, then the LayerNorm of that rounded residual.
    Vec sum(NC), out_ref(NC), mean_ref(N), rstd_ref(N);
    residual_forward_cpu(sum.data(), a.data(), b.data(), static_cast<int64_t>(NC));
    const Vec residual_ref = rounded(sum);
    layernorm_forward_cpu(out_ref.data(), mean_ref.data(), rstd_ref.data(), residual_ref.data(), weight.data(),
                          bias.data(), N, C);

    Tensor d_a = device_as<Bf16>(a), d_b = device_as<Bf16>(b), d_w = device_as<Bf16>(weight),
           d_bias = device_as<Bf16>(bias);
    Tensor d_res = poisoned<Bf16>(NC), d_out = poisoned<Bf16>(NC), d_mean = poisoned(N), d_rstd = poisoned(N);
    residual_layernorm_forward_cuda(d_res.data<Bf16>(), d_out.data<Bf16>(), d_mean.f32(), d_rstd.f32(),
                                    d_a.data<Bf16>(), d_b.data<Bf16>(), d_w.data<Bf16>(), d_bias.data<Bf16>(), N, C,
                                    nullptr);
    EXPECT_TRUE(same_floats(to_host(d_res), residual_ref)) << "residual is not the bf16-rounded fp32 sum";
    EXPECT_LE(rel_error(to_host(d_out), out_ref), kTolBf16);
    EXPECT_LE(rel_error(to_host(d_mean), mean_ref), kTolStats);
    EXPECT_LE(rel_error(to_host(d_rstd), rstd_ref), kTolStats);

    // The unfused pair on the GPU gives the same bits.
    Tensor u_res = poisoned<Bf16>(NC), u_out = poisoned<Bf16>(NC), u_mean = poisoned(N), u_rstd = poisoned(N);
    residual_forward_cuda(u_res.data<Bf16>(), d_a.data<Bf16>(), d_b.data<Bf16>(), static_cast<int64_t>(NC), nullptr);
    layernorm_forward_cuda(u_out.data<Bf16>(), u_mean.f32(), u_rstd.f32(), u_res.data<Bf16>(), d_w.data<Bf16>(),
                           d_bias.data<Bf16>(), N, C, nullptr);
    EXPECT_TRUE(same_bits(d_res, u_res));
    EXPECT_TRUE(same_bits(d_out, u_out));
    EXPECT_TRUE(same_floats(to_host(d_mean), to_host(u_mean)));
    EXPECT_TRUE(same_floats(to_host(d_rstd), to_host(u_rstd)));

    // In place: the residual stream overwritten with itself plus the branch.
    Tensor in_place = device_as<Bf16>(a), p_out = poisoned<Bf16>(NC), p_mean = poisoned(N), p_rstd = poisoned(N);
    residual_layernorm_forward_cuda(in_place.data<Bf16>(), p_out.data<Bf16>(), p_mean.f32(), p_rstd.f32(),
                                    in_place.data<Bf16>(), d_b.data<Bf16>(), d_w.data<Bf16>(), d_bias.data<Bf16>(), N,
                                    C, nullptr);
    EXPECT_TRUE(same_bits(in_place, d_res));
    EXPECT_TRUE(same_bits(p_out, d_out));
  }
}

// ------------------------------------------------------------------------------------- crossentropy

TEST(CrossEntropyBf16Cuda, LossesAndInPlaceGradientMatchCpu) {
  MT_REQUIRE_GPU();
  const int N = 37, V = 1000, Vp = 1027;
  Vec logits = random_floats(static_cast<size_t>(N) * Vp, 40, -5.0f, 5.0f);
  for (int i = 0; i < N; ++i) {
    for (int j = V; j < Vp; ++j) logits[static_cast<size_t>(i) * Vp + j] = 1e4f;  // padding must never count
  }
  logits = rounded(logits);
  auto targets = random_ids(N, V, 41);
  targets[3] = -1;  // ignored rows
  targets[20] = -7;
  const float dloss = 1.0f / N;

  Vec loss_ref(N), dlogits_ref(logits.size());
  softmax_crossentropy_cpu(loss_ref.data(), dlogits_ref.data(), logits.data(), targets.data(), N, V, Vp, dloss);
  Tensor d_logits = device_as<Bf16>(logits), d_targets = to_device(targets);
  Tensor d_loss = poisoned(N), d_dlogits = poisoned<Bf16>(logits.size());
  softmax_crossentropy_cuda(d_loss.f32(), d_dlogits.data<Bf16>(), d_logits.data<Bf16>(), d_targets.data<int32_t>(), N,
                            V, Vp, dloss, nullptr);
  EXPECT_LE(rel_error(to_host(d_loss), loss_ref), kTolStats);
  EXPECT_LE(rel_error(to_host(d_dlogits), dlogits_ref), kTolBf16);

  // Without a gradient, and with the gradient written over the logits themselves.
  Tensor d_loss2 = poisoned(N);
  softmax_crossentropy_cuda(d_loss2.f32(), static_cast<Bf16*>(nullptr), d_logits.data<Bf16>(),
                            d_targets.data<int32_t>(), N, V, Vp, dloss, nullptr);
  EXPECT_LE(rel_error(to_host(d_loss2), loss_ref), kTolStats);
  Tensor d_loss3 = poisoned(N);
  softmax_crossentropy_cuda(d_loss3.f32(), d_logits.data<Bf16>(), d_logits.data<Bf16>(), d_targets.data<int32_t>(), N,
                            V, Vp, dloss, nullptr);
  EXPECT_LE(rel_error(to_host(d_loss3), loss_ref), kTolStats);
  EXPECT_TRUE(same_bits(d_logits, d_dlogits)) << "the in-place gradient differs from the separate one";
}

// -------------------------------------------------------------------------------------------- adamw

TEST(AdamWBf16Cuda, MixedPrecisionUpdatesMasterAndRoundsParams) {
  MT_REQUIRE_GPU();
  const int64_t n = 100003;  // not a multiple of any block size
  const float lr = 1e-3f, beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f, wd = 0.1f, grad_scale = 0.7f;
  Vec master = random_floats(n, 50), m = random_floats(n, 52, -0.1f, 0.1f), v = random_floats(n, 53, 0.01f, 0.1f);
  const Vec grads = random_bf16_values(n, 51);
  Tensor d_master = to_device(master), d_m = to_device(m), d_v = to_device(v), d_grads = device_as<Bf16>(grads);
  Tensor d_params = poisoned<Bf16>(n);
  DeviceScalars scalars;
  for (int t = 1; t <= 3; ++t) {
    adamw_update_cpu(master.data(), grads.data(), m.data(), v.data(), n, lr, beta1, beta2, eps, wd, t, grad_scale);
    scalars.set(step_scalars(lr, beta1, beta2, t, grad_scale));
    adamw_update_cuda(d_params.data<Bf16>(), d_master.f32(), d_grads.data<Bf16>(), d_m.f32(), d_v.f32(), n,
                      scalars.get(), beta1, beta2, eps, wd, nullptr);
  }
  const Vec got_master = to_host(d_master);
  EXPECT_LE(rel_error(got_master, master), 1e-5);
  EXPECT_LE(rel_error(to_host(d_m), m), 1e-5);
  EXPECT_LE(rel_error(to_host(d_v), v), 1e-5);
  const Bits params = bits_of(d_params);
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(params[i].bits, float_to_bf16(got_master[i])) << "element " << i;
}

TEST(AdamWBf16Cuda, SumSquaresAsyncAndClipScaleMatchTheHost) {
  MT_REQUIRE_GPU();
  GptConfig cfg;
  cfg.n_layer = 1;
  cfg.n_head = 1;
  cfg.n_embd = 8;
  cfg.seq_len = 4;
  cfg.vocab_size = 16;
  const ParameterTable table(cfg);
  for (int64_t n : {int64_t{100003}, int64_t{4096}, int64_t{7}, int64_t{0}}) {
    SCOPED_TRACE(::testing::Message() << "n=" << n);
    const Vec grads = random_bf16_values(static_cast<size_t>(n), 60, -0.05f, 0.05f);
    Tensor d_grads = device_as<Bf16>(n > 0 ? grads : Vec(1, 0.0f));
    DeviceDoubles partials(sum_squares_partials(n)), sumsq(1);
    sum_squares_async_cuda(sumsq.get(), partials.get(), d_grads.data<Bf16>(), n, nullptr);
    const double want = sum_squares_cpu(grads.data(), n);
    const double got = sumsq.value();
    EXPECT_NEAR(got, want, 1e-9 * want);
    sum_squares_async_cuda(sumsq.get(), partials.get(), d_grads.data<Bf16>(), n, nullptr);
    EXPECT_EQ(got, sumsq.value()) << "not bit-identical run to run";

    const double norm = std::sqrt(got);
    // Clipping on (norm above and below the threshold) and off.
    for (float clip : {static_cast<float>(norm) * 0.5f, static_cast<float>(norm) * 2.0f + 1.0f, 0.0f}) {
      SCOPED_TRACE(::testing::Message() << "grad_clip=" << clip);
      AdamWConfig opt_cfg;
      opt_cfg.grad_clip = clip;
      const AdamW opt(table, opt_cfg);
      DeviceScalars scalars;
      scalars.set(step_scalars(1e-3f, 0.9f, 0.95f, 1, kNaN));
      clip_scale_cuda(scalars.get(), sumsq.get(), clip, nullptr);
      const AdamWScalars s = scalars.value();
      EXPECT_EQ(s.grad_norm, static_cast<float>(norm));
      EXPECT_EQ(s.grad_scale, opt.clip_scale(norm));
      EXPECT_EQ(s.lr, 1e-3f) << "clip_scale_cuda must leave the host's fields alone";
    }
  }
}

// ------------------------------------------------------------------------------------------- errors

TEST(KernelsBf16Cuda, LaunchersRejectBadShapes) {
  MT_REQUIRE_GPU();
  EXPECT_THROW(gelu_forward_cuda(static_cast<Bf16*>(nullptr), nullptr, -1, nullptr), Error);
  EXPECT_THROW(convert_cuda(static_cast<Bf16*>(nullptr), nullptr, -1, nullptr), Error);
  EXPECT_THROW(
      layernorm_forward_cuda(static_cast<Bf16*>(nullptr), nullptr, nullptr, nullptr, nullptr, nullptr, 4, 0, nullptr),
      Error);
  EXPECT_THROW(
      softmax_crossentropy_cuda(nullptr, static_cast<Bf16*>(nullptr), nullptr, nullptr, 2, 10, 5, 1.0f, nullptr),
      Error);
  EXPECT_THROW(sum_squares_async_cuda(nullptr, nullptr, static_cast<const Bf16*>(nullptr), -1, nullptr), Error);
  EXPECT_THROW(adamw_update_cuda(static_cast<Bf16*>(nullptr), nullptr, nullptr, nullptr, nullptr, 4, nullptr, 1.0f,
                                 0.95f, 1e-8f, 0.0f, nullptr),
               Error);
}

TEST(KernelsBf16Cuda, StubsThrowWhenCudaIsNotBuilt) {
  if (cuda_built()) GTEST_SKIP() << "CUDA backend built: the stubs are not linked";
  try {
    gelu_forward_cuda(static_cast<Bf16*>(nullptr), nullptr, 1, nullptr);
    FAIL() << "expected a [cuda] not built error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("[cuda] not built"), std::string::npos) << e.what();
  }
  EXPECT_THROW(convert_cuda(static_cast<float*>(nullptr), nullptr, 1, nullptr), Error);
  EXPECT_THROW(clip_scale_cuda(nullptr, nullptr, 1.0f, nullptr), Error);
}

}  // namespace
}  // namespace meshtrain
