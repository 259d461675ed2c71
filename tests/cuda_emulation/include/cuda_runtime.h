// CUDA emulation: the part of the CUDA runtime API and of CUDA C++ that meshtrain's .cu files use,
// for a host-compiler build (see tests/cuda_emulation/README.md). Each CUDA thread of a block is a
// fiber on one CPU thread; blocks run one after another in a shuffled order; __syncthreads and
// warp shuffles are barriers at which the threads of a block interleave in a shuffled order.
// Streams run their work at once on the calling thread, unless a graph is being captured on them.
// What it cannot show: real timing, races between blocks (they never overlap), memory-model
// effects, and anything about occupancy, registers or the real shared-memory size.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

// ---- Qualifiers and built-ins (device code compiled as host C++) --------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
// Blocks run one at a time on one CPU thread, so a function-static is exactly one block's memory.
#define __shared__ static
#define __constant__ static

struct uint3 {
  unsigned x = 0, y = 0, z = 0;
};
struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
};

namespace mt_emu {

/// The running CUDA thread's coordinates (set by the scheduler before each fiber runs).
struct ThreadState {
  uint3 thread_idx, block_idx;
  dim3 block_dim, grid_dim;
};
ThreadState& current();
/// Waits until every live thread of the block arrives (a barrier; threads interleave here).
void sync_threads();
/// Waits until the live lanes of mask in this thread's warp arrive.
void sync_warp(unsigned mask);
/// Warp exchange: deposit 8 bytes, wait for the lanes of mask, read lane `from`'s deposit, wait again.
uint64_t warp_exchange(unsigned mask, uint64_t value, int from_lane);
/// This thread's lane (0..31) in its warp.
int lane_id();
/// The dynamic shared memory of the running block (the launch's third argument, in bytes).
unsigned char* dynamic_shared_memory();

}  // namespace mt_emu

#define threadIdx (::mt_emu::current().thread_idx)
#define blockIdx (::mt_emu::current().block_idx)
#define blockDim (::mt_emu::current().block_dim)
#define gridDim (::mt_emu::current().grid_dim)
constexpr int warpSize = 32;

inline void __syncthreads() { ::mt_emu::sync_threads(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { ::mt_emu::sync_warp(mask); }

template <class T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32) {
  static_assert(sizeof(T) <= 8, "[cuda emulation] __shfl_*_sync moves at most 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &var, sizeof(T));
  const int lane = ::mt_emu::lane_id();
  const int from = (lane & ~(width - 1)) | ((lane ^ lane_mask) & (width - 1));
  bits = ::mt_emu::warp_exchange(mask, bits, from);
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}

template <class T>
T __shfl_sync(unsigned mask, T var, int src_lane, int width = 32) {
  uint64_t bits = 0;
  std::memcpy(&bits, &var, sizeof(T));
  const int lane = ::mt_emu::lane_id();
  bits = ::mt_emu::warp_exchange(mask, bits, (lane & ~(width - 1)) | (src_lane & (width - 1)));
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}

// CUDA's global min/max overloads (integer and floating point), as one template each.
template <class A, class B>
constexpr std::common_type_t<A, B> min(A a, B b) {
  return b < a ? b : a;
}
template <class A, class B>
constexpr std::common_type_t<A, B> max(A a, B b) {
  return a < b ? b : a;
}

inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float exp2f(float x) { return std::exp2(x); }
using std::exp2;

// ---- Runtime API -----------------------------------------------------------------------------------
enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidDevicePointer = 17,
  cudaErrorNoDevice = 100,
  cudaErrorInvalidDevice = 101,
  cudaErrorNotReady = 600,
  cudaErrorLaunchFailure = 719,
  cudaErrorStreamCaptureUnsupported = 900,
  cudaErrorNotSupported = 801,
};
using cudaError = cudaError_t;

// Streams are CUstream_st*, as in CUDA's headers, so code that names the struct (to pass a stream
// without including CUDA) compiles against the emulation too.
struct CUstream_st;
namespace mt_emu {
using Stream = ::CUstream_st;
struct Event;
struct Graph;
struct GraphExec;
struct MemPool;
}  // namespace mt_emu
using cudaStream_t = mt_emu::Stream*;
using cudaEvent_t = mt_emu::Event*;
using cudaGraph_t = mt_emu::Graph*;
using cudaGraphExec_t = mt_emu::GraphExec*;
using cudaMemPool_t = mt_emu::MemPool*;

enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4
};
enum cudaStreamCaptureMode {
  cudaStreamCaptureModeGlobal = 0,
  cudaStreamCaptureModeThreadLocal = 1,
  cudaStreamCaptureModeRelaxed = 2
};
enum cudaStreamCaptureStatus { cudaStreamCaptureStatusNone = 0, cudaStreamCaptureStatusActive = 1 };
enum cudaMemPoolAttr {
  cudaMemPoolAttrReleaseThreshold = 4,
  cudaMemPoolAttrReservedMemCurrent = 5,
  cudaMemPoolAttrReservedMemHigh = 6,
  cudaMemPoolAttrUsedMemCurrent = 7,
  cudaMemPoolAttrUsedMemHigh = 8
};
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
constexpr unsigned cudaStreamNonBlocking = 1;
constexpr unsigned cudaEventDefault = 0, cudaEventDisableTiming = 2;
enum cudaDataType_t { CUDA_R_32F = 0, CUDA_R_16F = 2, CUDA_R_16BF = 14 };
using cudaDataType = cudaDataType_t;

