// `meshtrain ckpt info` (a readable summary of a checkpoint) and the CLI11 wiring of the ckpt
// subcommands. Conversion itself lives in ckpt_convert.cpp and the per-format files.
#include "launch/ckpt/ckpt_tools.h"

#include <CLI/CLI.hpp>
#include <algorithm>
#include <array>
#include <filesystem>
#include <memory>

#include "core/h5.h"
#include "launch/ckpt/ckpt_io.h"
#include "launch/train/train_state.h"
#include "model/params.h"
#include "parallel/checkpoint.h"

namespace meshtrain {
namespace {

std::string human_bytes(uint64_t b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(b);
  int u = 0;
  while (v >= 1024.0 && u < 4) {
    v /= 1024.0;
    ++u;
  }
  return u == 0 ? fmt::format("{} B", b) : fmt::format("{:.1f} {}", v, units[u]);
}

struct DatasetRow {
  std::string name;
  Shape shape;
  std::string dtype;
  uint64_t bytes = 0;
};

// The stored element type of a dataset ("f32", "f64", "i64", ...) and its size in bytes. The reader
// only reads f32, but info must describe whatever another tool wrote.
std::pair<std::string, size_t> stored_dtype(hid_t file, const std::string& name) {
  h5::Dataset dset(H5_CHECK(H5Dopen2(file, name.c_str(), H5P_DEFAULT)));
  h5::Datatype type(H5_CHECK(H5Dget_type(dset.get())));
  const size_t size = H5Tget_size(type.get());
  switch (H5Tget_class(type.get())) {
    case H5T_FLOAT:
      return {fmt::format("f{}", 8 * size), size};
    case H5T_INTEGER:
      return {fmt::format("{}{}", H5Tget_sign(type.get()) == H5T_SGN_NONE ? "u" : "i", 8 * size), size};
    default:
      return {fmt::format("other({} B)", size), size};
  }
}

std::string model_line(const CheckpointReader& r) {
  if (!r.meta().strings.count("config")) return "(no 'config' attribute)";
  try {
    const GptConfig m = config_from_toml(r.get_string("config"), r.path() + ":config").model;
    return ckpt::model_summary(m);
  } catch (const Error& e) {
    return fmt::format("(the 'config' attribute cannot be read: {})", e.what());
  }
}


}  // namespace

CkptFormat parse_ckpt_format(const std::string& name) {
  if (name == "meshtrain") return CkptFormat::meshtrain;
  if (name == "llmc") return CkptFormat::llmc;
  if (name == "safetensors") return CkptFormat::safetensors;
  MT_FAIL("[ckpt] unknown checkpoint format '{}'; use meshtrain, llmc or safetensors", name);
}

const char* ckpt_format_name(CkptFormat f) {
  switch (f) {
    case CkptFormat::meshtrain:
      return "meshtrain";
    case CkptFormat::llmc:
      return "llmc";
    case CkptFormat::safetensors:
      return "safetensors";
  }
  return "?";
}

void check_model_weights(const ModelWeights& w, const std::string& what) {
  w.model.validate();
  ParameterTable table(w.model);
  for (const ParamSpec& s : table.specs()) {
    auto it = w.tensors.find(s.name);
    MT_CHECK(it != w.tensors.end(), "[ckpt] {}: the weights have no tensor '{}'", what, s.name);
    const Tensor& t = it->second;
    MT_CHECK(t.defined() && t.dtype() == DType::f32 && t.device() == Device::cpu,
             "[ckpt] {}: tensor '{}' must be a defined f32 tensor on the CPU", what, s.name);
    MT_CHECK(t.shape() == s.global_shape, "[ckpt] {}: tensor '{}' has shape {}, the model needs {}", what, s.name,
             shape_str(t.shape()), shape_str(s.global_shape));
  }
  for (const auto& [name, t] : w.tensors)
    MT_CHECK(table.find(name), "[ckpt] {}: tensor '{}' is not a parameter of this {}-layer model", what, name,
             w.model.n_layer);
}

std::string checkpoint_info(const std::string& path) {
  std::string out, model;
  std::vector<DatasetRow> rows;
  CheckpointMeta meta;
  {
    CheckpointReader r(path);  // validates the file and names what is wrong with it
    meta = r.meta();
    model = model_line(r);
    for (const std::string& name : r.list()) rows.push_back({name, r.shape(name), "", 0});
  }
  h5::PropList fapl(H5_CHECK(H5Pcreate(H5P_FILE_ACCESS)));
  H5_CHECK(H5Pset_fclose_degree(fapl.get(), H5F_CLOSE_STRONG));
  h5::File file(H5_CHECK(H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl.get())));
  for (DatasetRow& row : rows) {
    auto [dtype, size] = stored_dtype(file.get(), row.name);
    row.dtype = dtype;
    row.bytes = static_cast<uint64_t>(shape_numel(row.shape)) * size;
  }

  auto s = [&](const std::string& key) { return meta.strings.count(key) ? meta.strings.at(key) : std::string(); };
  size_t label_w = 12;  // the widest attribute name decides where the values start
  for (const auto& [key, value] : meta.ints) label_w = std::max(label_w, key.size() + 2);
  for (const auto& [key, value] : meta.strings) label_w = std::max(label_w, key.size() + 2);
  auto field = [&](const std::string& key, const std::string& value) {
    out += fmt::format("{:<{}}{}\n", key, label_w, value);
  };
  field("checkpoint", fmt::format("{} ({}, format version {})", path, s("format"), meta.ints["format_version"]));
  field("model", model);
  field("layout", meta.strings.count("layout") ? s("layout")
                  : meta.ints.count("layout")  ? std::to_string(meta.ints["layout"])
                                               : "single process");
  field("step", meta.ints.count("step") ? std::to_string(meta.ints["step"]) : "(none)");
  for (const auto& [key, value] : meta.ints)
    if (key != "format_version" && key != "step" && key != "layout") field(key, std::to_string(value));
  for (const auto& [key, value] : meta.strings)
    if (key != "format" && key != "config" && key != "layout") field(key, value.empty() ? "(empty)" : value);

