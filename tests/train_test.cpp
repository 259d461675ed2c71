// End to end through the meshtrain binary: training, bit-identical resume and determinism, the
// metrics file, generation, the tokenizer commands, and clear errors with a non-zero exit for bad
// input — with existing checkpoints left untouched.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <hdf5.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include <fmt/format.h>

#include "core/gemm_onednn.h"
#include "core/rng.h"
#include "launch/train/progress.h"
#include "model/text/data.h"
#include "model/gpt_config.h"
#include "model/text/tokenizer.h"
#include "parallel/checkpoint.h"
#include "cli_util.h"
#include "test_util.h"
#include "tiny_corpus.h"

namespace fs = std::filesystem;
using namespace meshtrain;

namespace {

const std::string& kBinary = meshtrain::testing::kMeshtrain;
using meshtrain::testing::read_metrics;
using meshtrain::testing::slurp;

meshtrain::testing::CommandResult run(const std::string& args) {
  return meshtrain::testing::run_command(kBinary + " " + args);
}

// A small corpus, a BPE vocabulary trained on it and its shards, shared by every test here.
class TrainCli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = fs::temp_directory_path() / ("meshtrain_train_test_" + std::to_string(::getpid()));
    fs::remove_all(root_);
    fs::create_directories(root_);
    meshtrain::testing::make_tiny_corpus(root_);
  }
  static void TearDownTestSuite() { fs::remove_all(root_); }

  static std::string base_args(const std::string& out_dir) {
    return fmt::format(
        "train --set data.train={0}/shards/train_*.bin --set data.val={0}/shards/val_*.bin --set data.tokenizer={0}/tok "
        "--set model.n_layer=2 --set model.n_head=2 --set model.n_embd=32 --set model.seq_len=16 "
        "--set train.batch_size=4 --set train.steps=20 --set train.checkpoint_every=10 --set train.eval_every=5 "
        "--set train.eval_batches=2 --set train.sample_every=0 --set train.sample_tokens=8 --set train.threads=2 "
        "--set train.warmup_steps=3 --set train.out_dir={1}",
        root_.string(), out_dir);
  }
  static std::string dir(const std::string& name) { return (root_ / name).string(); }
  static fs::path root_;
};
fs::path TrainCli::root_;

}  // namespace

TEST_F(TrainCli, ResumeFromStep10IsBitIdenticalToTheUninterruptedRun) {
  auto a = run(base_args(dir("A")) + " --metrics " + dir("a.jsonl"));
  ASSERT_EQ(a.code, 0) << a.output;
  ASSERT_TRUE(fs::exists(dir("A/ckpt_000010.h5")));
  ASSERT_TRUE(fs::exists(dir("A/ckpt_000020.h5")));
  auto b = run("train --resume " + dir("A/ckpt_000010.h5") + " --set train.out_dir=" + dir("B") + " --metrics " +
               dir("b.jsonl"));
  ASSERT_EQ(b.code, 0) << b.output;
  auto ma = read_metrics(dir("a.jsonl")), mb = read_metrics(dir("b.jsonl"));
  ASSERT_EQ(ma.size(), 20u);
  ASSERT_EQ(mb.size(), 10u);
  for (int i = 0; i < 10; ++i) {
    EXPECT_EQ(mb[i]["step"].get<int>(), 11 + i);
    EXPECT_EQ(mb[i]["loss"].get<double>(), ma[10 + i]["loss"].get<double>()) << "step " << 11 + i;
    EXPECT_EQ(mb[i]["grad_norm"].get<double>(), ma[10 + i]["grad_norm"].get<double>()) << "step " << 11 + i;
  }
  EXPECT_EQ(mb[9]["val_loss"].get<double>(), ma[19]["val_loss"].get<double>());
  // The log shows falling losses and the metrics carry every field.
  EXPECT_LT(ma[19]["loss"].get<double>(), ma[0]["loss"].get<double>() - 1.0);
  for (const char* k : {"step", "loss", "lr", "grad_norm", "ms", "tokens_per_s"}) EXPECT_TRUE(ma[3].contains(k)) << k;
  EXPECT_TRUE(ma[4].contains("val_loss"));
  EXPECT_FALSE(ma[3].contains("val_loss"));
  EXPECT_NE(a.output.find("val"), std::string::npos);
}

