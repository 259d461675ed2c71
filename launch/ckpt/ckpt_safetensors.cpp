// Hugging Face GPT-2 safetensors: an 8-byte little-endian header length N, N bytes of JSON naming
// each tensor's dtype, shape and byte range, then the raw data. GPT-2 there uses Conv1D layers whose
// weights are stored [in, out], the transpose of ours, and an unpadded vocabulary.
#include <bit>
#include <charconv>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "core/bf16.h"
#include "core/mapped_file.h"
#include "launch/ckpt/ckpt_io.h"
#include "model/params.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace meshtrain {
namespace {

static_assert(std::endian::native == std::endian::little, "safetensors are little-endian; so is this reader");

// Far beyond any real header (GPT-2 XL's is ~60 KB); guards against allocating a corrupt length.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

float f16_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h >> 15) << 31, exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
  if (exp == 0) {  // zero or subnormal: mant * 2^-24
    float v = std::ldexp(static_cast<float>(mant), -24);
    return sign ? -v : v;
  }
  if (exp == 31) return std::bit_cast<float>(sign | 0x7f800000u | (mant << 13));  // inf, NaN
  return std::bit_cast<float>(sign | ((exp + 112) << 23) | (mant << 13));         // rebias 15 -> 127
}

// Our name -> the Hugging Face one (embeddings carry ".weight" there).
std::string hf_name(const std::string& ours) { return ours == "wte" || ours == "wpe" ? ours + ".weight" : ours; }

// The shape Hugging Face stores for one of our parameters.
Shape hf_shape(const std::string& ours, const Shape& shape, const GptConfig& cfg) {
  if (ours == "wte") return {cfg.vocab_size, shape[1]};
  if (ckpt::is_conv1d_weight(ours)) return {shape[1], shape[0]};
  return shape;
}

struct StEntry {
  std::string dtype;
  Shape shape;
  const unsigned char* data = nullptr;
};

size_t st_dtype_size(const std::string& dtype) { return dtype == "F32" ? 4 : 2; }

// Parses and checks one tensor's header entry against the data section.
StEntry parse_entry(const std::string& path, const std::string& name, const json& e, const unsigned char* data,
                    uint64_t data_bytes) {
  auto bad = [&](const std::string& why) -> StEntry {
    MT_FAIL("[ckpt] safetensors '{}': tensor '{}' {}", path, name, why);
  };
  if (!e.is_object() || !e.contains("dtype") || !e.contains("shape") || !e.contains("data_offsets"))
    return bad("needs an object with \"dtype\", \"shape\" and \"data_offsets\"");
  const json &dtype = e["dtype"], &shape = e["shape"], &offsets = e["data_offsets"];
  if (!dtype.is_string()) return bad("has a non-string dtype");
  StEntry out;
  out.dtype = dtype.get<std::string>();
  if (out.dtype != "F32" && out.dtype != "F16" && out.dtype != "BF16")
    return bad("has dtype " + out.dtype + "; F32, F16 and BF16 are read");
  if (!shape.is_array() || shape.size() > 8) return bad("has a malformed shape");
  for (const json& d : shape) {
    if (!d.is_number_unsigned() || d.get<uint64_t>() > (1ull << 40)) return bad("has a malformed shape");
    out.shape.push_back(static_cast<int64_t>(d.get<uint64_t>()));
  }
  if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() ||
      !offsets[1].is_number_unsigned())
    return bad("needs \"data_offsets\": [begin, end]");
  const uint64_t begin = offsets[0].get<uint64_t>(), end = offsets[1].get<uint64_t>();
  if (begin > end || end > data_bytes)
    return bad(fmt::format("has data_offsets [{}, {}] outside the {} data bytes of the file (truncated?)", begin, end,
                           data_bytes));
  const uint64_t want = static_cast<uint64_t>(shape_numel(out.shape)) * st_dtype_size(out.dtype);
  if (end - begin != want)
    return bad(fmt::format("spans {} bytes but {} {} needs {}", end - begin, out.dtype, shape_str(out.shape), want));
  out.data = data + begin;
  return out;
}

// Copies a stored tensor into dst as f32, transposing a 2-D [in, out] tensor when asked.
void to_f32(const StEntry& e, Tensor& dst, bool transpose) {
  const int64_t n = dst.numel();
  std::vector<float> tmp;
  float* out = dst.f32();
  if (transpose) {
    tmp.resize(static_cast<size_t>(n));
    out = tmp.data();
  }
  if (e.dtype == "F32") {
    std::memcpy(out, e.data, static_cast<size_t>(n) * 4);
  } else {
    for (int64_t i = 0; i < n; ++i) {
      uint16_t v;
      std::memcpy(&v, e.data + 2 * i, 2);
      out[i] = e.dtype == "F16" ? f16_to_float(v) : bf16_to_float(v);
    }
  }
  if (!transpose) return;
  const int64_t rows = e.shape[0], cols = e.shape[1];  // stored [rows, cols] -> ours [cols, rows]
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) dst.f32()[c * rows + r] = out[r * cols + c];
}

