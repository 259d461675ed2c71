// Byte-level BPE compatible with GPT-2: OpenAI's encoder.json + vocab.bpe (or files our trainer
// writes in the same format), GPT-2's pre-tokenizer, and the <|endoftext|> special token.
// decode(encode(x)) == x for any bytes, invalid UTF-8 included.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace meshtrain {

class Tokenizer {
 public:
  Tokenizer();
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

  /// Loads dir/encoder.json and dir/vocab.bpe; throws naming the file and what is wrong with it.
  static Tokenizer load(const std::string& dir);

  /// Token ids of text. With allow_special, "<|endoftext|>" in the text becomes the special token;
  /// otherwise it is encoded as ordinary text. Not thread-safe (keeps a word cache).
  std::vector<int32_t> encode(std::string_view text, bool allow_special = true) const;
  /// The bytes the ids stand for, concatenated.
  std::string decode(std::span<const int32_t> ids) const;
  /// The raw bytes of one token (for streaming output).
  const std::string& token_bytes(int32_t id) const;

  /// Number of ids (the largest id + 1).
  int vocab_size() const;
  /// Id of <|endoftext|>, or -1 when the vocabulary has none.
  int32_t eot_id() const;
  /// A 64-bit hash of encoder.json and vocab.bpe as stored: recorded in checkpoints and token
  /// shards so that data and models made with another tokenizer are recognised.
  uint64_t fingerprint() const;
  /// fingerprint() as 16 hex digits.
  std::string fingerprint_hex() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// Splits text into GPT-2 pre-tokens (the regex
/// 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+), calling emit with
/// each piece in order. Invalid UTF-8 bytes are treated as single non-letter, non-number symbols.
void gpt2_pretokenize(std::string_view text, const std::function<void(std::string_view)>& emit);

/// Learns byte-level BPE merges from the input files with the same pre-tokenization and writes
/// out_dir/encoder.json and out_dir/vocab.bpe (vocab_size ids including the 256 byte tokens and
/// <|endoftext|>). progress, when set, is called now and then with (merges done, merges wanted).
void train_bpe(const std::vector<std::string>& inputs, int vocab_size, const std::string& out_dir,
               const std::function<void(int, int)>& progress = {});

}  // namespace meshtrain
