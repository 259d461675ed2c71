// Resuming as users do it, through the meshtrain binary: where a resumed run writes (never into the
// run it was copied from, never over checkpoints it did not write), the learning rate across a
// resume with a changed schedule, the forms --resume takes, keys that may not change, tokenizer
// identity, stopping on signals (alone and under mpirun) and resuming bit-identically after, and
// the note when ranks x threads exceed the cores.
#include <gtest/gtest.h>
#include <sched.h>
#include <signal.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>

#include <fmt/format.h>

#include "cli_util.h"
#include "model/text/tokenizer.h"
#include "parallel/checkpoint.h"
#include "tiny_corpus.h"

namespace fs = std::filesystem;
using namespace meshtrain;
using meshtrain::testing::read_metrics;
using meshtrain::testing::slurp;

namespace {

const std::string& kBinary = meshtrain::testing::kMeshtrain;

meshtrain::testing::CommandResult run(const std::string& args) {
  return meshtrain::testing::run_command(kBinary + " " + args);
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

using meshtrain::testing::snapshot;

class Resume : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = fs::temp_directory_path() / ("meshtrain_resume_test_" + std::to_string(::getpid()));
    fs::remove_all(root_);
    meshtrain::testing::make_tiny_corpus(root_);
  }
  static void TearDownTestSuite() { fs::remove_all(root_); }

  /// A small run's keys, without train.out_dir.
  static std::string keys(int steps = 20) {
    return fmt::format(
        "--set data.train={0}/shards/train_*.bin --set data.val={0}/shards/val_*.bin --set data.tokenizer={0}/tok "
        "--set model.n_layer=2 --set model.n_head=2 --set model.n_embd=32 --set model.seq_len=16 "
        "--set train.batch_size=4 --set train.steps={1} --set train.checkpoint_every=10 --set train.eval_every=0 "
        "--set train.eval_batches=2 --set train.sample_every=0 --set train.sample_tokens=8 --set train.threads=2 "
        "--set train.warmup_steps=3",
        root_.string(), steps);
  }
  static std::string train(const std::string& out, int steps = 20) {
    return "train " + keys(steps) + " --set train.out_dir=" + dir(out);
  }
  static std::string dir(const std::string& name) { return (root_ / name).string(); }
  static fs::path root_;
};
fs::path Resume::root_;

}  // namespace

// cp -r runs/A runs/B, then resume from B's checkpoint: B gets the new checkpoints, A is untouched.
TEST_F(Resume, ACopiedRunResumesIntoItsOwnFolderAndTheOriginalStaysByteIdentical) {
  auto a = run(train("copyA"));
  ASSERT_EQ(a.code, 0) << a.output;
  fs::copy(dir("copyA"), dir("copyB"), fs::copy_options::recursive);
  const auto before = snapshot(dir("copyA"));
  // Step 10 of B: B holds step 20 too, so the plain resume is refused, naming both steps.
  auto refused = run("train --resume " + dir("copyB/ckpt_000010.h5") + " --set train.steps=30");
  EXPECT_NE(refused.code, 0);
  EXPECT_TRUE(contains(refused.output, "past step 10")) << refused.output;
  EXPECT_TRUE(contains(refused.output, "step 20")) << refused.output;
  EXPECT_TRUE(contains(refused.output, "train.out_dir=OTHER")) << refused.output;
  // From B's newest checkpoint it continues in B.
  auto b = run("train --resume " + dir("copyB/ckpt_000020.h5") + " --set train.steps=30");
  ASSERT_EQ(b.code, 0) << b.output;
  EXPECT_TRUE(fs::exists(dir("copyB/ckpt_000030.h5")));
  EXPECT_EQ(slurp(dir("copyB/latest")), "ckpt_000030.h5\n");
  EXPECT_EQ(snapshot(dir("copyA")), before) << "the original run changed";
}

