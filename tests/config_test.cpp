// Configuration: defaults, TOML files, --set overrides, and the errors for unknown keys and bad values.
#include <gtest/gtest.h>

#include <fstream>

#include "core/error.h"
#include "launch/config.h"
#include "test_util.h"

using namespace meshtrain;

namespace {
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST(Config, DefaultsAreTheBuiltinRun) {
  Config c = load_config("", {});
  EXPECT_EQ(c.model.n_layer, 4);
  EXPECT_EQ(c.model.vocab_size, 0);
  EXPECT_TRUE(c.data.train.empty());
  EXPECT_EQ(c.train.out_dir, "runs/default");
}

TEST(Config, SetOverridesEveryKind) {
  Config c = load_config("", {"model.n_layer=2", "train.lr=3e-4", "train.out_dir=x/y", "train.shuffle=false",
                              "data.train=\"a.bin,b.bin\""});
  EXPECT_EQ(c.model.n_layer, 2);
  EXPECT_DOUBLE_EQ(c.train.lr, 3e-4);
  EXPECT_EQ(c.train.out_dir, "x/y");
  EXPECT_FALSE(c.train.shuffle);
  EXPECT_EQ(c.data.train, "a.bin,b.bin");
}

TEST(Config, TomlFileThenOverrides) {
  meshtrain::testing::ScratchDir dir("config");
  std::ofstream(dir.str("run.toml")) << "[model]\nn_layer = 6\nn_embd = 384\nn_head = 6\n[train]\nlr = 1\n"
                                        "steps = 50\n";
  Config c = load_config(dir.str("run.toml"), {"train.steps=70"});
  EXPECT_EQ(c.model.n_layer, 6);
  EXPECT_DOUBLE_EQ(c.train.lr, 1.0) << "integers are accepted where numbers are expected";
  EXPECT_EQ(c.train.steps, 70);
}

TEST(Config, RoundTripsThroughToml) {
  Config c = load_config("", {"model.n_layer=3", "train.lr=0.00123456789", "data.tokenizer=tok dir/\"q\""});
  Config d = config_from_toml(config_to_toml(c), "test");
  EXPECT_EQ(config_to_toml(c), config_to_toml(d));
  EXPECT_EQ(d.data.tokenizer, "tok dir/\"q\"");
  EXPECT_DOUBLE_EQ(d.train.lr, 0.00123456789);
}

TEST(Config, UnknownKeysAreNamed) {
  std::string e = error_of([] { load_config("", {"train.learning_rate=1"}); });
  EXPECT_NE(e.find("unknown key 'train.learning_rate'"), std::string::npos) << e;
  EXPECT_NE(e.find("train.lr"), std::string::npos) << "the message should list the known keys: " << e;
  e = error_of([] { load_config("", {"optim.lr=1"}); });
  EXPECT_NE(e.find("sections are [model], [data], [train], [parallel] and [lora]"), std::string::npos) << e;

  meshtrain::testing::ScratchDir dir("config");
  std::ofstream(dir.str("bad.toml")) << "[model]\nn_layer = 2\nn_layers = 3\n";
  e = error_of([&] { load_config(dir.str("bad.toml"), {}); });
  EXPECT_NE(e.find("model.n_layers"), std::string::npos) << e;
  EXPECT_NE(e.find("line 3"), std::string::npos) << e;
}

TEST(Config, BadValuesNameTheKeyAndTheExpectedForm) {
  std::string e = error_of([] { load_config("", {"train.steps=ten"}); });
  EXPECT_NE(e.find("train.steps expects an integer"), std::string::npos) << e;
  e = error_of([] { load_config("", {"train.batch_size=0"}); });
  EXPECT_NE(e.find("train.batch_size must be an integer >= 1"), std::string::npos) << e;
  e = error_of([] { load_config("", {"train.lr=fast"}); });
  EXPECT_NE(e.find("train.lr expects a number"), std::string::npos) << e;
  e = error_of([] { load_config("", {"train.lr=-1"}); });
  EXPECT_NE(e.find("train.lr must be > 0"), std::string::npos) << e;
  e = error_of([] { load_config("", {"model.n_embd=100", "model.n_head=3"}); });
  EXPECT_NE(e.find("multiple of model.n_head"), std::string::npos) << e;
  e = error_of([] { load_config("", {"train.steps"}); });
  EXPECT_NE(e.find("section.key=value"), std::string::npos) << e;
  e = error_of([] { load_config("", {"train.device=tpu"}); });
  EXPECT_NE(e.find("train.device must be auto, cpu or cuda"), std::string::npos) << e;
  e = error_of([] { load_config("", {"train.precision=fp16"}); });
  EXPECT_NE(e.find("train.precision must be fp32 or bf16"), std::string::npos) << e;
  e = error_of([] { load_config("", {"train.attention=sparse"}); });
  EXPECT_NE(e.find("train.attention must be flash or materialised"), std::string::npos) << e;
  e = error_of([] { load_config("", {"train.device=cpu", "train.cuda_graph=true"}); });
  EXPECT_NE(e.find("train.device = cpu runs without CUDA graphs"), std::string::npos) << e;
  EXPECT_NO_THROW(load_config("", {"train.device=cpu", "train.precision=bf16"}));  // bf16 GEMMs through oneDNN
  e = error_of([] { load_config("", {"train.cuda_graph=maybe"}); });
  EXPECT_NE(e.find("train.cuda_graph"), std::string::npos) << e;
  // Strings go into every checkpoint as TOML, which is UTF-8 (found by fuzz_config), and HDF5
  // strings end at a NUL.
  e = error_of([] { load_config("", {"train.trace_steps=2:5\xec\x93\x90\x8d"}); });
  EXPECT_NE(e.find("train.trace_steps is not valid UTF-8 (byte 6 of the value)"), std::string::npos) << e;
  e = error_of([] { load_config("", {"data.train=a\xc0\xaf" "b"}); });  // an overlong '/'
  EXPECT_NE(e.find("data.train is not valid UTF-8 (byte 1"), std::string::npos) << e;
  e = error_of([] { load_config("", {std::string("data.train=a\0b", 14)}); });
  EXPECT_NE(e.find("data.train contains a NUL character"), std::string::npos) << e;
  EXPECT_EQ(load_config("", {"data.train=données/日本/🙂.bin"}).data.train, "données/日本/🙂.bin");

  meshtrain::testing::ScratchDir dir("config");
  std::ofstream(dir.str("types.toml")) << "[train]\nsteps = \"many\"\n";
  e = error_of([&] { load_config(dir.str("types.toml"), {}); });
  EXPECT_NE(e.find("train.steps expects an integer"), std::string::npos) << e;
  std::ofstream(dir.str("syntax.toml")) << "[train\nsteps = 3\n";
  e = error_of([&] { load_config(dir.str("syntax.toml"), {}); });
  EXPECT_NE(e.find("line 1"), std::string::npos) << e;
}

TEST(Config, ReferenceListsEveryKey) {
  std::string ref = config_reference();
  for (const char* k : {"model.n_layer", "model.n_head", "model.n_embd", "model.seq_len", "model.vocab_size",
                        "data.train", "data.val", "data.tokenizer", "train.batch_size", "train.grad_accum",
                        "train.steps", "train.lr", "train.min_lr", "train.warmup_steps", "train.weight_decay",
                        "train.grad_clip", "train.seed", "train.eval_every", "train.eval_batches",
                        "train.sample_every", "train.checkpoint_every", "train.out_dir", "train.threads"})
    EXPECT_NE(ref.find(k), std::string::npos) << k;
}
