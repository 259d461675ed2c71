// Tests of the CUDA kernel families (model/kernels/*.cu) against their CPU twins: fresh random inputs,
// shapes that are not multiples of any block size, outputs poisoned with NaN before each launch, the +=
// semantics of every backward, and run-to-run bit-identity where a kernel promises determinism.
// Without a GPU (or in a build without CUDA) every test skips, saying so.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

#include "core/device.h"
#include "core/tensor.h"
#include "model/gpt_config.h"
#include "model/kernels/adamw.h"
#include "model/kernels/crossentropy.h"
#include "model/kernels/encoder.h"
#include "model/kernels/gelu.h"
#include "model/kernels/kv_cache.h"
#include "model/kernels/layernorm.h"
#include "model/kernels/attention.h"
#include "model/kernels/residual.h"
#include "model/kernels/rope.h"
#include "model/kernels/vocab_parallel.h"
#include "model/optimizer.h"
#include "model/params.h"
#include "tests/cuda_test_util.h"

namespace meshtrain {
namespace {

using Vec = std::vector<float>;
using testing::DeviceScalars;
using testing::kNaN;
using testing::poisoned;
using testing::random_floats;
using testing::random_ids;
using testing::rel_error;
using testing::step_scalars;
using testing::to_device;
using testing::to_host;

constexpr double kTol = 1e-4;  // fp32, relative to the largest reference magnitude

#define MT_REQUIRE_GPU() MT_REQUIRE_GPU_FOR("kernel tests")

TEST(EncoderCuda, ForwardAndDeterministicBackwardMatchCpu) {
  MT_REQUIRE_GPU();
  for (const int C : {100, 128}) {  // scalar loads, then the 16-byte path
    SCOPED_TRACE(::testing::Message() << "C=" << C);
    const int B = 3, T = 37, V = 29;  // few tokens: many positions share a dwte row
    const auto tokens = random_ids(static_cast<size_t>(B) * T, V, 1);
    const Vec wte = random_floats(static_cast<size_t>(V) * C, 2), wpe = random_floats(static_cast<size_t>(T) * C, 3);
    const Vec dout = random_floats(static_cast<size_t>(B) * T * C, 4);
    const Vec dwte0 = random_floats(wte.size(), 5), dwpe0 = random_floats(wpe.size(), 6);

    Vec out_ref(dout.size());
    encoder_forward_cpu(out_ref.data(), tokens.data(), wte.data(), wpe.data(), B, T, C);
    Tensor d_tokens = to_device(tokens), d_wte = to_device(wte), d_wpe = to_device(wpe), d_out = poisoned(dout.size());
    encoder_forward_cuda(d_out.f32(), d_tokens.data<int32_t>(), d_wte.f32(), d_wpe.f32(), B, T, C, nullptr);
    EXPECT_LE(rel_error(to_host(d_out), out_ref), kTol);

    Vec dwte_ref = dwte0, dwpe_ref = dwpe0;
    encoder_backward_cpu(dwte_ref.data(), dwpe_ref.data(), dout.data(), tokens.data(), B, T, C);
    Tensor d_dout = to_device(dout);
    Vec first_dwte;
    for (int run = 0; run < 2; ++run) {
      Tensor d_dwte = to_device(dwte0), d_dwpe = to_device(dwpe0);
      encoder_backward_cuda(d_dwte.f32(), d_dwpe.f32(), d_dout.f32(), d_tokens.data<int32_t>(), B, T, C, nullptr);
      const Vec got_dwte = to_host(d_dwte);
      EXPECT_LE(rel_error(got_dwte, dwte_ref), kTol);
      EXPECT_LE(rel_error(to_host(d_dwpe), dwpe_ref), kTol);
      if (run == 0)
        first_dwte = got_dwte;
      else
        EXPECT_EQ(0, std::memcmp(first_dwte.data(), got_dwte.data(), got_dwte.size() * sizeof(float)));
    }
  }
}

TEST(LayerNormCuda, ForwardAndBackwardMatchCpu) {
  MT_REQUIRE_GPU();
  for (auto [N, C] : {std::pair{37, 100}, std::pair{300, 33}, std::pair{1, 1}}) {
    SCOPED_TRACE(::testing::Message() << "N=" << N << " C=" << C);
    const size_t NC = static_cast<size_t>(N) * C;
    Vec inp = random_floats(NC, 10, -2.0f, 2.0f);
    for (auto& x : inp) x += 3.0f;  // an offset mean exercises the two-pass variance
    const Vec weight = random_floats(C, 11, 0.5f, 1.5f), bias = random_floats(C, 12);
    Vec out_ref(NC), mean_ref(N), rstd_ref(N);
    layernorm_forward_cpu(out_ref.data(), mean_ref.data(), rstd_ref.data(), inp.data(), weight.data(), bias.data(), N,
                          C);
    Tensor d_inp = to_device(inp), d_w = to_device(weight), d_b = to_device(bias);
    Tensor d_out = poisoned(NC), d_mean = poisoned(N), d_rstd = poisoned(N);
    layernorm_forward_cuda(d_out.f32(), d_mean.f32(), d_rstd.f32(), d_inp.f32(), d_w.f32(), d_b.f32(), N, C, nullptr);
    EXPECT_LE(rel_error(to_host(d_out), out_ref), kTol);
    EXPECT_LE(rel_error(to_host(d_mean), mean_ref), kTol);
    EXPECT_LE(rel_error(to_host(d_rstd), rstd_ref), kTol);

    const Vec dout = random_floats(NC, 13);
    const Vec dinp0 = random_floats(NC, 14), dw0 = random_floats(C, 15), db0 = random_floats(C, 16);
    Vec dinp_ref = dinp0, dw_ref = dw0, db_ref = db0;
    layernorm_backward_cpu(dinp_ref.data(), dw_ref.data(), db_ref.data(), dout.data(), inp.data(), weight.data(),
                           mean_ref.data(), rstd_ref.data(), N, C);
    Tensor d_dout = to_device(dout), d_mean_ref = to_device(mean_ref), d_rstd_ref = to_device(rstd_ref);
    Vec first_dw;
    for (int run = 0; run < 2; ++run) {
      Tensor d_dinp = to_device(dinp0), d_dw = to_device(dw0), d_db = to_device(db0);
      layernorm_backward_cuda(d_dinp.f32(), d_dw.f32(), d_db.f32(), d_dout.f32(), d_inp.f32(), d_w.f32(),
                              d_mean_ref.f32(), d_rstd_ref.f32(), N, C, nullptr);
      const Vec got_dw = to_host(d_dw);
      EXPECT_LE(rel_error(to_host(d_dinp), dinp_ref), kTol);
      EXPECT_LE(rel_error(got_dw, dw_ref), kTol);
      EXPECT_LE(rel_error(to_host(d_db), db_ref), kTol);
      if (run == 0)
        first_dw = got_dw;
      else
        EXPECT_EQ(0, std::memcmp(first_dw.data(), got_dw.data(), got_dw.size() * sizeof(float)));
    }
  }
}

// Sizes: an odd count (scalar tail), a multiple of 4 (the 16-byte path), and that multiple one float
// into every buffer (misaligned pointers: the scalar path on a size the vector path would take).
struct ElementwiseCase {
  int64_t n;
  int64_t offset;
};
constexpr ElementwiseCase kElementwiseCases[] = {{37 * 100 + 3, 0}, {4096, 0}, {4096, 1}};

/// A device copy of v placed offset elements into its buffer (the lead elements are NaN).
Tensor at_offset(const Vec& v, int64_t offset) {
  Vec padded(static_cast<size_t>(offset), kNaN);
  padded.insert(padded.end(), v.begin(), v.end());
  return to_device(padded);
}

/// The n values after the first offset of a device buffer.
Vec tail(const Tensor& t, int64_t offset) {
  Vec all = to_host(t);
  return Vec(all.begin() + offset, all.end());
}

TEST(GeluCuda, ForwardAndBackwardMatchCpu) {
  MT_REQUIRE_GPU();
  for (const auto [N, o] : kElementwiseCases) {
    SCOPED_TRACE(::testing::Message() << "N=" << N << " offset=" << o);
    const Vec inp = random_floats(N, 20, -4.0f, 4.0f), dout = random_floats(N, 21), dinp0 = random_floats(N, 22);
    Vec out_ref(N), dinp_ref = dinp0;
    gelu_forward_cpu(out_ref.data(), inp.data(), N);
    gelu_backward_cpu(dinp_ref.data(), inp.data(), dout.data(), N);
    Tensor d_inp = at_offset(inp, o), d_out = poisoned(N + o), d_dout = at_offset(dout, o),
           d_dinp = at_offset(dinp0, o);
    gelu_forward_cuda(d_out.f32() + o, d_inp.f32() + o, N, nullptr);
    gelu_backward_cuda(d_dinp.f32() + o, d_inp.f32() + o, d_dout.f32() + o, N, nullptr);
    EXPECT_LE(rel_error(tail(d_out, o), out_ref), kTol);
    EXPECT_LE(rel_error(tail(d_dinp, o), dinp_ref), kTol);
  }
}

TEST(RopeCuda, Fp32AndBf16MatchCpuBothWays) {
  MT_REQUIRE_GPU();
  const int B = 2, T = 13, C = 48, NH = 3, pos0 = 5;  // head size 16, positions 5..17
  const std::vector<float> table = rope_table(pos0 + T, C / NH, 10000.0);
  Tensor d_table = to_device(table);
  for (const bool inverse : {false, true}) {
    SCOPED_TRACE(inverse ? "inverse" : "forward");
    const Vec qkv = testing::rounded(random_floats(static_cast<size_t>(B) * T * 3 * C, 60));
    Vec ref = qkv;
    rope_cpu(ref.data(), table.data(), B, T, C, NH, pos0, inverse);
    Tensor d32 = to_device(qkv);
    rope_cuda(d32.f32(), d_table.f32(), B, T, C, NH, pos0, inverse, nullptr);
    EXPECT_LE(rel_error(to_host(d32), ref), kTol);
    Tensor d16 = testing::device_as<Bf16>(qkv);
    rope_cuda(d16.data<Bf16>(), d_table.f32(), B, T, C, NH, pos0, inverse, nullptr);
    EXPECT_LE(rel_error(to_host(d16), ref), 1e-2);
  }
}

TEST(AttentionCachedCuda, PrefillAndDecodeMatchCpu) {
  MT_REQUIRE_GPU();
  const int T = 150, C = 64, NH = 4, prefill = 137;  // more positions than threads in a block
  const Vec qkv = testing::rounded(random_floats(static_cast<size_t>(T) * 3 * C, 61));
  Vec ref(static_cast<size_t>(T) * C), kc(ref.size()), vc(ref.size());
  attention_cached_cpu(ref.data(), kc.data(), vc.data(), qkv.data(), prefill, 0, C, NH);
  for (int t = prefill; t < T; ++t)
    attention_cached_cpu(ref.data() + t * C, kc.data(), vc.data(), qkv.data() + t * 3 * C, 1, t, C, NH);
  auto run = [&](auto tag) {
    using E = decltype(tag);
    Tensor d_qkv = testing::device_as<E>(qkv), out = poisoned<E>(ref.size()), k = poisoned<E>(ref.size()),
           v = poisoned<E>(ref.size());
    attention_cached_cuda(out.data<E>(), k.data<E>(), v.data<E>(), d_qkv.data<E>(), prefill, 0, C, NH, nullptr);
    for (int t = prefill; t < T; ++t)
      attention_cached_cuda(out.data<E>() + t * C, k.data<E>(), v.data<E>(), d_qkv.data<E>() + t * 3 * C, 1, t, C,
                            NH, nullptr);
    return to_host(out);
  };
  EXPECT_LE(rel_error(run(float{}), ref), kTol);
  EXPECT_LE(rel_error(run(Bf16{}), ref), 2e-2);
}

TEST(ResidualCuda, ForwardAndAccumulateMatchCpu) {
  MT_REQUIRE_GPU();
  for (const auto [N, o] : kElementwiseCases) {
    SCOPED_TRACE(::testing::Message() << "N=" << N << " offset=" << o);
    const Vec a = random_floats(N, 30), b = random_floats(N, 31), dst0 = random_floats(N, 32);
    Vec out_ref(N), dst_ref = dst0;
    residual_forward_cpu(out_ref.data(), a.data(), b.data(), N);
    residual_accumulate_cpu(dst_ref.data(), a.data(), N);
    Tensor d_a = at_offset(a, o), d_b = at_offset(b, o), d_out = poisoned(N + o), d_dst = at_offset(dst0, o);
    residual_forward_cuda(d_out.f32() + o, d_a.f32() + o, d_b.f32() + o, N, nullptr);
    residual_accumulate_cuda(d_dst.f32() + o, d_a.f32() + o, N, nullptr);
    EXPECT_LE(rel_error(tail(d_out, o), out_ref), kTol);
    EXPECT_LE(rel_error(tail(d_dst, o), dst_ref), kTol);
  }
}

TEST(CrossEntropyCuda, LossesAndInPlaceGradientMatchCpu) {
  MT_REQUIRE_GPU();
  const int N = 37, V = 1000, Vp = 1027;
  Vec logits = random_floats(static_cast<size_t>(N) * Vp, 40, -5.0f, 5.0f);
  for (int i = 0; i < N; ++i) {
    for (int j = V; j < Vp; ++j) logits[static_cast<size_t>(i) * Vp + j] = 1e4f;  // padding must never count
  }
  auto targets = random_ids(N, V, 41);
  targets[3] = -1;  // ignored rows
  targets[20] = -7;
  const float dloss = 1.0f / N;

  Vec loss_ref(N), dlogits_ref(logits.size());
  softmax_crossentropy_cpu(loss_ref.data(), dlogits_ref.data(), logits.data(), targets.data(), N, V, Vp, dloss);
  Tensor d_logits = to_device(logits), d_targets = to_device(targets);
  Tensor d_loss = poisoned(N), d_dlogits = poisoned(logits.size());
  softmax_crossentropy_cuda(d_loss.f32(), d_dlogits.f32(), d_logits.f32(), d_targets.data<int32_t>(), N, V, Vp, dloss,
                            nullptr);
  EXPECT_LE(rel_error(to_host(d_loss), loss_ref), kTol);
  EXPECT_LE(rel_error(to_host(d_dlogits), dlogits_ref), kTol);

  // Without a gradient, and with the gradient written over the logits themselves.
  Tensor d_loss2 = poisoned(N);
  softmax_crossentropy_cuda(d_loss2.f32(), nullptr, d_logits.f32(), d_targets.data<int32_t>(), N, V, Vp, dloss,
                            nullptr);
  EXPECT_LE(rel_error(to_host(d_loss2), loss_ref), kTol);
  Tensor d_loss3 = poisoned(N);
  softmax_crossentropy_cuda(d_loss3.f32(), d_logits.f32(), d_logits.f32(), d_targets.data<int32_t>(), N, V, Vp, dloss,
                            nullptr);
  EXPECT_LE(rel_error(to_host(d_loss3), loss_ref), kTol);
  EXPECT_LE(rel_error(to_host(d_logits), dlogits_ref), kTol);
}

// The vocabulary-parallel kernels of each of two tp ranks against their CPU twins. The embedding: rows
// [0, 16) and [16, 32) of 29 tokens (long runs of equal tokens). The cross-entropy: columns [0, 512)
// and [512, 1024) of 1000 (the second rank's last 24 padded), rows wider than a thread block so that
// every thread of the row reductions holds a value of its own.
TEST(VocabParallelCuda, EachRanksKernelsMatchCpu) {
  MT_REQUIRE_GPU();
  const int B = 3, T = 37, C = 100, V = 29, Vl = 16, Vx = 1000, Vlx = 512;
  const int64_t BT = static_cast<int64_t>(B) * T;
  const int N = static_cast<int>(BT);
  const auto tokens = random_ids(static_cast<size_t>(BT), V, 60);  // few tokens: long runs per row
  auto targets = random_ids(static_cast<size_t>(BT), Vx, 61);
  targets[5] = -1;  // ignored rows
  const Vec wpe = random_floats(static_cast<size_t>(T) * C, 62), dout = random_floats(static_cast<size_t>(BT) * C, 63);
  const Vec dwpe0 = random_floats(wpe.size(), 64);
  Tensor d_tokens = to_device(tokens), d_targets = to_device(targets), d_wpe = to_device(wpe), d_dout = to_device(dout);
  for (const int rank : {0, 1}) {
    SCOPED_TRACE(::testing::Message() << "tp rank " << rank);
    const int64_t v0 = int64_t{rank} * Vl, c0 = int64_t{rank} * Vlx;
    const Vec wte_local = random_floats(static_cast<size_t>(Vl) * C, 65 + rank);
    Tensor d_wte = to_device(wte_local);

    // Forward: this rank's rows (zero for the others' tokens), then the positions added.
    Vec emb_ref(dout.size());
    vocab_embedding_rows_cpu(emb_ref.data(), tokens.data(), wte_local.data(), BT, C, v0, Vl);
    Tensor d_emb = poisoned(dout.size());
    vocab_embedding_rows_cuda(d_emb.f32(), d_tokens.data<int32_t>(), d_wte.f32(), BT, C, v0, Vl, nullptr);
    EXPECT_EQ(to_host(d_emb), emb_ref);
    add_positions_cpu(emb_ref.data(), wpe.data(), B, T, C);
    add_positions_cuda(d_emb.f32(), d_wpe.f32(), B, T, C, nullptr);
    EXPECT_LE(rel_error(to_host(d_emb), emb_ref), kTol);

    // Backward, with and without a position table: the same additions in the same order as the CPU's,
    // so bit for bit; rows of tokens this rank does not hold stay as they were.
    const Vec dwte0 = random_floats(wte_local.size(), 70 + rank);
    for (const bool with_wpe : {true, false}) {
      SCOPED_TRACE(with_wpe ? "with wpe" : "rotary: no wpe");
      Vec dwte_ref = dwte0, dwpe_ref = dwpe0;
      vocab_embedding_backward_cpu(dwte_ref.data(), with_wpe ? dwpe_ref.data() : nullptr, dout.data(), tokens.data(), B,
                                   T, C, v0, Vl);
      Tensor d_dwte = to_device(dwte0), d_dwpe = to_device(dwpe0);
      vocab_embedding_backward_cuda(d_dwte.f32(), with_wpe ? d_dwpe.f32() : nullptr, d_dout.f32(),
                                    d_tokens.data<int32_t>(), B, T, C, v0, Vl, nullptr);
      EXPECT_EQ(to_host(d_dwte), dwte_ref);
      EXPECT_EQ(to_host(d_dwpe), with_wpe ? dwpe_ref : dwpe0);
    }

    // Cross-entropy over this rank's columns: row maxima, sums of exponentials and target logits,
    // then losses and the gradient written over the logits (padded columns get zero).
    Vec logits = random_floats(static_cast<size_t>(N) * Vlx, 80 + rank, -4.0f, 4.0f);
    Vec mx_ref(N), sums_ref(2 * static_cast<size_t>(N)), loss_ref(N), dlogits_ref(logits.size());
    vocab_xent_max_cpu(mx_ref.data(), logits.data(), N, Vlx, Vx, c0);
    vocab_xent_sums_cpu(sums_ref.data(), logits.data(), targets.data(), mx_ref.data(), N, Vlx, Vx, c0);
    const float dloss = 1.0f / N;
    vocab_xent_finish_cpu(loss_ref.data(), dlogits_ref.data(), logits.data(), targets.data(), mx_ref.data(),
                          sums_ref.data(), N, Vlx, Vx, c0, dloss);
    Tensor d_logits = to_device(logits), d_mx = poisoned(N), d_sums = poisoned(sums_ref.size()), d_loss = poisoned(N);
    vocab_xent_max_cuda(d_mx.f32(), d_logits.f32(), N, Vlx, Vx, c0, nullptr);
    EXPECT_EQ(to_host(d_mx), mx_ref);
    vocab_xent_sums_cuda(d_sums.f32(), d_logits.f32(), d_targets.data<int32_t>(), d_mx.f32(), N, Vlx, Vx, c0, nullptr);
    EXPECT_LE(rel_error(to_host(d_sums), sums_ref), kTol);
    vocab_xent_finish_cuda(d_loss.f32(), d_logits.f32(), d_logits.f32(), d_targets.data<int32_t>(), d_mx.f32(),
                           d_sums.f32(), N, Vlx, Vx, c0, dloss, nullptr);
    EXPECT_LE(rel_error(to_host(d_loss), loss_ref), kTol);
    EXPECT_LE(rel_error(to_host(d_logits), dlogits_ref), kTol);
  }
}

TEST(AdamWCuda, UpdateAndSumSquaresMatchCpu) {
  MT_REQUIRE_GPU();
  const int64_t n = 100003;  // several sum_squares chunks plus a ragged tail
  const Vec grads = random_floats(n, 50);
  Vec params = random_floats(n, 51), m = random_floats(n, 52, -0.1f, 0.1f), v = random_floats(n, 53, 0.01f, 0.1f);
  Tensor d_params = to_device(params), d_grads = to_device(grads), d_m = to_device(m), d_v = to_device(v);
  for (int t = 1; t <= 3; ++t) {
    adamw_update_cpu(params.data(), grads.data(), m.data(), v.data(), n, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, t, 0.7f);
    adamw_update_cuda(d_params.f32(), d_grads.f32(), d_m.f32(), d_v.f32(), n, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, t, 0.7f,
                      nullptr);
  }
  EXPECT_LE(rel_error(to_host(d_params), params), kTol);
  EXPECT_LE(rel_error(to_host(d_m), m), kTol);
  EXPECT_LE(rel_error(to_host(d_v), v), kTol);

  const double want = sum_squares_cpu(grads.data(), n);
  const double got = sum_squares_cuda(d_grads.f32(), n, nullptr);
  EXPECT_NEAR(got, want, 1e-9 * want);
  EXPECT_EQ(got, sum_squares_cuda(d_grads.f32(), n, nullptr));  // bit-identical run to run
  EXPECT_EQ(0.0, sum_squares_cuda(d_grads.f32(), 0, nullptr));
}

TEST(LayerNormCuda, FusedResidualMatchesCpuAndTheUnfusedPair) {
  MT_REQUIRE_GPU();
  for (auto [N, C] : {std::pair{37, 100}, std::pair{300, 64}, std::pair{1, 1}}) {
    SCOPED_TRACE(::testing::Message() << "N=" << N << " C=" << C);
    const size_t NC = static_cast<size_t>(N) * C;
    Vec a = random_floats(NC, 70, -2.0f, 2.0f);
    for (auto& x : a) x += 3.0f;
    const Vec b = random_floats(NC, 71), weight = random_floats(C, 72, 0.5f, 1.5f), bias = random_floats(C, 73);
    Vec res_ref(NC), out_ref(NC), mean_ref(N), rstd_ref(N);
    residual_layernorm_forward_cpu(res_ref.data(), out_ref.data(), mean_ref.data(), rstd_ref.data(), a.data(), b.data(),
                                   weight.data(), bias.data(), N, C);
    Tensor d_a = to_device(a), d_b = to_device(b), d_w = to_device(weight), d_bias = to_device(bias);
    Tensor d_res = poisoned(NC), d_out = poisoned(NC), d_mean = poisoned(N), d_rstd = poisoned(N);
    residual_layernorm_forward_cuda(d_res.f32(), d_out.f32(), d_mean.f32(), d_rstd.f32(), d_a.f32(), d_b.f32(),
                                    d_w.f32(), d_bias.f32(), N, C, nullptr);
    const Vec res = to_host(d_res);
    EXPECT_EQ(0, std::memcmp(res.data(), res_ref.data(), NC * sizeof(float))) << "residual is not a + b";
    EXPECT_LE(rel_error(to_host(d_out), out_ref), kTol);
    EXPECT_LE(rel_error(to_host(d_mean), mean_ref), kTol);
    EXPECT_LE(rel_error(to_host(d_rstd), rstd_ref), kTol);

    // The unfused pair on the GPU gives the same bits.
    Tensor u_res = poisoned(NC), u_out = poisoned(NC), u_mean = poisoned(N), u_rstd = poisoned(N);
    residual_forward_cuda(u_res.f32(), d_a.f32(), d_b.f32(), static_cast<int64_t>(NC), nullptr);
    layernorm_forward_cuda(u_out.f32(), u_mean.f32(), u_rstd.f32(), u_res.f32(), d_w.f32(), d_bias.f32(), N, C,
                           nullptr);
    for (auto [fused, unfused] : {std::pair{&d_res, &u_res}, std::pair{&d_out, &u_out}, std::pair{&d_mean, &u_mean},
                                  std::pair{&d_rstd, &u_rstd}}) {
      const Vec x = to_host(*fused), y = to_host(*unfused);
      EXPECT_EQ(0, std::memcmp(x.data(), y.data(), x.size() * sizeof(float))) << "fused and unfused differ";
    }
  }
}

TEST(AdamWCuda, DeviceScalarUpdateMatchesCpuAndTheHostScalarKernel) {
  MT_REQUIRE_GPU();
  const int64_t n = 100003;
  const float lr = 1e-3f, beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f, wd = 0.1f, grad_scale = 0.7f;
  const Vec grads = random_floats(n, 80);
  Vec params = random_floats(n, 81), m = random_floats(n, 82, -0.1f, 0.1f), v = random_floats(n, 83, 0.01f, 0.1f);
  Tensor d_grads = to_device(grads);
  Tensor d_params = to_device(params), d_m = to_device(m), d_v = to_device(v);  // device scalars
  Tensor h_params = to_device(params), h_m = to_device(m), h_v = to_device(v);  // host scalars
  DeviceScalars scalars;
  for (int t = 1; t <= 3; ++t) {
    adamw_update_cpu(params.data(), grads.data(), m.data(), v.data(), n, lr, beta1, beta2, eps, wd, t, grad_scale);
    adamw_update_cuda(h_params.f32(), d_grads.f32(), h_m.f32(), h_v.f32(), n, lr, beta1, beta2, eps, wd, t, grad_scale,
                      nullptr);
    scalars.set(step_scalars(lr, beta1, beta2, t, grad_scale));  // what the host writes before a captured step
    adamw_update_cuda(d_params.f32(), d_grads.f32(), d_m.f32(), d_v.f32(), n, scalars.get(), beta1, beta2, eps, wd,
                      nullptr);
  }
  const Vec got = to_host(d_params);
  EXPECT_LE(rel_error(got, params), 1e-5);
  EXPECT_LE(rel_error(to_host(d_m), m), 1e-5);
  EXPECT_LE(rel_error(to_host(d_v), v), 1e-5);
  const Vec classic = to_host(h_params);
  EXPECT_EQ(0, std::memcmp(got.data(), classic.data(), got.size() * sizeof(float)))
      << "device-scalar and host-scalar kernels differ";
}

/// clip_scale_cuda, called by launch(device scalars, clip), against AdamW::clip_scale on the host for a
/// sum of squares sumsq, at each clip: the norm, the factor, and the host's fields left as they were.
template <class Launch>
void expect_clip_scale_matches_host(double sumsq, std::initializer_list<float> clips, const Launch& launch) {
  GptConfig cfg;  // the smallest model: only its parameter table is wanted, for an AdamW
  cfg.n_layer = 1;
  cfg.n_head = 1;
  cfg.n_embd = 8;
  cfg.seq_len = 4;
  cfg.vocab_size = 16;
  const ParameterTable table(cfg);
  const double norm = std::sqrt(sumsq);
  for (float clip : clips) {
    SCOPED_TRACE(::testing::Message() << "grad_clip=" << clip);
    AdamWConfig opt_cfg;
    opt_cfg.grad_clip = clip;
    const AdamW opt(table, opt_cfg);
    DeviceScalars scalars;
    scalars.set({1e-3f, 0.1f, 0.05f, kNaN, kNaN});
    launch(scalars.get(), clip);
    const AdamWScalars s = scalars.value();
    EXPECT_EQ(s.grad_norm, static_cast<float>(norm));
    EXPECT_EQ(s.grad_scale, opt.clip_scale(norm));
    EXPECT_EQ(s.lr, 1e-3f) << "clip_scale_cuda must leave the host's fields alone";
  }
}

TEST(AdamWCuda, SumSquaresAsyncAndClipScaleMatchTheHost) {
  MT_REQUIRE_GPU();
  for (int64_t n : {int64_t{100003}, int64_t{4096}, int64_t{7}, int64_t{0}}) {
    SCOPED_TRACE(::testing::Message() << "n=" << n);
    const Vec grads = random_floats(static_cast<size_t>(n), 90, -0.05f, 0.05f);
    Tensor d_grads = to_device(n > 0 ? grads : Vec(1, 0.0f));
    // Doubles in float tensors (device allocations are 256-byte aligned): [0] the total, then partials.
    Tensor scratch = poisoned(static_cast<size_t>(2 * (sum_squares_partials(n) + 1)));
    auto* sumsq = static_cast<double*>(scratch.raw());
    sum_squares_async_cuda(sumsq, sumsq + 1, d_grads.f32(), n, nullptr);
    double got = 0.0;
    std::memcpy(&got, to_host(scratch).data(), sizeof(double));
    const double want = sum_squares_cpu(grads.data(), n);
    EXPECT_NEAR(got, want, 1e-9 * want);
    EXPECT_EQ(got, sum_squares_cuda(d_grads.f32(), n, nullptr)) << "not the blocking version's summation order";

    const float norm = static_cast<float>(std::sqrt(got));
    expect_clip_scale_matches_host(got, {norm * 0.5f, norm * 2.0f + 1.0f, 0.0f}, [&](AdamWScalars* scalars, float clip) {
      clip_scale_cuda(scalars, sumsq, clip, nullptr);
    });
  }
}

// The global norm's partial sums on the device: pieces summed into one float (what crosses ranks),
// that float widened back to a double, and the clip factor from pieces, against the host.
TEST(AdamWCuda, NormPiecesBecomeTheFloatThatCrossesRanks) {
  MT_REQUIRE_GPU();
  const std::vector<double> pieces = {1.0e-3, 12.375, 1.0 / 3.0, 7.0e-9, 2.5};
  // Doubles in float tensors (device allocations are 256-byte aligned): the pieces, then a double.
  Vec host(2 * (pieces.size() + 1), 0.0f);
  std::memcpy(host.data(), pieces.data(), pieces.size() * sizeof(double));
  Tensor d_doubles = to_device(host), d_float = poisoned(1);
  auto* d_pieces = static_cast<double*>(d_doubles.raw());
  double* d_sum = d_pieces + pieces.size();
  double want = 0.0;
  for (double p : pieces) want += p;
  sum_to_float_cuda(d_float.f32(), d_pieces, static_cast<int>(pieces.size()), nullptr);
  EXPECT_EQ(to_host(d_float)[0], static_cast<float>(want));
  float_to_sum_cuda(d_sum, d_float.f32(), nullptr);
  double widened = 0.0;
  std::memcpy(&widened, to_host(d_doubles).data() + 2 * pieces.size(), sizeof(double));
  EXPECT_EQ(widened, static_cast<double>(static_cast<float>(want)));

  expect_clip_scale_matches_host(want, {1.0f, 100.0f, 0.0f}, [&](AdamWScalars* scalars, float clip) {
    clip_scale_cuda(scalars, d_pieces, static_cast<int>(pieces.size()), clip, nullptr);
  });
}

TEST(KernelsCuda, LaunchersRejectBadShapes) {
  MT_REQUIRE_GPU();
  // The casts pick the fp32 overloads (each launcher also has a bf16 one).
  EXPECT_THROW(gelu_forward_cuda(static_cast<float*>(nullptr), nullptr, -1, nullptr), Error);
  EXPECT_THROW(
      layernorm_forward_cuda(static_cast<float*>(nullptr), nullptr, nullptr, nullptr, nullptr, nullptr, 4, 0, nullptr),
      Error);
  EXPECT_THROW(
      softmax_crossentropy_cuda(nullptr, static_cast<float*>(nullptr), nullptr, nullptr, 2, 10, 5, 1.0f, nullptr),
      Error);
  EXPECT_THROW(
      adamw_update_cuda(nullptr, nullptr, nullptr, nullptr, 4, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.0f, 0, 1.0f, nullptr),
      Error);
}

TEST(KernelsCuda, StubsThrowWhenCudaIsNotBuilt) {
  if (cuda_built()) GTEST_SKIP() << "CUDA backend built: the stubs are not linked";
  try {
    gelu_forward_cuda(static_cast<float*>(nullptr), nullptr, 1, nullptr);
    FAIL() << "expected a [cuda] not built error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("[cuda] not built"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace meshtrain
