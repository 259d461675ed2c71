// Builds the default corpus from /usr/share/games/fortunes: every fortune of the English files
// (ASCII art, translations and Zippy excluded: they teach a small model little language), in a
// seeded shuffled order so the validation tail samples every topic, separated by blank lines.
#include "launch/builtin_corpus.h"

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "core/timer.h"
#include "model/text/data.h"
#include "model/text/tokenizer.h"

namespace fs = std::filesystem;

namespace meshtrain {

std::string fortunes_dir() {
  const char* env = std::getenv("FORTUNES_DIR");
  return env ? env : "/usr/share/games/fortunes";
}

namespace {

std::vector<std::string> read_fortunes(const fs::path& dir) {
  static const std::set<std::string> skip = {"ascii-art", "translate-me", "zippy", "perl"};
  MT_CHECK(fs::is_directory(dir),
           "[data] the built-in corpus needs Debian's fortunes in {} (run scripts/setup.sh, or set data.train and "
           "data.tokenizer to your own shards)",
           dir.string());
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(dir)) {
    const auto name = e.path().filename().string();
    if (!e.is_regular_file() || e.is_symlink() || e.path().has_extension() || skip.count(name)) continue;
    files.push_back(e.path());
  }
  std::sort(files.begin(), files.end());
  std::vector<std::string> fortunes;
  for (const auto& f : files) {
    std::ifstream in(f);
    std::string line, cur;
    auto flush = [&]() {
      while (!cur.empty() && (cur.back() == '\n' || cur.back() == ' ')) cur.pop_back();
      if (!cur.empty()) fortunes.push_back(cur);
      cur.clear();
    };
    while (std::getline(in, line)) {
      if (line == "%") flush();
      else cur += line + "\n";
    }
    flush();
  }
  MT_CHECK(!fortunes.empty(), "[data] no fortunes found in {}", dir.string());
  return fortunes;
}

}  // namespace

BuiltinData prepare_builtin_corpus(const std::string& dir, int vocab_size) {
  fs::path root = fs::absolute(dir);
  fs::path corpus = root / "fortunes.txt", tok = root / "tokenizer", shards = root / "shards";
  BuiltinData out{(shards / "train_*.bin").string(), (shards / "val_*.bin").string(), tok.string()};
  if (fs::exists(tok / "encoder.json") && fs::exists(tok / "vocab.bpe") && fs::exists(shards / "train_000000.bin") &&
      fs::exists(shards / "val_000000.bin"))
    return out;

  fs::create_directories(root);
  double t0 = now_seconds();
  auto fortunes = read_fortunes(fortunes_dir());
  CounterRng rng(20240520, 1);
  for (size_t i = fortunes.size() - 1; i > 0; --i) std::swap(fortunes[i], fortunes[rng.below(i + 1)]);
  {
    std::ofstream f(corpus.string() + ".tmp", std::ios::binary);
    for (const auto& s : fortunes) f << s << "\n\n";
    MT_CHECK(f.good(), "[data] cannot write {}", corpus.string());
  }
  fs::rename(corpus.string() + ".tmp", corpus);
  fmt::print("[data] built-in corpus: {} fortunes, {:.1f} MB -> {}\n", fortunes.size(),
             static_cast<double>(fs::file_size(corpus)) / 1e6, corpus.string());
  fmt::print("[data] training a {}-token BPE vocabulary ...\n", vocab_size);
  std::fflush(stdout);
  train_bpe({corpus.string()}, vocab_size, tok.string());
  Tokenizer tokenizer = Tokenizer::load(tok.string());
  auto counts = tokenize_files(tokenizer, {corpus.string()}, shards.string(), 0.1);
  fmt::print("[data] {} train / {} val tokens in {} ({:.1f} s)\n", counts.train_tokens, counts.val_tokens,
             shards.string(), now_seconds() - t0);
  return out;
}

}  // namespace meshtrain
