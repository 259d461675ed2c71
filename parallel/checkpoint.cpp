// Single-process HDF5 checkpoints (schema: docs/checkpoint-format.md). Each dataset is created with
// its global shape and written or read as one whole-tensor hyperslab, so the sharded version only
// changes the hyperslab window and the property lists (MPI-IO, collective transfers).
#include "parallel/checkpoint.h"


#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <set>
#include <string_view>

#include "core/checksum.h"
#include "core/h5.h"

namespace fs = std::filesystem;

namespace meshtrain {
namespace {

// Dataset paths are relative to the root; a leading slash is tolerated so "/model/wte" also works.
std::string normalize(const std::string& dataset_path) {
  size_t start = dataset_path.find_first_not_of('/');
  return start == std::string::npos ? std::string() : dataset_path.substr(start);
}

void check_dataset_path(const std::string& path) {
  MT_CHECK(!path.empty(), "[checkpoint] empty dataset path; use names like 'model/wte'");
  size_t begin = 0;
  while (begin <= path.size()) {
    size_t end = path.find('/', begin);
    if (end == std::string::npos) end = path.size();
    std::string_view part(path.data() + begin, end - begin);
    MT_CHECK(!part.empty() && part != "." && part != "..",
             "[checkpoint] dataset path '{}' has an empty, '.' or '..' component; use names like 'model/wte'", path);
    begin = end + 1;
  }
}

// Runs fn; HDF5 failures inside it (a damaged file shows up on first touch, not at open) are
// reported as checkpoint errors naming the file and what was being done.
template <class F>
auto with_context(const std::string& file, const std::string& doing, F fn) -> decltype(fn()) {
  try {
    return fn();
  } catch (const Error& err) {
    if (std::string_view(err.what()).starts_with("[checkpoint]")) throw;
    MT_FAIL("[checkpoint] {} in '{}' failed (truncated or corrupt?): {}", doing, file, err.what());
  }
}

Shape to_shape(const std::vector<hsize_t>& dims) { return Shape(dims.begin(), dims.end()); }

// Whole-tensor window today; with sharding, offset and count become this rank's slice.
struct Hyperslab {
  std::vector<hsize_t> offset;
  std::vector<hsize_t> count;
};

Hyperslab whole(const std::vector<hsize_t>& dims) { return {std::vector<hsize_t>(dims.size(), 0), dims}; }

// Selects the window in the file space and returns a matching memory space. A scalar dataset has
// no hyperslab: both sides select everything.
h5::Dataspace select_window(hid_t file_space, const Hyperslab& window) {
  if (window.count.empty()) return h5::Dataspace(H5_CHECK(H5Screate(H5S_SCALAR)));
  H5_CHECK(
      H5Sselect_hyperslab(file_space, H5S_SELECT_SET, window.offset.data(), nullptr, window.count.data(), nullptr));
  return h5::Dataspace(H5_CHECK(H5Screate_simple(static_cast<int>(window.count.size()), window.count.data(), nullptr)));
}

/// CRC-32 (zlib's polynomial, core/checksum.h) of a float buffer.
int64_t crc32_of(const float* data, int64_t n) {
  return static_cast<int64_t>(crc32_update(0, data, static_cast<size_t>(n) * sizeof(float)));
}

void write_entry(hid_t file, hid_t lcpl, hid_t dxpl, const std::string& name, const Tensor& tensor) {
  std::vector<hsize_t> dims(tensor.shape().begin(), tensor.shape().end());
  h5::Dataspace file_space(dims.empty()
                               ? H5_CHECK(H5Screate(H5S_SCALAR))
                               : H5_CHECK(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr)));
  h5::Dataset dset(
      H5_CHECK(H5Dcreate2(file, name.c_str(), H5T_IEEE_F32LE, file_space.get(), lcpl, H5P_DEFAULT, H5P_DEFAULT)));
  if (tensor.numel() == 0) return;  // nothing to transfer; an empty hyperslab is not selectable
  const Tensor host = tensor.on(Device::cpu);
  h5::Dataspace mem_space = select_window(file_space.get(), whole(dims));
  H5_CHECK(H5Dwrite(dset.get(), H5T_NATIVE_FLOAT, mem_space.get(), file_space.get(), dxpl, host.f32()));
  // Integrity: the tensor's CRC-32, checked whenever the whole tensor is read back.
  h5::write_attribute(dset.get(), kChecksumAttribute, crc32_of(host.f32(), host.numel()));
}

}  // namespace

