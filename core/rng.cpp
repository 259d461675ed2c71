// Philox-4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11) and the
// helpers built on it.
#include "core/rng.h"

#include <cmath>

namespace meshtrain {

namespace {
constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;

inline void mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  uint64_t p = static_cast<uint64_t>(a) * b;
  hi = static_cast<uint32_t>(p >> 32);
  lo = static_cast<uint32_t>(p);
}

inline float to_unit(uint32_t x) { return static_cast<float>(x >> 8) * (1.0f / 16777216.0f); }
}  // namespace

std::array<uint32_t, 4> philox4x32(std::array<uint32_t, 4> c, std::array<uint32_t, 2> k) {
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo(kMul0, c[0], hi0, lo0);
    mulhilo(kMul1, c[2], hi1, lo1);
    c = {hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0};
    k[0] += kWeyl0;
    k[1] += kWeyl1;
  }
  return c;
}

uint64_t fnv1a64(std::string_view s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char ch : s) {
    h ^= ch;
    h *= 1099511628211ull;
  }
  return h;
}

CounterRng::CounterRng(uint64_t seed, uint64_t stream, uint64_t counter)
    : key_{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)}, stream_(stream), counter_(counter) {}

uint64_t CounterRng::next_u64() {
  auto r = philox4x32({static_cast<uint32_t>(counter_), static_cast<uint32_t>(counter_ >> 32),
                       static_cast<uint32_t>(stream_), static_cast<uint32_t>(stream_ >> 32)},
                      key_);
  ++counter_;
  return (static_cast<uint64_t>(r[0]) << 32) | r[1];
}

float CounterRng::uniform() { return to_unit(static_cast<uint32_t>(next_u64() >> 32)); }

uint64_t CounterRng::below(uint64_t n) {
  // 128-bit multiply-shift: unbiased enough for n far below 2^64 and keeps one draw per call.
  return static_cast<uint64_t>((static_cast<unsigned __int128>(next_u64()) * n) >> 64);
}

void fill_normal(float* out, int64_t n, uint64_t seed, std::string_view name, int64_t first, float std) {
  uint64_t h = fnv1a64(name);
  std::array<uint32_t, 2> key{static_cast<uint32_t>(seed) ^ static_cast<uint32_t>(h),
                              static_cast<uint32_t>(seed >> 32) ^ static_cast<uint32_t>(h >> 32)};
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    uint64_t idx = static_cast<uint64_t>(first + i);
    auto r = philox4x32({static_cast<uint32_t>(idx), static_cast<uint32_t>(idx >> 32), 0x6e6f726du, 0}, key);
    // Box-Muller on two 24-bit uniforms; u1 is shifted into (0, 1] so log() stays finite.
    float u1 = (static_cast<float>(r[0] >> 8) + 1.0f) * (1.0f / 16777216.0f);
    float u2 = to_unit(r[1]);
    out[i] = std * std::sqrt(-2.0f * std::log(u1)) * std::cos(6.283185307179586f * u2);
  }
}

}  // namespace meshtrain
