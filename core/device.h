// Device memory, streams and discovery. Implemented by device_cuda.cu when the CUDA backend is built
// and by no_cuda.cpp otherwise, where every call except the queries (cuda_device_count, cuda_built,
// the memory counters) throws "[cuda] not built".
#pragma once

#include <cstddef>
#include <string>
#include <utility>

#include "core/tensor.h"

namespace meshtrain {

/// Number of visible CUDA devices (0 when the backend is not built or no GPU is present).
int cuda_device_count();
/// True when this binary was built with the CUDA backend.
bool cuda_built();
/// Throws a clear error, naming what asked (e.g. "train.device = cuda"), unless this build has CUDA
/// and a GPU is visible.
void require_cuda(const char* who);
/// Makes GPU `device` (0-based, of cuda_device_count()) the calling thread's current device.
void use_cuda_device(int device);
/// "NVIDIA H100 80GB HBM3 (sm_90, 79.1 GiB)" for the current device.
std::string cuda_device_description();
void* device_malloc(size_t nbytes);
/// Frees what device_malloc returned; nbytes is the size asked for (it feeds the memory counters).
void device_free(void* ptr, size_t nbytes) noexcept;
/// Sets nbytes and waits until that is done.
void device_memset(void* ptr, int value, size_t nbytes);
/// Copies nbytes between any two devices (host <-> device, device <-> device); returns when done.
void device_copy(void* dst, Device dst_device, const void* src, Device src_device, size_t nbytes);

/// Stream-ordered versions on a cudaStream_t (passed as void*; nullptr = the default stream). Copies
/// between page-locked host memory and the device are asynchronous, and a CUDA graph captures them.
void device_copy_async(void* dst, const void* src, size_t nbytes, void* stream);
void device_memset_async(void* ptr, int value, size_t nbytes, void* stream);
void stream_synchronize(void* stream);

/// Bytes of device memory held now and at most since the last reset: tensors (device_malloc) plus the
/// stream-ordered pool that kernels take scratch from (cudaMallocAsync).
size_t device_memory_in_use();
size_t device_memory_peak();
void device_memory_reset_peak();

/// A CUDA stream owned for its lifetime (non-blocking with respect to the default stream).
class CudaStream {
 public:
  CudaStream();
  ~CudaStream();
  CudaStream(const CudaStream&) = delete;
  CudaStream& operator=(const CudaStream&) = delete;
  void* get() const { return stream_; }
  void synchronize() const { stream_synchronize(stream_); }

 private:
  void* stream_ = nullptr;
};

/// Page-locked host memory: what a CUDA graph's host <-> device copies read and write at replay.
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  explicit PinnedBuffer(size_t nbytes);
  ~PinnedBuffer();
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  PinnedBuffer(PinnedBuffer&& o) noexcept { swap(o); }
  /// Takes o's memory; this object's old memory is freed with o.
  PinnedBuffer& operator=(PinnedBuffer&& o) noexcept {
    swap(o);
    return *this;
  }
  void swap(PinnedBuffer& o) noexcept {
    std::swap(data_, o.data_);
    std::swap(nbytes_, o.nbytes_);
  }
  void* data() const { return data_; }
  size_t nbytes() const { return nbytes_; }

 private:
  void* data_ = nullptr;
  size_t nbytes_ = 0;
};

/// Timing events: a point on a stream's timeline (cudaEvent_t with timing, passed as void*).
void* timing_event_create();
void timing_event_destroy(void* event) noexcept;
void timing_event_record(void* event, void* stream);
/// Seconds from a to b once both have been reached (0 when either was never recorded).
double timing_event_seconds(void* a, void* b);

/// A whole sequence of stream work recorded once and replayed with one launch (cudaGraph_t and its
/// executable instance). Capture is per thread: work queued on the stream between begin_capture and
/// end_capture is recorded, not run.
class CudaGraph {
 public:
  CudaGraph() = default;
  ~CudaGraph();
  CudaGraph(const CudaGraph&) = delete;
  CudaGraph& operator=(const CudaGraph&) = delete;
  void begin_capture(void* stream);
  /// Ends the capture and instantiates the graph (replacing any earlier one).
  void end_capture(void* stream);
  /// Ends a capture that failed part-way and drops what it recorded, so the stream runs work again.
  void abort_capture(void* stream) noexcept;
  void replay(void* stream);
  bool ready() const { return exec_ != nullptr; }
  /// Drops the captured graph (the next step captures again).
  void reset();

 private:
  [[maybe_unused]] void* graph_ = nullptr;  // (unused where CUDA is not built)
  void* exec_ = nullptr;
};

}  // namespace meshtrain