int64_t meta_checksum(const std::map<std::string, int64_t>& ints, const std::map<std::string, std::string>& strings) {
  std::map<std::string, std::string> records;
  // fmt::format, not "i" + std::to_string(value): gcc 12 warns falsely (-Wrestrict) on the latter.
  for (const auto& [key, value] : ints) records[key] = fmt::format("i{}", value);
  for (const auto& [key, value] : strings) records[key] = "s" + value;
  uint32_t crc = 0;
  auto feed = [&crc](const std::string& bytes) { crc = crc32_update(crc, bytes.data(), bytes.size()); };
  for (const auto& [key, value] : records) {
    feed(key);
    feed(std::string(1, '\0'));
    feed(value);
    feed("\n");
  }
  return static_cast<int64_t>(crc);
}

void write_checkpoint_attributes(int64_t file, const CheckpointMeta& meta) {
  std::map<std::string, int64_t> ints = meta.ints;
  std::map<std::string, std::string> strings = meta.strings;
  ints["format_version"] = kCheckpointVersion;
  strings["format"] = kCheckpointFormat;
  for (const auto& [key, value] : ints) h5::write_attribute(file, key, value);
  for (const auto& [key, value] : strings) h5::write_attribute(file, key, value);
  h5::write_attribute(file, kMetaChecksumAttribute, meta_checksum(ints, strings));
}

void use_checksummed_file_format(int64_t fapl) { H5_CHECK(H5Pset_libver_bounds(fapl, H5F_LIBVER_V18, H5F_LIBVER_V18)); }

namespace {

void write_file(const std::string& tmp, const std::vector<CheckpointEntry>& entries, const CheckpointMeta& meta) {
  h5::PropList fapl(H5_CHECK(H5Pcreate(H5P_FILE_ACCESS)));
  // Closing the file then closes anything still open in it, so an exception cannot leave it half-open.
  H5_CHECK(H5Pset_fclose_degree(fapl.get(), H5F_CLOSE_STRONG));
  use_checksummed_file_format(fapl.get());
  h5::File file(H5_CHECK(H5Fcreate(tmp.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.get())));
  h5::PropList lcpl(H5_CHECK(H5Pcreate(H5P_LINK_CREATE)));
  H5_CHECK(H5Pset_create_intermediate_group(lcpl.get(), 1));
  h5::PropList dxpl(H5_CHECK(H5Pcreate(H5P_DATASET_XFER)));

  write_checkpoint_attributes(file.get(), meta);

  for (const CheckpointEntry& e : entries) {
    try {
      write_entry(file.get(), lcpl.get(), dxpl.get(), normalize(e.path), e.tensor);
    } catch (const Error& err) {
      MT_FAIL("[checkpoint] cannot write dataset '{}' {} to '{}': {}", e.path, shape_str(e.tensor.shape()), tmp,
              err.what());
    }
  }
  file.close();
}

// The data must be on disk before the rename makes them the checkpoint.
void fsync_path(const std::string& path, bool directory) {
  int fd = ::open(path.c_str(), directory ? (O_RDONLY | O_DIRECTORY) : O_RDONLY);
  MT_CHECK(fd >= 0, "[checkpoint] cannot open '{}' to sync it: {}", path, std::strerror(errno));
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  MT_CHECK(rc == 0, "[checkpoint] fsync of '{}' failed: {}", path, std::strerror(err));
}

void validate(const std::string& path, const std::vector<CheckpointEntry>& entries, const CheckpointMeta& meta) {
  MT_CHECK(!path.empty(), "[checkpoint] empty checkpoint path");
  std::set<std::string> seen;
  for (const CheckpointEntry& e : entries) {
    check_dataset_path(normalize(e.path));
    MT_CHECK(seen.insert(normalize(e.path)).second, "[checkpoint] dataset '{}' is listed twice", e.path);
    MT_CHECK(e.tensor.defined(), "[checkpoint] dataset '{}' has an undefined tensor", e.path);
    MT_CHECK(e.tensor.dtype() == DType::f32, "[checkpoint] dataset '{}' is {}; checkpoints store f32 tensors", e.path,
             dtype_name(e.tensor.dtype()));
  }
  auto reserved = [](const std::string& key) {
    return key == "format" || key == "format_version" || key == kMetaChecksumAttribute;
  };
  for (const auto& [key, value] : meta.ints) {
    MT_CHECK(!key.empty() && !reserved(key), "[checkpoint] meta key '{}' is empty or reserved", key);
    MT_CHECK(!meta.strings.count(key), "[checkpoint] meta key '{}' is both an int and a string", key);
  }
  for (const auto& [key, value] : meta.strings) {
    MT_CHECK(!key.empty() && !reserved(key), "[checkpoint] meta key '{}' is empty or reserved", key);
    MT_CHECK(value.find('\0') == std::string::npos, "[checkpoint] meta string '{}' contains a NUL byte", key);
  }
}

}  // namespace

