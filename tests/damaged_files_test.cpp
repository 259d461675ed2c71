// Damaged files through the meshtrain binary, as a user meets them: a real checkpoint, token shard
// and tokenizer are damaged in many ways (cut at many points, bits flipped in headers and in tensor
// data, a dataset of the wrong dtype or shape, a token count past the file's end, token ids past the
// vocabulary, empty files) and `ckpt info`, `ckpt verify`, `generate`, `train --resume`, `train` and
// `tokenize` are run on each. Every case must be a non-zero exit whose message names the damaged
// file, and a failed resume must leave its folder byte-identical.
#include <gtest/gtest.h>
#include <hdf5.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>

#include "fmt/format.h"
#include "tests/cli_util.h"
#include "tests/tiny_corpus.h"

namespace {

namespace fs = std::filesystem;
using meshtrain::testing::CommandResult;

const std::string kBinary = meshtrain::testing::kMeshtrain;

using meshtrain::testing::slurp;
using meshtrain::testing::snapshot;

void spit(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

class DamagedFiles : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = fs::temp_directory_path() / ("meshtrain_damage_test_" + std::to_string(::getpid()));
    fs::remove_all(root_);
    fs::create_directories(root_);
    meshtrain::testing::make_tiny_corpus(root_);
    auto r = run(fmt::format("train {} --set train.steps=10 --set train.out_dir={}", data_args(), dir("good")));
    ASSERT_EQ(r.code, 0) << r.output;
  }
  static void TearDownTestSuite() { fs::remove_all(root_); }

  static CommandResult run(const std::string& args) {
    const auto t0 = std::chrono::steady_clock::now();
    CommandResult r = meshtrain::testing::run_command(kBinary + " " + args);
    slowest_ = std::max(slowest_, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    return r;
  }
  static std::string data_args(const std::string& shard = "", const std::string& tok = "") {
    return fmt::format(
        "--set data.train={} --set data.tokenizer={} --set model.n_layer=1 --set model.n_head=2 "
        "--set model.n_embd=32 --set model.seq_len=16 --set train.batch_size=4 --set train.sample_every=0 "
        "--set train.eval_every=0 --set train.threads=1",
        shard.empty() ? (root_ / "shards/train_000000.bin").string() : shard,
        tok.empty() ? (root_ / "tok").string() : tok);
  }
  static std::string dir(const std::string& name) { return (root_ / name).string(); }

  // A failed command: the error exit (1, not a crash's 128 + signal), one "meshtrain: error" naming what.
  static void expect_clear_failure(const CommandResult& r, const std::string& what, const std::string& label) {
    EXPECT_EQ(r.code, 1) << label << "\n" << r.output;
    EXPECT_NE(r.output.find("error"), std::string::npos) << label << "\n" << r.output;
    EXPECT_NE(r.output.find(what), std::string::npos) << label << ": the message does not name " << what << "\n"
                                                      << r.output;
    ++cases_;
  }

  static fs::path root_;
  static double slowest_;
  static int cases_;
};
fs::path DamagedFiles::root_;
double DamagedFiles::slowest_ = 0.0;
int DamagedFiles::cases_ = 0;

// Where a dataset's bytes start in a checkpoint file.
int64_t dataset_offset(const std::string& file, const char* name) {
  hid_t f = H5Fopen(file.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  hid_t d = H5Dopen2(f, name, H5P_DEFAULT);
  const haddr_t off = H5Dget_offset(d);
  H5Dclose(d);
  H5Fclose(f);
  return static_cast<int64_t>(off);
}

// Replaces a dataset by one of another type or shape (the file stays a valid HDF5 file).
void replace_dataset(const std::string& file, const char* name, hid_t type, std::vector<hsize_t> dims) {
  hid_t f = H5Fopen(file.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  ASSERT_GE(f, 0);
  ASSERT_GE(H5Ldelete(f, name, H5P_DEFAULT), 0);
  hid_t space = H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr);
  hid_t d = H5Dcreate2(f, name, type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  ASSERT_GE(d, 0);
  std::vector<double> zeros(1 << 16, 0.0);
  H5Dwrite(d, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, zeros.data());
  H5Dclose(d);
  H5Sclose(space);
  H5Fclose(f);
}

TEST_F(DamagedFiles, CheckpointsAreClearErrorsAndAFailedResumeChangesNothing) {
  const std::string good = dir("good") + "/ckpt_000010.h5";
  const std::string bytes = slurp(good);
  const int64_t wpe = dataset_offset(good, "/model/wpe"), wte = dataset_offset(good, "/model/wte");
  struct Case {
    std::string name;
    std::function<void(const std::string&)> damage;
    bool data_only;  // metadata intact: `ckpt info` (which reads no tensor) may still succeed
  };
  std::vector<Case> cases;
  for (double at : {0.0, 0.00001, 0.01, 0.1, 0.25, 0.5, 0.9, 0.9999})
    cases.push_back({fmt::format("cut at {:.4f}", at),
                     [&, at](const std::string& p) { spit(p, bytes.substr(0, static_cast<size_t>(at * bytes.size()))); },
                     false});
  for (int b : {9, 30, 45})  // superblock: version, end-of-file address, checksum
    cases.push_back({fmt::format("bit flip in header byte {}", b),
                     [&, b](const std::string& p) { std::string d = bytes; d[b] ^= 0x04; spit(p, d); }, false});
  for (int64_t off : {wpe + 3, wpe + 1001, wte + 77, wte + 4097})
    cases.push_back({fmt::format("bit flip in tensor data at {}", off),
                     [&, off](const std::string& p) { std::string d = bytes; d[off] ^= 0x20; spit(p, d); }, true});
  cases.push_back({"wpe stored as float64",
                   [&](const std::string& p) { spit(p, bytes); replace_dataset(p, "/model/wpe", H5T_IEEE_F64LE, {16, 32}); },
                   true});
  cases.push_back({"wpe of the wrong shape",
                   [&](const std::string& p) { spit(p, bytes); replace_dataset(p, "/model/wpe", H5T_IEEE_F32LE, {17, 32}); },
                   true});

  int n = 0;
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const std::string run_dir = dir(fmt::format("ckpt_case_{}", n++));
    fs::create_directories(run_dir);
    const std::string file = run_dir + "/ckpt_000010.h5";
    c.damage(file);
    spit(run_dir + "/latest", "ckpt_000010.h5\n");
    const auto before = snapshot(run_dir);

    if (!c.data_only) expect_clear_failure(run("ckpt info " + run_dir), file, c.name + ": ckpt info");
    expect_clear_failure(run("ckpt verify " + run_dir), file, c.name + ": ckpt verify");
    expect_clear_failure(run("generate --checkpoint " + run_dir + " --max-new-tokens 2 --threads 1"), file,
                         c.name + ": generate");
    expect_clear_failure(run("train --resume " + run_dir + " --set train.steps=12 --set train.threads=1"), file,
                         c.name + ": train --resume");
    EXPECT_EQ(snapshot(run_dir), before) << c.name << ": the failed resume changed its folder";
  }
}

TEST_F(DamagedFiles, TokenShardsAreRefusedAtStartUpNamingTheShard) {
  const std::string bytes = slurp(dir("shards/train_000000.bin"));
  auto with_header_word = [&](int word, int32_t value) {
    std::string d = bytes;
    std::memcpy(d.data() + 4 * word, &value, 4);
    return d;
  };
  std::string past_vocab = bytes;
  past_vocab[1024 + 2 * 50] = past_vocab[1024 + 2 * 50 + 1] = '\x7f';  // token 32639 > 300
  int32_t count = 0;
  std::memcpy(&count, bytes.data() + 8, 4);
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"empty", ""},
      {"cut inside the header", bytes.substr(0, 100)},
      {"cut after the header", bytes.substr(0, 1024)},
      {"cut inside the tokens", bytes.substr(0, bytes.size() / 2)},
      {"one byte short", bytes.substr(0, bytes.size() - 1)},
      {"bit flip in the magic", with_header_word(0, 20240520 ^ 0x100)},
      {"bit flip in the version", with_header_word(1, 1 ^ 0x2)},
      {"a count larger than the file", with_header_word(2, count + 1000)},
      {"a negative count", with_header_word(2, -5)},
      {"token ids past the vocabulary", past_vocab},
  };
  int n = 0;
  for (const auto& [name, content] : cases) {
    SCOPED_TRACE(name);
    const std::string shard = dir(fmt::format("shard_case_{}.bin", n));
    spit(shard, content);
    const std::string out = dir(fmt::format("shard_run_{}", n++));
    auto r = run("train " + data_args(shard) + " --set train.steps=2 --set train.out_dir=" + out);
    expect_clear_failure(r, shard, name + ": train");
    EXPECT_EQ(r.output.find("step "), std::string::npos) << name << ": it trained before noticing\n" << r.output;
  }
}