struct cudaDeviceProp {
  char name[256];
  size_t totalGlobalMem;
  size_t sharedMemPerBlock;
  size_t sharedMemPerBlockOptin;
  int major, minor;
  int multiProcessorCount;
  int warpSize;
  int maxThreadsPerBlock;
};

cudaError_t cudaGetDeviceCount(int* count);
cudaError_t cudaGetDevice(int* device);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device);
cudaError_t cudaDeviceSynchronize();
cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
const char* cudaGetErrorString(cudaError_t e);
const char* cudaGetErrorName(cudaError_t e);
cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes);

cudaError_t cudaMalloc(void** p, size_t n);
cudaError_t cudaFree(void* p);
cudaError_t cudaMallocHost(void** p, size_t n);
template <class T>
cudaError_t cudaMallocHost(T** p, size_t n) {  // the runtime's C++ overload
  return cudaMallocHost(reinterpret_cast<void**>(p), n);
}
cudaError_t cudaFreeHost(void* p);
cudaError_t cudaMallocAsync(void** p, size_t n, cudaStream_t s);
cudaError_t cudaFreeAsync(void* p, cudaStream_t s);
template <class T>
cudaError_t cudaMalloc(T** p, size_t n) {
  return cudaMalloc(reinterpret_cast<void**>(p), n);
}
template <class T>
cudaError_t cudaMallocAsync(T** p, size_t n, cudaStream_t s) {
  return cudaMallocAsync(reinterpret_cast<void**>(p), n, s);
}
cudaError_t cudaMemcpy(void* dst, const void* src, size_t n, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t n, cudaMemcpyKind kind, cudaStream_t s = nullptr);
cudaError_t cudaMemset(void* p, int value, size_t n);
cudaError_t cudaMemsetAsync(void* p, int value, size_t n, cudaStream_t s = nullptr);

cudaError_t cudaDeviceGetDefaultMemPool(cudaMemPool_t* pool, int device);
cudaError_t cudaMemPoolGetAttribute(cudaMemPool_t pool, cudaMemPoolAttr attr, void* value);
cudaError_t cudaMemPoolSetAttribute(cudaMemPool_t pool, cudaMemPoolAttr attr, void* value);

cudaError_t cudaStreamCreate(cudaStream_t* s);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t s);
cudaError_t cudaStreamSynchronize(cudaStream_t s);
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned flags = 0);
cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode mode);
cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t* graph);
cudaError_t cudaStreamIsCapturing(cudaStream_t s, cudaStreamCaptureStatus* status);

cudaError_t cudaEventCreate(cudaEvent_t* e);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned flags);
cudaError_t cudaEventDestroy(cudaEvent_t e);
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s = nullptr);
cudaError_t cudaEventSynchronize(cudaEvent_t e);
cudaError_t cudaStreamQuery(cudaStream_t s);
/// "0000:0D:00.0"-style ids, one per emulated GPU and the same in every process (a host's GPUs).
cudaError_t cudaDeviceGetPCIBusId(char* bus_id, int len, int device);
cudaError_t cudaEventQuery(cudaEvent_t e);
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end);

cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph, unsigned long long flags = 0);
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t s);
cudaError_t cudaGraphDestroy(cudaGraph_t graph);
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec);

cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value);
template <class F>
cudaError_t cudaFuncSetAttribute(F* func, cudaFuncAttribute attr, int value) {
  return cudaFuncSetAttribute(reinterpret_cast<const void*>(func), attr, value);
}

// ---- Kernel launches ---------------------------------------------------------------------------------
// tests/cuda_emulation/rewrite_launches.py turns `kernel<<<grid, block, smem, stream>>>(args)` into
//   ::mt_emu::launch_config("kernel", grid, block, smem, stream)
//       .run([=, mt_args = std::make_tuple(args)] { std::apply([&](auto&... a) { kernel(a...); }, mt_args); })
// so the arguments are evaluated and copied once, at the launch, and overload resolution and
// template deduction are the ones of the real launch.
namespace mt_emu {

/// Runs (or, while the stream captures a graph, records) one grid: body runs once per CUDA thread.
void enqueue_grid(const char* name, dim3 grid, dim3 block, size_t smem, cudaStream_t s, std::function<void()> body);
/// Records or runs host work on a stream (memcpy, memset, library calls) in stream order.
void enqueue_host(cudaStream_t s, std::function<void()> work);
/// Sets the sticky error that cudaGetLastError reports.
void set_error(cudaError_t e);

struct LaunchConfig {
  const char* name;
  dim3 grid, block;
  size_t smem = 0;
  cudaStream_t stream = nullptr;
  template <class Body>
  void run(Body body) const {
    enqueue_grid(name, grid, block, smem, stream, std::function<void()>(std::move(body)));
  }
};

inline LaunchConfig launch_config(const char* name, dim3 grid, dim3 block, size_t smem = 0,
                                  cudaStream_t stream = nullptr) {
  return LaunchConfig{name, grid, block, smem, stream};
}

}  // namespace mt_emu