// --branch continues from an earlier step in the same folder and moves the later checkpoints
// aside, deleting nothing.
TEST_F(Resume, BranchMovesLaterCheckpointsAsideAndDeletesNothing) {
  auto a = run(train("branch"));
  ASSERT_EQ(a.code, 0) << a.output;
  const std::string step20 = slurp(dir("branch/ckpt_000020.h5"));
  auto b = run("train --resume " + dir("branch/ckpt_000010.h5") + " --branch --set train.steps=20");
  ASSERT_EQ(b.code, 0) << b.output;
  EXPECT_TRUE(contains(b.output, "moved 1 checkpoint past step 10")) << b.output;
  int aside = 0;
  for (const auto& e : fs::directory_iterator(dir("branch")))
    if (e.is_directory() && e.path().filename().string().starts_with("superseded_after_000010_")) {
      ++aside;
      EXPECT_EQ(slurp((e.path() / "ckpt_000020.h5").string()), step20);
    }
  EXPECT_EQ(aside, 1);
  EXPECT_TRUE(fs::exists(dir("branch/ckpt_000020.h5")));  // the branch's own step 20
  // --branch without --resume is an error.
  auto bad = run(train("branch2") + " --branch");
  EXPECT_NE(bad.code, 0);
  EXPECT_TRUE(contains(bad.output, "--branch only applies with --resume")) << bad.output;
}

// Raising train.steps on resume continues the decay from the current rate: no jump, a smooth
// cosine to min_lr at the new last step, and a second resume of that run follows it exactly.
TEST_F(Resume, TheLearningRateIsContinuousAcrossAResumeWithRaisedSteps) {
  auto a = run(train("lrA") + " --metrics " + dir("lrA.jsonl"));
  ASSERT_EQ(a.code, 0) << a.output;
  auto b = run("train --resume " + dir("lrA/ckpt_000010.h5") + " --set train.steps=40 --set train.out_dir=" +
               dir("lrB") + " --metrics " + dir("lrB.jsonl"));
  ASSERT_EQ(b.code, 0) << b.output;
  EXPECT_TRUE(contains(b.output, "schedule changed on resume at step 10")) << b.output;
  auto ma = read_metrics(dir("lrA.jsonl")), mb = read_metrics(dir("lrB.jsonl"));
  ASSERT_EQ(ma.size(), 20u);
  ASSERT_EQ(mb.size(), 30u);
  // Step 11 takes the rate the checkpoint's schedule had for it; then it only falls, to min_lr.
  EXPECT_FLOAT_EQ(mb[0]["lr"].get<float>(), ma[10]["lr"].get<float>());
  double worst_jump = 0;
  for (size_t i = 1; i < mb.size(); ++i) {
    EXPECT_LE(mb[i]["lr"].get<double>(), mb[i - 1]["lr"].get<double>()) << "step " << 11 + i;
    worst_jump = std::max(worst_jump, mb[i - 1]["lr"].get<double>() - mb[i]["lr"].get<double>());
  }
  EXPECT_LT(worst_jump, 1.5e-4) << "a smooth decay over 30 steps from about 1.3e-3";
  EXPECT_NEAR(mb.back()["lr"].get<double>(), 2e-4, 1e-9);
  // Resuming the re-planned run at 20 (same steps) follows its schedule and losses bit for bit.
  auto c = run("train --resume " + dir("lrB/ckpt_000020.h5") + " --set train.out_dir=" + dir("lrC") + " --metrics " +
               dir("lrC.jsonl"));
  ASSERT_EQ(c.code, 0) << c.output;
  EXPECT_FALSE(contains(c.output, "schedule changed")) << c.output;
  auto mc = read_metrics(dir("lrC.jsonl"));
  ASSERT_EQ(mc.size(), 20u);
  for (size_t i = 0; i < mc.size(); ++i) {
    EXPECT_EQ(mc[i]["lr"].get<double>(), mb[10 + i]["lr"].get<double>()) << "step " << 21 + i;
    EXPECT_EQ(mc[i]["loss"].get<double>(), mb[10 + i]["loss"].get<double>()) << "step " << 21 + i;
  }
  // train.resume_schedule = restart jumps to the new plan, as asked.
  auto d = run("train --resume " + dir("lrA/ckpt_000010.h5") + " --set train.steps=40 "
               "--set train.resume_schedule=restart --set train.out_dir=" + dir("lrD") + " --metrics " + dir("lrD.jsonl"));
  ASSERT_EQ(d.code, 0) << d.output;
  auto md = read_metrics(dir("lrD.jsonl"));
  ASSERT_EQ(md.size(), 30u);
  EXPECT_GT(md[0]["lr"].get<double>(), ma[10]["lr"].get<double>() * 1.2) << "the 40-step plan is higher at step 11";
}