// n_head, which safetensors do not record: --n-head, then config.json beside the file, then our own
// metadata, then GPT-2's 64-channel heads.
int resolve_n_head(const std::string& path, int n_head, const json& meta, int C, int L, int T) {
  if (n_head > 0) return n_head;
  fs::path cfg_path = fs::path(path).parent_path() / "config.json";
  std::error_code ec;
  if (fs::is_regular_file(cfg_path, ec)) {
    std::ifstream in(cfg_path);
    json cfg = json::parse(in, nullptr, false);
    MT_CHECK(!cfg.is_discarded() && cfg.is_object(), "[ckpt] '{}' (next to '{}') is not a JSON object",
             cfg_path.string(), path);
    // A config.json of another model would silently give the wrong head count: check what it shares.
    for (auto [key, have] : {std::pair<const char*, int>{"n_embd", C}, {"n_layer", L}, {"n_positions", T}}) {
      MT_CHECK(!cfg.contains(key) || (cfg[key].is_number_integer() && cfg[key].get<int64_t>() == have),
               "[ckpt] '{}' says {} = {}, but the tensors of '{}' give {}; is it the config of another model?",
               cfg_path.string(), key, cfg[key].dump(), path, have);
    }
    if (cfg.contains("n_head")) {
      MT_CHECK(cfg["n_head"].is_number_integer() && cfg["n_head"].get<int64_t>() > 0,
               "[ckpt] '{}': n_head must be a positive integer (got {})", cfg_path.string(), cfg["n_head"].dump());
      return static_cast<int>(cfg["n_head"].get<int64_t>());
    }
  }
  if (meta.is_object() && meta.contains("n_head") && meta["n_head"].is_string()) {
    const std::string s = meta["n_head"].get<std::string>();
    int v = 0;
    auto [end, err] = std::from_chars(s.data(), s.data() + s.size(), v);
    MT_CHECK(err == std::errc() && end == s.data() + s.size() && v > 0,
             "[ckpt] safetensors '{}': metadata n_head '{}' is not a positive integer", path, s);
    return v;
  }
  MT_CHECK(C % 64 == 0,
           "[ckpt] safetensors '{}' does not say how many attention heads the model has and n_embd = {} is not a "
           "multiple of GPT-2's 64-channel heads; pass --n-head N or put a config.json with \"n_head\" beside it",
           path, C);
  return C / 64;
}

}  // namespace

ModelWeights read_safetensors(const std::string& path, int n_head) {
  ckpt::check_input_file(path, "safetensors");
  MappedFile file(path);
  MT_CHECK(file.size() >= 8, "[ckpt] safetensors '{}' is {} bytes, shorter than the 8-byte header length: truncated?",
           path, file.size());
  uint64_t n = 0;
  std::memcpy(&n, file.data(), 8);
  MT_CHECK(n <= file.size() - 8,
           "[ckpt] safetensors '{}': header length {} runs past the end of the file ({} bytes): truncated, or not a "
           "safetensors file",
           path, n, file.size());
  MT_CHECK(n <= kMaxHeaderBytes, "[ckpt] safetensors '{}': header length {} is implausibly large", path, n);
  json header = json::parse(file.data() + 8, file.data() + 8 + n, nullptr, false);
  MT_CHECK(!header.is_discarded() && header.is_object(),
           "[ckpt] safetensors '{}': the {}-byte header is not a JSON "
           "object (not a safetensors file?)",
           path, n);
  const unsigned char* data = file.data() + 8 + n;
  const uint64_t data_bytes = file.size() - 8 - n;

  // Our names, with "transformer." stripped; the attention-mask buffers and the tied head are skipped.
  std::map<std::string, StEntry> entries;
  json meta;
  std::set<int> layers;
  for (const auto& [key, value] : header.items()) {
    if (key == "__metadata__") {
      meta = value;
      continue;
    }
    std::string name = key.starts_with("transformer.") ? key.substr(12) : key;
    if (name == "lm_head.weight" || name.ends_with(".attn.bias") || name.ends_with(".attn.masked_bias")) continue;
    if (name == "wte.weight" || name == "wpe.weight") name.resize(3);
    int layer = -1;
    if (name.starts_with("h.")) {
      auto [end, err] = std::from_chars(name.data() + 2, name.data() + name.size(), layer);
      MT_CHECK(err == std::errc() && *end == '.' && layer >= 0 && layer < 100000,
               "[ckpt] safetensors '{}': tensor '{}' is not a GPT-2 parameter", path, key);
      layers.insert(layer);
    }
    MT_CHECK(entries.emplace(name, parse_entry(path, key, value, data, data_bytes)).second,
             "[ckpt] safetensors '{}': tensor '{}' appears twice (with and without 'transformer.')", path, key);
  }
  for (const char* required : {"wte", "wpe"})
    MT_CHECK(entries.count(required), "[ckpt] safetensors '{}' has no tensor '{}.weight'; is it a GPT-2 model?", path,
             required);
  const Shape &wte = entries["wte"].shape, &wpe = entries["wpe"].shape;
  MT_CHECK(wte.size() == 2 && wpe.size() == 2 && wte[1] == wpe[1],
           "[ckpt] safetensors '{}': wte.weight {} and wpe.weight {} must be [V, C] and [T, C]", path, shape_str(wte),
           shape_str(wpe));
  MT_CHECK(!layers.empty(), "[ckpt] safetensors '{}' has no transformer blocks (tensors h.N.*)", path);
  const int max_layer = *layers.rbegin();
  // Checked before anything is allocated: a stray high block number must not size the model.
  for (int l = 0; l <= max_layer; ++l)
    MT_CHECK(layers.count(l), "[ckpt] safetensors '{}' has tensors of block h.{} but none of block h.{}", path,
             max_layer, l);
  GptConfig cfg;
  cfg.n_embd = static_cast<int>(wte[1]);
  cfg.vocab_size = static_cast<int>(wte[0]);
  cfg.seq_len = static_cast<int>(wpe[0]);
  cfg.n_layer = max_layer + 1;
  cfg.n_head = resolve_n_head(path, n_head, meta, cfg.n_embd, cfg.n_layer, cfg.seq_len);
  cfg.validate();

  ModelWeights w = ckpt::allocate_weights(cfg);
  ParameterTable table(cfg);
  std::set<std::string> used;
  for (const ParamSpec& s : table.specs()) {
    auto it = entries.find(s.name);
    MT_CHECK(it != entries.end(), "[ckpt] safetensors '{}' has no tensor '{}' (a {}-layer GPT-2 needs it)", path,
             hf_name(s.name), cfg.n_layer);
    const Shape want = hf_shape(s.name, s.global_shape, cfg);
    MT_CHECK(it->second.shape == want, "[ckpt] safetensors '{}': tensor '{}' has shape {}, expected {}{}", path,
             hf_name(s.name), shape_str(it->second.shape), shape_str(want),
             ckpt::is_conv1d_weight(s.name) ? " (Conv1D weights are stored [in, out])" : "");
    Tensor& dst = w.tensors.at(s.name);
    if (s.name == "wte") {
      dst.zero_();  // padded rows
      Tensor real = dst.view(0, want);
      to_f32(it->second, real, false);
    } else {
      to_f32(it->second, dst, ckpt::is_conv1d_weight(s.name));
    }
    used.insert(s.name);
  }
  for (const auto& [name, e] : entries)
    MT_CHECK(used.count(name), "[ckpt] safetensors '{}': tensor '{}' is not a parameter of a {}-layer GPT-2", path,
             hf_name(name), cfg.n_layer);
  return w;
}

