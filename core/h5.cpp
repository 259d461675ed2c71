// HDF5 helpers: error-stack capture, path walking, and the few attribute and dataset chores that
// checkpoints repeat. Callbacks handed to HDF5 never throw; they stop the iteration instead.
#include "core/h5.h"

#include <algorithm>
#include <string_view>

namespace meshtrain::h5 {

void silence_errors() { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); }

namespace {

// No library shutdown from an atexit handler. A file whose close failed (its metadata could not be
// flushed: a full disk, a file-size limit) stays in HDF5's table half torn down, and closing it again
// at exit crashed the process (SIGSEGV in H5F__close_cb) after its error had been reported, turning
// a clear non-zero exit into a crash. Every file meshtrain opens is closed by its owner (h5::Handle),
// so there is nothing left for that handler to do. H5dont_atexit must run before the library starts,
// hence a static initialiser.
[[maybe_unused]] const bool kNoAtExitShutdown = (H5dont_atexit(), true);

// HDF5 pushes one entry per layer; the outermost says what failed, the innermost why.
struct StackEnds {
  std::string outer, inner, inner_func;
};

std::string describe(const H5E_error2_t* err) {
  if (err->desc && err->desc[0]) return err->desc;
  char buf[256] = {0};
  return H5Eget_msg(err->min_num, nullptr, buf, sizeof buf) > 0 ? std::string(buf) : std::string();
}

herr_t record_ends(unsigned n, const H5E_error2_t* err, void* data) {
  auto* ends = static_cast<StackEnds*>(data);
  if (n == 0) {
    ends->inner = describe(err);
    ends->inner_func = err->func_name ? err->func_name : "?";
  }
  ends->outer = describe(err);  // walking upward, the last entry seen is the outermost
  return 0;
}

std::vector<std::string_view> split_path(const std::string& path) {
  std::vector<std::string_view> parts;
  std::string_view rest = path;
  while (!rest.empty()) {
    size_t slash = rest.find('/');
    std::string_view part = rest.substr(0, slash);
    if (!part.empty()) parts.push_back(part);
    if (slash == std::string_view::npos) break;
    rest.remove_prefix(slash + 1);
  }
  return parts;
}

H5I_type_t object_type(hid_t loc, const std::string& path) {
  Object obj(H5_CHECK(H5Oopen(loc, path.c_str(), H5P_DEFAULT)));
  return H5Iget_type(obj.get());
}

struct VisitState {
  std::vector<std::string> paths;
  bool failed = false;
};

herr_t collect_dataset(hid_t group, const char* name, const H5L_info_t* info, void* data) {
  auto* state = static_cast<VisitState*>(data);
  if (info->type != H5L_TYPE_HARD) return 0;  // soft and external links are not ours
  hid_t obj = H5Oopen(group, name, H5P_DEFAULT);
  if (obj < 0) return -1;
  H5I_type_t type = H5Iget_type(obj);
  H5Oclose(obj);
  if (type != H5I_DATASET) return 0;
  try {
    state->paths.emplace_back(name);
  } catch (...) {
    state->failed = true;
    return -1;
  }
  return 0;
}

herr_t collect_attribute_name(hid_t, const char* name, const H5A_info_t*, void* data) {
  try {
    static_cast<std::vector<std::string>*>(data)->emplace_back(name);
  } catch (...) {
    return -1;
  }
  return 0;
}

std::string read_string_attribute(hid_t attr, hid_t file_type) {
  H5T_cset_t cset = H5Tget_cset(file_type);
  Datatype mem(H5_CHECK(H5Tcopy(H5T_C_S1)));
  H5_CHECK(H5Tset_cset(mem.get(), cset));
  if (H5_CHECK(H5Tis_variable_str(file_type)) > 0) {
    H5_CHECK(H5Tset_size(mem.get(), H5T_VARIABLE));
    char* raw = nullptr;
    H5_CHECK(H5Aread(attr, mem.get(), &raw));
    std::string value = raw ? raw : "";
    H5free_memory(raw);
    return value;
  }
  size_t size = H5Tget_size(file_type);
  MT_CHECK(size > 0, "[hdf5] fixed-length string attribute of size 0");
  H5_CHECK(H5Tset_size(mem.get(), size));
  // Null-padded in memory, so a value that fills the whole field (h5py's numpy bytes) keeps its
  // last character instead of losing it to a terminator.
  H5_CHECK(H5Tset_strpad(mem.get(), H5T_STR_NULLPAD));
  std::string value(size, '\0');
  H5_CHECK(H5Aread(attr, mem.get(), value.data()));
  // Fixed-length strings are padded to their size: cut at the terminator or the padding.
  if (size_t nul = value.find('\0'); nul != std::string::npos) value.resize(nul);
  if (H5Tget_strpad(file_type) == H5T_STR_SPACEPAD) {
    size_t last = value.find_last_not_of(' ');
    value.resize(last == std::string::npos ? 0 : last + 1);
  }
  return value;
}

}  // namespace