void save_checkpoint(const std::string& path, const std::vector<CheckpointEntry>& entries, const CheckpointMeta& meta) {
  validate(path, entries, meta);
  h5::silence_errors();
  fs::path parent = fs::path(path).parent_path();
  if (!parent.empty()) {
    std::error_code ec;
    fs::create_directories(parent, ec);
    MT_CHECK(!ec, "[checkpoint] cannot create folder '{}' for '{}': {}", parent.string(), path, ec.message());
  }
  const std::string tmp = path + ".tmp";
  try {
    write_file(tmp, entries, meta);
    fsync_path(tmp, false);
    if (std::rename(tmp.c_str(), path.c_str()) != 0) {
      MT_FAIL("[checkpoint] cannot rename '{}' to '{}': {}", tmp, path, std::strerror(errno));
    }
  } catch (const Error& err) {
    std::error_code ec;
    fs::remove(tmp, ec);  // the partial file is ours; whatever was at path is untouched
    if (std::string_view(err.what()).starts_with("[checkpoint]")) throw;
    MT_FAIL("[checkpoint] cannot save '{}': {}", path, err.what());
  } catch (...) {
    std::error_code ec;
    fs::remove(tmp, ec);
    throw;
  }
  // Make the rename itself durable. The checkpoint is complete either way, so a folder that
  // cannot be synced (some network filesystems) is not worth failing the save for.
  try {
    fsync_path(parent.empty() ? "." : parent.string(), true);
  } catch (const Error&) {
  }
}

