// The device API when meshtrain is built without CUDA: no devices, and a named error on use.
#include "core/device.h"

namespace meshtrain {

#define MT_NOT_BUILT() MT_FAIL("[cuda] not built: reconfigure with -DMESHTRAIN_CUDA=ON")

int cuda_device_count() { return 0; }
bool cuda_built() { return false; }
void require_cuda(const char* who) {
  MT_FAIL(
      "[cuda] {}, but this build has no CUDA backend; rebuild with nvcc present (-DMESHTRAIN_CUDA=ON), or run on the "
      "CPU",
      who);
}
void use_cuda_device(int) { MT_NOT_BUILT(); }
void* timing_event_create() { MT_NOT_BUILT(); }
void timing_event_destroy(void*) noexcept {}
void timing_event_record(void*, void*) { MT_NOT_BUILT(); }
double timing_event_seconds(void*, void*) { MT_NOT_BUILT(); }
std::string cuda_device_description() { MT_NOT_BUILT(); }
void* device_malloc(size_t) { MT_NOT_BUILT(); }
void device_free(void*, size_t) noexcept {}
void device_memset(void*, int, size_t) { MT_NOT_BUILT(); }
void device_copy(void*, Device, const void*, Device, size_t) { MT_NOT_BUILT(); }
void device_copy_async(void*, const void*, size_t, void*) { MT_NOT_BUILT(); }
void device_memset_async(void*, int, size_t, void*) { MT_NOT_BUILT(); }
void stream_synchronize(void*) { MT_NOT_BUILT(); }
size_t device_memory_in_use() { return 0; }
size_t device_memory_peak() { return 0; }
void device_memory_reset_peak() {}
CudaStream::CudaStream() { MT_NOT_BUILT(); }
CudaStream::~CudaStream() = default;
PinnedBuffer::PinnedBuffer(size_t) { MT_NOT_BUILT(); }
PinnedBuffer::~PinnedBuffer() = default;
CudaGraph::~CudaGraph() = default;
void CudaGraph::reset() {}
void CudaGraph::begin_capture(void*) { MT_NOT_BUILT(); }
void CudaGraph::end_capture(void*) { MT_NOT_BUILT(); }
void CudaGraph::abort_capture(void*) noexcept {}
void CudaGraph::replay(void*) { MT_NOT_BUILT(); }

}  // namespace meshtrain
