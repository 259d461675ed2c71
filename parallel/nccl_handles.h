// NCCL_CHECK and RAII owners of the CUDA and NCCL handles behind NcclCommunicator: device scope,
// events, the communication stream and the NCCL communicator itself. Private to the NCCL build
// (it needs CUDA's and NCCL's headers); nccl_communicator.cpp is its only user.
#pragma once

#include <cuda_runtime.h>
#include <nccl.h>

#include <string>
#include <utility>

#include "core/cuda_check.h"
#include "core/error.h"

/// Throws meshtrain::Error naming the failing NCCL call, NCCL's text for the code and its last error.
#define NCCL_CHECK(call)                                                                                     \
  do {                                                                                                       \
    ncclResult_t mt_nccl_err_ = (call);                                                                      \
    if (mt_nccl_err_ != ncclSuccess) ::meshtrain::throw_nccl_error(__FILE__, __LINE__, #call, mt_nccl_err_); \
  } while (0)

namespace meshtrain {

[[noreturn]] inline void throw_nccl_error(const char* file, int line, const std::string& what, ncclResult_t code) {
  const char* last = ncclGetLastError(nullptr);  // the argument is unused; NCCL keeps one per thread
  std::string detail = last && *last ? fmt::format(" ({})", last) : "";
  throw_error(file, line, fmt::format("[nccl] {} failed: {}{}", what, ncclGetErrorString(code), detail));
}

// Only nccl_communicator.cpp uses these; the namespace keeps their names out of everybody's way.
namespace nccl_detail {

// Sets done to whether the work before the event has finished and returns its failure, if any. A
// not-ready query may leave cudaErrorNotReady as the thread's last error, so it is cleared here.
inline cudaError_t query_event(cudaEvent_t event, bool& done) {
  cudaError_t e = cudaEventQuery(event);
  done = e != cudaErrorNotReady;
  if (!done) (void)cudaGetLastError();
  return done ? e : cudaSuccess;
}

// Makes a device current for a scope and restores the previous one.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    CUDA_CHECK(cudaGetDevice(&previous_));
    if (previous_ != device) CUDA_CHECK(cudaSetDevice(device));
    device_ = device;
  }
  ~DeviceGuard() {
    if (previous_ != device_) (void)cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0, device_ = 0;
};

// A CUDA event without timing (cheaper to record), on the device current at construction.
class CudaEvent {
 public:
  CudaEvent() { CUDA_CHECK(cudaEventCreateWithFlags(&event_, cudaEventDisableTiming)); }
  ~CudaEvent() {
    if (event_) (void)cudaEventDestroy(event_);
  }
  CudaEvent(CudaEvent&& other) noexcept : event_(std::exchange(other.event_, nullptr)) {}
  CudaEvent& operator=(CudaEvent&& other) noexcept {
    std::swap(event_, other.event_);
    return *this;
  }
  cudaEvent_t get() const { return event_; }

 private:
  cudaEvent_t event_ = nullptr;
};

// The communication stream: non-blocking, so it never waits implicitly for the legacy default
// stream (the explicit events say what it waits for).
class CommStream {
 public:
  CommStream() { CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking)); }
  ~CommStream() {
    (void)cudaStreamSynchronize(stream_);
    (void)cudaStreamDestroy(stream_);
  }
  CommStream(const CommStream&) = delete;
  CommStream& operator=(const CommStream&) = delete;
  cudaStream_t get() const { return stream_; }

 private:
  cudaStream_t stream_ = nullptr;
};

// Owns an ncclComm_t. After a failure NCCL's kernels may never finish, and ncclCommDestroy would
// wait for them, so a failed communicator is aborted instead.
class NcclHandle {
 public:
  explicit NcclHandle(ncclComm_t comm) : comm_(comm) {}
  ~NcclHandle() {
    if (!comm_) return;
    if (failed_)
      (void)ncclCommAbort(comm_);
    else
      (void)ncclCommDestroy(comm_);
  }
  NcclHandle(const NcclHandle&) = delete;
  NcclHandle& operator=(const NcclHandle&) = delete;
  ncclComm_t get() const { return comm_; }
  bool failed() const { return failed_; }
  void mark_failed() { failed_ = true; }
  /// Aborts now, cancelling operations in flight; the handle is empty afterwards.
  void abort() noexcept {
    if (comm_) (void)ncclCommAbort(std::exchange(comm_, nullptr));
  }

 private:
  ncclComm_t comm_;
  bool failed_ = false;
};

}  // namespace nccl_detail
}  // namespace meshtrain