// --resume takes a folder, "latest" in the effective out_dir, and combines with --config.
TEST_F(Resume, ResumeTakesAFolderOrLatestAndCombinesWithConfig) {
  auto a = run(train("forms"));
  ASSERT_EQ(a.code, 0) << a.output;
  {
    std::ofstream toml(dir("more.toml"));
    toml << "[train]\nsteps = 25\n";
  }
  auto folder = run("train --resume " + dir("forms") + " --config " + dir("more.toml") + " --metrics " +
                    dir("forms.jsonl"));
  ASSERT_EQ(folder.code, 0) << folder.output;
  auto m = read_metrics(dir("forms.jsonl"));
  ASSERT_EQ(m.size(), 5u);
  EXPECT_EQ(m[0]["step"].get<int>(), 21);
  EXPECT_TRUE(fs::exists(dir("forms/ckpt_000025.h5")));
  // "latest" in the folder that train.out_dir names (from --set; a config file could name it too).
  auto latest = run("train --resume latest --set train.out_dir=" + dir("forms") + " --set train.steps=27");
  ASSERT_EQ(latest.code, 0) << latest.output;
  EXPECT_TRUE(fs::exists(dir("forms/ckpt_000027.h5")));
  auto none = run("train --resume " + dir("nowhere"));
  EXPECT_NE(none.code, 0);
  EXPECT_TRUE(contains(none.output, "nowhere")) << none.output;
  fs::create_directories(dir("empty_run"));
  auto empty = run("train --resume " + dir("empty_run"));
  EXPECT_NE(empty.code, 0);
  EXPECT_TRUE(contains(empty.output, "holds no checkpoint")) << empty.output;
}

// The model's shape and its tokenizer may not change on resume; the message names the key and both values.
TEST_F(Resume, KeysThatCannotChangeNameTheKeyAndBothValues) {
  auto a = run(train("fixed"));
  ASSERT_EQ(a.code, 0) << a.output;
  const auto before = snapshot(dir("fixed"));
  struct Case {
    std::string set, expect;
  };
  for (const Case& c : {Case{"model.n_layer=3", "model.n_layer cannot change on resume: the checkpoint has 2, this "
                                                "run asks for 3"},
                        Case{"model.n_embd=64", "model.n_embd cannot change on resume: the checkpoint has 32"},
                        Case{"model.seq_len=32", "model.seq_len cannot change"},
                        Case{"model.pos_embedding=rope", "model.pos_embedding cannot change on resume: the checkpoint "
                                                         "has 'learned'"}}) {
    auto r = run("train --resume " + dir("fixed") + " --set train.steps=30 --set " + c.set);
    EXPECT_NE(r.code, 0) << c.set;
    EXPECT_TRUE(contains(r.output, c.expect)) << r.output;
  }
  EXPECT_EQ(snapshot(dir("fixed")), before);
}

