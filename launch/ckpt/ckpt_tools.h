// `meshtrain ckpt info` and `meshtrain ckpt convert`: inspect a checkpoint, and move GPT-2 weights
// between meshtrain checkpoints, llm.c's model .bin and Hugging Face safetensors. Every format is
// read into ModelWeights (meshtrain's global names and shapes) and written out of it.
// Formats and mappings: docs/checkpoint-format.md, "Tools and interchange".
#pragma once

#include <functional>
#include <map>
#include <string>

#include "core/tensor.h"
#include "launch/config.h"
#include "model/gpt_config.h"

namespace CLI {
class App;
}

namespace meshtrain {

enum class CkptFormat { meshtrain, llmc, safetensors };
/// Parses "meshtrain", "llmc" or "safetensors"; throws listing the choices otherwise.
CkptFormat parse_ckpt_format(const std::string& name);
const char* ckpt_format_name(CkptFormat f);

/// A model's weights: every parameter of ParameterTable(model) (tp = pp = 1) under its global name
/// with its global shape; wte has padded_vocab() rows, the rows past vocab_size being padding.
struct ModelWeights {
  GptConfig model;
  std::map<std::string, Tensor> tensors;
};

/// Throws naming the tensor when w lacks a parameter of its model, has one of the wrong shape or
/// dtype, or holds a name the model does not have.
void check_model_weights(const ModelWeights& w, const std::string& what);

/// A readable summary of a meshtrain checkpoint: model shape, layout, step, every dataset (name,
/// shape, dtype, bytes) and totals per group.
std::string checkpoint_info(const std::string& path);

/// Reads every dataset of a checkpoint (or adapter file) back, checking each one's CRC-32; a
/// summary line, or an error naming the file and the damaged dataset.
std::string verify_checkpoint(const std::string& path);

/// The model/ tensors and model shape (from the "config" attribute) of a meshtrain checkpoint.
ModelWeights read_meshtrain_weights(const std::string& path);
/// Writes a checkpoint that `meshtrain generate` and `meshtrain train --resume` accept: model/
/// tensors, zero AdamW moments, step 0, and run's configuration with its model section replaced by
/// w.model. source (e.g. "llmc 'gpt2.bin'") is stored as the "converted_from" attribute.
void write_meshtrain_checkpoint(const std::string& path, const ModelWeights& w, Config run, const std::string& source);

/// Reads an llm.c model file (header version 3, fp32).
ModelWeights read_llmc_model(const std::string& path);
/// Writes an llm.c model file (version 3, fp32, vocabulary padded as in w) atomically.
void write_llmc_model(const std::string& path, const ModelWeights& w);

/// Reads Hugging Face GPT-2 safetensors (F32, F16 or BF16). n_head > 0 sets the head count;
/// otherwise it comes from config.json beside the file ("n_head"), then the file's metadata, then
/// n_embd / 64.
ModelWeights read_safetensors(const std::string& path, int n_head = 0);
/// Writes Hugging Face GPT-2 safetensors (F32, real vocabulary rows only, Conv1D weights
/// transposed to [in, out]) atomically.
void write_safetensors(const std::string& path, const ModelWeights& w);

struct ConvertArgs {
  std::string from, to;  // format names
  std::string input, output;
  std::string config_file;  // --to meshtrain: run configuration to store (model section replaced)
  int n_head = 0;           // --from safetensors: head count; 0 = config.json, metadata or C/64
};

/// Converts args.input to args.output; the output appears only when complete (an existing file is
/// replaced on success and untouched on failure). Returns a one-line summary.
std::string convert_checkpoint(const ConvertArgs& args);

/// Adds `ckpt info PATH` and `ckpt convert ...` to app. After app.parse(), action is set when one
/// of them was chosen; calling it runs the command and prints its output (errors are thrown).
void add_ckpt_commands(CLI::App& app, std::function<void()>& action);

}  // namespace meshtrain