// train.precision = bf16 on the CPU: every GEMM in bf16 through oneDNN, the rest fp32. 50 steps stay
// within 2e-2 of fp32's losses, and a resume is bit-identical. A CPU without bf16 instructions (or a
// build without oneDNN) refuses with a message saying so.
TEST_F(TrainCli, Bf16GemmsOnTheCpuFollowFp32AndResumeBitIdentically) {
  const std::string common = base_args(dir("F")) + " --set train.steps=50 --set train.checkpoint_every=25";
  auto f = run(common + " --metrics " + dir("f.jsonl"));
  ASSERT_EQ(f.code, 0) << f.output;
  auto b = meshtrain::testing::run_command(kBinary + " " + base_args(dir("BF")) +
                                               " --set train.steps=50 --set train.checkpoint_every=25 "
                                               "--set train.precision=bf16 --metrics " + dir("bf.jsonl"),
                                           false);
  if (!onednn_built() || onednn_bf16_isa().empty()) {
    EXPECT_NE(b.code, 0);
    EXPECT_NE(b.output.find("[bf16-cpu]"), std::string::npos) << b.output;
    // With the built-in corpus, the refusal comes before the corpus is prepared.
    auto c = meshtrain::testing::run_command(
        kBinary + " train --set train.precision=bf16 --set train.out_dir=" + dir("BUILTIN"), false);
    EXPECT_NE(c.code, 0);
    EXPECT_NE(c.output.find("[bf16-cpu]"), std::string::npos) << c.output;
    EXPECT_FALSE(std::filesystem::exists(dir("BUILTIN") + "/data")) << "the corpus was prepared before the refusal";
    return;
  }
  ASSERT_EQ(b.code, 0) << b.output;
  EXPECT_NE(b.output.find("bf16 GEMMs (oneDNN, " + onednn_bf16_isa() + ")"), std::string::npos) << b.output;
  auto mf = read_metrics(dir("f.jsonl")), mb = read_metrics(dir("bf.jsonl"));
  ASSERT_EQ(mf.size(), 50u);
  ASSERT_EQ(mb.size(), 50u);
  bool differs = false;
  for (size_t i = 0; i < mf.size(); ++i) {
    const double lf = mf[i]["loss"].get<double>(), lb = mb[i]["loss"].get<double>();
    EXPECT_LE(std::fabs(lb - lf), 2e-2 * std::fabs(lf)) << "step " << i + 1;
    differs |= lb != lf;
  }
  EXPECT_TRUE(differs) << "bf16 losses equal fp32's bit for bit: the GEMMs did not run in bf16";
  EXPECT_LT(mb[49]["loss"].get<double>(), mb[0]["loss"].get<double>() - 1.0);
  auto r = run("train --resume " + dir("BF/ckpt_000025.h5") + " --set train.out_dir=" + dir("BF2") + " --metrics " +
               dir("bf2.jsonl"));
  ASSERT_EQ(r.code, 0) << r.output;
  auto mr = read_metrics(dir("bf2.jsonl"));
  ASSERT_EQ(mr.size(), 25u);
  for (size_t i = 0; i < mr.size(); ++i)
    EXPECT_EQ(mr[i]["loss"].get<double>(), mb[25 + i]["loss"].get<double>()) << "step " << 26 + i;
}

TEST_F(TrainCli, SameSeedGivesIdenticalLossesAndAnotherSeedDoesNot) {
  auto r1 = run(base_args(dir("S1")) + " --set train.steps=6 --metrics " + dir("s1.jsonl"));
  auto r2 = run(base_args(dir("S2")) + " --set train.steps=6 --metrics " + dir("s2.jsonl"));
  auto r3 = run(base_args(dir("S3")) + " --set train.steps=6 --set train.seed=9 --metrics " + dir("s3.jsonl"));
  ASSERT_EQ(r1.code, 0) << r1.output;
  ASSERT_EQ(r2.code, 0) << r2.output;
  ASSERT_EQ(r3.code, 0) << r3.output;
  auto m1 = read_metrics(dir("s1.jsonl")), m2 = read_metrics(dir("s2.jsonl")), m3 = read_metrics(dir("s3.jsonl"));
  ASSERT_EQ(m1.size(), 6u);
  for (size_t i = 0; i < m1.size(); ++i) EXPECT_EQ(m1[i]["loss"].get<double>(), m2[i]["loss"].get<double>());
  EXPECT_NE(m1[0]["loss"].get<double>(), m3[0]["loss"].get<double>());
}

