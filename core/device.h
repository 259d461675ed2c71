// Device memory and discovery. Implemented by device_cuda.cu when the CUDA backend is built and by
// no_cuda.cpp otherwise, where every call except cuda_device_count() throws "[cuda] not built".
#pragma once

#include <cstddef>

#include "core/tensor.h"

namespace meshtrain {

/// Number of visible CUDA devices (0 when the backend is not built or no GPU is present).
int cuda_device_count();
/// True when this binary was built with the CUDA backend.
bool cuda_built();
void* device_malloc(size_t nbytes);
void device_free(void* ptr) noexcept;
void device_memset(void* ptr, int value, size_t nbytes);
/// Copies nbytes between any two devices (host <-> device, device <-> device).
void device_copy(void* dst, Device dst_device, const void* src, Device src_device, size_t nbytes);

}  // namespace meshtrain
