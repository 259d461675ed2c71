// Shared helpers of the checkpoint converters (see ckpt_io.h): weight allocation, parameter orders,
// and atomic file output by write-to-temporary, fsync, rename.
#include "launch/ckpt/ckpt_io.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <utility>

#include "model/params.h"

namespace fs = std::filesystem;

namespace meshtrain::ckpt {

ModelWeights allocate_weights(const GptConfig& cfg) {
  ModelWeights w;
  w.model = cfg;
  ParameterTable table(cfg);
  for (const ParamSpec& s : table.specs()) w.tensors[s.name] = Tensor::empty(s.global_shape);
  return w;
}

const std::vector<std::string>& llmc_block_order() {
  static const std::vector<std::string> order = {
      "ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight", "attn.c_proj.bias",
      "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight",    "mlp.c_fc.bias",    "mlp.c_proj.weight",  "mlp.c_proj.bias"};
  return order;
}

bool is_conv1d_weight(const std::string& name) {
  return name.ends_with(".attn.c_attn.weight") || name.ends_with(".attn.c_proj.weight") ||
         name.ends_with(".mlp.c_fc.weight") || name.ends_with(".mlp.c_proj.weight");
}

std::string group_digits(uint64_t v) {
  const std::string digits = std::to_string(v);
  std::string out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return out;
}

std::string model_summary(const GptConfig& m) {
  const int64_t n = m.num_params();
  return fmt::format(
      "{} layers, {} heads, {} channels, seq_len {}, vocab {} (padded {}), {} parameters", m.n_layer, m.n_head,
      m.n_embd, m.seq_len, m.vocab_size, m.padded_vocab(),
      n >= 1000000 ? fmt::format("{:.2f}M", static_cast<double>(n) / 1e6) : group_digits(static_cast<uint64_t>(n)));
}

void write_bytes(std::FILE* f, const void* data, size_t n, const std::string& path) {
  if (n == 0) return;
  MT_CHECK(std::fwrite(data, 1, n, f) == n, "[ckpt] writing {} bytes to '{}' failed: {} (disk full?)", n, path,
           std::strerror(errno));
}

void check_input_file(const std::string& path, const char* format) {
  std::error_code ec;
  MT_CHECK(fs::exists(path, ec), "[ckpt] {} input '{}' does not exist", format, path);
  MT_CHECK(fs::is_regular_file(path, ec), "[ckpt] {} input '{}' is not a regular file", format, path);
}

void write_file_atomically(const std::string& path, const std::function<void(std::FILE*)>& body) {
  MT_CHECK(!path.empty(), "[ckpt] empty output path");
  fs::path parent = fs::path(path).parent_path();
  if (!parent.empty()) {
    std::error_code ec;
    fs::create_directories(parent, ec);
    MT_CHECK(!ec, "[ckpt] cannot create folder '{}' for '{}': {}", parent.string(), path, ec.message());
  }
  const std::string tmp = path + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  MT_CHECK(f, "[ckpt] cannot create '{}': {}", tmp, std::strerror(errno));
  try {
    body(f);
    MT_CHECK(std::fflush(f) == 0, "[ckpt] flushing '{}' failed: {}", tmp, std::strerror(errno));
    // The bytes must be on disk before the rename makes them the output.
    MT_CHECK(::fsync(::fileno(f)) == 0, "[ckpt] fsync of '{}' failed: {}", tmp, std::strerror(errno));
    std::FILE* done = std::exchange(f, nullptr);
    MT_CHECK(std::fclose(done) == 0, "[ckpt] closing '{}' failed: {}", tmp, std::strerror(errno));
    MT_CHECK(std::rename(tmp.c_str(), path.c_str()) == 0, "[ckpt] cannot rename '{}' to '{}': {}", tmp, path,
             std::strerror(errno));
  } catch (...) {
    if (f) std::fclose(f);
    std::error_code ec;
    fs::remove(tmp, ec);  // ours; whatever was at path is untouched
    throw;
  }
  // Best effort: make the rename durable (some network filesystems refuse to sync folders).
  int dir = ::open(parent.empty() ? "." : parent.c_str(), O_RDONLY | O_DIRECTORY);
  if (dir >= 0) {
    (void)::fsync(dir);
    ::close(dir);
  }
}

}  // namespace meshtrain::ckpt