TEST_F(TrainCli, GenerateStreamsTextFromACheckpoint) {
  auto t = run(base_args(dir("G")) + " --set train.steps=4");
  ASSERT_EQ(t.code, 0) << t.output;
  auto g1 = run("generate --checkpoint " + dir("G/ckpt_000004.h5") + " --prompt 'the cat' --max-new-tokens 12 --seed 3");
  ASSERT_EQ(g1.code, 0) << g1.output;
  EXPECT_EQ(g1.output.rfind("the cat", 0), 0u) << g1.output;
  EXPECT_GT(g1.output.size(), 10u);
  auto g2 = run("generate --checkpoint " + dir("G") + " --prompt 'the cat' --max-new-tokens 12 --seed 3");
  EXPECT_EQ(g1.output, g2.output) << "same seed, same text (a folder means its latest checkpoint)";
  auto bad = run("generate --checkpoint " + dir("G/ckpt_000099.h5"));
  EXPECT_NE(bad.code, 0);
  EXPECT_NE(bad.output.find("does not exist"), std::string::npos) << bad.output;
}

TEST_F(TrainCli, TokenizerCommands) {
  auto t = run("tokenizer train --vocab-size 280 --input " + dir("corpus.txt") + " --output " + dir("tok2"));
  ASSERT_EQ(t.code, 0) << t.output;
  EXPECT_TRUE(fs::exists(dir("tok2/encoder.json")));
  auto s = run("tokenize --tokenizer " + dir("tok2") + " --input " + dir("corpus.txt") + " --output " + dir("sh2") +
               " --val-fraction 0.2");
  ASSERT_EQ(s.code, 0) << s.output;
  TokenShard train(dir("sh2/train_000000.bin")), val(dir("sh2/val_000000.bin"));
  EXPECT_GT(val.size(), train.size() / 6);
  EXPECT_LT(val.size(), train.size() / 3);
  auto bad = run("tokenize --tokenizer " + dir("nope") + " --input " + dir("corpus.txt") + " --output " + dir("x"));
  EXPECT_NE(bad.code, 0);
}

// train.sample_every: 0 samples once at the end, -1 never (short runs whose sample is noise).
TEST_F(TrainCli, SamplesAtTheEndUnlessToldNever) {
  auto once = run(base_args(dir("sample_end")) + " --set train.steps=2 --set train.sample_every=0");
  ASSERT_EQ(once.code, 0) << once.output;
  EXPECT_NE(once.output.find("---- sample (final) ----"), std::string::npos) << once.output;
  auto never = run(base_args(dir("sample_never")) + " --set train.steps=2 --set train.sample_every=-1");
  ASSERT_EQ(never.code, 0) << never.output;
  EXPECT_EQ(never.output.find("---- sample"), std::string::npos) << never.output;
}

TEST_F(TrainCli, HelpOnEveryCommand) {
  for (const char* cmd : {"--help", "train --help", "generate --help", "tokenize --help", "tokenizer train --help",
                          "ckpt info --help", "ckpt convert --help"}) {
    auto r = run(cmd);
    EXPECT_EQ(r.code, 0) << cmd << ": " << r.output;
    EXPECT_NE(r.output.find("Usage"), std::string::npos) << cmd;
  }
  auto r = run("train --help-config");
  EXPECT_NE(r.output.find("train.grad_accum"), std::string::npos);
  EXPECT_NE(run("").code, 0) << "no subcommand is an error";
}

TEST_F(TrainCli, BadInputIsAClearErrorAndANonZeroExit) {
  struct Case {
    std::string args, expect;
  };
  fs::create_directories(dir("bad"));
  // A truncated shard and one with the wrong magic.
  std::string shard = slurp(dir("shards/train_000000.bin"));
  std::ofstream(dir("bad/trunc.bin"), std::ios::binary) << shard.substr(0, shard.size() / 2);
  std::string magic = shard;
  magic[0] = 'X';
  std::ofstream(dir("bad/magic.bin"), std::ios::binary) << magic;
  // A shard whose header and size are right but one token id lies past the vocabulary (0xFFFF).
  std::string foreign = shard;
  foreign[1024 + 2 * 100] = foreign[1024 + 2 * 100 + 1] = '\xff';
  std::ofstream(dir("bad/foreign.bin"), std::ios::binary) << foreign;
  fs::create_directories(dir("bad/tok"));
  std::ofstream(dir("bad/tok/encoder.json")) << "{\"a\": 0, garbage";
  std::ofstream(dir("bad/tok/vocab.bpe")) << "#version: 0.2\n";
  std::vector<Case> cases = {
      {"train --set train.foo=1", "unknown key 'train.foo'"},
      {"train --set train.steps=abc", "train.steps expects an integer"},
      {"train --config " + dir("none.toml"), "none.toml"},
      {base_args(dir("E1")) + " --set data.train=" + dir("missing.bin"), "missing.bin"},
      {base_args(dir("E2")) + " --set data.train=" + dir("bad/trunc.bin"), "truncated"},
      {base_args(dir("E3")) + " --set data.train=" + dir("bad/magic.bin"), "magic"},
      {base_args(dir("E5")) + " --set data.val=" + dir("bad/foreign.bin"),
       "token 65535 (index 100, byte offset 1224) is not below the vocabulary size"},
      {base_args(dir("E4")) + " --set data.tokenizer=" + dir("bad/tok"), "encoder.json"},
  };
  for (const auto& c : cases) {
    auto r = run(c.args);
    EXPECT_NE(r.code, 0) << c.args;
    EXPECT_NE(r.output.find(c.expect), std::string::npos) << c.args << "\n" << r.output;
  }
}

