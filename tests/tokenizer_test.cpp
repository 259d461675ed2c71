// Tokenizer tests: GPT-2's published cases, the pre-tokenizer piece by piece, round trips of random
// bytes, agreement with a plain reference BPE, the trainer on hand-made and generated corpora, and
// the errors that broken tokenizer files must raise.
#include "model/text/tokenizer.h"

#include <gtest/gtest.h>

#include <climits>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "test_util.h"

namespace meshtrain {
namespace {

namespace fs = std::filesystem;
using testing::ScratchDir;

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void write_text(const fs::path& path, std::string_view text) {
  std::ofstream out(path, std::ios::binary);
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
}

std::string from_hex(std::string_view hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2)
    out.push_back(static_cast<char>(std::stoi(std::string(hex.substr(i, 2)), nullptr, 16)));
  return out;
}

std::vector<std::string> pieces(std::string_view text) {
  std::vector<std::string> out;
  gpt2_pretokenize(text, [&](std::string_view p) { out.emplace_back(p); });
  return out;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out += {static_cast<char>(0xC0 | (cp >> 6)), static_cast<char>(0x80 | (cp & 0x3F))};
  } else if (cp < 0x10000) {
    out += {static_cast<char>(0xE0 | (cp >> 12)), static_cast<char>(0x80 | ((cp >> 6) & 0x3F)),
            static_cast<char>(0x80 | (cp & 0x3F))};
  } else {
    out += {static_cast<char>(0xF0 | (cp >> 18)), static_cast<char>(0x80 | ((cp >> 12) & 0x3F)),
            static_cast<char>(0x80 | ((cp >> 6) & 0x3F)), static_cast<char>(0x80 | (cp & 0x3F))};
  }
}

