// The built-in default corpus: the English text of Debian's `fortunes` packages, shuffled by
// fortune, with a BPE vocabulary trained on it and token shards, all under one folder. Prepared once
// and reused, so a fresh machine trains without any downloaded data.
#pragma once

#include <string>

namespace meshtrain {

/// The size of the BPE vocabulary trained on the built-in corpus (`model.vocab_size = 0` then means this).
inline constexpr int kBuiltinVocabSize = 4096;

struct BuiltinData {
  std::string train;      // shard glob
  std::string val;        // shard glob
  std::string tokenizer;  // tokenizer directory
};

/// Prepares (or reuses) the corpus under dir; log receives progress lines.
BuiltinData prepare_builtin_corpus(const std::string& dir, int vocab_size);

/// Where Debian installs the fortunes (FORTUNES_DIR overrides).
std::string fortunes_dir();

}  // namespace meshtrain
