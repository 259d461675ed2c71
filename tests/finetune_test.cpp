// LoRA fine-tuning end to end: `meshtrain finetune` on one process and under mpiexec on dp, tp and
// dp x tp layouts trains the same adapters (losses and adapter tensors within 1e-5), the validation
// loss falls, the adapter file is small and names its base, `lora merge` then generate prints what
// generate --adapter prints, and bad requests fail clearly without touching files.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <cstdio>
#include <sstream>
#include <tuple>

#include <fmt/format.h>

#include "cli_util.h"
#include "core/gemm_onednn.h"
#include "core/tensor.h"
#include "parallel/checkpoint.h"
#include "test_util.h"
#include "tiny_corpus.h"

namespace fs = std::filesystem;
using namespace meshtrain;

namespace {

const std::string& kBinary = meshtrain::testing::kMeshtrain;
meshtrain::testing::CommandResult run(const std::string& cmd) { return meshtrain::testing::run_command(cmd); }

std::string file_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

class Finetune : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = fs::temp_directory_path() / ("meshtrain_finetune_test_" + std::to_string(::getpid()));
    fs::remove_all(root_);
    meshtrain::testing::make_tiny_corpus(root_);
    for (const auto& [name, seed] : {std::pair{"base", 1}, std::pair{"other", 2}}) {
      auto r = run(fmt::format(
          "{0} train --set data.train={1}/shards/train_*.bin --set data.val={1}/shards/val_*.bin "
          "--set data.tokenizer={1}/tok --set model.n_layer=2 --set model.n_head=4 --set model.n_embd=32 "
          "--set model.seq_len=16 --set train.batch_size=8 --set train.steps=40 --set train.lr=1e-2 "
          "--set train.warmup_steps=4 --set train.sample_every=0 --set train.eval_every=0 --set train.threads=1 "
          "--set train.seed={3} --set train.out_dir={1}/{2}",
          kBinary, root_.string(), name, seed));
      ASSERT_EQ(r.code, 0) << r.output;
    }
  }
  static void TearDownTestSuite() { fs::remove_all(root_); }
  static std::string path(const std::string& name) { return (root_ / name).string(); }

  /// `finetune` of the base with a fixed small configuration (8 steps), writing name.h5 and name.jsonl.
  static std::string finetune(const std::string& name, const std::string& extra = "") {
    return fmt::format(
        "{0} finetune --checkpoint {1}/base --data '{1}/shards/train_*.bin' --val '{1}/shards/val_*.bin' "
        "--output {1}/{2}.h5 --metrics {1}/{2}.jsonl --set train.steps=8 --set train.batch_size=8 "
        "--set train.lr=1e-2 --set train.warmup_steps=2 --set train.eval_every=4 --set train.eval_batches=2 "
        "--set train.threads=1 --set lora.rank=4 {3}",
        kBinary, root_.string(), name, extra);
  }

  static fs::path root_;
};
fs::path Finetune::root_;

double rel_l2(const Tensor& a, const Tensor& b) {
  double d = 0, n = 0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    d += (a.f32()[i] - b.f32()[i]) * static_cast<double>(a.f32()[i] - b.f32()[i]);
    n += a.f32()[i] * static_cast<double>(a.f32()[i]);
  }
  return std::sqrt(d / std::max(n, 1e-30));
}

}  // namespace

TEST_F(Finetune, EveryLayoutTrainsTheSameAdapters) {
  auto one = run(finetune("single"));
  ASSERT_EQ(one.code, 0) << one.output;
  const auto want = meshtrain::testing::read_losses(path("single.jsonl"));
  ASSERT_EQ(want.size(), 8u);
  CheckpointReader ref(path("single.h5"));
  for (const auto& [np, extra, name] : std::vector<std::tuple<int, std::string, std::string>>{
           {2, "", "dp2"}, {2, "--tp 2", "tp2"}, {4, "--tp 2", "dp2tp2"}}) {
    SCOPED_TRACE(name);
    auto r = run(fmt::format("{} -n {} {}", MESHTRAIN_MPIEXEC, np, finetune(name, extra)));
    ASSERT_EQ(r.code, 0) << r.output;
    const auto got = meshtrain::testing::read_losses(path(name + ".jsonl"));
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < want.size(); ++i)
      EXPECT_LE(std::fabs(got[i] - want[i]), 1e-5 * std::fabs(want[i])) << "step " << i + 1;
    CheckpointReader out(path(name + ".h5"));
    int tensors = 0;
    for (const std::string& t : ref.list()) {
      Tensor a = Tensor::empty(ref.shape(t)), b = Tensor::empty(out.shape(t));
      ref.read(t, a);
      out.read(t, b);
      // B starts at zero, so after 8 steps it is small next to the rounding of another reduction
      // order: 1.3e-5 and 2.2e-5 (dp2 x tp2, dp2) on an AVX2-only EPYC, whose OpenBLAS kernels sum
      // differently; a wrongly split or reduced adapter is off by O(1).
      EXPECT_LE(rel_l2(b, a), 1e-4) << t;
      ++tensors;
    }
    EXPECT_EQ(tensors, 2 * 4 * 2);  // A and B of four layers in each of two blocks
  }
}

