// The `tokenize` pipeline: text files in, train/val token shards out. The validation split is the
// tail of the joined text cut at a line start, and long texts are encoded in pieces cut where GPT-2's
// pre-tokenizer would split anyway, so the shards hold exactly the tokens of encoding each part whole.
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <regex>

#include "core/error.h"
#include "model/text/data.h"
#include "model/text/tokenizer.h"

namespace meshtrain {

namespace {

constexpr int64_t kShardMaxTokens = 100'000'000;
// Text is handed to the tokenizer in pieces of about this many bytes to bound the int32 ids held
// at once beside the shard buffer.
constexpr size_t kEncodePieceBytes = 16u << 20;
constexpr std::string_view kEndOfText = "<|endoftext|>";

std::string read_file(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  MT_CHECK(fs::exists(path, ec), "[tokenize] input file '{}' does not exist", path);
  MT_CHECK(!fs::is_directory(path, ec), "[tokenize] input '{}' is a directory; pass the text files in it", path);
  std::ifstream in(path, std::ios::binary);
  MT_CHECK(in.good(), "[tokenize] cannot open input file '{}': {}", path, std::strerror(errno));
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  MT_CHECK(!in.bad(), "[tokenize] cannot read input file '{}': {}", path, std::strerror(errno));
  return text;
}

// Printable ASCII other than space: neither whitespace nor part of a multi-byte character.
bool is_plain(char c) { return c > ' ' && c < 0x7f; }

// Where the next encode piece ends: the first "plain, newline, plain" spot at or after
// begin + kEncodePieceBytes, or the end of the part. There the newline is a whitespace run of its
// own in GPT-2's pre-tokenizer (it cannot join a letter, digit or punctuation run, and no longer
// whitespace run includes it), so cutting after it changes no token.
size_t piece_end(std::string_view part, size_t begin) {
  if (part.size() - begin <= kEncodePieceBytes) return part.size();
  for (size_t p = begin + kEncodePieceBytes; p < part.size(); ++p) {
    if (part[p - 1] == '\n' && is_plain(part[p - 2]) && is_plain(part[p])) return p;
  }
  return part.size();
}

// Encodes part and writes it as out_dir/<prefix>_NNNNNN.bin shards of at most kShardMaxTokens;
// returns the number of shards written.
int write_split(const Tokenizer& tokenizer, std::string_view part, const std::string& out_dir,
                const std::string& prefix, int64_t& total_tokens) {
  std::vector<int32_t> buffer;
  int shards = 0;
  auto flush = [&](size_t count) {
    const std::string path = (std::filesystem::path(out_dir) / fmt::format("{}_{:06d}.bin", prefix, shards)).string();
    write_token_shard(path, std::span<const int32_t>(buffer.data(), count), tokenizer.fingerprint());
    buffer.erase(buffer.begin(), buffer.begin() + static_cast<std::ptrdiff_t>(count));
    ++shards;
  };
  for (size_t begin = 0; begin < part.size();) {
    const size_t end = piece_end(part, begin);
    const std::vector<int32_t> ids = tokenizer.encode(part.substr(begin, end - begin), /*allow_special=*/true);
    total_tokens += static_cast<int64_t>(ids.size());
    buffer.insert(buffer.end(), ids.begin(), ids.end());
    while (static_cast<int64_t>(buffer.size()) >= kShardMaxTokens) flush(kShardMaxTokens);
    begin = end;
  }
  if (!buffer.empty() || shards == 0) flush(buffer.size());
  return shards;
}

// Removes <prefix>_NNNNNN.bin shards numbered first and above, left by an earlier, larger run: a glob
// over out_dir would otherwise mix them into the new data.
void remove_stale_shards(const std::string& out_dir, const std::string& prefix, int first) {
  const std::regex name(prefix + "_([0-9]{6})\\.bin");
  for (const auto& entry : std::filesystem::directory_iterator(out_dir)) {
    std::smatch m;
    const std::string file = entry.path().filename().string();
    if (std::regex_match(file, m, name) && std::stoi(m[1].str()) >= first) {
      std::filesystem::remove(entry.path());
    }
  }
}

// The byte offset where validation starts: the line start nearest to the last val_fraction of the
// text, excluding the two ends (both splits must be non-empty). Returns text.size() when none exists.
size_t val_cut(std::string_view text, double val_fraction) {
  const auto target = static_cast<size_t>(std::llround(static_cast<double>(text.size()) * (1.0 - val_fraction)));
  size_t after = text.size();
  for (size_t p = std::max<size_t>(target, 1); p < text.size(); ++p) {
    if (text[p - 1] == '\n') {
      after = p;
      break;
    }
  }
  size_t before = 0;
  for (size_t p = std::min(target, text.size() - 1); p >= 1; --p) {
    if (text[p - 1] == '\n') {
      before = p;
      break;
    }
  }
  if (before == 0) return after;
  if (after == text.size()) return before;
  return (target - before <= after - target) ? before : after;
}

}  // namespace

TokenizeResult tokenize_files(const Tokenizer& tokenizer, const std::vector<std::string>& inputs,
                              const std::string& out_dir, double val_fraction) {
  MT_CHECK(tokenizer.vocab_size() <= 65536,
           "[tokenize] the vocabulary has {} tokens; vocabularies over 65536 tokens are not supported by shard "
           "version 1 (uint16 tokens); train or load a smaller vocabulary",
           tokenizer.vocab_size());
  MT_CHECK(val_fraction >= 0.0 && val_fraction < 1.0,
           "[tokenize] val_fraction must be in [0, 1), got {}; 0 writes no validation split", val_fraction);
  MT_CHECK(!inputs.empty(), "[tokenize] no input files given");
  MT_CHECK(!out_dir.empty(), "[tokenize] no output directory given");

  std::string text;
  const bool has_eot = tokenizer.eot_id() >= 0;
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (i > 0 && has_eot) text += kEndOfText;
    text += read_file(inputs[i]);
  }
  MT_CHECK(!text.empty(), "[tokenize] the input files are empty; there is nothing to tokenize");

  size_t cut = text.size();
  if (val_fraction > 0.0) {
    cut = val_cut(text, val_fraction);
    MT_CHECK(cut < text.size(),
             "[tokenize] the validation split (last {} of {} bytes) is empty: the text has no line break to "
             "cut at; add line breaks or use val_fraction 0",
             val_fraction, text.size());
  }

  std::error_code ec;
  std::filesystem::create_directories(out_dir, ec);
  MT_CHECK(!ec && std::filesystem::is_directory(out_dir), "[tokenize] cannot create output directory '{}': {}", out_dir,
           ec ? ec.message() : "a file of that name exists");

  const std::string_view all(text);
  TokenizeResult result;
  const int train_shards = write_split(tokenizer, all.substr(0, cut), out_dir, "train", result.train_tokens);
  remove_stale_shards(out_dir, "train", train_shards);
  int val_shards = 0;
  if (cut < text.size()) val_shards = write_split(tokenizer, all.substr(cut), out_dir, "val", result.val_tokens);
  remove_stale_shards(out_dir, "val", val_shards);
  return result;
}

}  // namespace meshtrain
