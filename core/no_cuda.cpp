// The device API when meshtrain is built without CUDA: no devices, and a named error on use.
#include "core/device.h"

namespace meshtrain {

int cuda_device_count() { return 0; }
bool cuda_built() { return false; }
void* device_malloc(size_t) { MT_FAIL("[cuda] not built: reconfigure with -DMESHTRAIN_CUDA=ON"); }
void device_free(void*) noexcept {}
void device_memset(void*, int, size_t) { MT_FAIL("[cuda] not built: reconfigure with -DMESHTRAIN_CUDA=ON"); }
void device_copy(void*, Device, const void*, Device, size_t) {
  MT_FAIL("[cuda] not built: reconfigure with -DMESHTRAIN_CUDA=ON");
}

}  // namespace meshtrain
