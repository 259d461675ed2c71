// Tests of `meshtrain ckpt info` and `ckpt convert`: bit-exact round trips through llm.c and
// safetensors, identical logits after re-import, the exported layouts byte by byte, clear errors on
// damaged inputs, and outputs that appear only when complete. Every file is generated here.
#include "launch/ckpt/ckpt_tools.h"

#include <gtest/gtest.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/bf16.h"
#include "launch/train/train_state.h"
#include "model/gpt.h"
#include "parallel/checkpoint.h"
#include "core/communicator.h"
#include "test_util.h"

namespace meshtrain {
namespace {

using nlohmann::json;
using testing::ScratchDir;

GptConfig tiny_model() {
  GptConfig c;
  c.n_layer = 2;
  c.n_head = 2;
  c.n_embd = 16;
  c.seq_len = 8;
  c.vocab_size = 37;
  return c;
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// A safetensors file taken apart: the JSON header and the data section.
struct StFile {
  json header;
  std::string data;
};

StFile split_st(const std::string& path) {
  std::string b = read_bytes(path);
  uint64_t n = 0;
  std::memcpy(&n, b.data(), 8);
  return {json::parse(b.substr(8, n)), b.substr(8 + n)};
}

void join_st(const std::string& path, const StFile& f) {
  std::string h = f.header.dump();
  uint64_t n = h.size();
  write_bytes(path, std::string(reinterpret_cast<const char*>(&n), 8) + h + f.data);
}

// Appends a tensor's bytes to the data section and records it in the header.
void add_st_tensor(StFile& f, const std::string& name, const std::string& dtype, const std::vector<int64_t>& shape,
                   const std::string& bytes) {
  const uint64_t begin = f.data.size();
  f.data += bytes;
  f.header[name] = {{"dtype", dtype}, {"shape", shape}, {"data_offsets", {begin, f.data.size()}}};
}

class CkptTools : public ::testing::Test {
 protected:
  // A trained-looking tiny run: random values in every parameter (LayerNorms and biases included,
  // so a misplaced tensor cannot hide behind ones and zeros), padded vocabulary rows zero.
  void SetUp() override {
    cfg_.model = tiny_model();
    cfg_.train.out_dir = dir_.str("run");
    cfg_.train.seed = 4242;
    model_ = std::make_unique<Gpt>(cfg_.model, comm_);
    model_->initialize(7);
    Tensor& p = model_->params();
    auto noise = testing::random_floats(static_cast<size_t>(model_->table().total()), 99, -0.5f, 0.5f);
    for (int64_t i = 0; i < model_->table().total(); ++i) p.f32()[i] += noise[i];
    Tensor wte = model_->param("wte");
    const int64_t C = cfg_.model.n_embd;
    std::memset(wte.f32() + cfg_.model.vocab_size * C, 0,
                (cfg_.model.padded_vocab() - cfg_.model.vocab_size) * C * sizeof(float));
    const int64_t n = model_->params().numel();
    MomentBuffers moments{Tensor::empty({n}), Tensor::empty({n}), 5};
    auto m = testing::random_floats(n, 1), v = testing::random_floats(n, 2, 0.0f, 1.0f);
    std::memcpy(moments.m.f32(), m.data(), n * 4);
    std::memcpy(moments.v.f32(), v.data(), n * 4);
    RunCounters counters;
    counters.step = 5;
    counters.rng_counter = 11;
    ckpt_ = save_run(cfg_, *model_, moments, counters);
  }

  std::string convert(const std::string& from, const std::string& to, const std::string& in, const std::string& out,
                      int n_head = 0, const std::string& config = "") {
    ConvertArgs a{from, to, in, out, config, n_head};
    return convert_checkpoint(a);
  }

  // Every model tensor of path equals the original run's, bit for bit.
  void expect_same_weights(const std::string& path) {
    ModelWeights w = read_meshtrain_weights(path);
    EXPECT_EQ(w.model.n_layer, cfg_.model.n_layer);
    EXPECT_EQ(w.model.n_head, cfg_.model.n_head);
    EXPECT_EQ(w.model.n_embd, cfg_.model.n_embd);
    EXPECT_EQ(w.model.seq_len, cfg_.model.seq_len);
    EXPECT_EQ(w.model.vocab_size, cfg_.model.vocab_size);
    ASSERT_EQ(w.tensors.size(), model_->table().specs().size());
    for (const auto& s : model_->table().specs()) {
      const Tensor& got = w.tensors.at(s.name);
      ASSERT_EQ(got.shape(), s.global_shape) << s.name;
      EXPECT_EQ(std::memcmp(got.f32(), model_->param(s.name).f32(), got.nbytes()), 0) << s.name << " differs";
    }
  }

  // Logits of a model loaded from path (as `meshtrain generate` loads it) on fixed tokens.
  std::vector<float> logits_of(Gpt& model) {
    const int B = 2, T = cfg_.model.seq_len;
    std::vector<int32_t> tokens(B * T);
    for (int i = 0; i < B * T; ++i) tokens[i] = (i * 7 + 3) % cfg_.model.vocab_size;
    model.forward(tokens.data(), nullptr, B, T);
    std::vector<float> out;
    for (int r = 0; r < B * T; ++r)
      out.insert(out.end(), model.logits_row(r), model.logits_row(r) + cfg_.model.vocab_size);
    return out;
  }

  std::vector<float> logits_after_reload(const std::string& path) {
    Config run = read_run_config(path);
    Gpt reloaded(run.model, comm_);
    const int64_t n = reloaded.params().numel();
    MomentBuffers moments{Tensor::empty({n}), Tensor::empty({n}), -1};
    RunCounters c = load_run(path, reloaded, &moments);
    EXPECT_EQ(c.step, 0);
    EXPECT_EQ(c.rng_counter, 0);
    EXPECT_EQ(moments.adam_steps, 0);
    for (int64_t i = 0; i < reloaded.table().total(); ++i) {
      if (moments.m.f32()[i] != 0.0f || moments.v.f32()[i] != 0.0f) {
        ADD_FAILURE() << "AdamW moments of a converted checkpoint must be zero (element " << i << ")";
        break;
      }
    }
    return logits_of(reloaded);
  }

  void expect_same_logits(const std::string& path) {
    std::vector<float> before = logits_of(*model_), after = logits_after_reload(path);
    ASSERT_EQ(before.size(), after.size());
    EXPECT_EQ(std::memcmp(before.data(), after.data(), before.size() * 4), 0) << "logits differ after re-import";
  }

  ScratchDir dir_{"ckpt_tools"};
  LocalCommunicator comm_;
  Config cfg_ = default_config();
  std::unique_ptr<Gpt> model_;
  std::string ckpt_;
};

TEST_F(CkptTools, LlmcRoundTripIsBitExactAndKeepsLogits) {
  std::string bin = dir_.str("model.bin"), back = dir_.str("back.h5");
  std::string summary = convert("meshtrain", "llmc", ckpt_, bin);
  EXPECT_NE(summary.find("2 layers, 2 heads, 16 channels"), std::string::npos) << summary;
  convert("llmc", "meshtrain", bin, back);
  expect_same_weights(back);
  expect_same_logits(back);
  CheckpointReader r(back);
  EXPECT_EQ(r.get_string("converted_from"), "llmc '" + bin + "'");
  EXPECT_EQ(r.get_string("tokenizer"), "");
  EXPECT_EQ(r.get_string("layout"), "single process");
  EXPECT_EQ(r.get_int("loader_epoch"), 0);
  EXPECT_EQ(r.get_int("loader_cursor"), 0);
}

TEST_F(CkptTools, SafetensorsRoundTripIsBitExactAndKeepsLogits) {
  std::string st = dir_.str("model.safetensors"), back = dir_.str("back.h5");
  convert("meshtrain", "safetensors", ckpt_, st);
  convert("safetensors", "meshtrain", st, back);
  expect_same_weights(back);
  expect_same_logits(back);
  // And on through llm.c: safetensors -> llmc -> meshtrain is the same model again.
  std::string bin = dir_.str("via_st.bin"), back2 = dir_.str("back2.h5");
  convert("safetensors", "llmc", st, bin);
  convert("llmc", "meshtrain", bin, back2);
  expect_same_weights(back2);
}

TEST_F(CkptTools, LlmcHeaderAndLayout) {
  std::string bin = dir_.str("model.bin");
  convert("meshtrain", "llmc", ckpt_, bin);
  std::string b = read_bytes(bin);
  const GptConfig& m = cfg_.model;
  ASSERT_EQ(b.size(), 1024 + 4 * static_cast<size_t>(m.num_params()));
  int32_t h[256];
  std::memcpy(h, b.data(), sizeof(h));
  EXPECT_EQ(h[0], 20240326);
  EXPECT_EQ(h[1], 3);
  EXPECT_EQ(h[2], m.seq_len);
  EXPECT_EQ(h[3], m.vocab_size);
  EXPECT_EQ(h[4], m.n_layer);
  EXPECT_EQ(h[5], m.n_head);
  EXPECT_EQ(h[6], m.n_embd);
  EXPECT_EQ(h[7], 128);
  for (int i = 8; i < 256; ++i) ASSERT_EQ(h[i], 0) << "header[" << i << "]";
  // llm.c order: wte (Vp, C), wpe (T, C), ln1w (L, C), ln1b (L, C), qkvw (L, 3C, C), ...
  const int64_t C = m.n_embd, L = m.n_layer;
  const float* p = reinterpret_cast<const float*>(b.data() + 1024);
  auto same = [&](int64_t at, const std::string& name) {
    Tensor t = model_->param(name);
    return std::memcmp(p + at, t.f32(), t.nbytes()) == 0;
  };
  int64_t at = 0;
  EXPECT_TRUE(same(at, "wte"));
  at += 128 * C;
  EXPECT_TRUE(same(at, "wpe"));
  at += m.seq_len * C;
  EXPECT_TRUE(same(at, "h.0.ln_1.weight"));
  EXPECT_TRUE(same(at + C, "h.1.ln_1.weight"));
  at += 2 * L * C;  // ln1w, ln1b
  EXPECT_TRUE(same(at, "h.0.attn.c_attn.weight"));
  EXPECT_TRUE(same(at + 3 * C * C, "h.1.attn.c_attn.weight"));
  EXPECT_TRUE(same(static_cast<int64_t>(m.num_params()) - C, "ln_f.bias"));
}

TEST_F(CkptTools, SafetensorsNamesShapesAndTransposes) {
  std::string st = dir_.str("model.safetensors");
  convert("meshtrain", "safetensors", ckpt_, st);
  std::string b = read_bytes(st);
  uint64_t n = 0;
  std::memcpy(&n, b.data(), 8);
  EXPECT_EQ((8 + n) % 8, 0u) << "data section should start 8-byte aligned";
  StFile f = split_st(st);
  const int64_t C = 16, V = 37, T = 8;
  EXPECT_EQ(f.header["__metadata__"]["format"], "pt");
  EXPECT_EQ(f.header["__metadata__"]["n_head"], "2");
  auto shape = [&](const std::string& name) { return f.header.at(name).at("shape").get<std::vector<int64_t>>(); };
  EXPECT_EQ(shape("wte.weight"), (std::vector<int64_t>{V, C}));
  EXPECT_EQ(shape("wpe.weight"), (std::vector<int64_t>{T, C}));
  EXPECT_EQ(shape("h.1.attn.c_attn.weight"), (std::vector<int64_t>{C, 3 * C}));
  EXPECT_EQ(shape("h.1.attn.c_attn.bias"), (std::vector<int64_t>{3 * C}));
  EXPECT_EQ(shape("h.1.attn.c_proj.weight"), (std::vector<int64_t>{C, C}));
  EXPECT_EQ(shape("h.1.mlp.c_fc.weight"), (std::vector<int64_t>{C, 4 * C}));
  EXPECT_EQ(shape("h.1.mlp.c_proj.weight"), (std::vector<int64_t>{4 * C, C}));
  EXPECT_EQ(shape("ln_f.bias"), (std::vector<int64_t>{C}));
  EXPECT_EQ(f.header.size(), 1u + 2 + 12 * 2 + 2) << "metadata + wte, wpe + 12 per block + ln_f";
  for (const auto& [key, e] : f.header.items()) {
    EXPECT_FALSE(key.starts_with("transformer.")) << key;
    if (key != "__metadata__") {
      EXPECT_EQ(e["dtype"], "F32") << key;
    }
  }
  // Conv1D: element [i][j] of the stored [C, 3C] weight is our [j][i].
  auto element = [&](const std::string& name, int64_t i, int64_t j) {
    const auto& e = f.header.at(name);
    int64_t cols = e["shape"][1].get<int64_t>();
    float v;
    std::memcpy(&v, f.data.data() + e["data_offsets"][0].get<uint64_t>() + 4 * (i * cols + j), 4);
    return v;
  };
  Tensor ours = model_->param("h.1.attn.c_attn.weight");  // [3C, C]
  for (auto [i, j] : {std::pair<int64_t, int64_t>{3, 40}, {15, 0}, {0, 47}}) {
    EXPECT_EQ(element("h.1.attn.c_attn.weight", i, j), ours.f32()[j * C + i]) << i << "," << j;
  }
  EXPECT_EQ(element("wte.weight", 36, 5), model_->param("wte").f32()[36 * C + 5]);
}

TEST_F(CkptTools, SafetensorsReaderAcceptsHuggingFaceVariants) {
  std::string st = dir_.str("ours.safetensors"), hf = dir_.str("hf/model.safetensors");
  convert("meshtrain", "safetensors", ckpt_, st);
  StFile ours = split_st(st), theirs;
  // "transformer." prefixes, the attention-mask buffers, no metadata, ln_f.weight in BF16 and
  // ln_f.bias in F16 holding the awkward half-precision values (subnormals, extremes, infinities, NaN).
  const uint16_t f16_bits[16] = {0x3c00, 0x0001, 0x03ff, 0x0400, 0x7bff, 0xfbff, 0x7c00, 0xfc00,
                                 0x8000, 0xc000, 0x3555, 0x7e00, 0x4248, 0x5640, 0xb800, 0x0000};
  const float inf = std::numeric_limits<float>::infinity();
  const float f16_values[16] = {1.0f,  0x1p-24f, 1023 * 0x1p-24f, 0x1p-14f, 65504.0f,  -65504.0f, inf,   -inf,
                                -0.0f, -2.0f,    0.333251953125f, NAN,      3.140625f, 100.0f,    -0.5f, 0.0f};
  for (const auto& [key, e] : ours.header.items()) {
    if (key == "__metadata__") continue;
    const uint64_t b = e["data_offsets"][0], end = e["data_offsets"][1];
    std::string bytes = ours.data.substr(b, end - b);
    std::string dtype = "F32";
    if (key == "ln_f.weight" || key == "ln_f.bias") {
      std::string narrow;
      for (size_t i = 0; i < bytes.size(); i += 4) {
        float v;
        std::memcpy(&v, bytes.data() + i, 4);
        uint16_t h = key == "ln_f.weight" ? float_to_bf16(v) : f16_bits[i / 4];
        narrow.append(reinterpret_cast<const char*>(&h), 2);
      }
      bytes = narrow;
      dtype = key == "ln_f.weight" ? "BF16" : "F16";
    }
    add_st_tensor(theirs, "transformer." + key, dtype, e["shape"].get<std::vector<int64_t>>(), bytes);
  }
  std::string mask(4 * 64, '\0');
  add_st_tensor(theirs, "transformer.h.0.attn.bias", "F32", {1, 1, 8, 8}, mask);
  add_st_tensor(theirs, "transformer.h.1.attn.masked_bias", "F32", {}, mask.substr(0, 4));
  std::filesystem::create_directories(dir_.str("hf"));
  join_st(hf, theirs);
  // No head count anywhere and n_embd 16 is not a multiple of 64: a clear request for --n-head.
  try {
    read_safetensors(hf);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--n-head"), std::string::npos) << e.what();
  }
  ModelWeights w = read_safetensors(hf, 2);
  EXPECT_EQ(w.model.n_head, 2);
  EXPECT_EQ(std::memcmp(w.tensors.at("h.1.mlp.c_proj.weight").f32(), model_->param("h.1.mlp.c_proj.weight").f32(),
                        16 * 64 * 4),
            0);
  const float* lnf = w.tensors.at("ln_f.weight").f32();
  for (int i = 0; i < 16; ++i) {
    EXPECT_EQ(lnf[i], bf16_to_float(float_to_bf16(model_->param("ln_f.weight").f32()[i])));
    const float got = w.tensors.at("ln_f.bias").f32()[i];
    if (std::isnan(f16_values[i])) {
      EXPECT_TRUE(std::isnan(got)) << i;
    } else {
      EXPECT_EQ(got, f16_values[i]) << "F16 bits 0x" << std::hex << f16_bits[i];
      EXPECT_EQ(std::signbit(got), std::signbit(f16_values[i])) << i;
    }
  }
  // config.json beside the file gives n_head; --n-head wins over it; a mismatched one is refused.
  write_bytes(dir_.str("hf/config.json"), R"({"n_head": 4, "n_embd": 16, "n_layer": 2, "n_positions": 8})");
  EXPECT_EQ(read_safetensors(hf).model.n_head, 4);
  EXPECT_EQ(read_safetensors(hf, 8).model.n_head, 8);
  write_bytes(dir_.str("hf/config.json"), R"({"n_head": 4, "n_embd": 768})");
  EXPECT_THROW(read_safetensors(hf), Error);
}

// Runs fn, which must throw an Error whose message contains every one of parts.
template <class F>
void expect_error(F fn, std::initializer_list<std::string> parts) {
  try {
    fn();
    ADD_FAILURE() << "expected an error containing '" << *parts.begin() << "'";
  } catch (const Error& e) {
    std::string msg = e.what();
    for (const std::string& part : parts) EXPECT_NE(msg.find(part), std::string::npos) << msg;
    EXPECT_TRUE(msg.starts_with("[")) << msg;
  }
}

TEST_F(CkptTools, DamagedLlmcFilesFailClearly) {
  std::string bin = dir_.str("model.bin"), bad = dir_.str("bad.bin"), out = dir_.str("out.h5");
  convert("meshtrain", "llmc", ckpt_, bin);
  std::string b = read_bytes(bin);
  std::string magic = b;
  magic[0] ^= 0x5a;
  write_bytes(bad, magic);
  expect_error([&] { convert("llmc", "meshtrain", bad, out); }, {"bad magic", bad});
  std::string bf16 = b;
  bf16[4] = 5;
  write_bytes(bad, bf16);
  expect_error([&] { read_llmc_model(bad); }, {"bf16", "version 3"});
  write_bytes(bad, b.substr(0, b.size() - 4));
  expect_error([&] { read_llmc_model(bad); }, {"truncated", bad});
  write_bytes(bad, b.substr(0, 100));
  expect_error([&] { read_llmc_model(bad); }, {"too short", bad});
  write_bytes(bad, b + "xxxx");
  expect_error([&] { read_llmc_model(bad); }, {"4 bytes after the parameters"});
  expect_error([&] { read_llmc_model(dir_.str("absent.bin")); }, {"does not exist"});
  EXPECT_FALSE(std::filesystem::exists(out));
}

TEST_F(CkptTools, DamagedSafetensorsFailClearly) {
  std::string st = dir_.str("model.safetensors"), bad = dir_.str("bad.safetensors");
  convert("meshtrain", "safetensors", ckpt_, st);
  std::string b = read_bytes(st);
  // Header length beyond the file.
  std::string longer = b;
  uint64_t huge = b.size();
  std::memcpy(longer.data(), &huge, 8);
  write_bytes(bad, longer);
  expect_error([&] { read_safetensors(bad); }, {"header length", "runs past the end"});
  write_bytes(bad, b.substr(0, 5));
  expect_error([&] { read_safetensors(bad); }, {"shorter than the 8-byte header length"});
  // Data cut off: the last tensor's offsets leave the file.
  write_bytes(bad, b.substr(0, b.size() - 8));
  expect_error([&] { read_safetensors(bad); }, {"outside the", "truncated"});
  // Not JSON.
  std::string garbage = b;
  garbage[8] = '#';
  write_bytes(bad, garbage);
  expect_error([&] { read_safetensors(bad); }, {"not a JSON object"});
  // A missing tensor is named.
  StFile f = split_st(st);
  f.header.erase("h.1.mlp.c_fc.bias");
  join_st(bad, f);
  expect_error([&] { read_safetensors(bad); }, {"no tensor 'h.1.mlp.c_fc.bias'"});
  // A Conv1D weight in our [out, in] orientation is the wrong shape, and the message says why.
  f = split_st(st);
  f.header["h.0.attn.c_attn.weight"]["shape"] = {48, 16};
  join_st(bad, f);
  expect_error([&] { read_safetensors(bad); },
               {"'h.0.attn.c_attn.weight' has shape [48, 16], expected [16, 48]", "[in, out]"});
  // Offsets that disagree with dtype and shape.
  f = split_st(st);
  f.header["ln_f.bias"]["data_offsets"][1] = f.header["ln_f.bias"]["data_offsets"][1].get<uint64_t>() - 4;
  join_st(bad, f);
  expect_error([&] { read_safetensors(bad); }, {"'ln_f.bias' spans 60 bytes"});
  // A stray tensor, and a block number that would size the model.
  f = split_st(st);
  add_st_tensor(f, "h.0.attn.rotary", "F32", {1}, std::string(4, '\0'));
  join_st(bad, f);
  expect_error([&] { read_safetensors(bad); }, {"'h.0.attn.rotary' is not a parameter"});
  f = split_st(st);
  add_st_tensor(f, "h.900000.ln_1.weight", "F32", {1}, std::string(4, '\0'));
  join_st(bad, f);
  expect_error([&] { read_safetensors(bad); }, {"h.900000"});
  f = split_st(st);
  f.header["wpe.weight"]["dtype"] = "I64";
  join_st(bad, f);
  expect_error([&] { read_safetensors(bad); }, {"dtype I64"});
}

TEST_F(CkptTools, OutputAppearsOnlyWhenComplete) {
  std::string bin = dir_.str("good.bin"), junk = dir_.str("junk.bin");
  convert("meshtrain", "llmc", ckpt_, bin);
  write_bytes(junk, std::string(2000, 'x'));
  for (const std::string to : {"llmc", "safetensors", "meshtrain"}) {
    SCOPED_TRACE(to);
    const std::string from = to == "meshtrain" ? "llmc" : "meshtrain";
    const std::string good = to == "meshtrain" ? bin : ckpt_;
    std::string out = dir_.str("precious." + to);
    write_bytes(out, "precious bytes");
    // A failing read leaves the existing output alone...
    EXPECT_THROW(convert(from, to, junk, out), Error);
    EXPECT_EQ(read_bytes(out), "precious bytes");
    // ...and so does a failing write (the temporary name is blocked by a folder with a file in it).
    std::filesystem::create_directories(out + ".tmp/blocker");
    EXPECT_THROW(convert(from, to, good, out), Error);
    EXPECT_EQ(read_bytes(out), "precious bytes");
    std::filesystem::remove_all(out + ".tmp");
    // A successful conversion replaces it whole and leaves no temporary behind.
    convert(from, to, good, out);
    EXPECT_NE(read_bytes(out), "precious bytes");
    EXPECT_FALSE(std::filesystem::exists(out + ".tmp"));
  }
  EXPECT_EQ(read_llmc_model(dir_.str("precious.llmc")).model.n_layer, 2);
  EXPECT_EQ(read_safetensors(dir_.str("precious.safetensors")).model.n_head, 2);
  expect_same_weights(dir_.str("precious.meshtrain"));
}

TEST_F(CkptTools, ConvertChecksItsArguments) {
  std::string out = dir_.str("o.bin");
  expect_error([&] { convert("meshtrain", "meshtrain", ckpt_, out); }, {"nothing to convert"});
  expect_error([&] { convert("meshtrain", "onnx", ckpt_, out); }, {"unknown checkpoint format 'onnx'"});
  expect_error([&] { convert("meshtrain", "llmc", ckpt_, out, 4); }, {"--n-head only applies"});
  expect_error([&] { convert("meshtrain", "llmc", ckpt_, out, 0, "run.toml"); }, {"--config only applies"});
  expect_error([&] { convert("meshtrain", "llmc", ckpt_, ckpt_); }, {"is the input file"});
  write_bytes(dir_.str("not.h5"), "not an hdf5 file at all");
  expect_error([&] { convert("meshtrain", "llmc", dir_.str("not.h5"), out); }, {"not a readable HDF5 file"});
  EXPECT_FALSE(std::filesystem::exists(out));
}

TEST_F(CkptTools, RopeModelsRecordTheChoiceAndRefuseGpt2Formats) {
  Config rope = cfg_;
  rope.model.pos_embedding = "rope";
  rope.model.rope_theta = 5000.0;
  rope.train.out_dir = dir_.str("rope_run");
  Gpt model(rope.model, comm_);
  model.initialize(3);
  const int64_t n = model.params().numel();
  MomentBuffers moments{Tensor::zeros({n}), Tensor::zeros({n}), 0};
  const std::string path = save_run(rope, model, moments, RunCounters{});
  const Config back = read_run_config(path);
  EXPECT_EQ(back.model.pos_embedding, "rope");
  EXPECT_EQ(back.model.rope_theta, 5000.0);
  EXPECT_FALSE(CheckpointReader(path).has("model/wpe"));
  for (const std::string to : {"llmc", "safetensors"}) {
    const std::string out = dir_.str("rope." + to);
    expect_error([&] { convert("meshtrain", to, path, out); },
                 {"rotary position embeddings", "Keep it as a meshtrain checkpoint"});
    EXPECT_FALSE(std::filesystem::exists(out)) << to;
  }
  // meshtrain -> meshtrain keeps it a RoPE model.
  std::filesystem::copy_file(path, dir_.str("rope_src.h5"));
  ModelWeights w = read_meshtrain_weights(dir_.str("rope_src.h5"));
  EXPECT_TRUE(w.model.rope());
  EXPECT_EQ(w.tensors.count("wpe"), 0u);
}

TEST_F(CkptTools, VerifyReadsEveryDatasetAndNamesADamagedOne) {
  const std::string summary = verify_checkpoint(ckpt_);
  EXPECT_NE(summary.find("ok, "), std::string::npos) << summary;
  EXPECT_NE(summary.find("matching CRC-32"), std::string::npos) << summary;
  // Flip one bit in the middle of the file (tensor data): verify names the file and the dataset.
  const std::string bad = dir_.str("flipped.h5");
  std::filesystem::copy_file(ckpt_, bad);
  std::string bytes = read_bytes(bad);
  bytes[bytes.size() / 2] = static_cast<char>(bytes[bytes.size() / 2] ^ 0x08);
  write_bytes(bad, bytes);
  expect_error([&] { verify_checkpoint(bad); }, {"fails its checksum", "flipped.h5", "the file is corrupt"});
}

TEST_F(CkptTools, ConfigFileIsStoredWithTheSourceModelShape) {
  std::string bin = dir_.str("model.bin"), out = dir_.str("run.h5"), toml = dir_.str("run.toml");
  convert("meshtrain", "llmc", ckpt_, bin);
  write_bytes(toml, "[model]\nn_layer = 12\nn_embd = 768\n\n[data]\ntokenizer = \"tok\"\n\n[train]\nsteps = 77\n");
  convert("llmc", "meshtrain", bin, out, 0, toml);
  Config run = read_run_config(out);
  EXPECT_EQ(run.train.steps, 77);
  EXPECT_EQ(run.data.tokenizer, "tok");
  EXPECT_EQ(run.model.n_layer, 2) << "the model section comes from the source";
  EXPECT_EQ(run.model.n_embd, 16);
  EXPECT_EQ(CheckpointReader(out).get_string("tokenizer"), "tok");
  EXPECT_EQ(CheckpointReader(out).get_int("seed"), run.train.seed);
}

// The value of an info line "key   value" (the first line starting with key), "" when absent.
std::string info_field(const std::string& info, const std::string& key) {
  size_t at = info.starts_with(key + " ") ? 0 : info.find("\n" + key + " ");
  if (at == std::string::npos) return "";
  at = info.find_first_not_of(' ', info.find(' ', at + 1));
  return info.substr(at, info.find('\n', at) - at);
}

// The whitespace-separated words of the first line that starts with prefix (after indentation).
std::vector<std::string> info_row(const std::string& info, const std::string& prefix) {
  std::istringstream lines(info);
  for (std::string line; std::getline(lines, line);) {
    size_t start = line.find_first_not_of(' ');
    if (start == std::string::npos || line.compare(start, prefix.size(), prefix) != 0) continue;
    std::istringstream words(line);
    std::vector<std::string> out;
    for (std::string w; words >> w;) out.push_back(w);
    return out;
  }
  return {};
}

TEST_F(CkptTools, InfoDescribesEveryDataset) {
  std::string info = checkpoint_info(ckpt_);
  EXPECT_EQ(info_field(info, "model"),
            "2 layers, 2 heads, 16 channels, seq_len 8, vocab 37 (padded 128), 8,768 parameters")
      << info;
  EXPECT_EQ(info_field(info, "layout"), "single process") << info;
  EXPECT_EQ(info_field(info, "step"), "5") << info;
  EXPECT_EQ(info_field(info, "adam_steps"), "5") << info;
  EXPECT_EQ(info_field(info, "rng_counter"), "11") << info;
  EXPECT_EQ(info_field(info, "seed"), "4242") << info;
  for (const std::string group : {"model/", "optim/m/", "optim/v/"})
    for (const auto& s : model_->table().specs())
      EXPECT_EQ(info_row(info, group + s.name + " ").size(), 3 + s.global_shape.size())
          << group << s.name << ": name, shape, dtype, bytes";
  EXPECT_EQ(info_row(info, "model/wte "), (std::vector<std::string>{"model/wte", "[128,", "16]", "f32", "8,192"}));
  EXPECT_EQ(info_row(info, "optim/v/h.1.mlp.c_fc.bias "),
            (std::vector<std::string>{"optim/v/h.1.mlp.c_fc.bias", "[64]", "f32", "256"}));
  // Totals: 28 tensors per group of num_params() f32 elements.
  const uint64_t n = static_cast<uint64_t>(cfg_.model.num_params());
  auto group_digits = [](uint64_t v) {
    std::string d = std::to_string(v), out;
    for (size_t i = 0; i < d.size(); ++i) {
      if (i > 0 && (d.size() - i) % 3 == 0) out.push_back(',');
      out.push_back(d[i]);
    }
    return out;
  };
  const std::string totals = info.substr(info.find("\ntotals\n"));
  for (const std::string group : {"model ", "optim/m ", "optim/v "}) {
    auto row = info_row(totals, group);
    ASSERT_GE(row.size(), 7u) << group << info;
    EXPECT_EQ(row[1], "28");
    EXPECT_EQ(row[3], group_digits(n));
    EXPECT_EQ(row[5], group_digits(4 * n));
  }
  auto all = info_row(totals, "all ");
  ASSERT_GE(all.size(), 7u) << info;
  EXPECT_EQ(all[1], "84");
  EXPECT_EQ(all[5], group_digits(12 * n));

  // A layout attribute is shown as saved.
  CheckpointMeta meta;
  meta.strings["layout"] = "dp=2 tp=2 pp=1";
  meta.ints["step"] = 3;
  save_checkpoint(dir_.str("laid_out.h5"), {{"model/wpe", model_->param("wpe")}}, meta);
  std::string laid = checkpoint_info(dir_.str("laid_out.h5"));
  EXPECT_EQ(info_field(laid, "layout"), "dp=2 tp=2 pp=1") << laid;
  EXPECT_EQ(info_field(laid, "model"), "(no 'config' attribute)") << laid;
  write_bytes(dir_.str("junk.h5"), "junk");
  expect_error([&] { checkpoint_info(dir_.str("junk.h5")); }, {"not a readable HDF5 file"});
}

// CLI11 takes its argument vector in reverse.
void parse_args(CLI::App& app, std::vector<std::string> args) {
  std::reverse(args.begin(), args.end());
  app.parse(args);
}

TEST_F(CkptTools, CommandLineRunsTheTools) {
  std::function<void()> action;
  CLI::App app;
  add_ckpt_commands(app, action);
  std::string bin = dir_.str("cli.bin");
  parse_args(app, {"ckpt", "convert", "--from", "meshtrain", "--to", "llmc", "--input", ckpt_, "--output", bin});
  ASSERT_TRUE(action);
  ::testing::internal::CaptureStdout();
  action();
  std::string out = ::testing::internal::GetCapturedStdout();
  EXPECT_NE(out.find("wrote " + bin + " (llmc)"), std::string::npos) << out;
  EXPECT_EQ(read_llmc_model(bin).model.n_embd, 16);

  std::function<void()> info_action;
  CLI::App app2;
  add_ckpt_commands(app2, info_action);
  parse_args(app2, {"ckpt", "info", cfg_.train.out_dir});  // a folder: its latest checkpoint
  ASSERT_TRUE(info_action);
  ::testing::internal::CaptureStdout();
  info_action();
  out = ::testing::internal::GetCapturedStdout();
  EXPECT_NE(out.find(ckpt_), std::string::npos) << out;
  EXPECT_NE(out.find("model/wte"), std::string::npos) << out;

  CLI::App app3;
  std::function<void()> none;
  add_ckpt_commands(app3, none);
  EXPECT_THROW(
      parse_args(app3, {"ckpt", "convert", "--from", "onnx", "--to", "llmc", "--input", ckpt_, "--output", bin}),
      CLI::ParseError);
}

}  // namespace
}  // namespace meshtrain