CheckpointReader::CheckpointReader(const std::string& path) : path_(path) {
  h5::silence_errors();
  std::error_code ec;
  MT_CHECK(fs::exists(path, ec), "[checkpoint] '{}' does not exist", path);
  MT_CHECK(fs::is_regular_file(path, ec), "[checkpoint] '{}' is not a regular file", path);
  const auto unreadable = [&](const std::string& reason) {
    MT_FAIL("[checkpoint] '{}' is not a readable HDF5 file (truncated or corrupt?){}{}", path,
            reason.empty() ? "" : "; HDF5 says: ", reason);
  };
  if (H5Fis_hdf5(path.c_str()) <= 0) unreadable("");
  h5::PropList fapl(H5_CHECK(H5Pcreate(H5P_FILE_ACCESS)));
  H5_CHECK(H5Pset_fclose_degree(fapl.get(), H5F_CLOSE_STRONG));
  h5::File file(H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl.get()));
  if (!file.valid()) unreadable(h5::last_error());

  with_context(path, "reading the root attributes",
               [&] { h5::read_scalar_attributes(file.get(), meta_.ints, meta_.strings); });
  auto format = meta_.strings.find("format");
  MT_CHECK(format != meta_.strings.end(), "[checkpoint] '{}' is not a meshtrain checkpoint (no 'format' attribute)",
           path);
  MT_CHECK(format->second == kCheckpointFormat, "[checkpoint] '{}' is not a meshtrain checkpoint (format is '{}')",
           path, format->second);
  auto version = meta_.ints.find("format_version");
  MT_CHECK(version != meta_.ints.end(), "[checkpoint] '{}' has no 'format_version' attribute", path);
  MT_CHECK(version->second >= 1 && version->second <= kCheckpointVersion,
           "[checkpoint] '{}' has format_version {}, but this build reads versions 1 to {}; use a newer meshtrain",
           path, version->second, kCheckpointVersion);
  // From version 2 the root attributes carry a checksum: a flipped bit in the configuration, the step
  // or a loader position is an error, not a silently different run.
  auto meta_crc = meta_.ints.find(kMetaChecksumAttribute);
  if (version->second >= 2) {
    MT_CHECK(meta_crc != meta_.ints.end(),
             "[checkpoint] '{}' has no '{}' attribute, which format_version {} files always carry: the file is "
             "corrupt (or was edited by another tool)", path, kMetaChecksumAttribute, version->second);
    const int64_t stored = meta_crc->second;
    meta_.ints.erase(meta_crc);
    const int64_t computed = meta_checksum(meta_.ints, meta_.strings);
    MT_CHECK(stored == computed,
             "[checkpoint] '{}': its metadata (the root attributes: configuration, step, RNG and loader positions) "
             "fail their checksum (stored crc32 {:08x}, attributes {:08x}): the file is corrupt", path, stored,
             computed);
  } else if (meta_crc != meta_.ints.end()) {
    meta_.ints.erase(meta_crc);
  }
  file_ = file.release();
}

CheckpointReader::~CheckpointReader() {
  if (file_ >= 0) H5Fclose(file_);
}

int64_t CheckpointReader::get_int(const std::string& key) const {
  auto it = meta_.ints.find(key);
  MT_CHECK(it != meta_.ints.end(), "[checkpoint] '{}' has no integer attribute '{}'", path_, key);
  return it->second;
}

const std::string& CheckpointReader::get_string(const std::string& key) const {
  auto it = meta_.strings.find(key);
  MT_CHECK(it != meta_.strings.end(), "[checkpoint] '{}' has no string attribute '{}'", path_, key);
  return it->second;
}

bool CheckpointReader::has(const std::string& dataset_path) const {
  std::string name = normalize(dataset_path);
  return !name.empty() &&
         with_context(path_, fmt::format("looking up '{}'", dataset_path), [&] { return h5::is_dataset(file_, name); });
}

Shape CheckpointReader::shape(const std::string& dataset_path) const {
  MT_CHECK(has(dataset_path), "[checkpoint] '{}' has no dataset '{}'", path_, dataset_path);
  return with_context(path_, fmt::format("reading the shape of '{}'", dataset_path), [&] {
    h5::Dataset dset(H5_CHECK(H5Dopen2(file_, normalize(dataset_path).c_str(), H5P_DEFAULT)));
    h5::Dataspace space(H5_CHECK(H5Dget_space(dset.get())));
    return to_shape(h5::dataspace_dims(space.get()));
  });
}

