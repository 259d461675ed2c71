// Counter-based random numbers (Philox-4x32-10). A value depends only on (key, counter), so any
// slice of a tensor can be drawn on its own: element i of parameter "name" under seed s is the same
// number whether the tensor is whole or sharded. Generators that must resume (data shuffling,
// sampling) keep just a counter.
#pragma once

#include <array>
#include <cstdint>
#include <string_view>

namespace meshtrain {

/// Philox-4x32-10 block: four 32-bit words from a 128-bit counter and a 64-bit key.
std::array<uint32_t, 4> philox4x32(std::array<uint32_t, 4> counter, std::array<uint32_t, 2> key);

/// 64-bit FNV-1a of a string: how parameter names become part of a key.
uint64_t fnv1a64(std::string_view s);

/// A stream of random numbers identified by (seed, stream); position is a counter that can be
/// saved and restored exactly.
class CounterRng {
 public:
  CounterRng(uint64_t seed = 0, uint64_t stream = 0, uint64_t counter = 0);
  /// Uniform in [0, 1) with 24 random bits; advances the counter by one.
  float uniform();
  /// Uniform 64-bit integer; advances the counter by one.
  uint64_t next_u64();
  /// Uniform integer in [0, n); advances the counter by one.
  uint64_t below(uint64_t n);
  uint64_t counter() const { return counter_; }
  void set_counter(uint64_t c) { counter_ = c; }

 private:
  std::array<uint32_t, 2> key_;
  uint64_t stream_;
  uint64_t counter_;
};

/// Fills out[0..n) with normal(0, std) values for global elements [first, first + n) of the
/// tensor named name under seed.
void fill_normal(float* out, int64_t n, uint64_t seed, std::string_view name, int64_t first, float std);

}  // namespace meshtrain
