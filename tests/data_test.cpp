// Tests for token shards, the data loader and the tokenize pipeline: shard round trips and
// validation errors, window boundaries, epoch order (sequential and shuffled), data-parallel rank
// slicing, exact resume, glob expansion, and text -> shards -> text end to end.
#include "model/text/data.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "model/text/tokenizer.h"
#include "test_util.h"

namespace meshtrain {
namespace {

namespace fs = std::filesystem;
using ::meshtrain::testing::ScratchDir;

std::vector<int32_t> random_tokens(size_t n, uint64_t seed) {
  CounterRng rng(seed, 11);
  std::vector<int32_t> t(n);
  for (auto& x : t) x = static_cast<int32_t>(rng.below(65536));
  return t;
}

// Runs fn, expects a meshtrain::Error, and checks that its message holds every fragment.
void expect_error(const std::function<void()>& fn, const std::vector<std::string>& fragments) {
  try {
    fn();
    ADD_FAILURE() << "expected meshtrain::Error containing '" << fragments.front() << "'";
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const auto& f : fragments) EXPECT_NE(msg.find(f), std::string::npos) << "'" << f << "' not in: " << msg;
  }
}

void write_raw(const std::string& path, const std::vector<int32_t>& header_ints, size_t extra_bytes) {
  std::vector<char> bytes(header_ints.size() * 4 + extra_bytes, 1);
  std::memcpy(bytes.data(), header_ints.data(), header_ints.size() * 4);
  std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::vector<int32_t> header_with(int32_t magic, int32_t version, int32_t count) {
  std::vector<int32_t> h(kShardHeaderInts, 0);
  h[0] = magic;
  h[1] = version;
  h[2] = count;
  return h;
}

TEST(Shard, RoundTripKeepsEveryToken) {
  ScratchDir dir("data");
  auto tokens = random_tokens(10007, 1);
  tokens[0] = 0;
  tokens[5000] = 65535;
  tokens.back() = 65535;
  const std::string path = dir.str("s.bin");
  write_token_shard(path, tokens);
  EXPECT_FALSE(fs::exists(path + ".tmp"));
  EXPECT_EQ(fs::file_size(path), 1024u + 2u * tokens.size());

  TokenShard shard(path);
  ASSERT_EQ(shard.size(), static_cast<int64_t>(tokens.size()));
  EXPECT_EQ(shard.path(), path);
  for (size_t i = 0; i < tokens.size(); ++i) ASSERT_EQ(shard.tokens()[i], tokens[i]) << "at " << i;

  // llm.c's header: magic, version, count, then zeros.
  std::vector<int32_t> header(kShardHeaderInts, -1);
  std::ifstream(path, std::ios::binary).read(reinterpret_cast<char*>(header.data()), 1024);
  EXPECT_EQ(header[0], 20240520);
  EXPECT_EQ(header[1], 1);
  EXPECT_EQ(header[2], static_cast<int32_t>(tokens.size()));
  EXPECT_TRUE(std::all_of(header.begin() + 3, header.end(), [](int32_t v) { return v == 0; }));

  write_token_shard(dir.str("empty.bin"), {});
  EXPECT_EQ(TokenShard(dir.str("empty.bin")).size(), 0);
}

TEST(Shard, RefusesTokensThatDoNotFitUint16) {
  ScratchDir dir("data");
  auto tokens = random_tokens(100, 2);
  tokens[37] = 65536;
  const std::string path = dir.str("big.bin");
  expect_error([&] { write_token_shard(path, tokens); },
               {"[data]", "65536", "vocabularies over 65536 tokens are not supported by shard version 1"});
  tokens[37] = -1;
  expect_error([&] { write_token_shard(path, tokens); }, {"[data]", "-1", "not supported by shard version 1"});
  EXPECT_FALSE(fs::exists(path));
  EXPECT_FALSE(fs::exists(path + ".tmp"));
}

TEST(Shard, RejectsDamagedFilesNamingThePath) {
  ScratchDir dir("data");
  const std::string good = dir.str("good.bin");
  write_token_shard(good, random_tokens(500, 3));

  const std::string truncated = dir.str("truncated.bin");
  fs::copy_file(good, truncated);
  fs::resize_file(truncated, 1024 + 2 * 499);
  expect_error([&] { TokenShard s(truncated); }, {"[data]", truncated, "truncated", "500 tokens"});

  const std::string longer = dir.str("longer.bin");
  write_raw(longer, header_with(kShardMagic, kShardVersion, 10), 24);
  expect_error([&] { TokenShard s(longer); }, {"[data]", longer, "10 tokens"});

  const std::string magic = dir.str("magic.bin");
  write_raw(magic, header_with(12345, kShardVersion, 10), 20);
  expect_error([&] { TokenShard s(magic); }, {magic, "not a token shard: magic 12345, expected 20240520"});

  const std::string version = dir.str("version.bin");
  write_raw(version, header_with(kShardMagic, 2, 10), 40);
  expect_error([&] { TokenShard s(version); }, {version, "unsupported shard version 2"});

  const std::string tiny = dir.str("tiny.bin");
  write_raw(tiny, {kShardMagic, kShardVersion, 0}, 88);
  expect_error([&] { TokenShard s(tiny); }, {tiny, "100 bytes", "shorter than the 1024-byte header"});

  const std::string empty = dir.str("empty.bin");
  std::ofstream(empty).close();
  expect_error([&] { TokenShard s(empty); }, {empty, "0 bytes"});

  EXPECT_THROW(TokenShard(dir.str("missing.bin")), Error);
}

TEST(Shard, TokensPastTheVocabularyAreFoundAtOpenWithTheirPosition) {
  ScratchDir dir("data");
  std::vector<int32_t> tokens(200000);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<int32_t>(i * 7919 % 1000);  // ids below 1000
  const std::string good = dir.str("good.bin"), bad = dir.str("bad.bin");
  write_token_shard(good, tokens);
  EXPECT_EQ(check_shard_vocab({good}, 1000), 200000);
  tokens[123456] = 1000;  // one id just past the vocabulary, in the second scan block
  write_token_shard(bad, tokens);
  expect_error([&] { check_shard_vocab({good, bad}, 1000); },
               {"[data]", bad, "token 1000 (index 123456, byte offset 247936)", "vocabulary size 1000"});
  EXPECT_EQ(check_shard_vocab({bad}, 1001), 200000) << "a larger vocabulary holds the id";
}

// Shards whose tokens name their own position (shard s, offset i -> s * 5000 + i), so the first token
// of a row says which window it is.
struct PositionalData {
  ScratchDir dir{"data"};
  std::vector<std::string> paths;
  std::vector<std::vector<int32_t>> shards;
  PositionalData(const std::vector<int>& sizes) {
    for (size_t s = 0; s < sizes.size(); ++s) {
      std::vector<int32_t> t(sizes[s]);
      for (int i = 0; i < sizes[s]; ++i) t[i] = static_cast<int32_t>(s * 5000 + i);
      paths.push_back(dir.str(fmt::format("shard_{:03d}.bin", s)));
      write_token_shard(paths.back(), t);
      shards.push_back(std::move(t));
    }
  }
};

// Reads `batches` global batches of `rows` rows and returns each row's first token.
std::vector<int32_t> first_tokens(DataLoader& loader, int rows, int batches) {
  std::vector<int32_t> out;
  std::vector<int32_t> buf(static_cast<size_t>(rows) * (loader.seq_len() + 1), -7);
  for (int b = 0; b < batches; ++b) {
    loader.next_batch(rows, 0, 1, buf.data());
    for (int r = 0; r < rows; ++r) out.push_back(buf[static_cast<size_t>(r) * (loader.seq_len() + 1)]);
  }
  return out;
}

TEST(Loader, WindowsEndAtShardBoundaries) {
  ScratchDir dir("data");
  const int T = 8;
  // (n - 1) / T windows each: 2, 1, 1, 0, 0, 3.
  const std::vector<int> sizes = {17, 16, 9, 8, 0, 25};
  std::vector<std::string> paths;
  std::vector<std::vector<int32_t>> data;
  for (size_t s = 0; s < sizes.size(); ++s) {
    data.push_back(random_tokens(sizes[s], 100 + s));
    paths.push_back(dir.str(fmt::format("w_{}.bin", s)));
    write_token_shard(paths.back(), data.back());
  }
  DataLoader loader(paths, T, /*shuffle=*/false, 0);
  ASSERT_EQ(loader.num_windows(), 7);

  std::vector<std::pair<size_t, int>> expected = {{0, 0}, {0, 8}, {1, 0}, {2, 0}, {5, 0}, {5, 8}, {5, 16}};
  std::vector<int32_t> row(T + 1);
  for (auto [shard, start] : expected) {
    std::fill(row.begin(), row.end(), -7);
    loader.next_batch(1, 0, 1, row.data());
    std::vector<int32_t> want(data[shard].begin() + start, data[shard].begin() + start + T + 1);
    EXPECT_EQ(row, want) << "shard " << shard << " start " << start;
  }
  // The last window of a shard of 17 (and of 25) ends on its last token; the shard of 16 leaves 7 unused.
  EXPECT_EQ(loader.state().epoch, 1u);
  EXPECT_EQ(loader.state().cursor, 0u);
}

TEST(Loader, DataTooSmallForSeqLenIsAClearError) {
  PositionalData d({8, 5, 0});
  expect_error([&] { DataLoader l(d.paths, 8, false, 0); }, {"[data]", "too small for seq_len 8", "13 tokens"});
  expect_error([&] { DataLoader l(d.paths, 0, false, 0); }, {"[data]", "seq_len"});
  DataLoader ok(d.paths, 7, false, 0);
  EXPECT_EQ(ok.num_windows(), 1);
}

TEST(Loader, SequentialOrderCoversEachWindowOncePerEpoch) {
  PositionalData d({41, 30, 22});  // T = 5: 8 + 5 + 4 = 17 windows
  DataLoader loader(d.paths, 5, /*shuffle=*/false, 0);
  ASSERT_EQ(loader.num_windows(), 17);
  const auto got = first_tokens(loader, 3, 17);  // 51 rows = 3 epochs
  std::vector<int32_t> epoch;
  for (int s = 0; s < 3; ++s) {
    for (int k = 0; k < (static_cast<int>(d.shards[s].size()) - 1) / 5; ++k) epoch.push_back(s * 5000 + k * 5);
  }
  for (int e = 0; e < 3; ++e) {
    EXPECT_TRUE(std::equal(epoch.begin(), epoch.end(), got.begin() + e * 17)) << "epoch " << e;
  }
  EXPECT_EQ(loader.state().epoch, 3u);
  EXPECT_EQ(loader.state().cursor, 0u);
}

TEST(Loader, ShuffleIsDeterministicAndAPermutationPerEpoch) {
  PositionalData d({201, 150, 100});  // T = 10: 20 + 14 + 9 = 43 windows
  const int n = 43;
  auto run = [&](uint64_t seed) {
    DataLoader l(d.paths, 10, /*shuffle=*/true, seed);
    EXPECT_EQ(l.num_windows(), n);
    return first_tokens(l, 1, 3 * n);
  };
  const auto a = run(1234), b = run(1234), c = run(99);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);

  DataLoader seq(d.paths, 10, false, 0);
  const auto in_order = first_tokens(seq, 1, n);
  const std::set<int32_t> all(in_order.begin(), in_order.end());
  ASSERT_EQ(all.size(), static_cast<size_t>(n));
  std::vector<std::vector<int32_t>> epochs;
  for (int e = 0; e < 3; ++e) {
    epochs.emplace_back(a.begin() + e * n, a.begin() + (e + 1) * n);
    EXPECT_EQ(std::set<int32_t>(epochs[e].begin(), epochs[e].end()), all) << "epoch " << e;
    EXPECT_NE(epochs[e], in_order) << "epoch " << e << " is not shuffled";
  }
  EXPECT_NE(epochs[0], epochs[1]);
  EXPECT_NE(epochs[1], epochs[2]);
}

TEST(Loader, RanksSliceTheSameGlobalBatch) {
  PositionalData d({301, 177});  // T = 16: 18 + 11 = 29 windows, so batches of 8 wrap epochs
  const int T = 16, rows = 8, steps = 9;
  const size_t row_len = T + 1;
  DataLoader single(d.paths, T, true, 7);
  std::vector<std::vector<int32_t>> want(steps, std::vector<int32_t>(rows * row_len));
  for (auto& batch : want) single.next_batch(rows, 0, 1, batch.data());

  for (int world : {1, 2, 4}) {
    std::vector<DataLoader> ranks;
    for (int r = 0; r < world; ++r) ranks.emplace_back(d.paths, T, true, 7);
    for (int step = 0; step < steps; ++step) {
      std::vector<int32_t> joined;
      for (int r = 0; r < world; ++r) {
        std::vector<int32_t> part(rows / world * row_len, -7);
        ranks[r].next_batch(rows, r, world, part.data());
        joined.insert(joined.end(), part.begin(), part.end());
      }
      EXPECT_EQ(joined, want[step]) << "world " << world << " step " << step;
    }
    for (int r = 0; r < world; ++r) {
      EXPECT_EQ(ranks[r].state().epoch, single.state().epoch);
      EXPECT_EQ(ranks[r].state().cursor, single.state().cursor);
    }
  }

  std::vector<int32_t> buf(rows * row_len);
  expect_error([&] { single.next_batch(6, 0, 4, buf.data()); }, {"[data]", "6 rows", "4"});
  expect_error([&] { single.next_batch(8, 4, 4, buf.data()); }, {"[data]", "rank 4"});
  expect_error([&] { single.next_batch(0, 0, 1, buf.data()); }, {"[data]", "global_rows"});
}

TEST(Loader, SetStateResumesExactly) {
  PositionalData d({333, 120, 97});  // T = 12: 27 + 9 + 8 = 44 windows
  for (bool shuffle : {false, true}) {
    DataLoader a(d.paths, 12, shuffle, 42);
    first_tokens(a, 5, 7);  // 35 rows in: the next batches cross into epoch 1
    const LoaderState saved = a.state();
    const auto continued = first_tokens(a, 5, 12);

    DataLoader b(d.paths, 12, shuffle, 42);
    b.set_state(saved);
    EXPECT_EQ(first_tokens(b, 5, 12), continued) << "shuffle " << shuffle;
    EXPECT_EQ(b.state().epoch, a.state().epoch);
    EXPECT_EQ(b.state().cursor, a.state().cursor);

    // Rewinding the same loader works too, although its cached permutation is for a later epoch.
    a.set_state(saved);
    EXPECT_EQ(first_tokens(a, 5, 12), continued) << "shuffle " << shuffle;
  }
}

TEST(Paths, GlobsAndListsAreSortedAndDeduplicated) {
  ScratchDir dir("data");
  for (const char* name : {"a_001.bin", "a_000.bin", "a_002.bin", "b.bin", "c.txt"}) {
    std::ofstream(dir.str(name)) << "x";
  }
  fs::create_directories(dir.str("a_sub.bin"));
  const auto got = expand_shard_paths(dir.str("b.bin") + ", " + dir.str("a_*.bin") + "," + dir.str("a_000.bin"));
  const std::vector<std::string> want = {dir.str("a_000.bin"), dir.str("a_001.bin"), dir.str("a_002.bin"),
                                         dir.str("b.bin")};
  EXPECT_EQ(got, want);
  EXPECT_EQ(expand_shard_paths(dir.str("c.txt")), std::vector<std::string>{dir.str("c.txt")});

  const std::string nothing = dir.str("val_*.bin");
  expect_error([&] { expand_shard_paths(dir.str("b.bin") + "," + nothing); }, {"[data]", nothing, "matched no files"});
  expect_error([&] { expand_shard_paths(dir.str("missing.bin")); }, {dir.str("missing.bin"), "matched no files"});
  expect_error([&] { expand_shard_paths(dir.str("a_sub.bin")); }, {dir.str("a_sub.bin")});
  expect_error([&] { expand_shard_paths(" , "); }, {"[data]", "no shard paths"});
}

// A small corpus of made-up words over a few syllables, with punctuation, digits, non-ASCII text and
// indented lines, so the BPE learns real merges and the pre-tokenizer sees every kind of piece.
std::string make_corpus(uint64_t seed, int lines) {
  static const char* syllables[] = {"ka", "lo", "mi", "ne", "ru", "ta", "shi", "en", "or", "qu", "ée", "日本"};
  static const char* marks[] = {".", ",", "!", "?", ";", " 42", " 7.5", "'s"};
  CounterRng rng(seed, 3);
  std::string text;
  for (int l = 0; l < lines; ++l) {
    if (rng.below(8) == 0) text += "  ";
    const int words = 2 + static_cast<int>(rng.below(10));
    for (int w = 0; w < words; ++w) {
      if (w > 0) text += ' ';
      const int syl = 1 + static_cast<int>(rng.below(3));
      for (int k = 0; k < syl; ++k) text += syllables[rng.below(std::size(syllables))];
      if (rng.below(6) == 0) text += marks[rng.below(std::size(marks))];
    }
    text += rng.below(10) == 0 ? "\n\n" : "\n";
  }
  return text;
}

std::vector<int32_t> read_shard(const std::string& path) {
  TokenShard s(path);
  return std::vector<int32_t>(s.tokens(), s.tokens() + s.size());
}

// One BPE vocabulary trained once for all the tokenize tests.
class Tokenize : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new ScratchDir("data_tok");
    for (int i = 0; i < 3; ++i) {
      inputs_.push_back(dir_->str(fmt::format("doc{}.txt", i)));
      texts_.push_back(make_corpus(500 + i, 400 + 150 * i));
      std::ofstream(inputs_.back(), std::ios::binary) << texts_.back();
    }
    train_bpe(inputs_, 400, dir_->str("vocab"));
    tokenizer_ = new Tokenizer(Tokenizer::load(dir_->str("vocab")));
  }
  static void TearDownTestSuite() {
    delete tokenizer_;
    delete dir_;
    inputs_.clear();
    texts_.clear();
  }
  static inline ScratchDir* dir_ = nullptr;
  static inline Tokenizer* tokenizer_ = nullptr;
  static inline std::vector<std::string> inputs_;
  static inline std::vector<std::string> texts_;
};

