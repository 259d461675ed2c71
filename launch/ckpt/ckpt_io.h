// Pieces the checkpoint converters share: allocating a model's weights, the parameter names in
// llm.c's and Hugging Face's orders, and writing an output file so that it appears only when
// complete. Internal to launch/ckpt/.
#pragma once

#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "launch/ckpt/ckpt_tools.h"

namespace meshtrain::ckpt {

/// Every parameter of cfg (tp = pp = 1) as an uninitialised tensor of its global shape.
ModelWeights allocate_weights(const GptConfig& cfg);

/// The per-block parameter suffixes ("ln_1.weight", ...) in llm.c's parameter order.
const std::vector<std::string>& llmc_block_order();

/// True for the Conv1D weights that Hugging Face stores [in, out], the transpose of ours.
bool is_conv1d_weight(const std::string& name);

/// Writes path through path + ".tmp": body writes the bytes, then the file is flushed, fsynced and
/// renamed over path. On any failure the temporary file is removed and path is left as it was.
void write_file_atomically(const std::string& path, const std::function<void(std::FILE*)>& body);

/// fwrite that throws naming path when the write is short (disk full, I/O error).
void write_bytes(std::FILE* f, const void* data, size_t n, const std::string& path);

/// 1234567 -> "1,234,567": byte and parameter counts of real models are long.
std::string group_digits(uint64_t v);

/// "12 layers, 12 heads, 768 channels, seq_len 1024, vocab 50257 (padded 50304), 124.48M parameters".
std::string model_summary(const GptConfig& m);

/// Rejects a missing or non-regular input file with a message naming the format.
void check_input_file(const std::string& path, const char* format);

}  // namespace meshtrain::ckpt
