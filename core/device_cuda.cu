// The device API over the CUDA runtime. Errors become meshtrain::Error through CUDA_CHECK.
#include <cuda_runtime.h>

#include "core/cuda_check.h"
#include "core/device.h"

namespace meshtrain {

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();  // no driver or no device: report zero, clear the sticky error
    return 0;
  }
  return n;
}

bool cuda_built() { return true; }

void* device_malloc(size_t nbytes) {
  void* p = nullptr;
  CUDA_CHECK(cudaMalloc(&p, nbytes));
  return p;
}

void device_free(void* ptr) noexcept { (void)cudaFree(ptr); }

void device_memset(void* ptr, int value, size_t nbytes) { CUDA_CHECK(cudaMemset(ptr, value, nbytes)); }

void device_copy(void* dst, Device dst_device, const void* src, Device src_device, size_t nbytes) {
  cudaMemcpyKind kind = cudaMemcpyDefault;
  if (dst_device == Device::cpu && src_device == Device::cpu) kind = cudaMemcpyHostToHost;
  CUDA_CHECK(cudaMemcpy(dst, src, nbytes, kind));
}

}  // namespace meshtrain