// train.precision = bf16 on the CPU: fine-tuning builds the same backend training does (bf16 GEMMs
// through oneDNN), says so, and follows the fp32 losses within bf16's tolerance; without oneDNN or
// bf16 instructions it refuses with the training path's message.
TEST_F(Finetune, Bf16OnTheCpuUsesTheBf16GemmsAndFollowsFp32) {
  auto bf16 = run(finetune("bf16", "--set train.precision=bf16"));
  if (!onednn_built() || onednn_bf16_isa().empty()) {
    EXPECT_NE(bf16.code, 0);
    EXPECT_NE(bf16.output.find("[bf16-cpu]"), std::string::npos) << bf16.output;
    return;
  }
  ASSERT_EQ(bf16.code, 0) << bf16.output;
  EXPECT_NE(bf16.output.find("with bf16 GEMMs"), std::string::npos) << bf16.output;
  auto fp32 = run(finetune("fp32_ref"));
  ASSERT_EQ(fp32.code, 0) << fp32.output;
  const auto want = meshtrain::testing::read_losses(path("fp32_ref.jsonl"));
  const auto got = meshtrain::testing::read_losses(path("bf16.jsonl"));
  ASSERT_EQ(got.size(), want.size());
  ASSERT_FALSE(got.empty());
  bool differs = false;
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_LE(std::fabs(got[i] - want[i]), 2e-2 * std::fabs(want[i])) << "step " << i + 1;
    differs |= got[i] != want[i];
  }
  EXPECT_TRUE(differs) << "bf16 GEMMs gave the fp32 losses exactly: the precision was not applied";
}