  size_t name_w = 7, shape_w = 5;
  for (const DatasetRow& row : rows) {
    name_w = std::max(name_w, row.name.size());
    shape_w = std::max(shape_w, shape_str(row.shape).size());
  }
  out += fmt::format("\n{:<{}}  {:<{}}  {:<5}  {:>15}\n", "dataset", name_w, "shape", shape_w, "dtype", "bytes");
  // Totals per top-level group, with optim/m and optim/v apart: they are what a converted or
  // inference-only file can drop.
  std::vector<std::pair<std::string, std::array<uint64_t, 3>>> totals;  // group -> tensors, elements, bytes
  auto add_total = [&](const std::string& group, const DatasetRow& row) {
    auto it = std::find_if(totals.begin(), totals.end(), [&](const auto& t) { return t.first == group; });
    if (it == totals.end()) it = totals.insert(totals.end(), {group, {0, 0, 0}});
    it->second[0] += 1;
    it->second[1] += static_cast<uint64_t>(shape_numel(row.shape));
    it->second[2] += row.bytes;
  };
  for (const DatasetRow& row : rows) {
    out += fmt::format("{:<{}}  {:<{}}  {:<5}  {:>15}\n", row.name, name_w, shape_str(row.shape), shape_w, row.dtype,
                       ckpt::group_digits(row.bytes));
    size_t slash = row.name.find('/');
    std::string group = slash == std::string::npos ? "/" : row.name.substr(0, slash);
    if (group == "optim") group = row.name.substr(0, row.name.find('/', slash + 1));
    add_total(group, row);
  }
  for (const DatasetRow& row : rows) add_total("all", row);
  out += "\ntotals\n";
  for (const auto& [group, t] : totals)
    out += fmt::format("  {:<8} {:>5} tensors  {:>15} elements  {:>15} bytes ({})\n", group, t[0],
                       ckpt::group_digits(t[1]), ckpt::group_digits(t[2]), human_bytes(t[2]));
  return out;
}

std::string verify_checkpoint(const std::string& path) {
  CheckpointReader r(path);  // the file, its format and attributes
  int64_t datasets = 0, bytes = 0, unchecked = 0;
  for (const std::string& name : r.list()) {
    Tensor t = Tensor::empty(r.shape(name));
    r.read(name, t);  // checks the stored CRC-32 and names the dataset when it differs
    ++datasets;
    bytes += static_cast<int64_t>(t.nbytes());
    unchecked += r.stored_crc(name) < 0;
  }
  MT_CHECK(unchecked == 0, "[ckpt] '{}': {} of {} datasets carry no checksum, so damage to them would pass unseen",
           path, unchecked, datasets);
  return fmt::format("{}: ok, {} datasets ({}) read back with matching CRC-32 checksums", path, datasets,
                     human_bytes(bytes));
}

void add_ckpt_commands(CLI::App& app, std::function<void()>& action) {
  auto* ckpt = app.add_subcommand(
      "ckpt", "inspect and convert checkpoints (meshtrain HDF5, llm.c model .bin, Hugging Face safetensors)");
  ckpt->require_subcommand(1);

  auto info_path = std::make_shared<std::string>();
  auto* info = ckpt->add_subcommand("info", "print a checkpoint's model shape, layout, step and every dataset");
  info->add_option("path", *info_path, "checkpoint file (or a folder: its latest checkpoint)")->required();
  info->callback([&action, info_path] {
    action = [path = *info_path] { fmt::print("{}", checkpoint_info(resolve_checkpoint(path, "ckpt"))); };
  });

  auto verify_path = std::make_shared<std::string>();
  auto* verify = ckpt->add_subcommand("verify", "read every dataset of a checkpoint back and check its checksum "
                                                "(no model is built)");
  verify->add_option("path", *verify_path, "checkpoint or adapter file (or a folder: its latest checkpoint)")
      ->required();
  verify->callback([&action, verify_path] {
    action = [path = *verify_path] { fmt::print("{}\n", verify_checkpoint(resolve_checkpoint(path, "ckpt"))); };
  });

  auto args = std::make_shared<ConvertArgs>();
  auto* convert = ckpt->add_subcommand("convert", "convert GPT-2 weights between meshtrain, llm.c and safetensors");
  const std::vector<std::string> formats = {"meshtrain", "llmc", "safetensors"};
  convert->add_option("--from", args->from, "input format: meshtrain, llmc or safetensors")
      ->required()
      ->check(CLI::IsMember(formats));
  convert->add_option("--to", args->to, "output format: meshtrain, llmc or safetensors")
      ->required()
      ->check(CLI::IsMember(formats));
  convert->add_option("--input", args->input, "file to read")->required();
  convert->add_option("--output", args->output, "file to write (replaced only when the new one is complete)")
      ->required();
  convert
      ->add_option("--config", args->config_file,
                   "--to meshtrain: run configuration (TOML) to store; its model section comes from the input")
      ->check(CLI::ExistingFile);
  convert
      ->add_option("--n-head", args->n_head,
                   "--from safetensors: attention heads (default: config.json beside the input, else n_embd/64)")
      ->check(CLI::Range(1, 1 << 20));
  convert->callback([&action, args] { action = [a = *args] { fmt::print("{}\n", convert_checkpoint(a)); }; });
}

}  // namespace meshtrain
