// GPT-2 byte-level BPE: loading encoder.json + vocab.bpe, encoding through the hand-written
// pre-tokenizer and a word cache (most words repeat, so BPE runs once per distinct word), decoding.
// Merging follows GPT-2's bpe(): repeatedly merge every occurrence of the lowest-ranked pair.
#include "model/text/tokenizer.h"

#include <cerrno>
#include <climits>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <queue>
#include <sstream>
#include <unordered_map>
#include <unordered_set>

#include "core/error.h"
#include "model/text/unicode_class.h"

namespace meshtrain {
namespace {

constexpr std::string_view kEndOfText = "<|endoftext|>";
// Words up to this many symbols use the simple GPT-2 loop; longer ones a heap (O(n log n)).
constexpr size_t kShortWord = 64;
// Longer words are rare and would bloat the cache.
constexpr size_t kMaxCachedWord = 256;

constexpr uint64_t kFnvBasis = 0xcbf29ce484222325ull;

// FNV-1a, 64-bit: a short, stable name for a tokenizer's files (not a cryptographic hash).
uint64_t fnv1a(std::string_view bytes, uint64_t h) {
  for (unsigned char c : bytes) h = (h ^ c) * 0x100000001b3ull;
  return h;
}

std::string read_whole_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  MT_CHECK(in, "[tokenizer] cannot open '{}': {}", path, std::strerror(errno));
  std::ostringstream ss;
  ss << in.rdbuf();
  MT_CHECK(!in.bad(), "[tokenizer] error while reading '{}'", path);
  return std::move(ss).str();
}

// Decodes one UTF-8 code point of a JSON key; returns its length, or 0 when the bytes are invalid.
size_t decode_code_point(std::string_view s, size_t i, uint32_t& cp) {
  auto c = static_cast<unsigned char>(s[i]);
  size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
  if (len == 0 || i + len > s.size()) return 0;
  cp = len == 1 ? c : c & (0x7F >> len);
  for (size_t k = 1; k < len; ++k) {
    auto d = static_cast<unsigned char>(s[i + k]);
    if ((d & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (d & 0x3F);
  }
  return len;
}

uint64_t pair_key(int32_t a, int32_t b) { return (static_cast<uint64_t>(a) << 32) | static_cast<uint32_t>(b); }

// Open-addressing map from a merge pair to its rank: probed for every adjacent pair on a cache miss.
class PairRankMap {
 public:
  struct Value {
    int32_t rank;
    int32_t merged;
  };
  void reserve(size_t n) {
    size_t cap = 16;
    while (cap < 2 * n) cap *= 2;
    keys_.assign(cap, kEmpty);
    values_.assign(cap, {});
    mask_ = cap - 1;
  }
  /// False when key is already present (the map is sized once by reserve).
  bool insert(uint64_t key, Value v) {
    for (size_t i = slot(key);; i = (i + 1) & mask_) {
      if (keys_[i] == key) return false;
      if (keys_[i] == kEmpty) {
        keys_[i] = key;
        values_[i] = v;
        return true;
      }
    }
  }
  const Value* find(uint64_t key) const {
    if (keys_.empty()) return nullptr;
    for (size_t i = slot(key);; i = (i + 1) & mask_) {
      if (keys_[i] == key) return &values_[i];
      if (keys_[i] == kEmpty) return nullptr;
    }
  }

 private:
  static constexpr uint64_t kEmpty = ~uint64_t{0};  // ids are non-negative, so no pair packs to this
  size_t slot(uint64_t key) const { return static_cast<size_t>((key * 0x9E3779B97F4A7C15ull) >> 29) & mask_; }
  std::vector<uint64_t> keys_;
  std::vector<Value> values_;
  size_t mask_ = 0;
};

// Word -> ids, open addressing over offsets into two growing pools, so entries stay valid as the
// pools reallocate. Cleared wholesale when it grows past a budget (a crude but cheap eviction).
class WordCache {
 public:
  static uint64_t hash(std::string_view w) {
    uint64_t h = 0x243F6A8885A308D3ull ^ w.size();
    size_t i = 0;
    for (; i + 8 <= w.size(); i += 8) {
      uint64_t chunk;
      std::memcpy(&chunk, w.data() + i, 8);
      h = (h ^ chunk) * 0x9E3779B97F4A7C15ull;
      h ^= h >> 29;
    }
    uint64_t tail = 0;
    std::memcpy(&tail, w.data() + i, w.size() - i);
    h = (h ^ tail) * 0xBF58476D1CE4E5B9ull;
    return h ^ (h >> 31);
  }
  /// The cached ids of w, or an empty span.
  std::span<const int32_t> find(std::string_view w, uint64_t h) const {
    if (slots_.empty()) return {};
    for (size_t i = h & mask_;; i = (i + 1) & mask_) {
      const Slot& s = slots_[i];
      if (s.key_len == 0) return {};
      if (s.hash == h && s.key_len == w.size() && std::memcmp(keys_.data() + s.key_off, w.data(), w.size()) == 0) {
        return {ids_.data() + s.ids_off, s.ids_len};
      }
    }
  }
  void insert(std::string_view w, uint64_t h, std::span<const int32_t> ids) {
    if (keys_.size() + w.size() > kMaxKeyBytes || used_ >= kMaxEntries) clear();
    if (2 * (used_ + 1) > slots_.size()) grow();
    Slot s{h, static_cast<uint32_t>(keys_.size()), static_cast<uint32_t>(w.size()), static_cast<uint32_t>(ids_.size()),
           static_cast<uint32_t>(ids.size())};
    keys_.append(w);
    ids_.insert(ids_.end(), ids.begin(), ids.end());
    place(s);
    ++used_;
  }
  void clear() {
    slots_.clear();
    keys_.clear();
    ids_.clear();
    used_ = 0;
    mask_ = 0;
  }

 private:
  struct Slot {
    uint64_t hash = 0;
    uint32_t key_off = 0, key_len = 0;  // key_len 0 marks an empty slot (cached words have >= 2 bytes)
    uint32_t ids_off = 0, ids_len = 0;
  };
  static constexpr size_t kMaxKeyBytes = size_t{32} << 20;
  static constexpr size_t kMaxEntries = size_t{1} << 19;  // so at most 2^20 slots, 24 MB
  void place(const Slot& s) {
    size_t i = s.hash & mask_;
    while (slots_[i].key_len != 0) i = (i + 1) & mask_;
    slots_[i] = s;
  }
  void grow() {
    std::vector<Slot> old = std::move(slots_);
    slots_.assign(old.empty() ? 4096 : old.size() * 2, Slot{});
    mask_ = slots_.size() - 1;
    for (const Slot& s : old) {
      if (s.key_len != 0) place(s);
    }
  }
  std::vector<Slot> slots_;
  std::string keys_;
  std::vector<int32_t> ids_;
  size_t used_ = 0;
  size_t mask_ = 0;
};

}  // namespace

struct Tokenizer::Impl {
  std::vector<std::string> bytes;  // id -> raw bytes
  std::vector<uint8_t> present;    // id -> whether encoder.json defines it
  int32_t byte_id[256] = {};
  int32_t eot = -1;
  uint64_t fingerprint = 0;  // FNV-1a of encoder.json then vocab.bpe
  PairRankMap merges;  // (left id, right id) -> rank and merged id
  WordCache cache;
  std::vector<int32_t> scratch;

  void encode_piece(const unsigned char* s, size_t n, std::vector<int32_t>& out);
  void encode_word(const unsigned char* w, size_t n, std::vector<int32_t>& out);
  void bpe_short(std::vector<int32_t>& syms) const;
  void bpe_long(std::vector<int32_t>& syms) const;
};

Tokenizer::Tokenizer() : impl_(std::make_unique<Impl>()) {}
Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

Tokenizer Tokenizer::load(const std::string& dir) {
  MT_CHECK(std::filesystem::is_directory(dir),
           "[tokenizer] '{}' is not a directory; expected one holding encoder.json and vocab.bpe", dir);
  const std::string enc_path = (std::filesystem::path(dir) / "encoder.json").string();
  const std::string bpe_path = (std::filesystem::path(dir) / "vocab.bpe").string();

  nlohmann::json enc;
  std::string enc_text;
  try {
    enc_text = read_whole_file(enc_path);
    enc = nlohmann::json::parse(enc_text);
  } catch (const nlohmann::json::exception& e) {
    MT_FAIL("[tokenizer] '{}' is not valid JSON ({}); expected GPT-2's object of token -> id", enc_path, e.what());
  }
  MT_CHECK(enc.is_object() && !enc.empty(), "[tokenizer] '{}' must be a non-empty JSON object of token -> id",
           enc_path);

  Tokenizer tok;
  Impl& im = *tok.impl_;
  std::vector<std::string> printable;  // id -> the key as written in the files
  for (auto& [key, value] : enc.items()) {
    MT_CHECK(value.is_number_integer() && value.get<int64_t>() >= 0 && value.get<int64_t>() < INT32_MAX,
             "[tokenizer] '{}': token \"{}\" has id {}, expected a non-negative integer", enc_path, key, value.dump());
    auto id = static_cast<size_t>(value.get<int64_t>());
    if (id >= im.bytes.size()) {
      im.bytes.resize(id + 1);
      im.present.resize(id + 1, 0);
      printable.resize(id + 1);
    }
    MT_CHECK(!im.present[id], "[tokenizer] '{}': id {} is used by both \"{}\" and \"{}\"", enc_path, id, printable[id],
             key);
    std::string raw;
    for (size_t i = 0; i < key.size();) {
      uint32_t cp = 0;
      size_t len = decode_code_point(key, i, cp);
      MT_CHECK(len > 0, "[tokenizer] '{}': token with id {} is not valid UTF-8", enc_path, id);
      int b = unicode::code_point_to_byte(cp);
      MT_CHECK(b >= 0, "[tokenizer] '{}': token \"{}\" (id {}) has U+{:04X}, outside GPT-2's byte alphabet", enc_path,
               key, id, cp);
      raw.push_back(static_cast<char>(b));
      i += len;
    }
    MT_CHECK(!raw.empty(), "[tokenizer] '{}': empty token string (id {})", enc_path, id);
    im.bytes[id] = std::move(raw);
    im.present[id] = 1;
    printable[id] = key;
  }
  std::unordered_map<std::string_view, int32_t> id_of;
  id_of.reserve(printable.size());
  for (size_t id = 0; id < printable.size(); ++id) {
    if (im.present[id]) id_of.emplace(printable[id], static_cast<int32_t>(id));
  }
  for (int b = 0; b < 256; ++b) {
    std::string key = unicode::bytes_to_printable(std::string(1, static_cast<char>(b)));
    auto it = id_of.find(key);
    MT_CHECK(it != id_of.end(), "[tokenizer] '{}' lacks the token for byte 0x{:02X} (\"{}\"); every byte needs one",
             enc_path, b, key);
    im.byte_id[b] = it->second;
  }
  if (auto it = id_of.find(kEndOfText); it != id_of.end()) im.eot = it->second;

  const std::string text = read_whole_file(bpe_path);
  im.fingerprint = fnv1a(text, fnv1a(enc_text, kFnvBasis));
  MT_CHECK(text.starts_with("#version"),
           "[tokenizer] '{}' must start with a '#version: 0.2' line followed by merges \"A B\"", bpe_path);
  size_t pos = text.find('\n');
  int line_no = 1;
  int32_t rank = 0;
  std::vector<std::pair<uint64_t, PairRankMap::Value>> pairs;
  while (pos != std::string::npos && pos < text.size()) {
    size_t start = pos + 1;
    pos = text.find('\n', start);
    std::string_view line(text.data() + start, (pos == std::string::npos ? text.size() : pos) - start);
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty()) continue;
    size_t sp = line.find(' ');
    MT_CHECK(sp != std::string_view::npos && sp > 0 && sp + 1 < line.size() &&
                 line.find(' ', sp + 1) == std::string_view::npos,
             "[tokenizer] '{}' line {}: \"{}\" is not a merge of the form \"A B\"", bpe_path, line_no, line);
    std::string_view a = line.substr(0, sp), b = line.substr(sp + 1);
    auto ia = id_of.find(a), ib = id_of.find(b);
    MT_CHECK(ia != id_of.end() && ib != id_of.end(),
             "[tokenizer] '{}' line {}: merge \"{}\" names token \"{}\", which {} lacks", bpe_path, line_no, line,
             ia == id_of.end() ? a : b, enc_path);
    std::string merged = std::string(a) + std::string(b);
    auto im_it = id_of.find(merged);
    MT_CHECK(im_it != id_of.end(), "[tokenizer] '{}' line {}: merge \"{}\" makes \"{}\", which {} lacks", bpe_path,
             line_no, line, merged, enc_path);
    pairs.push_back({pair_key(ia->second, ib->second), {rank++, im_it->second}});
  }
  im.merges.reserve(pairs.size());
  for (auto& [key, value] : pairs) {
    MT_CHECK(im.merges.insert(key, value), "[tokenizer] '{}': merge #{} repeats an earlier merge", bpe_path,
             value.rank + 1);
  }
  // Every token is a byte, a special token (<|...|>) or made by a merge. A token that nothing makes
  // means vocab.bpe lost its tail (a cut file still parses) or belongs to another encoder.json.
  std::unordered_set<int32_t> reachable(std::begin(im.byte_id), std::end(im.byte_id));
  for (const auto& [key, value] : pairs) reachable.insert(value.merged);
  int64_t orphans = 0;
  std::string example;
  for (const auto& [token, id] : id_of) {
    const bool special = token.size() > 4 && token.starts_with("<|") && token.ends_with("|>");
    if (special || reachable.count(id)) continue;
    if (orphans++ == 0) example = std::string(token);
  }
  MT_CHECK(orphans == 0,
           "[tokenizer] '{}' has {} merges, but {} of the {} tokens of {} are made by none of them (e.g. \"{}\"): "
           "vocab.bpe looks cut short, or the two files do not belong together",
           bpe_path, pairs.size(), orphans, id_of.size(), enc_path, example);
  return tok;
}

void Tokenizer::Impl::bpe_short(std::vector<int32_t>& syms) const {
  // GPT-2's loop: find the lowest-ranked adjacent pair, merge all its occurrences left to right.
  size_t m = syms.size();
  while (m > 1) {
    int32_t best_rank = INT32_MAX, a = -1, b = -1, merged = -1;
    for (size_t i = 0; i + 1 < m; ++i) {
      const PairRankMap::Value* v = merges.find(pair_key(syms[i], syms[i + 1]));
      if (v && v->rank < best_rank) {
        best_rank = v->rank;
        a = syms[i];
        b = syms[i + 1];
        merged = v->merged;
      }
    }
    if (merged < 0) break;
    size_t w = 0;
    for (size_t i = 0; i < m;) {
      if (i + 1 < m && syms[i] == a && syms[i + 1] == b) {
        syms[w++] = merged;
        i += 2;
      } else {
        syms[w++] = syms[i++];
      }
    }
    m = w;
  }
  syms.resize(m);
}

void Tokenizer::Impl::bpe_long(std::vector<int32_t>& syms) const {
  // Same result as bpe_short when every merge's inputs were made by earlier merges (true of GPT-2's
  // and our trained files): popping (rank, position) merges a rank's occurrences left to right
  // before any later rank. Stale heap entries are skipped by re-checking the ids they name.
  const auto n = static_cast<int32_t>(syms.size());
  std::vector<int32_t> next(n), prev(n);
  std::vector<uint8_t> alive(n, 1);
  for (int32_t i = 0; i < n; ++i) {
    next[i] = i + 1 < n ? i + 1 : -1;
    prev[i] = i - 1;
  }
  struct Entry {
    int32_t rank, pos, left, right;
    bool operator>(const Entry& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Entry, std::vector<Entry>, std::greater<Entry>> heap;
  auto push = [&](int32_t i) {
    if (i < 0 || next[i] < 0) return;
    if (const PairRankMap::Value* v = merges.find(pair_key(syms[i], syms[next[i]]))) {
      heap.push({v->rank, i, syms[i], syms[next[i]]});
    }
  };
  for (int32_t i = 0; i + 1 < n; ++i) push(i);
  while (!heap.empty()) {
    Entry e = heap.top();
    heap.pop();
    int32_t i = e.pos;
    if (!alive[i] || syms[i] != e.left || next[i] < 0 || syms[next[i]] != e.right) continue;
    int32_t j = next[i];
    syms[i] = merges.find(pair_key(e.left, e.right))->merged;
    alive[j] = 0;
    next[i] = next[j];
    if (next[j] >= 0) prev[next[j]] = i;
    push(prev[i]);
    push(i);
  }
  size_t w = 0;
  for (int32_t i = 0; i >= 0 && i < n; i = next[i]) syms[w++] = syms[i];
  syms.resize(w);
}

void Tokenizer::Impl::encode_word(const unsigned char* w, size_t n, std::vector<int32_t>& out) {
  if (n == 1) {
    out.push_back(byte_id[w[0]]);
    return;
  }
  std::string_view word(reinterpret_cast<const char*>(w), n);
  uint64_t h = 0;
  if (n <= kMaxCachedWord) {
    h = WordCache::hash(word);
    if (std::span<const int32_t> hit = cache.find(word, h); !hit.empty()) {
      out.insert(out.end(), hit.begin(), hit.end());
      return;
    }
  }
  scratch.resize(n);
  for (size_t i = 0; i < n; ++i) scratch[i] = byte_id[w[i]];
  if (n <= kShortWord)
    bpe_short(scratch);
  else
    bpe_long(scratch);
  out.insert(out.end(), scratch.begin(), scratch.end());
  if (n <= kMaxCachedWord) cache.insert(word, h, scratch);
}

void Tokenizer::Impl::encode_piece(const unsigned char* s, size_t n, std::vector<int32_t>& out) {
  for (size_t i = 0; i < n;) {
    size_t j = unicode::pretoken_end(s, n, i);
    encode_word(s + i, j - i, out);
    i = j;
  }
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool allow_special) const {
  MT_CHECK(!impl_->bytes.empty(), "[tokenizer] encode on an empty tokenizer; create it with Tokenizer::load");
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 16);
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  size_t start = 0;
  if (allow_special && impl_->eot >= 0) {
    // The pre-tokenizer runs on the text between special tokens, never across one.
    const std::string& special = impl_->bytes[impl_->eot];
    for (size_t at = text.find(special); at != std::string_view::npos; at = text.find(special, start)) {
      impl_->encode_piece(s + start, at - start, out);
      out.push_back(impl_->eot);
      start = at + special.size();
    }
  }
  impl_->encode_piece(s + start, text.size() - start, out);
  return out;
}

std::string Tokenizer::decode(std::span<const int32_t> ids) const {
  std::string out;
  out.reserve(ids.size() * 4);
  for (int32_t id : ids) out += token_bytes(id);
  return out;
}

const std::string& Tokenizer::token_bytes(int32_t id) const {
  MT_CHECK(id >= 0 && static_cast<size_t>(id) < impl_->bytes.size() && impl_->present[id],
           "[tokenizer] id {} is not in the vocabulary (ids 0..{}); was the text encoded with another tokenizer?", id,
           impl_->bytes.size() - 1);
  return impl_->bytes[id];
}

int Tokenizer::vocab_size() const { return static_cast<int>(impl_->bytes.size()); }

uint64_t Tokenizer::fingerprint() const { return impl_->fingerprint; }

std::string Tokenizer::fingerprint_hex() const { return fmt::format("{:016x}", impl_->fingerprint); }

int32_t Tokenizer::eot_id() const { return impl_->eot; }

}  // namespace meshtrain