TEST_F(Finetune, ValidationLossFallsAndTheAdapterFileIsSmallAndNamesItsBase) {
  const std::string base_before = file_bytes(path("base/ckpt_000040.h5"));
  auto r = run(finetune("long", "--set train.steps=40 --set train.eval_every=20"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("optimizer state:"), std::string::npos) << r.output;
  const std::string key = "validation loss before fine-tuning: ";
  const auto at = r.output.find(key);
  ASSERT_NE(at, std::string::npos) << r.output;
  const double before = std::stod(r.output.substr(at + key.size()));
  std::ifstream metrics(path("long.jsonl"));
  std::string line, last_line;
  while (std::getline(metrics, line)) last_line = line;
  const auto v = last_line.find("\"val_loss\":");
  ASSERT_NE(v, std::string::npos) << last_line;
  const double after = std::stod(last_line.substr(v + 11));
  EXPECT_LT(after, before - 0.01) << "validation loss " << before << " -> " << after;
  EXPECT_EQ(file_bytes(path("base/ckpt_000040.h5")), base_before) << "the base checkpoint changed";
  CheckpointReader a(path("long.h5"));
  for (const std::string& t : a.list()) EXPECT_EQ(t.rfind("lora/", 0), 0u) << t;
  EXPECT_EQ(a.get_string("contents"), "lora-adapter");
  EXPECT_NE(a.get_string("base_checkpoint").find("ckpt_000040.h5"), std::string::npos);
  EXPECT_EQ(a.get_string("base_fingerprint").size(), 16u);
  EXPECT_LT(fs::file_size(path("long.h5")) * 5, fs::file_size(path("base/ckpt_000040.h5")));
}

TEST_F(Finetune, MergeThenGenerateEqualsGenerateWithTheAdapter) {
  auto t = run(finetune("merge_src", "--set train.steps=20"));
  ASSERT_EQ(t.code, 0) << t.output;
  auto m = run(fmt::format("{} lora merge --base {} --adapter {} --output {}", kBinary, path("base"),
                           path("merge_src.h5"), path("merged.h5")));
  ASSERT_EQ(m.code, 0) << m.output;
  const std::string gen = " --prompt 'the cat' --temperature 0 --max-new-tokens 16 --ignore-eos";
  auto merged = run(kBinary + " generate --checkpoint " + path("merged.h5") + gen);
  auto adapted = run(kBinary + " generate --checkpoint " + path("base") + " --adapter " + path("merge_src.h5") + gen);
  auto plain = run(kBinary + " generate --checkpoint " + path("base") + gen);
  auto split = run(fmt::format("{} -n 2 {} generate --checkpoint {} --adapter {} --tp 2 {}", MESHTRAIN_MPIEXEC,
                               kBinary, path("base"), path("merge_src.h5"), gen));
  for (const auto* r : {&merged, &adapted, &plain, &split}) ASSERT_EQ(r->code, 0) << r->output;
  EXPECT_EQ(adapted.output, merged.output);
  EXPECT_EQ(split.output, merged.output) << "tp 2";
  EXPECT_NE(plain.output, merged.output) << "the adapter should change the text";
}

TEST_F(Finetune, BadRequestsFailClearlyAndTouchNothing) {
  auto expect_error = [](const std::string& cmd, const std::string& message) {
    auto r = run(cmd);
    EXPECT_NE(r.code, 0) << cmd;
    EXPECT_NE(r.output.find(message), std::string::npos) << cmd << "\n" << r.output;
  };
  expect_error(finetune("bad1", "--set model.n_layer=3"), "model.n_layer comes from the base checkpoint");
  expect_error(finetune("bad2", "--set lora.targets=qkv,mlp"), "lora.targets: unknown layer 'mlp'");
  expect_error(finetune("bad3", "--set lora.rank=0"), "lora.rank must be an integer >= 1");
  expect_error(fmt::format("{} finetune --checkpoint {}", kBinary, path("base")), "no training data");
  // An existing output is never replaced without --overwrite.
  { std::ofstream(path("taken.h5")) << "mine"; }
  expect_error(finetune("taken"), "exists; pass --overwrite");
  EXPECT_EQ(file_bytes(path("taken.h5")), "mine");
  ASSERT_EQ(run(finetune("ok", "--set train.steps=2")).code, 0);
  // An adapter applies only to the weights it was trained on.
  expect_error(fmt::format("{} generate --checkpoint {} --adapter {}", kBinary, path("other"), path("ok.h5")),
               "has other weights");
  expect_error(fmt::format("{} lora merge --base {} --adapter {} --output {}", kBinary, path("other"), path("ok.h5"),
                           path("m.h5")),
               "has other weights");
  EXPECT_FALSE(fs::exists(path("m.h5")));
  expect_error(fmt::format("{} generate --checkpoint {}", kBinary, path("ok.h5")), "is a LoRA adapter, not a model");
  expect_error(fmt::format("{} generate --checkpoint {} --adapter {}", kBinary, path("base"),
                           path("base/ckpt_000040.h5")),
               "is not a LoRA adapter file");
  expect_error(fmt::format("{} generate --checkpoint {} --adapter {}", kBinary, path("base"), path("base")),
               "is a folder");
  expect_error(fmt::format("{} lora merge --base {} --adapter {} --output {}", kBinary, path("base"), path("ok.h5"),
                           path("taken.h5")),
               "merge never overwrites");
  EXPECT_EQ(file_bytes(path("taken.h5")), "mine");
}

// The README's worked example in small: a public-domain book, tokenized with the base's tokenizer,
// and the adapters lower its validation loss.
TEST_F(Finetune, AdaptersLearnABookFromTheSharedData) {
  MT_REQUIRE_SHARED_DATA(shared);
  const std::string book = shared + "/gutenberg/alice_in_wonderland.txt";
  ASSERT_TRUE(fs::exists(book)) << book;
  auto tok = run(fmt::format("{} tokenize --tokenizer {}/tok --input {} --output {}/alice", kBinary, root_.string(),
                             book, root_.string()));
  ASSERT_EQ(tok.code, 0) << tok.output;
  auto r = run(fmt::format(
      "{0} finetune --checkpoint {1}/base --data '{1}/alice/train_*.bin' --val '{1}/alice/val_*.bin' "
      "--output {1}/alice.h5 --metrics {1}/alice.jsonl --set train.steps=60 --set train.batch_size=8 "
      "--set train.lr=1e-2 --set train.eval_every=60 --set train.eval_batches=4 --set train.threads=1",
      kBinary, root_.string()));
  ASSERT_EQ(r.code, 0) << r.output;
  const std::string key = "validation loss before fine-tuning: ";
  const auto at = r.output.find(key);
  ASSERT_NE(at, std::string::npos) << r.output;
  const double before = std::stod(r.output.substr(at + key.size()));
  const auto rows = meshtrain::testing::read_metrics(path("alice.jsonl"));
  ASSERT_FALSE(rows.empty());
  const double after = rows.back()["val_loss"].get<double>();
  std::printf("Alice in Wonderland: validation loss %.3f -> %.3f after 60 LoRA steps\n", before, after);
  EXPECT_LT(after, before - 0.05);
}
