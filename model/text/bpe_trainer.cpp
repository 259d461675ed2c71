// Byte-level BPE training in GPT-2's file format. Words (pre-tokens, counted once each) hold symbol
// ids; pair counts are updated incrementally from the words a merge touches (found through a
// pair -> words index), and the most frequent pair comes off a lazy max-heap, so a merge costs the
// size of the words it touches rather than a recount of the corpus.
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <queue>
#include <string>
#include <unordered_map>
#include <unordered_set>

#include "core/error.h"
#include "core/mapped_file.h"
#include "model/text/tokenizer.h"
#include "model/text/unicode_class.h"

namespace meshtrain {
namespace {

constexpr std::string_view kEndOfText = "<|endoftext|>";
constexpr int kProgressEvery = 100;

uint64_t pair_key(int32_t a, int32_t b) { return (static_cast<uint64_t>(a) << 32) | static_cast<uint32_t>(b); }
int32_t pair_left(uint64_t key) { return static_cast<int32_t>(key >> 32); }
int32_t pair_right(uint64_t key) { return static_cast<int32_t>(key & 0xFFFFFFFFu); }

// GPT-2's byte ids: the printable bytes in byte order, then the others, so a trained vocabulary
// shares ids 0..255 with GPT-2's.
std::vector<uint8_t> gpt2_byte_order() {
  std::vector<uint8_t> order;
  for (int pass = 0; pass < 2; ++pass) {
    for (int b = 0; b < 256; ++b) {
      bool printable = unicode::byte_to_code_point(static_cast<uint8_t>(b)) == static_cast<uint32_t>(b);
      if (printable == (pass == 0)) order.push_back(static_cast<uint8_t>(b));
    }
  }
  return order;
}

struct Corpus {
  std::vector<int32_t> syms;  // every word's symbols, back to back
  std::vector<size_t> start;  // word -> offset into syms
  std::vector<uint32_t> len;  // word -> current symbol count (shrinks as merges apply)
  std::vector<int64_t> freq;  // word -> occurrences in the input
};

Corpus count_words(const std::vector<std::string>& inputs, const int32_t (&byte_id)[256]) {
  std::vector<MappedFile> files;
  std::unordered_map<std::string_view, int64_t> counts;
  for (const std::string& path : inputs) {
    MT_CHECK(std::filesystem::is_regular_file(path), "[train_bpe] input '{}' is not a readable file", path);
    files.emplace_back(path);
    std::string_view text(reinterpret_cast<const char*>(files.back().data()), files.back().size());
    // Documents separated by <|endoftext|> are counted without it, like the encoder splits around it.
    for (size_t seg = 0; seg <= text.size();) {
      size_t at = std::min(text.find(kEndOfText, seg), text.size());
      const auto* s = reinterpret_cast<const unsigned char*>(text.data()) + seg;
      size_t n = at - seg;
      for (size_t i = 0; i < n;) {
        size_t j = unicode::pretoken_end(s, n, i);
        if (j - i > 1) ++counts[std::string_view(reinterpret_cast<const char*>(s + i), j - i)];
        i = j;
      }
      seg = at + kEndOfText.size();
    }
  }
  // Sorted so that word order, and with it every tie, is independent of hash-table layout.
  std::vector<std::pair<std::string_view, int64_t>> words(counts.begin(), counts.end());
  std::sort(words.begin(), words.end());
  Corpus c;
  for (auto& [w, f] : words) {
    c.start.push_back(c.syms.size());
    c.len.push_back(static_cast<uint32_t>(w.size()));
    c.freq.push_back(f);
    for (unsigned char b : w) c.syms.push_back(byte_id[b]);
  }
  return c;
}

void write_atomically(const std::filesystem::path& path, const std::string& content) {
  std::filesystem::path tmp = path;
  tmp += ".tmp." + std::to_string(::getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    MT_CHECK(out, "[train_bpe] cannot create '{}'", tmp.string());
    out.write(content.data(), static_cast<std::streamsize>(content.size()));
    out.flush();
    MT_CHECK(out, "[train_bpe] error while writing '{}' (disk full?)", tmp.string());
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  MT_CHECK(!ec, "[train_bpe] cannot rename '{}' to '{}': {}", tmp.string(), path.string(), ec.message());
}

}  // namespace

void train_bpe(const std::vector<std::string>& inputs, int vocab_size, const std::string& out_dir,
               const std::function<void(int, int)>& progress) {
  MT_CHECK(vocab_size > 257,
           "[train_bpe] vocab_size {} is too small: it counts the 256 byte tokens and <|endoftext|>, so it must "
           "be at least 258",
           vocab_size);
  MT_CHECK(!inputs.empty(), "[train_bpe] no input files given");
  const int wanted = vocab_size - 257;

  std::vector<std::string> tok_bytes;  // id -> raw bytes
  std::unordered_map<std::string, int32_t> id_of_bytes;
  int32_t byte_id[256];
  for (uint8_t b : gpt2_byte_order()) {
    byte_id[b] = static_cast<int32_t>(tok_bytes.size());
    id_of_bytes.emplace(std::string(1, static_cast<char>(b)), byte_id[b]);
    tok_bytes.emplace_back(1, static_cast<char>(b));
  }
  Corpus corpus = count_words(inputs, byte_id);
  const auto num_words = static_cast<int32_t>(corpus.freq.size());

  std::unordered_map<uint64_t, int64_t> pair_count;
  std::unordered_map<uint64_t, std::vector<int32_t>> pair_words;
  for (int32_t w = 0; w < num_words; ++w) {
    const int32_t* s = corpus.syms.data() + corpus.start[w];
    for (uint32_t i = 0; i + 1 < corpus.len[w]; ++i) {
      uint64_t key = pair_key(s[i], s[i + 1]);
      pair_count[key] += corpus.freq[w];
      std::vector<int32_t>& ws = pair_words[key];
      if (ws.empty() || ws.back() != w) ws.push_back(w);
    }
  }

  // Most frequent first; ties go to the lexicographically smaller (left bytes, right bytes).
  struct Entry {
    int64_t count;
    uint64_t key;
  };
  auto lower_priority = [&](const Entry& x, const Entry& y) {
    if (x.count != y.count) return x.count < y.count;
    const std::string &xa = tok_bytes[pair_left(x.key)], &ya = tok_bytes[pair_left(y.key)];
    if (xa != ya) return xa > ya;
    return tok_bytes[pair_right(x.key)] > tok_bytes[pair_right(y.key)];
  };
  std::priority_queue<Entry, std::vector<Entry>, decltype(lower_priority)> heap(lower_priority);
  for (auto& [key, count] : pair_count) heap.push({count, key});

  std::vector<std::pair<int32_t, int32_t>> merges;
  std::unordered_set<uint64_t> merged_pairs;
  std::unordered_map<uint64_t, int64_t> delta;
  std::vector<int32_t> stamp(num_words, -1);
  int made = 0;
  for (int32_t step = 0; made < wanted; ++step) {
    Entry top{};
    bool found = false;
    while (!heap.empty() && !found) {
      top = heap.top();
      heap.pop();
      auto it = pair_count.find(top.key);
      found = it != pair_count.end() && it->second == top.count && top.count > 0;
    }
    if (!found) break;  // every word is a single token: the corpus cannot give more merges
    const int32_t a = pair_left(top.key), b = pair_right(top.key);
    std::string joined = tok_bytes[a] + tok_bytes[b];
    int32_t c;
    if (auto it = id_of_bytes.find(joined); it != id_of_bytes.end()) {
      c = it->second;  // another merge already made these bytes: reuse the token, add no id
    } else {
      c = static_cast<int32_t>(tok_bytes.size());
      tok_bytes.push_back(joined);
      id_of_bytes.emplace(std::move(joined), c);
      ++made;
    }
    // A pair can only come back through a reused token; then apply it again without a second line.
    if (merged_pairs.insert(top.key).second) merges.emplace_back(a, b);

    delta.clear();
    std::vector<int32_t> touched = std::move(pair_words[top.key]);
    pair_words.erase(top.key);
    for (int32_t w : touched) {
      if (stamp[w] == step) continue;
      stamp[w] = step;
      int32_t* s = corpus.syms.data() + corpus.start[w];
      const uint32_t n = corpus.len[w];
      const int64_t f = corpus.freq[w];
      bool has = false;
      for (uint32_t i = 0; i + 1 < n && !has; ++i) has = s[i] == a && s[i + 1] == b;
      if (!has) continue;
      for (uint32_t i = 0; i + 1 < n; ++i) delta[pair_key(s[i], s[i + 1])] -= f;
      uint32_t m = 0;
      for (uint32_t i = 0; i < n;) {
        if (i + 1 < n && s[i] == a && s[i + 1] == b) {
          s[m++] = c;
          i += 2;
        } else {
          s[m++] = s[i++];
        }
      }
      corpus.len[w] = m;
      for (uint32_t i = 0; i + 1 < m; ++i) {
        uint64_t key = pair_key(s[i], s[i + 1]);
        delta[key] += f;
        if (s[i] == c || s[i + 1] == c) {
          std::vector<int32_t>& ws = pair_words[key];
          if (ws.empty() || ws.back() != w) ws.push_back(w);
        }
      }
    }
    for (auto& [key, d] : delta) {
      if (d == 0) continue;
      int64_t& count = pair_count[key];
      count += d;
      if (count > 0)
        heap.push({count, key});
      else
        pair_count.erase(key);
    }
    if (progress && made % kProgressEvery == 0 && c + 1 == static_cast<int32_t>(tok_bytes.size())) {
      progress(made, wanted);
    }
  }
  if (progress) progress(made, wanted);

  std::error_code ec;
  std::filesystem::create_directories(out_dir, ec);
  MT_CHECK(!ec && std::filesystem::is_directory(out_dir), "[train_bpe] cannot create output directory '{}': {}",
           out_dir, ec.message());
  std::string enc = "{";
  for (size_t id = 0; id < tok_bytes.size(); ++id) {
    enc += nlohmann::json(unicode::bytes_to_printable(tok_bytes[id])).dump();
    enc += ": " + std::to_string(id) + ", ";
  }
  enc += nlohmann::json(std::string(kEndOfText)).dump() + ": " + std::to_string(tok_bytes.size()) + "}\n";
  std::string bpe = "#version: 0.2\n";
  for (auto& [a, b] : merges) {
    bpe += unicode::bytes_to_printable(tok_bytes[a]) + " " + unicode::bytes_to_printable(tok_bytes[b]) + "\n";
  }
  write_atomically(std::filesystem::path(out_dir) / "encoder.json", enc);
  write_atomically(std::filesystem::path(out_dir) / "vocab.bpe", bpe);
}

}  // namespace meshtrain
