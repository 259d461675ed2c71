// CRC-32 through ISA-L (core/checksum.h); pieces are combined with zlib.
#include "core/checksum.h"

#include <isa-l/crc.h>
#include <omp.h>
#include <zlib.h>

#include <algorithm>
#include <vector>

namespace meshtrain {

uint32_t crc32_update(uint32_t crc, const void* data, size_t n) {
  const auto* p = static_cast<const unsigned char*>(data);
  // Below a few MiB one thread is faster than waking the others.
  constexpr size_t kParallelFrom = size_t{8} << 20;
  const int threads = omp_in_parallel() ? 1 : omp_get_max_threads();
  if (n < kParallelFrom || threads < 2) return crc32_gzip_refl(crc, p, n);
  const size_t piece = (n + threads - 1) / threads;
  std::vector<uint32_t> crcs(threads, 0);
#pragma omp parallel for schedule(static, 1) num_threads(threads)
  for (int t = 0; t < threads; ++t) {
    const size_t begin = std::min(n, piece * t), end = std::min(n, begin + piece);
    crcs[t] = crc32_gzip_refl(0, p + begin, end - begin);
  }
  for (int t = 0; t < threads; ++t) {
    const size_t begin = std::min(n, piece * t), end = std::min(n, begin + piece);
    crc = crc32_concat(crc, crcs[t], static_cast<int64_t>(end - begin));
  }
  return crc;
}

uint32_t crc32_concat(uint32_t crc_a, uint32_t crc_b, int64_t len_b) {
  return static_cast<uint32_t>(crc32_combine(crc_a, crc_b, static_cast<z_off_t>(len_b)));
}

}  // namespace meshtrain