std::string last_error() {
  StackEnds ends;
  if (H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, record_ends, &ends) < 0 || ends.inner_func.empty()) return "";
  if (ends.outer == ends.inner) return fmt::format("{} (in {})", ends.inner, ends.inner_func);
  return fmt::format("{}; cause: {} (in {})", ends.outer, ends.inner, ends.inner_func);
}

std::vector<hsize_t> dataspace_dims(hid_t space) {
  int rank = H5_CHECK(H5Sget_simple_extent_ndims(space));
  std::vector<hsize_t> dims(static_cast<size_t>(rank));
  if (rank > 0) H5_CHECK(H5Sget_simple_extent_dims(space, dims.data(), nullptr));
  return dims;
}

bool link_exists(hid_t loc, const std::string& path) {
  std::string prefix;
  for (std::string_view part : split_path(path)) {
    // H5Lexists fails rather than answering when an inner component is not a group.
    if (!prefix.empty()) {
      if (object_type(loc, prefix) != H5I_GROUP) return false;
      prefix += '/';
    }
    prefix += part;
    if (H5_CHECK(H5Lexists(loc, prefix.c_str(), H5P_DEFAULT)) <= 0) return false;
  }
  return !prefix.empty();
}

bool is_dataset(hid_t loc, const std::string& path) {
  return link_exists(loc, path) && object_type(loc, path) == H5I_DATASET;
}

std::vector<std::string> dataset_paths(hid_t loc) {
  VisitState state;
  herr_t rc = H5Lvisit(loc, H5_INDEX_NAME, H5_ITER_INC, collect_dataset, &state);
  MT_CHECK(!state.failed, "[hdf5] out of memory listing datasets");
  check(rc, "H5Lvisit(loc, H5_INDEX_NAME, H5_ITER_INC, collect_dataset, &state)", __FILE__, __LINE__);
  std::sort(state.paths.begin(), state.paths.end());
  return state.paths;
}

void write_attribute(hid_t loc, const std::string& name, int64_t value) {
  Dataspace space(H5_CHECK(H5Screate(H5S_SCALAR)));
  Attribute attr(H5_CHECK(H5Acreate2(loc, name.c_str(), H5T_STD_I64LE, space.get(), H5P_DEFAULT, H5P_DEFAULT)));
  H5_CHECK(H5Awrite(attr.get(), H5T_NATIVE_INT64, &value));
}

void write_attribute(hid_t loc, const std::string& name, const std::string& value) {
  // A fixed-length string (exactly the bytes, NUL-padded; one NUL for the empty string) lives in the
  // attribute's own message: in a file of the 1.8 format that is the checksummed object header (or,
  // past 64 KiB, the checksummed dense attribute storage). A variable-length string would keep its
  // bytes in the global heap, which has no checksum: a damaged heap can send HDF5 into an endless loop.
  MT_CHECK(value.find('\0') == std::string::npos,
           "[hdf5] string attribute '{}' contains a NUL byte; HDF5 strings end at the first NUL", name);
  Datatype type(H5_CHECK(H5Tcopy(H5T_C_S1)));
  H5_CHECK(H5Tset_size(type.get(), std::max<size_t>(value.size(), 1)));
  H5_CHECK(H5Tset_strpad(type.get(), H5T_STR_NULLPAD));
  H5_CHECK(H5Tset_cset(type.get(), H5T_CSET_UTF8));
  Dataspace space(H5_CHECK(H5Screate(H5S_SCALAR)));
  Attribute attr(H5_CHECK(H5Acreate2(loc, name.c_str(), type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT)));
  std::string data = value;
  data.resize(std::max<size_t>(value.size(), 1), '\0');
  H5_CHECK(H5Awrite(attr.get(), type.get(), data.data()));
}

void read_scalar_attributes(hid_t loc, std::map<std::string, int64_t>& ints,
                            std::map<std::string, std::string>& strings) {
  std::vector<std::string> names;
  H5_CHECK(H5Aiterate2(loc, H5_INDEX_NAME, H5_ITER_INC, nullptr, collect_attribute_name, &names));
  for (const std::string& name : names) {
    Attribute attr(H5_CHECK(H5Aopen(loc, name.c_str(), H5P_DEFAULT)));
    Dataspace space(H5_CHECK(H5Aget_space(attr.get())));
    if (H5_CHECK(H5Sget_simple_extent_npoints(space.get())) != 1) continue;
    Datatype type(H5_CHECK(H5Aget_type(attr.get())));
    H5T_class_t cls = H5_CHECK(H5Tget_class(type.get()));
    if (cls == H5T_INTEGER) {
      int64_t value = 0;
      H5_CHECK(H5Aread(attr.get(), H5T_NATIVE_INT64, &value));
      ints[name] = value;
    } else if (cls == H5T_STRING) {
      strings[name] = read_string_attribute(attr.get(), type.get());
    }
  }
}

}  // namespace meshtrain::h5
