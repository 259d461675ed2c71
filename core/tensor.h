// Tensor: a typed, contiguous buffer with a shape and a device. No strides: views are contiguous
// windows of a parent's storage, which is how parameters, gradients and activations share one
// allocation each.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/bf16.h"
#include "core/error.h"

namespace meshtrain {

enum class DType : uint8_t { f32, bf16, i32, u16, u8 };
enum class Device : uint8_t { cpu, cuda };

/// Size in bytes of one element of dt.
size_t dtype_size(DType dt);
/// Lower-case name of dt ("f32", "bf16", ...).
const char* dtype_name(DType dt);
/// Lower-case name of dev ("cpu", "cuda").
const char* device_name(Device dev);

template <class T> constexpr DType dtype_of();
template <> constexpr DType dtype_of<float>() { return DType::f32; }
template <> constexpr DType dtype_of<int32_t>() { return DType::i32; }
template <> constexpr DType dtype_of<uint16_t>() { return DType::u16; }
template <> constexpr DType dtype_of<uint8_t>() { return DType::u8; }
template <> constexpr DType dtype_of<Bf16>() { return DType::bf16; }

using Shape = std::vector<int64_t>;

/// Number of elements of a shape (1 for a scalar shape {}).
int64_t shape_numel(const Shape& shape);
/// "[a, b, c]".
std::string shape_str(const Shape& shape);

/// Owned bytes on one device; freed when the last Tensor that views it goes away.
class Storage {
 public:
  Storage(size_t nbytes, Device device);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  void* data() const { return data_; }
  size_t nbytes() const { return nbytes_; }
  Device device() const { return device_; }

 private:
  void* data_ = nullptr;
  size_t nbytes_ = 0;
  Device device_;
};

class Tensor {
 public:
  Tensor() = default;
  /// Uninitialised tensor of the given shape.
  static Tensor empty(Shape shape, DType dtype = DType::f32, Device device = Device::cpu);
  /// Zero-filled tensor of the given shape.
  static Tensor zeros(Shape shape, DType dtype = DType::f32, Device device = Device::cpu);

  /// A contiguous window of this tensor's storage starting offset elements in, with a new shape.
  Tensor view(int64_t offset, Shape shape) const;
  /// The same elements under another shape with the same element count.
  Tensor reshape(Shape shape) const { return view(0, std::move(shape)); }

  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  int64_t dim(int i) const;
  int ndim() const { return static_cast<int>(shape_.size()); }
  int64_t numel() const { return numel_; }
  size_t nbytes() const { return static_cast<size_t>(numel_) * dtype_size(dtype_); }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }

  void* raw() const;
  /// Typed pointer; throws when T does not match the dtype.
  template <class T> T* data() const {
    MT_CHECK(dtype_of<T>() == dtype_, "[tensor] data<{}>() on a {} tensor", dtype_name(dtype_of<T>()),
             dtype_name(dtype_));
    return static_cast<T*>(raw());
  }
  float* f32() const { return data<float>(); }

  /// Sets every byte to zero.
  void zero_();
  /// Copies the elements of src (same dtype and element count) into this tensor.
  void copy_from(const Tensor& src);
  /// This tensor when it lives on device (the same memory), else a copy of it there: how a host
  /// tensor is staged through the GPU for NCCL, and a GPU tensor through host memory for MPI.
  Tensor on(Device device) const;

 private:
  std::shared_ptr<Storage> storage_;
  int64_t offset_ = 0;  // in elements
  int64_t numel_ = 0;
  Shape shape_;
  DType dtype_ = DType::f32;
  Device device_ = Device::cpu;
};

}  // namespace meshtrain