TEST_F(TrainCli, BadCheckpointsFailWithoutTouchingExistingOnes) {
  auto t = run(base_args(dir("K")) + " --set train.steps=10 --set train.checkpoint_every=5");
  ASSERT_EQ(t.code, 0) << t.output;
  std::string good5 = slurp(dir("K/ckpt_000005.h5")), good10 = slurp(dir("K/ckpt_000010.h5"));
  fs::create_directories(dir("kbad"));
  std::ofstream(dir("kbad/trunc.h5"), std::ios::binary) << good10.substr(0, good10.size() / 2);
  std::ofstream(dir("kbad/tiny.h5"), std::ios::binary) << good10.substr(0, 1000);
  {
    hid_t f = H5Fcreate(dir("kbad/foreign.h5").c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    hsize_t dims[1] = {4};
    hid_t space = H5Screate_simple(1, dims, nullptr);
    hid_t d = H5Dcreate2(f, "weights", H5T_IEEE_F32LE, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    float v[4] = {1, 2, 3, 4};
    H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, v);
    H5Dclose(d);
    H5Sclose(space);
    H5Fclose(f);
  }
  for (const std::string name : {"trunc.h5", "tiny.h5", "foreign.h5"}) {
    auto r = run("train --resume " + dir("kbad/" + name) + " --set train.out_dir=" + dir("K"));
    EXPECT_NE(r.code, 0) << name;
    EXPECT_NE(r.output.find(name), std::string::npos) << r.output;
    auto g = run("generate --checkpoint " + dir("kbad/" + name));
    EXPECT_NE(g.code, 0) << name;
  }
  // A fresh run into a folder that holds checkpoints refuses instead of overwriting them.
  auto again = run(base_args(dir("K")) + " --set train.steps=10 --set train.checkpoint_every=5");
  EXPECT_NE(again.code, 0);
  EXPECT_NE(again.output.find("already holds checkpoints"), std::string::npos) << again.output;
  // Resuming a finished run says so.
  auto done = run("train --resume latest --set train.out_dir=" + dir("K"));
  EXPECT_NE(done.code, 0);
  EXPECT_NE(done.output.find("already at step 10"), std::string::npos) << done.output;
  EXPECT_EQ(slurp(dir("K/ckpt_000005.h5")), good5);
  EXPECT_EQ(slurp(dir("K/ckpt_000010.h5")), good10);
  for (const auto& e : fs::directory_iterator(dir("K"))) {
    if (e.is_directory() || e.path().filename() == "latest") continue;
    EXPECT_EQ(e.path().extension(), ".h5") << "left behind: " << e.path();
  }
  EXPECT_EQ(slurp(dir("K/latest")), "ckpt_000010.h5\n");
}

TEST_F(TrainCli, KeepCheckpointsAndTheLatestPointer) {
  auto t = run(base_args(dir("KEEP")) + " --set train.steps=12 --set train.checkpoint_every=3 "
                                        "--set train.keep_checkpoints=2");
  ASSERT_EQ(t.code, 0) << t.output;
  EXPECT_FALSE(fs::exists(dir("KEEP/ckpt_000003.h5")));
  EXPECT_FALSE(fs::exists(dir("KEEP/ckpt_000006.h5")));
  EXPECT_TRUE(fs::exists(dir("KEEP/ckpt_000009.h5")));
  EXPECT_TRUE(fs::exists(dir("KEEP/ckpt_000012.h5")));
  EXPECT_EQ(slurp(dir("KEEP/latest")), "ckpt_000012.h5\n");
}

// A process killed with SIGKILL while it writes a checkpoint leaves the previous one as latest,
// complete and loadable, and the run resumes from it.
TEST_F(TrainCli, KilledDuringASaveLeavesTheLastCheckpointLoadable) {
  // A model whose checkpoints take long enough to write that the kill lands inside a save.
  std::string args = base_args(dir("KILL")) +
                     " --set model.n_embd=384 --set model.n_head=4 --set model.n_layer=4 --set train.steps=40 "
                     "--set train.checkpoint_every=1 --set train.batch_size=1 --set train.eval_every=0";
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    int null = ::open("/dev/null", O_WRONLY);
    dup2(null, 1);
    dup2(null, 2);
    execl("/bin/sh", "sh", "-c", ("exec " + kBinary + " " + args).c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  bool killed_mid_save = false;
  for (int i = 0; i < 20000 && !killed_mid_save; ++i) {  // up to 20 s
    for (int step = 2; step <= 40; ++step)
      if (fs::exists(dir(fmt::format("KILL/ckpt_{:06d}.h5.tmp", step)))) {
        ::kill(pid, SIGKILL);
        killed_mid_save = true;
        break;
      }
    if (!killed_mid_save) ::usleep(1000);
  }
  int status = 0;
  if (!killed_mid_save) ::kill(pid, SIGKILL);
  ::waitpid(pid, &status, 0);
  ASSERT_TRUE(killed_mid_save) << "never saw a save in progress";
  ASSERT_TRUE(WIFSIGNALED(status));
  std::string latest = find_latest_checkpoint(dir("KILL"));
  ASSERT_FALSE(latest.empty());
  // `latest` names the newest checkpoint, or the one before it when the kill came between renaming
  // the newest into place and re-pointing `latest`.
  const std::string pointer = read_latest_pointer(dir("KILL"));
  ASSERT_FALSE(pointer.empty());
  EXPECT_LE(CheckpointReader(pointer).get_int("step"), CheckpointReader(latest).get_int("step"));
  {
    CheckpointReader r(latest);  // complete: every tensor reads back and passes its checksum
    for (const auto& name : r.list()) {
      Tensor t = Tensor::empty(r.shape(name));
      r.read(name, t);
    }
  }
  int64_t step = CheckpointReader(latest).get_int("step");
  auto resumed = run("train --resume latest --set train.out_dir=" + dir("KILL") +
                     fmt::format(" --set train.steps={}", step + 1));
  EXPECT_EQ(resumed.code, 0) << resumed.output;
}

TEST_F(TrainCli, StepLogReportsMfuAgainstTheGivenPeak) {
  // MFU = tokens/s x (6N + 12 L C T) / peak; on the CPU only when a peak is given.
  auto r = run(base_args(dir("mfu")) + " --set train.steps=3 --set train.peak_tflops=0.001 --metrics " + dir("mfu") +
               ".jsonl");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("| MFU "), std::string::npos) << r.output;
  GptConfig cfg;
  cfg.vocab_size = 300;  // the tiny corpus's tokenizer
  cfg.n_layer = 2;
  cfg.n_head = 2;
  cfg.n_embd = 32;
  cfg.seq_len = 16;
  const auto rows = read_metrics(dir("mfu") + ".jsonl");
  ASSERT_EQ(rows.size(), 3u);
  for (const auto& row : rows) {
    ASSERT_TRUE(row.contains("mfu")) << row.dump();
    const double want = 100.0 * row["tokens_per_s"].get<double>() * cfg.flops_per_token(16) / 1e9;
    EXPECT_NEAR(row["mfu"].get<double>(), want, 1e-6 * want) << row.dump();
  }
  auto none = run(base_args(dir("no_mfu")) + " --set train.steps=2 --metrics " + dir("no_mfu") + ".jsonl");
  ASSERT_EQ(none.code, 0) << none.output;
  for (const auto& row : read_metrics(dir("no_mfu") + ".jsonl")) EXPECT_FALSE(row.contains("mfu")) << row.dump();
  auto bad = run(base_args(dir("bad_mfu")) + " --set train.peak_tflops=-1");
  EXPECT_NE(bad.code, 0);
  EXPECT_NE(bad.output.find("train.peak_tflops must be >= 0"), std::string::npos) << bad.output;
}

TEST(Mfu, PeaksOfKnownCardsByName) {
  EXPECT_EQ(known_peak_tflops("NVIDIA H100 80GB HBM3", true), 989.0);
  EXPECT_EQ(known_peak_tflops("NVIDIA H100 PCIe", true), 756.0);
  EXPECT_EQ(known_peak_tflops("NVIDIA H200", false), 67.0);
  EXPECT_EQ(known_peak_tflops("NVIDIA A100-SXM4-80GB", true), 312.0);
  EXPECT_EQ(known_peak_tflops("CUDA emulation on the CPU (sm_90, 16.0 GiB)", true), 0.0);
}