// Shards, checkpoints and generation refuse another tokenizer of the same size, naming both;
// `tokenizer train` will not overwrite a folder unless told to.
TEST_F(Resume, AnotherTokenizerOfTheSameSizeIsRefusedEverywhere) {
  {
    std::ofstream other(dir("other.txt"));
    for (int i = 0; i < 400; ++i) other << "zebra quartz " << i << " jumping over lazy foxes, vexing wizards.\n";
  }
  auto t = run("tokenizer train --vocab-size 300 --input " + dir("other.txt") + " --output " + dir("tokB"));
  ASSERT_EQ(t.code, 0) << t.output;
  const std::string id_a = Tokenizer::load(dir("tok")).fingerprint_hex(), id_b = Tokenizer::load(dir("tokB")).fingerprint_hex();
  ASSERT_NE(id_a, id_b);
  // Shards made by tok, trained with tokB.
  auto shards = run(train("tokX") + " --set data.tokenizer=" + dir("tokB"));
  EXPECT_NE(shards.code, 0);
  EXPECT_TRUE(contains(shards.output, "was made by tokenizer " + id_a)) << shards.output;
  EXPECT_TRUE(contains(shards.output, id_b)) << shards.output;
  // A checkpoint trained with tok, resumed with tokB.
  auto a = run(train("tokA"));
  ASSERT_EQ(a.code, 0) << a.output;
  auto r = run("train --resume " + dir("tokA") + " --set train.steps=30 --set data.tokenizer=" + dir("tokB"));
  EXPECT_NE(r.code, 0);
  EXPECT_TRUE(contains(r.output, "data.tokenizer cannot change on resume")) << r.output;
  EXPECT_TRUE(contains(r.output, id_a) && contains(r.output, id_b)) << r.output;
  auto g = run("generate --checkpoint " + dir("tokA") + " --tokenizer " + dir("tokB") + " --max-new-tokens 4");
  EXPECT_NE(g.code, 0);
  EXPECT_TRUE(contains(g.output, id_a) && contains(g.output, id_b)) << g.output;
  // tokenizer train into a non-empty folder: refused, files unchanged; --overwrite replaces them.
  const std::string enc = slurp(dir("tokB/encoder.json"));
  auto again = run("tokenizer train --vocab-size 290 --input " + dir("other.txt") + " --output " + dir("tokB"));
  EXPECT_NE(again.code, 0);
  EXPECT_TRUE(contains(again.output, "--overwrite")) << again.output;
  EXPECT_EQ(slurp(dir("tokB/encoder.json")), enc);
  auto forced = run("tokenizer train --vocab-size 290 --input " + dir("other.txt") + " --output " + dir("tokB") +
                    " --overwrite");
  EXPECT_EQ(forced.code, 0) << forced.output;
  EXPECT_NE(slurp(dir("tokB/encoder.json")), enc);
  // The shard header records the tokenizer in words llm.c does not read.
  TokenShard shard(dir("shards/train_000000.bin"));
  EXPECT_EQ(fmt::format("{:016x}", shard.tokenizer_id()), id_a);
}

namespace {

/// Runs cmd in the background, waits for 30 metrics lines, sends sig to it and returns the exit
/// status (-1 when it never got that far) and output.
meshtrain::testing::CommandResult stop_mid_run(const std::string& cmd, const std::string& metrics, int sig,
                                               const std::string& log) {
  const pid_t pid = meshtrain::testing::start_command(cmd, log);
  const bool started = meshtrain::testing::wait_for_lines(metrics, 30);
  ::kill(pid, started ? sig : SIGKILL);
  const int code = meshtrain::testing::wait_command(pid);
  return {started ? code : -1, slurp(log)};
}

}  // namespace

// SIGTERM and SIGINT mid-run: the current step finishes, a checkpoint is written, the exit is
// 128 + signal with a message saying how to continue, and the resume matches the uninterrupted run.
TEST_F(Resume, SignalsCheckpointAndTheResumeIsBitIdentical) {
  const std::string long_run = keys(4000) + " --set train.checkpoint_every=0 --set train.log_every=1000";
  auto ref = run("train " + long_run + " --set train.out_dir=" + dir("sigref") + " --metrics " + dir("sigref.jsonl"));
  ASSERT_EQ(ref.code, 0) << ref.output;
  const auto expected = read_metrics(dir("sigref.jsonl"));
  for (int sig : {SIGTERM, SIGINT}) {
    const std::string name = fmt::format("sig{}", sig);
    auto r = stop_mid_run(kBinary + " train " + long_run + " --set train.out_dir=" + dir(name) + " --metrics " +
                              dir(name + ".jsonl"),
                          dir(name + ".jsonl"), sig, dir(name + ".log"));
    ASSERT_EQ(r.code, 128 + sig) << r.output;
    const std::string latest = find_latest_checkpoint(dir(name));
    ASSERT_FALSE(latest.empty()) << r.output;
    const int64_t step = CheckpointReader(latest).get_int("step");
    EXPECT_EQ(meshtrain::testing::count_lines(dir(name + ".jsonl")), step) << "stopped after the step it logged";
    EXPECT_TRUE(contains(r.output, "continue with: meshtrain train --resume " + dir(name))) << r.output;
    auto resumed = run("train --resume " + dir(name) + " --metrics " + dir(name + ".jsonl"));
    ASSERT_EQ(resumed.code, 0) << resumed.output;
    const auto got = read_metrics(dir(name + ".jsonl"));
    ASSERT_EQ(got.size(), expected.size());
    for (size_t i = 0; i < got.size(); ++i)
      ASSERT_EQ(got[i]["loss"].get<double>(), expected[i]["loss"].get<double>()) << name << " step " << i + 1;
  }
}

