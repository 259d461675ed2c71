// Resharding on load: a checkpoint saved by a dp x tp x pp = 2 x 2 x 2 run with ZeRO-1 resumes on
// other layouts (and one process), continuing with losses within 1e-5 of the uninterrupted run, and
// bit-identically on its own layout.
#include <gtest/gtest.h>
#include <hdf5.h>
#include <sys/wait.h>

#include <cmath>
#include <filesystem>
#include <fmt/format.h>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli_util.h"
#include "test_util.h"
#include "tiny_corpus.h"

namespace fs = std::filesystem;

namespace {

const std::string& kBinary = meshtrain::testing::kMeshtrain;
meshtrain::testing::CommandResult run(const std::string& cmd) { return meshtrain::testing::run_command(cmd); }
const auto& losses = meshtrain::testing::read_losses;

std::string mpi(int np) { return np > 1 ? fmt::format("{} -n {} ", MESHTRAIN_MPIEXEC, np) : std::string(); }

}  // namespace

TEST(Reshard, CheckpointFrom222Zero1ResumesOnEveryLayout) {
  meshtrain::testing::ScratchDir dir("reshard");
  const fs::path root = dir.path();
  meshtrain::testing::make_tiny_corpus(root);
  const std::string base = fmt::format(
      "{} train --set data.train={}/shards/train_*.bin --set data.tokenizer={}/tok --set model.n_layer=4 "
      "--set model.n_head=4 --set model.n_embd=32 --set model.seq_len=16 --set train.batch_size=8 "
      "--set train.steps=20 --set train.checkpoint_every=10 --set train.sample_every=0 --set train.eval_every=0 "
      "--set train.threads=1 --set train.warmup_steps=2 --set parallel.microbatches=2 --set parallel.bucket_mb=0.02",
      kBinary, root.string(), root.string());
  auto ref = run(mpi(8) + base + " --set parallel.dp=2 --set parallel.tp=2 --set parallel.pp=2 --set parallel.zero=1 "
                 "--set train.out_dir=" + (root / "ref").string() + " --metrics " + (root / "ref.jsonl").string());
  ASSERT_EQ(ref.code, 0) << ref.output;
  auto expected = losses((root / "ref.jsonl").string());
  ASSERT_EQ(expected.size(), 20u);
  const std::string ckpt = (root / "ref" / "ckpt_000010.h5").string();

  struct Target {
    int dp, tp, pp, zero;
  };
  for (Target t : {Target{2, 2, 2, 1}, Target{1, 1, 1, 0}, Target{4, 1, 1, 0}, Target{1, 4, 1, 1}, Target{1, 1, 4, 0},
                   Target{2, 1, 2, 1}}) {
    const std::string name = fmt::format("dp{}tp{}pp{}z{}", t.dp, t.tp, t.pp, t.zero);
    SCOPED_TRACE(name);
    const int np = t.dp * t.tp * t.pp;
    auto r = run(mpi(np) + kBinary + fmt::format(" train --resume {} --set parallel.dp={} --set parallel.tp={} "
                                                 "--set parallel.pp={} --set parallel.zero={} --set train.out_dir={} "
                                                 "--metrics {}",
                                                 ckpt, t.dp, t.tp, t.pp, t.zero, (root / name).string(),
                                                 (root / (name + ".jsonl")).string()));
    ASSERT_EQ(r.code, 0) << r.output;
    auto got = losses((root / (name + ".jsonl")).string());
    ASSERT_EQ(got.size(), 10u);
    const bool same_layout = t.dp == 2 && t.tp == 2 && t.pp == 2 && t.zero == 1;
    for (int i = 0; i < 10; ++i) {
      if (same_layout) EXPECT_EQ(got[i], expected[10 + i]) << "step " << 11 + i;
      else EXPECT_LE(std::fabs(got[i] - expected[10 + i]), 1e-5 * std::fabs(expected[10 + i])) << "step " << 11 + i;
    }
  }

  // With no parallel.* keys the layout is chosen for the world: the saved one where it fits (8
  // ranks), otherwise data parallelism over every rank (1 and 2 ranks), and the log says which.
  for (int np : {1, 2, 8}) {
    const std::string name = fmt::format("auto_np{}", np);
    SCOPED_TRACE(name);
    auto r = run(mpi(np) + kBinary + fmt::format(" train --resume {} --set train.out_dir={} --metrics {}", ckpt,
                                                 (root / name).string(), (root / (name + ".jsonl")).string()));
    ASSERT_EQ(r.code, 0) << r.output;
    EXPECT_NE(r.output.find(np == 8 ? "as saved" : fmt::format("training data-parallel over all of them (dp {})", np)),
              std::string::npos) << r.output;
    auto got = losses((root / (name + ".jsonl")).string());
    ASSERT_EQ(got.size(), 10u);
    for (int i = 0; i < 10; ++i) {
      if (np == 8) EXPECT_EQ(got[i], expected[10 + i]) << "step " << 11 + i;
      else EXPECT_LE(std::fabs(got[i] - expected[10 + i]), 1e-5 * std::fabs(expected[10 + i])) << "step " << 11 + i;
    }
  }

  // The sharded file holds whole tensors with their checksums: a flipped bit inside one tensor stops
  // the resume with a message naming that tensor, and nothing on disk changes.
  const std::string bad = (root / "bad" / "ckpt_000010.h5").string();
  fs::create_directories(root / "bad");
  fs::copy_file(ckpt, bad);
  {
    hid_t f = H5Fopen(bad.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    hid_t d = H5Dopen2(f, "model/h.2.mlp.c_fc.weight", H5P_DEFAULT);
    haddr_t addr = H5Dget_offset(d);  // contiguous: the tensor's bytes start here
    H5Dclose(d);
    H5Fclose(f);
    ASSERT_NE(addr, HADDR_UNDEF);
    std::fstream io(bad, std::ios::in | std::ios::out | std::ios::binary);
    io.seekg(static_cast<std::streamoff>(addr + 100));
    char c = 0;
    io.read(&c, 1);
    c ^= 0x04;
    io.seekp(static_cast<std::streamoff>(addr + 100));
    io.write(&c, 1);
  }
  auto r = run(kBinary + fmt::format(" train --resume {} --set parallel.dp=1 --set parallel.tp=1 --set parallel.pp=1 --set parallel.zero=0 "
                                     "--set train.out_dir={}", bad, (root / "bad").string()));
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("model/h.2.mlp.c_fc.weight"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(root / "bad" / "ckpt_000011.h5"));
}