TEST_F(Tokenize, ShardsDecodeToTheJoinedTextWithAValidationTail) {
  ASSERT_GE(tokenizer_->eot_id(), 0);
  ScratchDir out("data");
  const std::string out_dir = out.str("nested/shards");
  const TokenizeResult r = tokenize_files(*tokenizer_, inputs_, out_dir, 0.1);
  EXPECT_TRUE(fs::exists(out_dir + "/train_000000.bin"));
  EXPECT_TRUE(fs::exists(out_dir + "/val_000000.bin"));
  EXPECT_FALSE(fs::exists(out_dir + "/train_000001.bin"));
  EXPECT_FALSE(fs::exists(out_dir + "/val_000001.bin"));

  const auto train = read_shard(out_dir + "/train_000000.bin");
  const auto val = read_shard(out_dir + "/val_000000.bin");
  EXPECT_EQ(r.train_tokens, static_cast<int64_t>(train.size()));
  EXPECT_EQ(r.val_tokens, static_cast<int64_t>(val.size()));
  ASSERT_GT(val.size(), 0u);

  const std::string joined = texts_[0] + "<|endoftext|>" + texts_[1] + "<|endoftext|>" + texts_[2];
  const std::string train_text = tokenizer_->decode(train);
  const std::string val_text = tokenizer_->decode(val);
  EXPECT_EQ(train_text + val_text, joined);
  // The split is at a line start, near the requested fraction of the bytes.
  ASSERT_GT(train_text.size(), 0u);
  EXPECT_EQ(train_text.back(), '\n');
  const double frac = static_cast<double>(val_text.size()) / static_cast<double>(joined.size());
  EXPECT_NEAR(frac, 0.1, 0.01);
  // Files are separated by the special token, and each split is the tokenizer's own encoding.
  EXPECT_EQ(std::count(train.begin(), train.end(), tokenizer_->eot_id()), 2);
  EXPECT_EQ(train, tokenizer_->encode(train_text, true));
  EXPECT_EQ(val, tokenizer_->encode(val_text, true));
  // Learned merges are in use: fewer tokens than bytes.
  EXPECT_LT(train.size(), train_text.size() * 3 / 4);
}