// Under mpirun: train.stop_signal = USR1 sent to mpirun (which forwards it), and SIGTERM sent to
// the ranks themselves (as Slurm's scancel does); both checkpoint and resume bit-identically.
TEST_F(Resume, StopSignalsUnderMpirun) {
  const std::string long_run =
      keys(3000) + " --set train.checkpoint_every=0 --set train.log_every=1000 --set train.threads=1";
  auto ref = meshtrain::testing::run_command(fmt::format("{} -n 2 {} train {} --set train.out_dir={} --metrics {}", MESHTRAIN_MPIEXEC, kBinary,
                             long_run, dir("mpiref"), dir("mpiref.jsonl")));
  ASSERT_EQ(ref.code, 0) << ref.output;
  const auto expected = read_metrics(dir("mpiref.jsonl"));
  for (const std::string how : {"usr1", "term"}) {
    const std::string name = "mpi_" + how, metrics = dir(name + ".jsonl");
    const std::string cmd = fmt::format("{} -n 2 {} train {} --set train.stop_signal=USR1 --set train.out_dir={} "
                                        "--metrics {}", MESHTRAIN_MPIEXEC, kBinary, long_run, dir(name), metrics);
    const pid_t pid = meshtrain::testing::start_command(cmd, dir(name + ".log"));
    ASSERT_TRUE(meshtrain::testing::wait_for_lines(metrics, 30));
    if (how == "usr1") ::kill(pid, SIGUSR1);
    else  // the ranks only (their command lines start with the binary), not mpirun
      ASSERT_EQ(std::system(("pkill -TERM -f -- '^" + kBinary + " train .*train.out_dir=" + dir(name) + " '").c_str()), 0);
    const int code = meshtrain::testing::wait_command(pid);
    const std::string out = slurp(dir(name + ".log"));
    EXPECT_NE(code, 0) << out;
    EXPECT_TRUE(contains(out, how == "usr1" ? "stopped by SIGUSR1" : "stopped by SIGTERM")) << out;
    const std::string latest = find_latest_checkpoint(dir(name));
    ASSERT_FALSE(latest.empty()) << out;
    auto resumed = meshtrain::testing::run_command(fmt::format("{} -n 2 {} train --resume {} --metrics {}", MESHTRAIN_MPIEXEC, kBinary, dir(name),
                                   metrics));
    ASSERT_EQ(resumed.code, 0) << resumed.output;
    const auto got = read_metrics(metrics);
    ASSERT_EQ(got.size(), expected.size());
    for (size_t i = 0; i < got.size(); ++i)
      ASSERT_EQ(got[i]["loss"].get<double>(), expected[i]["loss"].get<double>()) << name << " step " << i + 1;
  }
}

