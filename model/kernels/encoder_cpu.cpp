// CPU reference for the token + position embedding (encoder.h).
//
// Forward gathers one row of wte and one row of wpe per position and adds them; positions are
// independent, so the (b, t) loop is split across threads. Backward is a scatter-add, and two positions
// that hold the same token add into the same row of dwte, so splitting positions across threads would
// race (or need atomics, whose order varies). Instead each thread owns a fixed set of channel blocks
// and walks every position in (b, t) order: each element of dwte and dwpe receives its contributions
// in that one order whatever the number of threads, so gradients are bit-identical run to run and
// across thread counts. Token ids are validated before any parallel region (exceptions must not leave
// an OpenMP region).
#include <cstdint>
#include <cstring>

#include "core/error.h"
#include "model/kernels/encoder.h"

namespace meshtrain {
namespace {

// Channels per work unit of the backward: two cache lines, so threads never share a line of dwte.
constexpr int kChannelBlock = 32;

void check_shape_and_tokens(const char* op, const int32_t* tokens, int B, int T, int C) {
  MT_CHECK(B >= 1 && T >= 1 && C >= 1, "[{}] B={}, T={}, C={}: every dimension must be at least 1", op, B, T, C);
  const int64_t BT = static_cast<int64_t>(B) * T;
  for (int64_t i = 0; i < BT; ++i) {
    MT_CHECK(tokens[i] >= 0, "[{}] token id {} at position {} is negative; token ids index rows of wte", op, tokens[i],
             i);
  }
}

}  // namespace

void encoder_forward_cpu(float* out, const int32_t* tokens, const float* wte, const float* wpe, int B, int T, int C) {
  check_shape_and_tokens("encoder_forward", tokens, B, T, C);
  const int64_t BT = static_cast<int64_t>(B) * T;
#pragma omp parallel for schedule(static)
  for (int64_t bt = 0; bt < BT; ++bt) {
    const float* tok_row = wte + static_cast<int64_t>(tokens[bt]) * C;
    float* o = out + bt * C;
    if (!wpe) {
      std::memcpy(o, tok_row, static_cast<size_t>(C) * sizeof(float));
      continue;
    }
    const float* pos_row = wpe + (bt % T) * C;
#pragma omp simd
    for (int c = 0; c < C; ++c) o[c] = tok_row[c] + pos_row[c];
  }
}

void encoder_backward_cpu(float* dwte, float* dwpe, const float* dout, const int32_t* tokens, int B, int T, int C) {
  check_shape_and_tokens("encoder_backward", tokens, B, T, C);
  const int64_t BT = static_cast<int64_t>(B) * T;
  const int num_blocks = (C + kChannelBlock - 1) / kChannelBlock;
#pragma omp parallel for schedule(static)
  for (int blk = 0; blk < num_blocks; ++blk) {
    const int c0 = blk * kChannelBlock;
    const int width = C - c0 < kChannelBlock ? C - c0 : kChannelBlock;
    for (int64_t bt = 0; bt < BT; ++bt) {
      const float* d = dout + bt * C + c0;
      float* tok_grad = dwte + static_cast<int64_t>(tokens[bt]) * C + c0;
#pragma omp simd
      for (int c = 0; c < width; ++c) tok_grad[c] += d[c];
      if (!dwpe) continue;
      float* pos_grad = dwpe + (bt % T) * C + c0;
#pragma omp simd
      for (int c = 0; c < width; ++c) pos_grad[c] += d[c];
    }
  }
}

}  // namespace meshtrain