// Random text of three kinds: raw bytes, multilingual UTF-8 with digits and punctuation, and
// whitespace-heavy text with contractions.
std::string random_text(CounterRng& rng, int kind, size_t len) {
  std::string s;
  if (kind == 0) {
    while (s.size() < len) s.push_back(static_cast<char>(rng.below(256)));
    return s;
  }
  static const uint32_t kBlocks[][2] = {{0x20, 0x7E},     {0xA0, 0xFF},       {0x391, 0x3C9},    {0x410, 0x44F},
                                        {0x5D0, 0x5EA},   {0x660, 0x669},     {0x900, 0x97F},    {0x1780, 0x17DD},
                                        {0x2000, 0x206F}, {0x3000, 0x303F},   {0x4E00, 0x4FFF},  {0xAC00, 0xAD00},
                                        {0xFF10, 0xFF5A}, {0x1F300, 0x1F6FF}, {0x10000, 0x1007F}};
  static const char* kWhite[] = {" ", "  ", "\n", "\n\n", "\t", " \n ", "\r\n", "\xC2\xA0", "\xE3\x80\x80", "   "};
  static const char* kWords[] = {"'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "hello", " world", "42", "?!"};
  while (s.size() < len) {
    uint64_t pick = rng.below(10);
    if (kind == 2 && pick < 4) {
      s += kWhite[rng.below(std::size(kWhite))];
    } else if (kind == 2 && pick < 7) {
      s += kWords[rng.below(std::size(kWords))];
    } else {
      const uint32_t* block = kBlocks[rng.below(std::size(kBlocks))];
      append_utf8(s, block[0] + static_cast<uint32_t>(rng.below(block[1] - block[0] + 1)));
    }
  }
  return s;
}

// GPT-2's bpe() as published, over the printable strings of the files, for comparison.
class ReferenceBpe {
 public:
  explicit ReferenceBpe(const fs::path& dir) {
    nlohmann::json enc = nlohmann::json::parse(read_text(dir / "encoder.json"));
    for (auto& [k, v] : enc.items()) ids_[k] = v.get<int32_t>();
    std::istringstream lines(read_text(dir / "vocab.bpe"));
    std::string line;
    std::getline(lines, line);
    int rank = 0;
    while (std::getline(lines, line)) {
      if (line.empty()) continue;
      size_t sp = line.find(' ');
      ranks_[{line.substr(0, sp), line.substr(sp + 1)}] = rank++;
    }
    int n = 256;
    for (int b = 0; b < 256; ++b) {
      bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
      std::string ch;
      append_utf8(ch, printable ? static_cast<uint32_t>(b) : static_cast<uint32_t>(n++));
      byte_char_[b] = ch;
    }
  }
  std::vector<int32_t> encode(std::string_view text) const {
    std::vector<int32_t> out;
    for (const std::string& piece : pieces(text)) {
      std::vector<std::string> word;
      for (unsigned char b : piece) word.push_back(byte_char_[b]);
      while (word.size() > 1) {
        int best = INT_MAX;
        std::pair<std::string, std::string> bigram;
        for (size_t i = 0; i + 1 < word.size(); ++i) {
          auto it = ranks_.find({word[i], word[i + 1]});
          if (it != ranks_.end() && it->second < best) best = it->second, bigram = it->first;
        }
        if (best == INT_MAX) break;
        std::vector<std::string> merged;
        for (size_t i = 0; i < word.size();) {
          if (i + 1 < word.size() && word[i] == bigram.first && word[i + 1] == bigram.second) {
            merged.push_back(word[i] + word[i + 1]);
            i += 2;
          } else {
            merged.push_back(word[i++]);
          }
        }
        word = std::move(merged);
      }
      for (const std::string& w : word) out.push_back(ids_.at(w));
    }
    return out;
  }

 private:
  std::map<std::string, int32_t> ids_;
  std::map<std::pair<std::string, std::string>, int> ranks_;
  std::string byte_char_[256];
};

std::string gpt2_dir() {
  std::string data = testing::shared_data_dir();
  return data.empty() ? "" : (fs::path(data) / "gpt2").string();
}

// One GPT-2 tokenizer (when the shared data is there) and one vocabulary trained on a generated
// corpus, made on first use and shared by the tests because loading and training are the slow parts.
struct SharedTokenizers {
  static constexpr int kTrainedVocab = 600;
  std::unique_ptr<Tokenizer> gpt2;
  std::unique_ptr<Tokenizer> trained;
  fs::path trained_dir;

  SharedTokenizers() {
    if (std::string dir = gpt2_dir(); !dir.empty()) gpt2 = std::make_unique<Tokenizer>(Tokenizer::load(dir));
    fs::path root = fs::temp_directory_path() / ("meshtrain_tok_trained_" + std::to_string(::getpid()));
    fs::create_directories(root);
    CounterRng rng(11, 3);
    static const char* kSyllables[] = {"ka", "to", "ri", "mu", "sen", "do", "la", "qui", "ver", "ne", "sto", "pha"};
    std::string corpus;
    while (corpus.size() < 60000) {
      int syllables = 1 + static_cast<int>(rng.below(4));
      for (int k = 0; k < syllables; ++k) corpus += kSyllables[rng.below(std::size(kSyllables))];
      corpus += rng.below(8) == 0 ? ".\n" : (rng.below(5) == 0 ? ", " : " ");
      if (rng.below(50) == 0) corpus += std::to_string(rng.below(100000)) + " ";
    }
    write_text(root / "corpus.txt", corpus);
    trained_dir = root / "vocab";
    train_bpe({(root / "corpus.txt").string()}, kTrainedVocab, trained_dir.string());
    trained = std::make_unique<Tokenizer>(Tokenizer::load(trained_dir.string()));
  }
  ~SharedTokenizers() {
    std::error_code ec;
    fs::remove_all(trained_dir.parent_path(), ec);
  }
};

SharedTokenizers& shared() {
  static SharedTokenizers s;
  return s;
}

class TokenizerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    gpt2_ = shared().gpt2.get();
    trained_ = shared().trained.get();
    trained_dir_ = &shared().trained_dir;
  }
  static constexpr int kTrainedVocab = SharedTokenizers::kTrainedVocab;
  Tokenizer* gpt2_ = nullptr;
  Tokenizer* trained_ = nullptr;
  const fs::path* trained_dir_ = nullptr;
};

TEST_F(TokenizerTest, SharedCasesMatchGpt2) {
  MT_REQUIRE_SHARED_DATA(data);
  ASSERT_NE(gpt2_, nullptr);
  EXPECT_EQ(gpt2_->vocab_size(), 50257);
  EXPECT_EQ(gpt2_->eot_id(), 50256);
  std::istringstream rows(read_text(fs::path(data) / "gpt2" / "tokenizer_cases.tsv"));
  std::string row;
  int cases = 0;
  while (std::getline(rows, row)) {
    if (row.empty() || row[0] == '#') continue;
    std::vector<std::string> cols;
    std::istringstream fields(row);
    for (std::string f; std::getline(fields, f, '\t');) cols.push_back(f);
    cols.resize(4);
    std::string text = from_hex(cols[2]);
    std::vector<int32_t> want;
    std::istringstream ids(cols[3]);
    for (int32_t id; ids >> id;) want.push_back(id);
    std::vector<int32_t> got = gpt2_->encode(text, cols[1] == "1");
    EXPECT_EQ(got, want) << cols[0] << " case with text hex " << cols[2];
    EXPECT_EQ(gpt2_->decode(got), text);
    ++cases;
  }
  EXPECT_EQ(cases, 74);
}

