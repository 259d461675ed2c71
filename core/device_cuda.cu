// The device API over the CUDA runtime. Errors become meshtrain::Error through CUDA_CHECK. Memory
// counters: tensors are counted here as they are allocated; the stream-ordered pool (kernel scratch)
// reports its own high-water mark.
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>

#include "core/cuda_check.h"
#include "core/device.h"
#include "core/watchdog.h"

namespace meshtrain {

namespace {
std::atomic<size_t> g_in_use{0}, g_peak{0};

// The host waiting for the GPU. NCCL's collectives run on the GPU's streams, so a peer that died or
// hangs leaves the host blocked here rather than in a communication call: the watchdog times these
// waits too, naming the last collective queued.
template <class Wait>
void host_waits_for_gpu(const char* what, Wait&& wait) {
  const auto watch = CommWatchdog::Guard::gpu_wait(what);
  wait();
}

void synchronize_device() {
  host_waits_for_gpu("a device synchronize", [] { CUDA_CHECK(cudaDeviceSynchronize()); });
}

void note_alloc(size_t n) {
  size_t now = g_in_use.fetch_add(n) + n, peak = g_peak.load();
  while (now > peak && !g_peak.compare_exchange_weak(peak, now)) {
  }
}

/// Bytes the current device's default stream-ordered pool holds (reserved), and its high-water mark.
size_t pool_attribute(cudaMemPoolAttr attr) {
  int dev = 0;
  cudaMemPool_t pool;
  if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetDefaultMemPool(&pool, dev) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  uint64_t v = 0;
  if (cudaMemPoolGetAttribute(pool, attr, &v) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return static_cast<size_t>(v);
}
}  // namespace

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();  // no driver or no device: report zero, clear the sticky error
    return 0;
  }
  return n;
}

bool cuda_built() { return true; }

void require_cuda(const char* who) {
  MT_CHECK(cuda_device_count() > 0,
           "[cuda] {}, but no CUDA device is visible (check nvidia-smi and CUDA_VISIBLE_DEVICES), or run on the CPU",
           who);
}

void* timing_event_create() {
  cudaEvent_t e = nullptr;
  CUDA_CHECK(cudaEventCreate(&e));
  return e;
}
void timing_event_destroy(void* event) noexcept {
  if (event) (void)cudaEventDestroy(static_cast<cudaEvent_t>(event));
}
void timing_event_record(void* event, void* stream) {
  CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(event), static_cast<cudaStream_t>(stream)));
}
double timing_event_seconds(void* a, void* b) {
  float ms = 0.0f;
  if (cudaEventElapsedTime(&ms, static_cast<cudaEvent_t>(a), static_cast<cudaEvent_t>(b)) != cudaSuccess) {
    (void)cudaGetLastError();  // never recorded (or not reached): no time to report
    return 0.0;
  }
  return ms * 1e-3;
}

void use_cuda_device(int device) {
  const int n = cuda_device_count();
  MT_CHECK(device >= 0 && device < n, "[cuda] GPU {} asked for, but {} GPU{} visible", device, n, n == 1 ? " is" : "s are");
  CUDA_CHECK(cudaSetDevice(device));
}

std::string cuda_device_description() {
  int dev = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  cudaDeviceProp p{};
  CUDA_CHECK(cudaGetDeviceProperties(&p, dev));
  return fmt::format("{} (sm_{}{}, {:.1f} GiB)", p.name, p.major, p.minor,
                     static_cast<double>(p.totalGlobalMem) / (1 << 30));
}

void* device_malloc(size_t nbytes) {
  void* p = nullptr;
  cudaError_t err = cudaMalloc(&p, nbytes);
  if (err == cudaErrorMemoryAllocation) {
    (void)cudaGetLastError();
    size_t free_b = 0, total_b = 0;
    (void)cudaMemGetInfo(&free_b, &total_b);
    MT_FAIL("[cuda] out of device memory allocating {:.1f} MiB ({:.1f} MiB free of {:.1f} MiB); use a smaller "
            "train.batch_size, train.recompute = full or train.precision = bf16",
            nbytes / 1048576.0, free_b / 1048576.0, total_b / 1048576.0);
  }
  CUDA_CHECK(err);
  note_alloc(nbytes);
  return p;
}

void device_free(void* ptr, size_t nbytes) noexcept {
  (void)cudaFree(ptr);
  g_in_use.fetch_sub(nbytes);
}