TEST_F(Tokenize, NoValidationSplitAndStaleShardsRemoved) {
  ScratchDir out("data");
  write_token_shard(out.str("train_000003.bin"), random_tokens(10, 5));
  write_token_shard(out.str("val_000000.bin"), random_tokens(10, 6));
  std::ofstream(out.str("notes.txt")) << "kept";
  const TokenizeResult r = tokenize_files(*tokenizer_, {inputs_[1]}, out.str(), 0.0);
  EXPECT_EQ(r.val_tokens, 0);
  const auto train = read_shard(out.str("train_000000.bin"));
  EXPECT_EQ(r.train_tokens, static_cast<int64_t>(train.size()));
  EXPECT_EQ(tokenizer_->decode(train), texts_[1]);
  EXPECT_FALSE(fs::exists(out.str("train_000003.bin")));
  EXPECT_FALSE(fs::exists(out.str("val_000000.bin")));
  EXPECT_TRUE(fs::exists(out.str("notes.txt")));
  // The output is loadable: the loader reads what the pipeline wrote.
  DataLoader loader(expand_shard_paths(out.str("train_*.bin")), 32, true, 1);
  EXPECT_EQ(loader.num_windows(), (r.train_tokens - 1) / 32);
}

TEST_F(Tokenize, BadInputsAreClearErrors) {
  ScratchDir out("data");
  const std::string missing = out.str("no_such.txt");
  expect_error([&] { tokenize_files(*tokenizer_, {inputs_[0], missing}, out.str("o"), 0.1); }, {"[tokenize]", missing});
  expect_error([&] { tokenize_files(*tokenizer_, inputs_, out.str("o"), 1.0); }, {"[tokenize]", "val_fraction"});
  expect_error([&] { tokenize_files(*tokenizer_, inputs_, out.str("o"), -0.1); }, {"[tokenize]", "val_fraction"});
  const std::string one_line = out.str("one_line.txt");
  std::ofstream(one_line) << "kalo mine ruta shien orqu kalo mine ruta shien orqu kalo";
  expect_error([&] { tokenize_files(*tokenizer_, {one_line}, out.str("o"), 0.2); },
               {"[tokenize]", "validation split", "empty"});
  EXPECT_NO_THROW(tokenize_files(*tokenizer_, {one_line}, out.str("o"), 0.0));
}

TEST_F(Tokenize, RefusesVocabulariesOver65536BeforeAnyWork) {
  // Same vocabulary with <|endoftext|> moved to id 70000: vocab_size() becomes 70001.
  ScratchDir big("data");
  nlohmann::json enc = nlohmann::json::parse(std::ifstream(dir_->str("vocab/encoder.json")));
  enc["<|endoftext|>"] = 70000;
  std::ofstream(big.str("encoder.json")) << enc.dump();
  fs::copy_file(dir_->str("vocab/vocab.bpe"), big.str("vocab.bpe"));
  const Tokenizer huge = Tokenizer::load(big.str());
  ASSERT_GT(huge.vocab_size(), 65536);
  const std::string out_dir = big.str("out");
  expect_error([&] { tokenize_files(huge, {big.str("missing.txt")}, out_dir, 0.1); },
               {"[tokenize]", "70001", "vocabularies over 65536 tokens are not supported"});
  EXPECT_FALSE(fs::exists(out_dir));
}

}  // namespace
}  // namespace meshtrain