TEST_F(TokenizerTest, EndOfTextIsPlainTextWhenSpecialTokensAreOff) {
  MT_REQUIRE_SHARED_DATA(data);
  EXPECT_EQ(gpt2_->encode("hello <|endoftext|>", true), (std::vector<int32_t>{31373, 220, 50256}));
  EXPECT_EQ(gpt2_->encode("hello <|endoftext|>", false),
            (std::vector<int32_t>{31373, 1279, 91, 437, 1659, 5239, 91, 29}));
  EXPECT_EQ(gpt2_->encode("<|endoftext|><|endoftext|>a", true), (std::vector<int32_t>{50256, 50256, 64}));
}

TEST_F(TokenizerTest, TinyShakespeareTokenCounts) {
  MT_REQUIRE_SHARED_DATA(data);
  std::string text = read_text(fs::path(data) / "tinyshakespeare" / "input.txt");
  ASSERT_EQ(text.size(), 1115394u);
  EXPECT_EQ(gpt2_->encode(text).size(), 338025u);
  // nanoGPT's split: the first 90% of characters (bytes: the file is ASCII) and the rest.
  size_t cut = text.size() * 9 / 10;
  EXPECT_EQ(gpt2_->encode(std::string_view(text).substr(0, cut)).size(), 301966u);
  EXPECT_EQ(gpt2_->encode(std::string_view(text).substr(cut)).size(), 36059u);
}

TEST(Pretokenize, SplitsLikeGpt2Pattern) {
  using V = std::vector<std::string>;
  EXPECT_EQ(pieces("Hello world"), (V{"Hello", " world"}));
  EXPECT_EQ(pieces("I'm  here's"), (V{"I", "'m", " ", " here", "'s"}));
  EXPECT_EQ(pieces("don't DON'T 'll've"), (V{"don", "'t", " DON", "'", "T", " '", "ll", "'ve"}));
  EXPECT_EQ(pieces("a  \n\nb"), (V{"a", "  \n", "\n", "b"}));
  EXPECT_EQ(pieces("x 123 4567 3.14"), (V{"x", " 123", " 4567", " 3", ".", "14"}));
  EXPECT_EQ(pieces("hi!!! ?"), (V{"hi", "!!!", " ?"}));
  EXPECT_EQ(pieces("end   "), (V{"end", "   "}));
  EXPECT_EQ(pieces("\xC2\xA0x"), (V{"\xC2\xA0", "x"}));
  EXPECT_EQ(pieces("\xD0\x9F\xD1\x80\xD0\xB8 \xD0\xBC\xD0\xB8\xD1\x80"),
            (V{"\xD0\x9F\xD1\x80\xD0\xB8", " \xD0\xBC\xD0\xB8\xD1\x80"}));
  EXPECT_EQ(pieces("a\xFF\xFE"
                   "b \xFF"
                   "c"),
            (V{"a", "\xFF\xFE", "b", " \xFF", "c"}));
  // An overlong encoding and a lone continuation byte are invalid: one symbol per byte.
  EXPECT_EQ(pieces("\xC0\xAF"
                   "1\x80"),
            (V{"\xC0\xAF", "1", "\x80"}));
  EXPECT_EQ(pieces("\xE4\xB8\xAD\xE6\x96\x87\xEF\xBC\x8C\xE5\xAD\x97"),
            (V{"\xE4\xB8\xAD\xE6\x96\x87", "\xEF\xBC\x8C", "\xE5\xAD\x97"}));
  EXPECT_TRUE(pieces("").empty());
}

TEST(Pretokenize, PiecesCoverRandomInputExactly) {
  CounterRng rng(21, 1);
  for (int trial = 0; trial < 300; ++trial) {
    std::string text = random_text(rng, trial % 3, 1 + rng.below(200));
    std::string joined;
    for (const std::string& p : pieces(text)) {
      ASSERT_FALSE(p.empty());
      joined += p;
    }
    ASSERT_EQ(joined, text);
  }
}

TEST_F(TokenizerTest, RoundTripsRandomBytesWithGpt2Vocab) {
  MT_REQUIRE_SHARED_DATA(data);
  CounterRng rng(31, 2);
  for (int trial = 0; trial < 600; ++trial) {
    std::string text = random_text(rng, trial % 3, 1 + rng.below(400));
    std::vector<int32_t> ids = gpt2_->encode(text, false);
    ASSERT_EQ(gpt2_->decode(ids), text) << "trial " << trial;
  }
}