TEST_F(DamagedFiles, TokenizerFilesAreClearErrorsNamingTheFile) {
  const std::string enc = slurp(dir("tok/encoder.json")), bpe = slurp(dir("tok/vocab.bpe"));
  struct Case {
    std::string name, encoder, merges, named;  // named: the file the message must name
  };
  const std::vector<Case> cases = {
      {"empty encoder.json", "", bpe, "encoder.json"},
      {"encoder.json cut in half", enc.substr(0, enc.size() / 2), bpe, "encoder.json"},
      {"encoder.json not JSON", "<html>not json</html>", bpe, "encoder.json"},
      {"encoder.json with a non-integer id", "{\"a\": \"zero\"}", bpe, "encoder.json"},
      {"empty vocab.bpe", enc, "", "vocab.bpe"},
      {"vocab.bpe cut in half", enc, bpe.substr(0, bpe.size() / 2), "vocab.bpe"},
      {"vocab.bpe of garbage", enc, "#version: 0.2\nzz\xff qq\nonly-one-token\n", "vocab.bpe"},
  };
  int n = 0;
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const std::string tok = dir(fmt::format("tok_case_{}", n++));
    fs::create_directories(tok);
    spit(tok + "/encoder.json", c.encoder);
    spit(tok + "/vocab.bpe", c.merges);
    expect_clear_failure(run("tokenize --tokenizer " + tok + " --input " + dir("corpus.txt") + " --output " + tok + "_out"),
                         tok + "/" + c.named, c.name + ": tokenize");
    expect_clear_failure(run("train " + data_args("", tok) + " --set train.steps=2 --set train.out_dir=" + tok + "_run"),
                         tok + "/" + c.named, c.name + ": train");
    EXPECT_FALSE(fs::exists(tok + "_out/train_000000.bin")) << c.name << ": tokenize wrote shards";
  }
  ::testing::Test::RecordProperty("cases", std::to_string(cases_));
  std::printf("[damage] %d damaged-file cases so far, each a clear error; slowest command %.1f s\n", cases_, slowest_);
}

}  // namespace
