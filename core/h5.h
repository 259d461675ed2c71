// Small RAII wrappers over HDF5 ids and an H5_CHECK macro that turns negative returns into
// meshtrain::Error. Plain C API, so the same helpers serve serial files now and MPI-IO files later
// (the caller only swaps the file-access and transfer property lists).
#pragma once

#include <hdf5.h>

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "core/error.h"

namespace meshtrain::h5 {

static_assert(sizeof(hid_t) == sizeof(int64_t), "meshtrain stores hid_t in int64_t (HDF5 >= 1.10)");

/// Turns off HDF5's automatic error-stack printing so failures surface only as our messages.
void silence_errors();

/// The innermost (original) entry of HDF5's error stack, "" when empty. Read it right after the
/// failing call: the next HDF5 API call clears the stack.
std::string last_error();

/// Throws "[hdf5] CALL failed: reason (file:line)" when ret is negative; returns ret otherwise.
template <class T>
T check(T ret, const char* call, const char* file, int line) {
  if (ret < 0) {
    std::string reason = last_error();
    throw_error(file, line, fmt::format("[hdf5] {} failed{}{}", call, reason.empty() ? "" : ": ", reason));
  }
  return ret;
}

/// Owns one HDF5 id and closes it with Close (H5Fclose, H5Dclose, ...). Move-only.
template <herr_t (*Close)(hid_t)>
class Handle {
 public:
  Handle() = default;
  /// Takes ownership of id (which may be negative, meaning "none").
  explicit Handle(hid_t id) : id_(id) {}
  ~Handle() { reset(); }
  Handle(Handle&& other) noexcept : id_(std::exchange(other.id_, H5I_INVALID_HID)) {}
  Handle& operator=(Handle&& other) noexcept {
    if (this != &other) {
      reset();
      id_ = std::exchange(other.id_, H5I_INVALID_HID);
    }
    return *this;
  }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;

  hid_t get() const { return id_; }
  bool valid() const { return id_ >= 0; }
  /// Gives up ownership without closing.
  hid_t release() { return std::exchange(id_, H5I_INVALID_HID); }
  /// Closes quietly; the destructor path, where a failure has nowhere to go.
  void reset() noexcept {
    if (id_ >= 0) (void)Close(id_);
    id_ = H5I_INVALID_HID;
  }
  /// Closes and throws when HDF5 reports a failure: closing a file flushes it, so that result matters.
  void close() {
    hid_t id = release();
    if (id >= 0) check(Close(id), "closing an HDF5 id", __FILE__, __LINE__);
  }

 private:
  hid_t id_ = H5I_INVALID_HID;
};

using File = Handle<H5Fclose>;
using Group = Handle<H5Gclose>;
using Dataset = Handle<H5Dclose>;
using Dataspace = Handle<H5Sclose>;
using Attribute = Handle<H5Aclose>;
using PropList = Handle<H5Pclose>;
using Datatype = Handle<H5Tclose>;
using Object = Handle<H5Oclose>;


/// Dimensions of a dataspace ({} for a scalar).
std::vector<hsize_t> dataspace_dims(hid_t space);

/// True when every component of the slash-separated path exists below loc as a link.
bool link_exists(hid_t loc, const std::string& path);

/// True when path names a dataset below loc (false for groups and missing paths).
bool is_dataset(hid_t loc, const std::string& path);

/// Paths of every dataset reachable by hard links below loc, sorted ("model/wte", ...).
std::vector<std::string> dataset_paths(hid_t loc);

/// Writes a scalar int64 attribute.
void write_attribute(hid_t loc, const std::string& name, int64_t value);
/// Writes a scalar variable-length UTF-8 string attribute.
void write_attribute(hid_t loc, const std::string& name, const std::string& value);

/// Reads every scalar integer attribute of loc into ints and every string attribute (fixed or
/// variable length) into strings; attributes of other types are skipped.
void read_scalar_attributes(hid_t loc, std::map<std::string, int64_t>& ints,
                            std::map<std::string, std::string>& strings);

}  // namespace meshtrain::h5

/// Evaluates an HDF5 call; a negative result becomes meshtrain::Error naming the call and the
/// reason HDF5 recorded. Returns the call's value, so ids can be taken straight into a Handle.
#define H5_CHECK(call) ::meshtrain::h5::check((call), #call, __FILE__, __LINE__)
