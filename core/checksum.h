// CRC-32 of checkpoint data: the gzip/zlib polynomial (the value zlib's crc32() and Python's
// zlib.crc32 give, so any tool can check a stored checksum), computed by Intel's ISA-L with carry-less
// multiplication (about 5x zlib's speed here), split over the OpenMP threads for large buffers, and
// combined with zlib's crc32_combine where pieces are checksummed apart (sharded saves and loads).
#pragma once

#include <cstddef>
#include <cstdint>

namespace meshtrain {

/// CRC-32 of n bytes, continuing from crc (0 for a fresh start).
uint32_t crc32_update(uint32_t crc, const void* data, size_t n);
/// The CRC-32 of A followed by B, from crc(A), crc(B) and B's length in bytes.
uint32_t crc32_concat(uint32_t crc_a, uint32_t crc_b, int64_t len_b);

}  // namespace meshtrain