void CheckpointReader::read(const std::string& dataset_path, Tensor& dst) const {
  MT_CHECK(has(dataset_path), "[checkpoint] '{}' has no dataset '{}'", path_, dataset_path);
  MT_CHECK(dst.defined() && dst.dtype() == DType::f32,
           "[checkpoint] reading '{}' needs a defined f32 destination tensor", dataset_path);
  with_context(path_, fmt::format("reading dataset '{}'", dataset_path), [&] {
    h5::Dataset dset(H5_CHECK(H5Dopen2(file_, normalize(dataset_path).c_str(), H5P_DEFAULT)));
    h5::Datatype type(H5_CHECK(H5Dget_type(dset.get())));
    H5T_class_t cls = H5Tget_class(type.get());
    size_t bits = 8 * H5Tget_size(type.get());
    MT_CHECK(cls == H5T_FLOAT && bits == 32, "[checkpoint] dataset '{}' in '{}' is not float32 but {}{}", dataset_path,
             path_,
             cls == H5T_FLOAT     ? "float"
             : cls == H5T_INTEGER ? "int"
                                  : "a non-numeric type of ",
             bits);
    h5::Dataspace file_space(H5_CHECK(H5Dget_space(dset.get())));
    std::vector<hsize_t> dims = h5::dataspace_dims(file_space.get());
    MT_CHECK(to_shape(dims) == dst.shape(), "[checkpoint] dataset '{}' in '{}' has shape {}, destination has shape {}",
             dataset_path, path_, shape_str(to_shape(dims)), shape_str(dst.shape()));
    if (dst.numel() == 0) return;
    Tensor host = dst;
    if (dst.device() != Device::cpu) host = Tensor::empty(dst.shape(), DType::f32, Device::cpu);
    h5::Dataspace mem_space = select_window(file_space.get(), whole(dims));
    H5_CHECK(H5Dread(dset.get(), H5T_NATIVE_FLOAT, mem_space.get(), file_space.get(), H5P_DEFAULT, host.f32()));
    std::map<std::string, int64_t> ints;
    std::map<std::string, std::string> strings;
    h5::read_scalar_attributes(dset.get(), ints, strings);
    if (auto stored = ints.find(kChecksumAttribute); stored != ints.end()) {
      int64_t computed = crc32_of(host.f32(), host.numel());
      MT_CHECK(computed == stored->second,
               "[checkpoint] dataset '{}' in '{}' fails its checksum (stored crc32 {:08x}, data {:08x}): the file is "
               "corrupt", dataset_path, path_, stored->second, computed);
    }
    if (dst.device() != Device::cpu) dst.copy_from(host);
  });
}

void CheckpointReader::read_blocks(const std::string& dataset_path, const std::vector<std::vector<int64_t>>& offsets,
                                   const std::vector<std::vector<int64_t>>& counts, Tensor& dst) const {
  MT_CHECK(has(dataset_path), "[checkpoint] '{}' has no dataset '{}'", path_, dataset_path);
  MT_CHECK(dst.defined() && dst.dtype() == DType::f32 && dst.device() == Device::cpu,
           "[checkpoint] reading blocks of '{}' needs an f32 host tensor", dataset_path);
  with_context(path_, fmt::format("reading blocks of dataset '{}'", dataset_path), [&] {
    h5::Dataset dset(H5_CHECK(H5Dopen2(file_, normalize(dataset_path).c_str(), H5P_DEFAULT)));
    h5::Dataspace file_space(H5_CHECK(H5Dget_space(dset.get())));
    const std::vector<hsize_t> dims = h5::dataspace_dims(file_space.get());
    int64_t n = 0;
    for (size_t b = 0; b < offsets.size(); ++b) {
      std::vector<hsize_t> off(offsets[b].begin(), offsets[b].end()), cnt(counts[b].begin(), counts[b].end());
      MT_CHECK(off.size() == dims.size() && cnt.size() == dims.size(),
               "[checkpoint] dataset '{}' in '{}' has shape {}, which a block of rank {} does not fit", dataset_path,
               path_, shape_str(to_shape(dims)), off.size());
      for (size_t d = 0; d < dims.size(); ++d)
        MT_CHECK(off[d] + cnt[d] <= dims[d], "[checkpoint] dataset '{}' in '{}' has shape {}: too small for this model "
                                             "(block ends at {} in dimension {})", dataset_path, path_,
                 shape_str(to_shape(dims)), off[d] + cnt[d], d);
      H5_CHECK(H5Sselect_hyperslab(file_space.get(), b == 0 ? H5S_SELECT_SET : H5S_SELECT_OR, off.data(), nullptr,
                                   cnt.data(), nullptr));
      n += shape_numel(to_shape(cnt));
    }
    MT_CHECK(n == dst.numel(), "[checkpoint] blocks of '{}' hold {} elements, destination {}", dataset_path, n,
             dst.numel());
    if (n == 0) return;
    const hsize_t mem_n = static_cast<hsize_t>(n);
    h5::Dataspace mem_space(H5_CHECK(H5Screate_simple(1, &mem_n, nullptr)));
    H5_CHECK(H5Dread(dset.get(), H5T_NATIVE_FLOAT, mem_space.get(), file_space.get(), H5P_DEFAULT, dst.f32()));
  });
}

