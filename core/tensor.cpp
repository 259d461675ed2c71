// Tensor and Storage. Host memory is 64-byte aligned for the vector units; device memory comes from
// the CUDA backend when it is built (core/device.h).
#include "core/tensor.h"

#include <cstdlib>
#include <cstring>

#include "core/device.h"

namespace meshtrain {

size_t dtype_size(DType dt) {
  switch (dt) {
    case DType::f32: return 4;
    case DType::bf16: return 2;
    case DType::i32: return 4;
    case DType::u16: return 2;
    case DType::u8: return 1;
  }
  return 0;
}

const char* dtype_name(DType dt) {
  switch (dt) {
    case DType::f32: return "f32";
    case DType::bf16: return "bf16";
    case DType::i32: return "i32";
    case DType::u16: return "u16";
    case DType::u8: return "u8";
  }
  return "?";
}

const char* device_name(Device dev) { return dev == Device::cpu ? "cpu" : "cuda"; }

int64_t shape_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    MT_CHECK(d >= 0, "[tensor] negative dimension in shape {}", shape_str(shape));
    n *= d;
  }
  return n;
}

std::string shape_str(const Shape& shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

Storage::Storage(size_t nbytes, Device device) : nbytes_(nbytes), device_(device) {
  if (nbytes == 0) return;
  if (device == Device::cpu) {
    size_t rounded = (nbytes + 63) / 64 * 64;
    data_ = std::aligned_alloc(64, rounded);
    MT_CHECK(data_ != nullptr, "[tensor] out of host memory allocating {} bytes", nbytes);
  } else {
    data_ = device_malloc(nbytes);
  }
}

Storage::~Storage() {
  if (!data_) return;
  if (device_ == Device::cpu) std::free(data_);
  else device_free(data_, nbytes_);
}

Tensor Tensor::empty(Shape shape, DType dtype, Device device) {
  Tensor t;
  t.numel_ = shape_numel(shape);
  t.shape_ = std::move(shape);
  t.dtype_ = dtype;
  t.device_ = device;
  t.storage_ = std::make_shared<Storage>(t.nbytes(), device);
  return t;
}

Tensor Tensor::zeros(Shape shape, DType dtype, Device device) {
  Tensor t = empty(std::move(shape), dtype, device);
  t.zero_();
  return t;
}

Tensor Tensor::view(int64_t offset, Shape shape) const {
  MT_CHECK(defined(), "[tensor] view of an undefined tensor");
  int64_t n = shape_numel(shape);
  MT_CHECK(offset >= 0 && offset + n <= numel_, "[tensor] view [{}, {}) outside a tensor of {} elements",
           offset, offset + n, numel_);
  Tensor t = *this;
  t.offset_ = offset_ + offset;
  t.numel_ = n;
  t.shape_ = std::move(shape);
  return t;
}

int64_t Tensor::dim(int i) const {
  int n = ndim();
  if (i < 0) i += n;
  MT_CHECK(i >= 0 && i < n, "[tensor] dim({}) of a {}-d tensor", i, n);
  return shape_[i];
}

void* Tensor::raw() const {
  if (!storage_) return nullptr;
  return static_cast<char*>(storage_->data()) + offset_ * static_cast<int64_t>(dtype_size(dtype_));
}

void Tensor::zero_() {
  if (device_ == Device::cpu) std::memset(raw(), 0, nbytes());
  else device_memset(raw(), 0, nbytes());
}

void Tensor::copy_from(const Tensor& src) {
  MT_CHECK(src.dtype_ == dtype_ && src.numel_ == numel_, "[tensor] copy_from {} {} into {} {}",
           dtype_name(src.dtype_), shape_str(src.shape_), dtype_name(dtype_), shape_str(shape_));
  if (device_ == Device::cpu && src.device_ == Device::cpu) std::memcpy(raw(), src.raw(), nbytes());
  else device_copy(raw(), device_, src.raw(), src.device_, nbytes());
}

Tensor Tensor::on(Device device) const {
  if (!defined() || device_ == device) return *this;
  Tensor copy = Tensor::empty(shape_, dtype_, device);
  copy.copy_from(*this);
  return copy;
}

}  // namespace meshtrain
