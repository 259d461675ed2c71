// Token shards on disk (llm.c's .bin layout): writing them atomically, mapping and validating them,
// and turning a user's comma-separated list of paths and globs into the shard files to read.
#include <glob.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <vector>

#include "core/error.h"
#include "model/text/data.h"

namespace meshtrain {

// Shards are read in place through the memory map as uint16/int32, which is only the on-disk
// little-endian layout on a little-endian host.
static_assert(std::endian::native == std::endian::little, "[data] token shards assume a little-endian host");

namespace {

constexpr size_t kHeaderBytes = kShardHeaderInts * sizeof(int32_t);
constexpr int64_t kMaxToken = 65535;

// Owns a FILE* so that every early exit closes it.
struct FileCloser {
  void operator()(std::FILE* f) const {
    if (f) std::fclose(f);
  }
};
using FilePtr = std::unique_ptr<std::FILE, FileCloser>;

void write_all(std::FILE* f, const void* data, size_t bytes, const std::string& path) {
  MT_CHECK(std::fwrite(data, 1, bytes, f) == bytes, "[data] cannot write shard '{}': {}", path, std::strerror(errno));
}

}  // namespace

void write_token_shard(const std::string& path, std::span<const int32_t> tokens, uint64_t tokenizer_id) {
  for (size_t i = 0; i < tokens.size(); ++i) {
    MT_CHECK(tokens[i] >= 0 && tokens[i] <= kMaxToken,
             "[data] cannot write shard '{}': token {} at index {} is outside [0, 65535]; vocabularies over "
             "65536 tokens are not supported by shard version 1 (uint16 tokens)",
             path, tokens[i], i);
  }
  MT_CHECK(tokens.size() <= static_cast<size_t>(INT32_MAX),
           "[data] cannot write shard '{}': {} tokens exceed the int32 count of the header; split them into "
           "several shards",
           path, tokens.size());

  // Written under a temporary name and renamed, so a crash never leaves a half-written shard that a
  // glob would pick up.
  const std::string tmp = path + ".tmp";
  try {
    FilePtr f(std::fopen(tmp.c_str(), "wb"));
    MT_CHECK(f != nullptr, "[data] cannot create shard '{}': {}", tmp, std::strerror(errno));
    std::vector<int32_t> header(kShardHeaderInts, 0);
    header[0] = kShardMagic;
    header[1] = kShardVersion;
    header[2] = static_cast<int32_t>(tokens.size());
    if (tokenizer_id != 0) {
      header[3] = kShardTokenizerTag;
      header[4] = static_cast<int32_t>(static_cast<uint32_t>(tokenizer_id));
      header[5] = static_cast<int32_t>(static_cast<uint32_t>(tokenizer_id >> 32));
    }
    write_all(f.get(), header.data(), kHeaderBytes, tmp);

    constexpr size_t kChunk = 1 << 20;
    std::vector<uint16_t> buf(std::min(kChunk, tokens.size()));
    for (size_t begin = 0; begin < tokens.size(); begin += kChunk) {
      size_t n = std::min(kChunk, tokens.size() - begin);
      for (size_t i = 0; i < n; ++i) buf[i] = static_cast<uint16_t>(tokens[begin + i]);
      write_all(f.get(), buf.data(), n * sizeof(uint16_t), tmp);
    }
    MT_CHECK(std::fflush(f.get()) == 0, "[data] cannot write shard '{}': {}", tmp, std::strerror(errno));
    MT_CHECK(std::fclose(f.release()) == 0, "[data] cannot close shard '{}': {}", tmp, std::strerror(errno));
    MT_CHECK(std::rename(tmp.c_str(), path.c_str()) == 0, "[data] cannot rename '{}' to '{}': {}", tmp, path,
             std::strerror(errno));
  } catch (...) {
    std::remove(tmp.c_str());
    throw;
  }
}

TokenShard::TokenShard(const std::string& path) : file_(path) {
  const size_t bytes = file_.size();
  MT_CHECK(bytes >= kHeaderBytes,
           "[data] '{}' is not a token shard: it has {} bytes, shorter than the {}-byte header; regenerate it "
           "with `meshtrain tokenize`",
           path, bytes, kHeaderBytes);
  int32_t header[6];
  std::memcpy(header, file_.data(), sizeof(header));
  if (header[3] == kShardTokenizerTag)
    tokenizer_id_ = static_cast<uint64_t>(static_cast<uint32_t>(header[4])) |
                    (static_cast<uint64_t>(static_cast<uint32_t>(header[5])) << 32);
  MT_CHECK(header[0] == kShardMagic, "[data] '{}' is not a token shard: magic {}, expected {}", path, header[0],
           kShardMagic);
  MT_CHECK(header[1] == kShardVersion,
           "[data] '{}' has unsupported shard version {}; only version {} (uint16 tokens) is supported", path,
           header[1], kShardVersion);
  const int64_t count = header[2];
  const uint64_t expected = kHeaderBytes + static_cast<uint64_t>(std::max<int64_t>(count, 0)) * sizeof(uint16_t);
  MT_CHECK(count >= 0 && bytes == expected,
           "[data] '{}' is {}: the header says {} tokens ({} bytes in all) but the file has {} bytes; "
           "regenerate it with `meshtrain tokenize`",
           path, bytes < expected ? "truncated" : "corrupt", count, expected, bytes);
  size_ = count;
  // mmap returns page-aligned memory and the header is 1024 bytes, so the tokens are 2-byte aligned.
  tokens_ = reinterpret_cast<const uint16_t*>(file_.data() + kHeaderBytes);
}

int64_t check_shard_vocab(const std::vector<std::string>& paths, int vocab_size) {
  int64_t checked = 0;
  for (const auto& p : paths) {
    TokenShard shard(p);
    const uint16_t* t = shard.tokens();
    const int64_t n = shard.size();
    // A branch-free maximum per block (vectorised), and the exact position only when a block fails.
    constexpr int64_t kBlock = 1 << 16;
    for (int64_t begin = 0; begin < n; begin += kBlock) {
      const int64_t end = std::min(n, begin + kBlock);
      uint16_t hi = 0;
      for (int64_t i = begin; i < end; ++i) hi = std::max(hi, t[i]);
      if (hi < vocab_size) continue;
      for (int64_t i = begin; i < end; ++i)
        MT_CHECK(t[i] < vocab_size,
                 "[data] '{}' is corrupt or was made with another vocabulary: token {} (index {}, byte offset {}) is "
                 "not below the vocabulary size {}; regenerate it with `meshtrain tokenize` and this run's tokenizer",
                 p, t[i], i, kHeaderBytes + static_cast<size_t>(i) * sizeof(uint16_t), vocab_size);
    }
    checked += n;
  }
  return checked;
}

void check_shard_tokenizer(const std::vector<std::string>& paths, uint64_t tokenizer_id,
                           const std::string& tokenizer_dir) {
  for (const auto& p : paths) {
    const uint64_t made_by = TokenShard(p).tokenizer_id();
    MT_CHECK(made_by == 0 || made_by == tokenizer_id,
             "[data] '{}' was made by tokenizer {:016x}, but this run uses tokenizer {:016x} ('{}'): the token ids "
             "would mean other text; re-tokenize the data with `meshtrain tokenize --tokenizer {}` or point "
             "data.tokenizer at the tokenizer that made it",
             p, made_by, tokenizer_id, tokenizer_dir, tokenizer_dir);
  }
}

std::vector<std::string> expand_shard_paths(const std::string& patterns) {
  std::vector<std::string> out;
  size_t items = 0;
  size_t pos = 0;
  while (pos <= patterns.size()) {
    size_t comma = patterns.find(',', pos);
    if (comma == std::string::npos) comma = patterns.size();
    std::string item = patterns.substr(pos, comma - pos);
    pos = comma + 1;
    // Tolerate "a.bin, b.bin" as people write it in config files.
    const auto first = item.find_first_not_of(" \t");
    if (first == std::string::npos) continue;
    item = item.substr(first, item.find_last_not_of(" \t") - first + 1);
    ++items;

    glob_t g{};
    const int rc = ::glob(item.c_str(), 0, nullptr, &g);
    std::vector<std::string> matches;
    if (rc == 0) {
      for (size_t i = 0; i < g.gl_pathc; ++i) matches.emplace_back(g.gl_pathv[i]);
    }
    ::globfree(&g);
    MT_CHECK(rc == 0 || rc == GLOB_NOMATCH, "[data] cannot expand '{}': glob failed ({})", item,
             rc == GLOB_NOSPACE ? "out of memory" : "read error");
    MT_CHECK(!matches.empty(), "[data] '{}' matched no files; check the path or the glob pattern", item);
    size_t kept = 0;
    for (auto& m : matches) {
      std::error_code ec;
      if (!std::filesystem::is_regular_file(m, ec)) continue;
      out.push_back(std::move(m));
      ++kept;
    }
    MT_CHECK(kept > 0, "[data] '{}' matched only directories or special files, no shard files", item);
  }
  MT_CHECK(items > 0, "[data] no shard paths given: expected a comma-separated list of paths or globs");
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

}  // namespace meshtrain