int64_t CheckpointReader::stored_crc(const std::string& dataset_path) const {
  return with_context(path_, fmt::format("reading the checksum of '{}'", dataset_path), [&]() -> int64_t {
    h5::Dataset dset(H5_CHECK(H5Dopen2(file_, normalize(dataset_path).c_str(), H5P_DEFAULT)));
    std::map<std::string, int64_t> ints;
    std::map<std::string, std::string> strings;
    h5::read_scalar_attributes(dset.get(), ints, strings);
    auto it = ints.find(kChecksumAttribute);
    return it == ints.end() ? -1 : it->second;
  });
}

std::vector<std::string> CheckpointReader::list() const {
  return with_context(path_, "listing datasets", [&] { return h5::dataset_paths(file_); });
}

std::string checkpoint_path(const std::string& out_dir, int64_t step) {
  MT_CHECK(!out_dir.empty(), "[checkpoint] empty output folder");
  MT_CHECK(step >= 0, "[checkpoint] negative step {}", step);
  return fmt::format("{}/ckpt_{:06d}.h5", out_dir, step);
}

namespace {

/// Every complete checkpoint of out_dir as (step, path), in no particular order.
std::vector<std::pair<int64_t, std::string>> list_checkpoints(const std::string& out_dir) {
  std::vector<std::pair<int64_t, std::string>> found;
  std::error_code ec;
  fs::directory_iterator it(out_dir, ec);
  if (ec) return found;
  // Explicit increments with an error code: a folder that changes or fails mid-listing ends the
  // search instead of throwing from the range-for's operator++.
  for (; !ec && it != fs::directory_iterator(); it.increment(ec)) {
    const fs::directory_entry& entry = *it;
    std::string name = entry.path().filename().string();
    constexpr std::string_view prefix = "ckpt_", suffix = ".h5";
    if (name.size() < prefix.size() + 6 + suffix.size() || !name.starts_with(prefix) || !name.ends_with(suffix)) {
      continue;
    }
    std::string_view digits(name.data() + prefix.size(), name.size() - prefix.size() - suffix.size());
    if (digits.find_first_not_of("0123456789") != std::string_view::npos) continue;
    int64_t step = 0;
    auto [end, err] = std::from_chars(digits.data(), digits.data() + digits.size(), step);
    if (err != std::errc() || end != digits.data() + digits.size()) continue;
    std::error_code type_ec;
    if (!entry.is_regular_file(type_ec)) continue;
    found.emplace_back(step, entry.path().string());
  }
  return found;
}

}  // namespace

std::string read_latest_pointer(const std::string& out_dir) {
  std::ifstream f(fs::path(out_dir) / "latest");
  std::string name;
  if (!f || !std::getline(f, name) || name.empty() || name.find('/') != std::string::npos) return "";
  fs::path p = fs::path(out_dir) / name;
  std::error_code ec;
  return fs::is_regular_file(p, ec) ? p.string() : "";
}