// More ranks x threads than cores: the log says that communication times include waiting for a core.
TEST_F(Resume, OversubscribedHostsAreNamedInTheLog) {
  cpu_set_t set;
  CPU_ZERO(&set);
  ASSERT_EQ(sched_getaffinity(0, sizeof(set), &set), 0);
  const int cores = CPU_COUNT(&set);
  const int ranks = 2, threads = cores;  // 2 x cores > cores
  auto r = meshtrain::testing::run_command(
      fmt::format("{} -n {} {} {} --set train.steps=2 --set train.threads={} --set train.out_dir={}",
                  MESHTRAIN_MPIEXEC, ranks, kBinary, "train " + keys(2), threads, dir("crowded")));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(contains(r.output, fmt::format("{} ranks x {} thread", ranks, threads))) << r.output;
  EXPECT_TRUE(contains(r.output, "include that waiting")) << r.output;
  auto alone = run(train("uncrowded", 2) + " --set train.threads=1");
  ASSERT_EQ(alone.code, 0) << alone.output;
  EXPECT_FALSE(contains(alone.output, "include that waiting")) << alone.output;
  // Ranks bound to a core each (Open MPI's default for small jobs) see one core in their own mask;
  // two of them with a thread each fit a host of two cores, and the log must not say otherwise.
  if (cores >= 2) {
    auto bound = meshtrain::testing::run_command(
        fmt::format("{} -n 2 --bind-to core {} {} --set train.steps=2 --set train.threads=1 --set train.out_dir={}",
                    MESHTRAIN_MPIEXEC, kBinary, "train " + keys(2), dir("bound")));
    ASSERT_EQ(bound.code, 0) << bound.output;
    EXPECT_FALSE(contains(bound.output, "include that waiting")) << bound.output;
  }
}

// --metrics into a folder that does not exist creates it; the help is current.
TEST_F(Resume, MetricsCreatesItsFolderAndHelpIsCurrent) {
  auto r = run(train("metrics", 2) + " --metrics " + dir("new/folder/m.jsonl"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(meshtrain::testing::count_lines(dir("new/folder/m.jsonl")), 2);
  auto help = run("--help");
  EXPECT_FALSE(contains(help.output, "to come")) << help.output;
  auto th = run("train --help");
  for (const char* flag : {"--resume", "--branch", "--metrics", "--config", "--set"})
    EXPECT_TRUE(contains(th.output, flag)) << flag;
}

// A disk that fills up during a save (a file-size limit makes every write past it fail with EFBIG):
// a clear error naming the file, the previous checkpoint and `latest` byte-identical, nothing under
// the new checkpoint's name, and the run resumes once there is room.
TEST_F(Resume, AFullDiskEndsTheSaveWithAClearErrorAndLosesNothing) {
  auto first = run(train("full", 10));
  ASSERT_EQ(first.code, 0) << first.output;
  const auto before = snapshot(dir("full"));
  ASSERT_TRUE(before.count("ckpt_000010.h5")) << "no first checkpoint";
  // 100 KiB: the step log fits, the next checkpoint (about 400 KiB) does not.
  auto full = meshtrain::testing::run_command(
      fmt::format("sh -c 'ulimit -f 100; exec {} train --resume {} --set train.steps=20'", kBinary, dir("full")));
  // 1 is the error exit; a crash after the message (it once was SIGSEGV at exit: a file whose close
  // had failed was closed again by HDF5's atexit handler) would be 128 + the signal.
  EXPECT_EQ(full.code, 1) << full.output;
  EXPECT_TRUE(contains(full.output, "File too large")) << full.output;
  EXPECT_TRUE(contains(full.output, "ckpt_000020.h5.tmp")) << full.output;
  auto after = snapshot(dir("full"));
  EXPECT_EQ(after, before) << "the run's folder changed (a partial file left behind, or the old checkpoint touched)";
  EXPECT_FALSE(fs::exists(dir("full") + "/ckpt_000020.h5"));
  auto resumed = run("train --resume " + dir("full") + " --set train.steps=20");
  ASSERT_EQ(resumed.code, 0) << resumed.output;
  EXPECT_EQ(slurp(dir("full") + "/latest"), "ckpt_000020.h5\n");
  auto verify = run("ckpt verify " + dir("full"));
  EXPECT_EQ(verify.code, 0) << verify.output;
  EXPECT_TRUE(contains(verify.output, "ckpt_000020.h5: ok")) << verify.output;
}