TEST_F(TokenizerTest, RoundTripsRandomBytesWithTrainedVocab) {
  CounterRng rng(41, 2);
  for (int trial = 0; trial < 600; ++trial) {
    std::string text = random_text(rng, trial % 3, 1 + rng.below(400));
    std::vector<int32_t> ids = trained_->encode(text, trial % 2 == 0);
    for (int32_t id : ids) ASSERT_TRUE(id >= 0 && id < kTrainedVocab);
    ASSERT_EQ(trained_->decode(ids), text) << "trial " << trial;
  }
}

// Long words take the heap path; words repeat so the cache answers too. Both must agree with bpe().
void expect_matches_reference(Tokenizer& tok, const fs::path& dir, uint64_t seed, const std::string& alphabet) {
  ReferenceBpe ref(dir);
  CounterRng rng(seed, 5);
  std::vector<std::string> texts;
  for (int trial = 0; trial < 60; ++trial) {
    std::string word;
    size_t len = trial % 4 == 0 ? 65 + rng.below(300) : 1 + rng.below(40);
    while (word.size() < len) word.push_back(alphabet[rng.below(alphabet.size())]);
    texts.push_back(word);
    texts.push_back(random_text(rng, 1 + trial % 2, 1 + rng.below(120)));
  }
  for (int pass = 0; pass < 2; ++pass) {
    for (const std::string& text : texts) ASSERT_EQ(tok.encode(text, false), ref.encode(text)) << text;
  }
}

TEST_F(TokenizerTest, AgreesWithReferenceBpeOnTrainedVocab) {
  expect_matches_reference(*trained_, *trained_dir_, 51, "katorimusendolaquivernestopha");
}

TEST_F(TokenizerTest, AgreesWithReferenceBpeOnGpt2Vocab) {
  MT_REQUIRE_SHARED_DATA(data);
  expect_matches_reference(*gpt2_, fs::path(data) / "gpt2", 61, "abcdefghijklmnopqrstuvwxyzeeeaaa");
}

TEST_F(TokenizerTest, TrainedVocabHonoursSizeAndCompressesTrainingWords) {
  EXPECT_EQ(trained_->vocab_size(), kTrainedVocab);
  EXPECT_EQ(trained_->eot_id(), kTrainedVocab - 1);
  EXPECT_EQ(trained_->token_bytes(trained_->eot_id()), "<|endoftext|>");
  for (std::string word : {"kato", " rimusen", " laquiver", " stopha"}) {
    std::vector<int32_t> ids = trained_->encode(word);
    EXPECT_LT(ids.size(), word.size()) << word;
    EXPECT_EQ(trained_->decode(ids), word);
  }
  EXPECT_EQ(trained_->encode("x<|endoftext|>", true).back(), kTrainedVocab - 1);
  // Byte tokens keep GPT-2's ids, so "!" is 0 and the space byte is 220.
  EXPECT_EQ(trained_->encode("!"), std::vector<int32_t>{0});
  EXPECT_EQ(trained_->encode(" "), std::vector<int32_t>{220});
}

TEST(Trainer, LearnsObviousMergesInOrder) {
  ScratchDir dir("tok");
  std::string corpus;
  for (int i = 0; i < 60; ++i) corpus += "zz\n";
  for (int i = 0; i < 50; ++i) corpus += "hello\n";
  write_text(dir.path() / "c.txt", corpus);
  std::vector<std::pair<int, int>> calls;
  train_bpe({dir.str("c.txt")}, 262, dir.str("out/nested"),
            [&](int done, int wanted) { calls.emplace_back(done, wanted); });
  // "zz" is the most frequent pair; then "hello"'s pairs tie at 50 and go in lexicographic order.
  EXPECT_EQ(read_text(dir.path() / "out/nested/vocab.bpe"), "#version: 0.2\nz z\ne l\nel l\nell o\nh ello\n");
  ASSERT_FALSE(calls.empty());
  EXPECT_EQ(calls.back(), std::make_pair(5, 5));
  Tokenizer tok = Tokenizer::load(dir.str("out/nested"));
  EXPECT_EQ(tok.vocab_size(), 262);
  EXPECT_EQ(tok.encode("zz"), std::vector<int32_t>{256});
  EXPECT_EQ(tok.encode("hello"), std::vector<int32_t>{260});
  EXPECT_EQ(tok.encode("hello\nzz"), (std::vector<int32_t>{260, 198, 256}));
  EXPECT_EQ(tok.eot_id(), 261);
  for (const auto& entry : fs::directory_iterator(dir.path() / "out/nested")) {
    EXPECT_EQ(entry.path().string().find(".tmp"), std::string::npos) << "temporary file left behind";
  }
}