std::string find_latest_checkpoint(const std::string& out_dir) {
  std::string best;
  int64_t best_step = -1;
  for (const auto& [step, path] : list_checkpoints(out_dir))
    if (step > best_step) {
      best_step = step;
      best = path;
    }
  return best.empty() ? read_latest_pointer(out_dir) : best;
}

void update_latest(const std::string& out_dir, const std::string& checkpoint) {
  const fs::path target = fs::path(out_dir) / "latest", tmp = fs::path(out_dir) / "latest.tmp";
  {
    errno = 0;
    std::ofstream f(tmp, std::ios::trunc);
    const int open_errno = f.is_open() ? 0 : errno;
    f << fs::path(checkpoint).filename().string() << "\n";
    f.flush();
    if (!f.good()) {
      const int err = open_errno ? open_errno : errno;
      f.close();
      std::error_code ignored;
      fs::remove(tmp, ignored);
      MT_FAIL("[checkpoint] cannot write '{}' ({}): '{}' was saved complete, but 'latest' still names the "
              "checkpoint before it", tmp.string(), err ? std::strerror(err) : "write failed", checkpoint);
    }
  }
  fsync_path(tmp.string(), false);
  std::error_code ec;
  fs::rename(tmp, target, ec);
  MT_CHECK(!ec, "[checkpoint] cannot rename '{}' to '{}': {}", tmp.string(), target.string(), ec.message());
  fsync_path(out_dir, true);
}

std::vector<std::pair<int64_t, std::string>> checkpoints_after(const std::string& out_dir, int64_t step) {
  std::vector<std::pair<int64_t, std::string>> later;
  for (auto& c : list_checkpoints(out_dir))
    if (c.first > step) later.push_back(std::move(c));
  std::sort(later.begin(), later.end());
  return later;
}

std::string set_aside_checkpoints_after(const std::string& out_dir, int64_t step) {
  const auto later = checkpoints_after(out_dir, step);
  const std::time_t now = std::time(nullptr);
  char stamp[32];
  std::strftime(stamp, sizeof(stamp), "%Y%m%d-%H%M%S", std::localtime(&now));
  const fs::path aside = fs::path(out_dir) / fmt::format("superseded_after_{:06d}_{}", step, stamp);
  std::error_code ec;
  fs::create_directories(aside, ec);
  MT_CHECK(!ec, "[checkpoint] cannot create '{}': {}", aside.string(), ec.message());
  const std::string latest = read_latest_pointer(out_dir);
  for (const auto& [s, path] : later) {
    fs::rename(path, aside / fs::path(path).filename(), ec);
    MT_CHECK(!ec, "[checkpoint] cannot move '{}' into '{}': {}", path, aside.string(), ec.message());
  }
  if (!latest.empty() && !fs::exists(latest)) {  // it named a checkpoint that moved: it moves too
    fs::rename(fs::path(out_dir) / "latest", aside / "latest", ec);
    MT_CHECK(!ec, "[checkpoint] cannot move '{}/latest' into '{}': {}", out_dir, aside.string(), ec.message());
  }
  fsync_path(out_dir, true);
  return aside.string();
}

std::vector<std::string> prune_checkpoints(const std::string& out_dir, int keep) {
  std::vector<std::string> removed;
  if (keep <= 0) return removed;
  auto all = list_checkpoints(out_dir);
  std::sort(all.begin(), all.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  const std::string latest = read_latest_pointer(out_dir);
  for (size_t i = static_cast<size_t>(keep); i < all.size(); ++i) {
    if (all[i].second == latest) continue;
    std::error_code ec;
    if (fs::remove(all[i].second, ec)) removed.push_back(all[i].second);
  }
  return removed;
}

}  // namespace meshtrain
