// llm.c model files (train_gpt2.c's gpt2_build_from_checkpoint / write_model): a 256 x int32
// header, then every parameter as fp32, each kind of block tensor stacked over the layers. Our
// weights are [out, in] like llm.c's, so converting is only a re-ordering by layer.
#include <bit>
#include <cstring>

#include "core/mapped_file.h"
#include "launch/ckpt/ckpt_io.h"

namespace meshtrain {
namespace {

static_assert(std::endian::native == std::endian::little, "llm.c files are little-endian; so is this reader");

constexpr int32_t kLlmcMagic = 20240326;
constexpr int32_t kLlmcVersionF32 = 3;
constexpr int32_t kLlmcVersionBf16 = 5;
constexpr int32_t kLlmcTokensMagic = 20240520;  // llm.c token shards, a common mix-up
constexpr size_t kHeaderInts = 256;
constexpr size_t kHeaderBytes = kHeaderInts * sizeof(int32_t);

// The order llm.c stores tensors in: wte, wpe, then each block tensor for layers 0..L-1, then ln_f.
std::vector<std::string> llmc_tensor_order(int n_layer) {
  std::vector<std::string> names = {"wte", "wpe"};
  for (const std::string& suffix : ckpt::llmc_block_order())
    for (int l = 0; l < n_layer; ++l) names.push_back("h." + std::to_string(l) + "." + suffix);
  names.push_back("ln_f.weight");
  names.push_back("ln_f.bias");
  return names;
}

}  // namespace

ModelWeights read_llmc_model(const std::string& path) {
  ckpt::check_input_file(path, "llm.c");
  MappedFile file(path);
  MT_CHECK(file.size() >= kHeaderBytes,
           "[ckpt] '{}' is too short for an llm.c model file ({} bytes; the header alone is {}): truncated?", path,
           file.size(), kHeaderBytes);
  int32_t h[kHeaderInts];
  std::memcpy(h, file.data(), kHeaderBytes);
  MT_CHECK(h[0] != kLlmcTokensMagic,
           "[ckpt] '{}' is an llm.c token shard (magic {}), not a model file; pass the model .bin written by "
           "llm.c's train_gpt2.py",
           path, h[0]);
  MT_CHECK(h[0] == kLlmcMagic, "[ckpt] '{}' is not an llm.c model file: bad magic {} (expected {})", path, h[0],
           kLlmcMagic);
  MT_CHECK(h[1] != kLlmcVersionBf16,
           "[ckpt] '{}' is an llm.c bf16 model file (version 5); only fp32 (version 3) is read: export the fp32 "
           "file (llm.c's train_gpt2.py writes both, e.g. gpt2_124M.bin next to gpt2_124M_bf16.bin)",
           path);
  MT_CHECK(h[1] == kLlmcVersionF32, "[ckpt] '{}' has llm.c model version {}; only version 3 (fp32) is read", path,
           h[1]);
  const int32_t maxT = h[2], V = h[3], L = h[4], NH = h[5], C = h[6], Vp = h[7];
  MT_CHECK(maxT > 0 && V > 0 && L > 0 && NH > 0 && C > 0 && Vp >= V,
           "[ckpt] '{}' has an impossible llm.c header: maxT={} V={} L={} NH={} C={} Vp={} (all must be positive, "
           "Vp >= V)",
           path, maxT, V, L, NH, C, Vp);
  GptConfig cfg;
  cfg.n_layer = L;
  cfg.n_head = NH;
  cfg.n_embd = C;
  cfg.seq_len = maxT;
  cfg.vocab_size = V;
  cfg.validate();

  // Sizes as llm.c computes them, with its own Vp (it need not be our multiple of 128); in double
  // first, so a corrupt header cannot overflow the count or make us allocate before the size check.
  const double c = C;
  const double floats = (static_cast<double>(Vp) + maxT + 2) * c + static_cast<double>(L) * (12 * c * c + 13 * c);
  const double want = static_cast<double>(kHeaderBytes) + 4.0 * floats;
  MT_CHECK(want <= static_cast<double>(file.size()),
           "[ckpt] '{}' is truncated: an llm.c model with maxT={} V={} Vp={} L={} NH={} C={} takes {:.0f} bytes, the "
           "file has {}",
           path, maxT, V, Vp, L, NH, C, want, file.size());
  const size_t expected = kHeaderBytes + 4 * static_cast<size_t>(floats);
  MT_CHECK(file.size() == expected,
           "[ckpt] '{}' has {} bytes after the parameters of an llm.c model with maxT={} V={} Vp={} L={} C={} ({} "
           "expected): not a model file of that shape",
           path, file.size() - expected, maxT, V, Vp, L, C, expected);

  ModelWeights w = ckpt::allocate_weights(cfg);
  const unsigned char* p = file.data() + kHeaderBytes;
  Tensor& wte = w.tensors.at("wte");
  if (Vp == cfg.padded_vocab()) {
    std::memcpy(wte.f32(), p, wte.nbytes());  // padding rows too, so a round trip is bit-exact
  } else {
    // Another padding: keep the real rows, ours are zero.
    wte.zero_();
    std::memcpy(wte.f32(), p, static_cast<size_t>(V) * C * sizeof(float));
  }
  p += static_cast<size_t>(Vp) * C * sizeof(float);
  for (const std::string& name : llmc_tensor_order(L)) {
    if (name == "wte") continue;
    Tensor& t = w.tensors.at(name);
    std::memcpy(t.f32(), p, t.nbytes());
    p += t.nbytes();
  }
  return w;
}

void write_llmc_model(const std::string& path, const ModelWeights& w) {
  check_model_weights(w, "llm.c export");
  const GptConfig& m = w.model;
  MT_CHECK(!m.rope(),
           "[ckpt] this model uses rotary position embeddings (model.pos_embedding = rope); llm.c "
           "checkpoints hold a learned position table and no rotary setting, so it would load as another model. "
           "Keep it as a meshtrain checkpoint");
  int32_t h[kHeaderInts] = {};
  h[0] = kLlmcMagic;
  h[1] = kLlmcVersionF32;
  h[2] = m.seq_len;
  h[3] = m.vocab_size;
  h[4] = m.n_layer;
  h[5] = m.n_head;
  h[6] = m.n_embd;
  h[7] = m.padded_vocab();
  ckpt::write_file_atomically(path, [&](std::FILE* f) {
    ckpt::write_bytes(f, h, kHeaderBytes, path);
    for (const std::string& name : llmc_tensor_order(m.n_layer)) {
      const Tensor& t = w.tensors.at(name);
      ckpt::write_bytes(f, t.f32(), t.nbytes(), path);
    }
  });
}

}  // namespace meshtrain
