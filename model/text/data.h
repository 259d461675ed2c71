// Token shards and the data loader. Shards use llm.c's .bin layout: a 256 x int32 little-endian
// header (magic 20240520, version 1, token count, then zeros) followed by uint16 tokens. The loader
// memory-maps shards and serves (T+1)-token windows, in order or in a seeded shuffle, giving each
// data-parallel rank its slice of the same global batch.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "core/mapped_file.h"

namespace meshtrain {

inline constexpr int32_t kShardMagic = 20240520;
inline constexpr int32_t kShardVersion = 1;
inline constexpr int kShardHeaderInts = 256;
/// Header word 3 holds this tag when words 4 and 5 hold the fingerprint (low, high 32 bits) of the
/// tokenizer that made the shard; llm.c ignores words past 2, so its readers are unaffected.
inline constexpr int32_t kShardTokenizerTag = 0x544f4b31;  // "TOK1"

/// Writes tokens to path as a shard (via a temporary file renamed into place), recording
/// tokenizer_id (Tokenizer::fingerprint, 0 = unknown) in the header. Throws when a token does not
/// fit in uint16.
void write_token_shard(const std::string& path, std::span<const int32_t> tokens, uint64_t tokenizer_id = 0);

/// A memory-mapped shard; validates the header (magic, version, size) on open.
class TokenShard {
 public:
  explicit TokenShard(const std::string& path);
  const uint16_t* tokens() const { return tokens_; }
  int64_t size() const { return size_; }
  const std::string& path() const { return file_.path(); }
  /// The fingerprint of the tokenizer that wrote it, or 0 when the header does not say (llm.c files).
  uint64_t tokenizer_id() const { return tokenizer_id_; }

 private:
  MappedFile file_;
  const uint16_t* tokens_ = nullptr;
  int64_t size_ = 0;
  uint64_t tokenizer_id_ = 0;
};

/// Throws when a shard records a tokenizer other than tokenizer_id (shards that record none pass),
/// naming the shard, both fingerprints and tokenizer_dir.
void check_shard_tokenizer(const std::vector<std::string>& paths, uint64_t tokenizer_id,
                           const std::string& tokenizer_dir);

/// Reads every token of every shard and throws at the first id >= vocab_size, naming the shard, the
/// token's index and byte offset, so a damaged or foreign shard fails at start-up, not when its batch
/// is drawn. Returns the number of tokens checked.
int64_t check_shard_vocab(const std::vector<std::string>& paths, int vocab_size);

/// Expands a comma-separated list of paths and globs into sorted, existing files; throws when a
/// pattern matches nothing.
std::vector<std::string> expand_shard_paths(const std::string& patterns);

/// Where a loader is: the epoch and the index of the next window within that epoch's order.
struct LoaderState {
  uint64_t epoch = 0;
  uint64_t cursor = 0;
};

class DataLoader {
 public:
  /// Windows of seq_len + 1 tokens taken every seq_len tokens from each shard.
  DataLoader(const std::vector<std::string>& paths, int seq_len, bool shuffle, uint64_t seed);

  /// Fills out with this rank's rows of the next global batch: the global batch is global_rows
  /// windows; rank r of world gets rows [r * global_rows / world, (r + 1) * global_rows / world),
  /// each seq_len + 1 tokens. Every rank advances past the whole global batch. global_rows must
  /// divide by world.
  void next_batch(int global_rows, int rank, int world, int32_t* out);

  int64_t num_windows() const;
  int seq_len() const { return seq_len_; }
  LoaderState state() const { return state_; }
  void set_state(const LoaderState& s) { state_ = s; }

 private:
  int64_t window_at(uint64_t epoch, uint64_t index) const;  // global window id at that epoch position
  void copy_window(int64_t window, int32_t* out) const;

  std::vector<TokenShard> shards_;
  // Shard s holds global windows [shard_window_begin_[s], shard_window_begin_[s + 1]); a prefix sum
  // instead of a per-window table keeps memory at one entry per shard.
  std::vector<int64_t> shard_window_begin_;
  int seq_len_;
  bool shuffle_;
  uint64_t seed_;
  LoaderState state_;
  mutable uint64_t perm_epoch_ = UINT64_MAX;
  mutable std::vector<uint32_t> perm_;
};

/// Encodes the input files and writes out_dir/train_000000.bin ... and out_dir/val_000000.bin ...;
/// the last val_fraction of the text (by bytes, cut at a line boundary) becomes the validation split.
/// Files are joined with <|endoftext|> when the tokenizer has it. Returns {train tokens, val tokens}.
struct TokenizeResult {
  int64_t train_tokens = 0;
  int64_t val_tokens = 0;
};
class Tokenizer;
TokenizeResult tokenize_files(const Tokenizer& tokenizer, const std::vector<std::string>& inputs,
                              const std::string& out_dir, double val_fraction);

}  // namespace meshtrain
