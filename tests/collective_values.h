// Values for collective tests that every rank can compute for itself (nccl-tests style), and typed
// element access for every dtype: shared by the MPI and NCCL communicator tests.
#pragma once

#include <cmath>
#include <cstdint>

#include "core/bf16.h"
#include "core/rng.h"
#include "core/tensor.h"

namespace meshtrain::testing {

// Element i of rank's input for case id: exactly representable in dt and never zero. bf16 values
// are multiples of 1/8 up to 2 in magnitude, so sums over 4 ranks stay exact and can be compared
// bit for bit whatever order MPI adds them in.
inline double input_value(DType dt, uint64_t id, int rank, int64_t i) {
  CounterRng rng(id, static_cast<uint64_t>(rank), static_cast<uint64_t>(i));
  float u = rng.uniform();
  switch (dt) {
    case DType::f32:
      return u < 0.5f ? -0.25f - u : u;  // [-0.75, -0.25) u [0.5, 1): no zeros
    case DType::bf16: {
      int k = static_cast<int>(u * 32);
      return (k < 16 ? k - 16 : k - 15) / 8.0;
    }
    case DType::i32:
      return std::floor(u * 2e6) - 1e6 + (u < 0.5f ? 0 : 1);
    case DType::u16:
      return std::floor(u * 65535) + 1;
    case DType::u8:
      return std::floor(u * 255) + 1;
  }
  return 0;
}

inline double get(const Tensor& t, int64_t i) {
  switch (t.dtype()) {
    case DType::f32:
      return t.data<float>()[i];
    case DType::bf16:
      return bf16_to_float(static_cast<const uint16_t*>(t.raw())[i]);
    case DType::i32:
      return t.data<int32_t>()[i];
    case DType::u16:
      return t.data<uint16_t>()[i];
    case DType::u8:
      return t.data<uint8_t>()[i];
  }
  return 0;
}

inline void set(const Tensor& t, int64_t i, double v) {
  switch (t.dtype()) {
    case DType::f32:
      t.data<float>()[i] = static_cast<float>(v);
      break;
    case DType::bf16:
      static_cast<uint16_t*>(t.raw())[i] = float_to_bf16(static_cast<float>(v));
      break;
    case DType::i32:
      t.data<int32_t>()[i] = static_cast<int32_t>(v);
      break;
    case DType::u16:
      t.data<uint16_t>()[i] = static_cast<uint16_t>(v);
      break;
    case DType::u8:
      t.data<uint8_t>()[i] = static_cast<uint8_t>(v);
      break;
  }
}

}  // namespace meshtrain::testing
