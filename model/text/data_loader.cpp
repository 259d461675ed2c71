// DataLoader: (T+1)-token windows over memory-mapped shards, served in order or in a per-epoch
// shuffle that depends only on (seed, epoch), so a saved (epoch, cursor) resumes exactly and every
// data-parallel rank can cut its rows out of the same global batch without talking to the others.
#include <algorithm>
#include <numeric>

#include "core/error.h"
#include "core/rng.h"
#include "model/text/data.h"

namespace meshtrain {

namespace {
// Keeps the shuffle stream apart from other users of the same seed (initialisation, sampling).
const uint64_t kShuffleKey = fnv1a64("meshtrain.data.shuffle");
}  // namespace

DataLoader::DataLoader(const std::vector<std::string>& paths, int seq_len, bool shuffle, uint64_t seed)
    : seq_len_(seq_len), shuffle_(shuffle), seed_(seed) {
  MT_CHECK(seq_len > 0, "[data] seq_len must be positive, got {}", seq_len);
  MT_CHECK(!paths.empty(), "[data] no shard files given to the data loader");
  shards_.reserve(paths.size());
  shard_window_begin_.reserve(paths.size() + 1);
  shard_window_begin_.push_back(0);
  int64_t total_tokens = 0;
  for (const auto& p : paths) {
    shards_.emplace_back(p);
    const int64_t n = shards_.back().size();
    total_tokens += n;
    // Window k covers tokens [k*T, k*T + T] (inputs and their next-token targets), so it needs
    // k*T + T < n; a window never reaches into the next shard.
    const int64_t windows = n > 0 ? (n - 1) / seq_len : 0;
    shard_window_begin_.push_back(shard_window_begin_.back() + windows);
  }
  const int64_t total = shard_window_begin_.back();
  MT_CHECK(total > 0,
           "[data] the data is too small for seq_len {}: {} shard(s) with {} tokens in all hold no window of "
           "seq_len + 1 = {} tokens (windows do not cross shards); use a smaller seq_len or more data",
           seq_len, shards_.size(), total_tokens, static_cast<int64_t>(seq_len) + 1);
  MT_CHECK(total <= static_cast<int64_t>(UINT32_MAX),
           "[data] {} windows exceed the loader's limit of 2^32 - 1; use a longer seq_len or fewer shards", total);
}

int64_t DataLoader::num_windows() const { return shard_window_begin_.back(); }

int64_t DataLoader::window_at(uint64_t epoch, uint64_t index) const {
  if (!shuffle_) return static_cast<int64_t>(index);
  if (perm_epoch_ != epoch) {
    // Fisher-Yates driven by a counter-based stream keyed by (seed, epoch): the order of any epoch can
    // be rebuilt from scratch, which is what makes set_state() exact.
    const auto n = static_cast<uint32_t>(num_windows());
    perm_.resize(n);
    std::iota(perm_.begin(), perm_.end(), 0u);
    CounterRng rng(seed_ ^ kShuffleKey, epoch);
    for (uint32_t i = n - 1; i > 0; --i) {
      const auto j = static_cast<uint32_t>(rng.below(static_cast<uint64_t>(i) + 1));
      std::swap(perm_[i], perm_[j]);
    }
    perm_epoch_ = epoch;
  }
  return perm_[index];
}

void DataLoader::copy_window(int64_t window, int32_t* out) const {
  // The shard is the last one whose first window is <= window; empty shards share a begin value
  // with their successor, and upper_bound skips past them.
  const auto it = std::upper_bound(shard_window_begin_.begin(), shard_window_begin_.end(), window);
  const auto shard = static_cast<size_t>(it - shard_window_begin_.begin() - 1);
  const uint16_t* src = shards_[shard].tokens() + (window - shard_window_begin_[shard]) * seq_len_;
  std::copy(src, src + seq_len_ + 1, out);
}

void DataLoader::next_batch(int global_rows, int rank, int world, int32_t* out) {
  MT_CHECK(global_rows > 0, "[data] next_batch: global_rows must be positive, got {}", global_rows);
  MT_CHECK(world > 0 && rank >= 0 && rank < world, "[data] next_batch: rank {} is not in a world of {}", rank, world);
  MT_CHECK(global_rows % world == 0,
           "[data] next_batch: the global batch of {} rows does not divide among {} data-parallel ranks; choose "
           "a batch size that is a multiple of the data-parallel size",
           global_rows, world);
  MT_CHECK(out != nullptr, "[data] next_batch: output buffer is null");

  const auto n = static_cast<uint64_t>(num_windows());
  const uint64_t row_begin = static_cast<uint64_t>(rank) * global_rows / world;
  const uint64_t row_end = static_cast<uint64_t>(rank + 1) * global_rows / world;
  const size_t row_len = static_cast<size_t>(seq_len_) + 1;
  for (uint64_t row = row_begin; row < row_end; ++row) {
    // The cursor may exceed n after set_state() with a foreign state; dividing handles that too.
    const uint64_t pos = state_.cursor + row;
    copy_window(window_at(state_.epoch + pos / n, pos % n), out + (row - row_begin) * row_len);
  }
  const uint64_t next = state_.cursor + static_cast<uint64_t>(global_rows);
  state_.epoch += next / n;
  state_.cursor = next % n;
}

}  // namespace meshtrain
