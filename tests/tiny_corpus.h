// A small generated corpus with a BPE vocabulary trained on it and its token shards: the data of
// the end-to-end tests, made in a few hundred milliseconds without any shared files.
#pragma once

#include <filesystem>
#include <fstream>
#include <string>

#include "core/rng.h"
#include "model/text/data.h"
#include "model/text/tokenizer.h"

namespace meshtrain::testing {

/// Writes root/corpus.txt, root/tok/{encoder.json,vocab.bpe} (vocab_size ids) and
/// root/shards/{train,val}_000000.bin.
inline void make_tiny_corpus(const std::filesystem::path& root, int vocab_size = 300, int lines = 1500) {
  const char* words[] = {"the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "see", "big",
                         "red", "ball", "in", "park", "with", "its", "friend", "every", "day"};
  CounterRng rng(5, 0);
  std::filesystem::create_directories(root);
  {
    std::ofstream corpus(root / "corpus.txt");
    for (int line = 0; line < lines; ++line) {
      int n = 4 + static_cast<int>(rng.below(8));
      for (int w = 0; w < n; ++w) corpus << (w ? " " : "") << words[rng.below(21)];
      corpus << ".\n";
    }
  }
  train_bpe({(root / "corpus.txt").string()}, vocab_size, (root / "tok").string());
  Tokenizer tok = Tokenizer::load((root / "tok").string());
  tokenize_files(tok, {(root / "corpus.txt").string()}, (root / "shards").string(), 0.1);
}

}  // namespace meshtrain::testing