void write_safetensors(const std::string& path, const ModelWeights& w) {
  check_model_weights(w, "safetensors export");
  const GptConfig& m = w.model;
  MT_CHECK(!m.rope(),
           "[ckpt] this model uses rotary position embeddings (model.pos_embedding = rope); a Hugging Face GPT-2 "
           "model holds a learned position table and no rotary setting, so it would load as another model. "
           "Keep it as a meshtrain checkpoint");
  ParameterTable table(m);
  // Metadata values must be strings; n_head is what the format cannot otherwise say.
  nlohmann::ordered_json header;
  header["__metadata__"] = {{"format", "pt"},
                            {"producer", "meshtrain"},
                            {"n_layer", std::to_string(m.n_layer)},
                            {"n_head", std::to_string(m.n_head)},
                            {"n_embd", std::to_string(m.n_embd)},
                            {"n_positions", std::to_string(m.seq_len)},
                            {"vocab_size", std::to_string(m.vocab_size)}};
  uint64_t offset = 0;
  for (const ParamSpec& s : table.specs()) {
    const Shape shape = hf_shape(s.name, s.global_shape, m);
    const uint64_t bytes = static_cast<uint64_t>(shape_numel(shape)) * 4;
    header[hf_name(s.name)] = {{"dtype", "F32"}, {"shape", shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // keeps the data 8-byte aligned, as the reference writer does
  const uint64_t n = text.size();
  ckpt::write_file_atomically(path, [&](std::FILE* f) {
    ckpt::write_bytes(f, &n, 8, path);
    ckpt::write_bytes(f, text.data(), text.size(), path);
    std::vector<float> tmp;
    for (const ParamSpec& s : table.specs()) {
      const Tensor& t = w.tensors.at(s.name);
      if (s.name == "wte") {
        ckpt::write_bytes(f, t.f32(), static_cast<size_t>(m.vocab_size) * m.n_embd * 4, path);
      } else if (ckpt::is_conv1d_weight(s.name)) {
        const int64_t rows = t.dim(0), cols = t.dim(1);  // ours [out, in] -> [in, out]
        tmp.resize(static_cast<size_t>(t.numel()));
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t c = 0; c < cols; ++c) tmp[c * rows + r] = t.f32()[r * cols + c];
        ckpt::write_bytes(f, tmp.data(), tmp.size() * 4, path);
      } else {
        ckpt::write_bytes(f, t.f32(), t.nbytes(), path);
      }
    }
  });
}

}  // namespace meshtrain