// Synchronous, like device_copy: work on other streams (the model's is non-blocking) may use the
// memory as soon as this returns.
void device_memset(void* ptr, int value, size_t nbytes) {
  CUDA_CHECK(cudaMemset(ptr, value, nbytes));
  synchronize_device();
}

// Ordered after the work of every stream and finished before it returns: the model's stream is
// non-blocking, so a plain cudaMemcpy (legacy default stream) would neither wait for kernels still
// writing src nor, from pageable memory, finish writing dst before the next kernel reads it. This is
// the copy that staging through host memory (an MPI communicator) relies on.
void device_copy(void* dst, Device dst_device, const void* src, Device src_device, size_t nbytes) {
  cudaMemcpyKind kind = cudaMemcpyDefault;
  if (dst_device == Device::cpu && src_device == Device::cpu) kind = cudaMemcpyHostToHost;
  const bool on_device = dst_device == Device::cuda || src_device == Device::cuda;
  if (on_device) synchronize_device();
  CUDA_CHECK(cudaMemcpy(dst, src, nbytes, kind));
  if (on_device) synchronize_device();
}

void device_copy_async(void* dst, const void* src, size_t nbytes, void* stream) {
  if (nbytes == 0) return;
  CUDA_CHECK(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDefault, static_cast<cudaStream_t>(stream)));
}

void device_memset_async(void* ptr, int value, size_t nbytes, void* stream) {
  if (nbytes == 0) return;
  CUDA_CHECK(cudaMemsetAsync(ptr, value, nbytes, static_cast<cudaStream_t>(stream)));
}

void stream_synchronize(void* stream) {
  host_waits_for_gpu("a wait for the GPU's stream",
                     [stream] { CUDA_CHECK(cudaStreamSynchronize(static_cast<cudaStream_t>(stream))); });
}

size_t device_memory_in_use() { return g_in_use.load() + pool_attribute(cudaMemPoolAttrReservedMemCurrent); }

size_t device_memory_peak() { return g_peak.load() + pool_attribute(cudaMemPoolAttrReservedMemHigh); }

void device_memory_reset_peak() {
  g_peak.store(g_in_use.load());
  int dev = 0;
  cudaMemPool_t pool;
  if (cudaGetDevice(&dev) == cudaSuccess && cudaDeviceGetDefaultMemPool(&pool, dev) == cudaSuccess) {
    uint64_t zero = 0;
    (void)cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReservedMemHigh, &zero);
  }
  (void)cudaGetLastError();
}

CudaStream::CudaStream() {
  cudaStream_t s;
  CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  stream_ = s;
}

CudaStream::~CudaStream() {
  if (stream_) (void)cudaStreamDestroy(static_cast<cudaStream_t>(stream_));
}

PinnedBuffer::PinnedBuffer(size_t nbytes) : nbytes_(nbytes) {
  if (nbytes) CUDA_CHECK(cudaMallocHost(&data_, nbytes));
}

PinnedBuffer::~PinnedBuffer() {
  if (data_) (void)cudaFreeHost(data_);
}

CudaGraph::~CudaGraph() { reset(); }

void CudaGraph::reset() {
  if (exec_) (void)cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(exec_));
  if (graph_) (void)cudaGraphDestroy(static_cast<cudaGraph_t>(graph_));
  exec_ = graph_ = nullptr;
}

void CudaGraph::begin_capture(void* stream) {
  reset();
  CUDA_CHECK(cudaStreamBeginCapture(static_cast<cudaStream_t>(stream), cudaStreamCaptureModeThreadLocal));
}

void CudaGraph::end_capture(void* stream) {
  cudaGraph_t g = nullptr;
  CUDA_CHECK(cudaStreamEndCapture(static_cast<cudaStream_t>(stream), &g));
  graph_ = g;
  cudaGraphExec_t e = nullptr;
  CUDA_CHECK(cudaGraphInstantiate(&e, g, 0));
  exec_ = e;
}

void CudaGraph::abort_capture(void* stream) noexcept {
  cudaGraph_t g = nullptr;
  (void)cudaStreamEndCapture(static_cast<cudaStream_t>(stream), &g);
  if (g) (void)cudaGraphDestroy(g);
  (void)cudaGetLastError();  // an invalidated capture leaves an error behind
  reset();
}

void CudaGraph::replay(void* stream) {
  MT_CHECK(exec_, "[cuda_graph] replay before a capture");
  CUDA_CHECK(cudaGraphLaunch(static_cast<cudaGraphExec_t>(exec_), static_cast<cudaStream_t>(stream)));
}

}  // namespace meshtrain