TEST(Trainer, StopsWhenTheCorpusRunsOutOfPairs) {
  ScratchDir dir("tok");
  write_text(dir.path() / "c.txt", "abc abc abc");
  train_bpe({dir.str("c.txt")}, 1000, dir.str("out"));
  Tokenizer tok = Tokenizer::load(dir.str("out"));
  // "a b", "ab c", " abc": then every word is one token.
  EXPECT_EQ(tok.vocab_size(), 256 + 3 + 1);
  EXPECT_EQ(read_text(dir.path() / "out/vocab.bpe"), "#version: 0.2\na b\nab c\n\xC4\xA0 abc\n");
  EXPECT_EQ(tok.encode("abc abc").size(), 2u);
}

TEST(Trainer, RejectsBadArguments) {
  ScratchDir dir("tok");
  write_text(dir.path() / "c.txt", "some text");
  try {
    train_bpe({dir.str("c.txt")}, 257, dir.str("out"));
    FAIL() << "vocab_size 257 accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("vocab_size"), std::string::npos) << e.what();
  }
  try {
    train_bpe({dir.str("missing.txt")}, 300, dir.str("out"));
    FAIL() << "missing input accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("missing.txt"), std::string::npos) << e.what();
  }
}

// Writes a corrupted copy of the trained files and expects load to fail mentioning `mention`.
class BrokenFilesTest : public TokenizerTest {
 protected:
  void expect_load_error(const std::function<void(const fs::path&)>& corrupt, const std::string& mention) {
    ScratchDir dir("tok");
    fs::copy(*trained_dir_, dir.path());
    corrupt(dir.path());
    try {
      Tokenizer::load(dir.str());
      ADD_FAILURE() << "load accepted broken files (expected an error mentioning " << mention << ")";
    } catch (const Error& e) {
      std::string msg = e.what();
      EXPECT_EQ(msg.rfind("[tokenizer]", 0), 0u) << msg;
      EXPECT_NE(msg.find(mention), std::string::npos) << msg;
    }
  }
};

TEST_F(BrokenFilesTest, EachProblemNamesTheFile) {
  expect_load_error([](const fs::path& d) { fs::remove_all(d); }, "encoder.json");
  expect_load_error([](const fs::path& d) { fs::remove(d / "encoder.json"); }, "encoder.json");
  expect_load_error([](const fs::path& d) { fs::remove(d / "vocab.bpe"); }, "vocab.bpe");
  expect_load_error(
      [](const fs::path& d) {
        std::string text = read_text(d / "encoder.json");
        write_text(d / "encoder.json", text.substr(0, text.size() / 2));
      },
      "encoder.json");
  expect_load_error([](const fs::path& d) { write_text(d / "encoder.json", "{\"a\": 1,, }"); }, "encoder.json");
  expect_load_error([](const fs::path& d) { write_text(d / "encoder.json", "[1, 2, 3]"); }, "encoder.json");
  expect_load_error(
      [](const fs::path& d) {
        nlohmann::json enc = nlohmann::json::parse(read_text(d / "encoder.json"));
        enc["<|endoftext|>"] = 0;  // duplicate id
        write_text(d / "encoder.json", enc.dump());
      },
      "encoder.json");
  expect_load_error(
      [](const fs::path& d) {
        std::string text = read_text(d / "vocab.bpe");
        write_text(d / "vocab.bpe", text.substr(text.find('\n') + 1));
      },
      "vocab.bpe");
  expect_load_error([](const fs::path& d) { std::ofstream(d / "vocab.bpe", std::ios::app) << "qq\xC4\xA0zz xyzzy\n"; },
                    "vocab.bpe");
  expect_load_error([](const fs::path& d) { std::ofstream(d / "vocab.bpe", std::ios::app) << "k a t\n"; }, "vocab.bpe");
}

TEST_F(TokenizerTest, DecodeRejectsUnknownIds) {
  std::vector<int32_t> ids{5, kTrainedVocab};
  EXPECT_THROW(trained_->decode(ids), Error);
  EXPECT_THROW(trained_->token_bytes(-1), Error);
}

}  // namespace
}  // namespace meshtrain
